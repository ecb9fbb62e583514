//! The scenarios, by issue: hits (the foundation), stampedes, invalidation,
//! batches and codecs, faults, and the consistency checker.

pub mod batch;
pub mod codecs;
pub mod consistency;
pub mod faults;
pub mod hits;
pub mod invalidation;
pub mod near;
pub mod stampede;
