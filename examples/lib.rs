//! Runnable examples of cached-runtime: see `quickstart.rs`.
