//! The scenarios, by issue: hits (the foundation), stampedes.

pub mod hits;
pub mod stampede;
