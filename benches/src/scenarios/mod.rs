//! The scenarios, by issue: hits (the foundation), stampedes, invalidation,
//! batches and codecs, faults, the consistency checker, and Redis Cluster.

pub mod batch;
pub mod cluster;
pub mod codecs;
pub mod consistency;
pub mod faults;
pub mod hits;
pub mod invalidation;
pub mod near;
pub mod stampede;
