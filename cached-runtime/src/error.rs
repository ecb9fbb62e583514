//! Errors a user can see: building a cache, and asking it for its health.
//! Cached calls themselves never return a cache error.

use crate::backend::BackendError;

/// Why a [`CacheBuilder`](crate::CacheBuilder) could not build a cache.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL does not parse, or names a scheme this build cannot use
    /// (`rediss://` needs the `tls` feature).
    InvalidUrl(redis::RedisError),
    /// A setting is out of range; the text says which and why.
    InvalidSetting(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::InvalidUrl(e) => write!(f, "invalid Redis URL: {e}"),
            BuildError::InvalidSetting(why) => write!(f, "invalid cache setting: {why}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::InvalidUrl(e) => Some(e),
            BuildError::InvalidSetting(_) => None,
        }
    }
}

/// A backend failure, returned by [`Cache::ping`](crate::Cache::ping) and by
/// the explicit invalidation methods ([`Cache::invalidate`](crate::Cache::invalidate)
/// and its kin), never by a cached call.
#[derive(Debug)]
pub struct CacheError(pub(crate) BackendError);

impl CacheError {
    /// A short label for the failure: `timeout`, `connection`,
    /// `redis`, `encode`, `too_large` or `circuit_open`.
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            BackendError::Redis(e) => Some(e),
            BackendError::Encode(e) => Some(e),
            BackendError::Timeout | BackendError::TooLarge(_) | BackendError::Skipped => None,
        }
    }
}
