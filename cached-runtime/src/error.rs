//! Errors a user can see: building a cache, and asking it for its health.
//! Cached calls themselves never return a cache error.

use crate::backend::BackendError;

/// Why a [`CacheBuilder`](crate::CacheBuilder) could not build a cache.
/// Each says where the bad value came from (an environment variable or a
/// builder method) and what was expected; no variant holds a password or a
/// private key, and a URL is shown with its password masked.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL cannot be used: it does not parse, names a scheme this
    /// build cannot use (`rediss://` needs the `tls` feature), or has a part
    /// out of range.
    InvalidUrl {
        /// Where it came from: `REDIS_URL`, or `CacheBuilder::redis`.
        origin: &'static str,
        /// The URL, its password masked (`redis://user:***@host:6379`).
        url: String,
        /// What is wrong with it, and what was expected.
        reason: String,
    },
    /// A TLS setting cannot be used: a certificate or key that does not
    /// parse, a file that cannot be read, or TLS settings without a
    /// `rediss://` URL or without the `tls` feature.
    InvalidTls {
        /// Where it came from: a builder method, or an environment variable
        /// and the file it names.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting is out of range; the text says which and why.
    InvalidSetting(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::InvalidUrl {
                origin,
                url,
                reason,
            } => write!(f, "invalid Redis URL in {origin} (`{url}`): {reason}"),
            BuildError::InvalidTls { origin, reason } => {
                write!(f, "invalid Redis TLS setting in {origin}: {reason}")
            }
            BuildError::InvalidSetting(why) => write!(f, "invalid cache setting: {why}"),
        }
    }
}

impl std::error::Error for BuildError {}

/// A backend failure, returned by [`Cache::ping`](crate::Cache::ping) and by
/// the explicit invalidation methods ([`Cache::invalidate`](crate::Cache::invalidate)
/// and its kin), never by a cached call.
#[derive(Debug)]
pub struct CacheError(pub(crate) BackendError);

impl CacheError {
    /// A short label for the failure: `timeout`, `connection`, `auth`,
    /// `permission`, `redis`, `encode`, `too_large`, `circuit_open`, or
    /// `reserved_key` (a key given by hand names one the cache keeps for
    /// itself, such as `x:~lease`).
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
            BackendError::Encode(e) => Some(&**e),
            BackendError::Timeout
            | BackendError::TooLarge(_)
            | BackendError::Skipped
            | BackendError::ReservedKey => None,
        }
    }
}

/// A load stopped by its function's `hard_timeout`: what a
/// `#[cached(hard_timeout = "2s")]` function returns, through its error
/// type's `From<LoadTimeout>`, when its body runs longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTimeout {
    /// The timeout that ran out.
    pub after: std::time::Duration,
}

impl std::fmt::Display for LoadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the load did not finish within its hard timeout of {:?}",
            self.after
        )
    }
}

impl std::error::Error for LoadTimeout {}
