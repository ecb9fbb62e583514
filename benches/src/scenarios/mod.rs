//! The scenarios, by issue: hits (the foundation), stampedes, invalidation,
//! faults, and the consistency checker.

pub mod codecs;
pub mod consistency;
pub mod faults;
pub mod hits;
pub mod invalidation;
pub mod stampede;
