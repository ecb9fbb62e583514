//! The scenarios, by issue: hits (the foundation), stampedes, invalidation.

pub mod faults;
pub mod hits;
pub mod invalidation;
pub mod stampede;
