//! Where entries live: in process ([`memory`], moka) or in Redis ([`redis`]).
//!
//! Every backend answers the same typed operations; the cache above them turns
//! every failure into a miss (reads) or a no-op (writes), so a backend error
//! never reaches the caller of a cached function.

pub(crate) mod memory;
pub(crate) mod redis;

use std::time::Duration;

use crate::Cacheable;
use crate::codec::{DecodeError, EntryMeta};

/// What went wrong talking to a backend.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// The operation did not finish within the cache's operation timeout.
    Timeout,
    /// The backend answered with an error, or the connection failed.
    Redis(::redis::RedisError),
    /// The value could not be encoded for storage.
    Encode(serde_json::Error),
}

impl BackendError {
    /// A short, stable label for logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                "connection"
            }
            BackendError::Redis(_) => "redis",
            BackendError::Encode(_) => "encode",
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Timeout => f.write_str("backend operation timed out"),
            BackendError::Redis(e) => write!(f, "redis: {e}"),
            BackendError::Encode(e) => write!(f, "value does not serialize: {e}"),
        }
    }
}

/// The outcome of a typed read.
#[derive(Debug)]
pub(crate) enum Lookup<T> {
    /// A value of the requested type, with its metadata.
    Found(T, EntryMeta),
    /// Nothing under the key.
    Absent,
    /// Something is there that is not a value of this type and format.
    Unreadable(DecodeError),
}

/// The backend a [`Cache`](crate::Cache) was built with.
#[derive(Debug)]
pub(crate) enum Backend {
    Memory(memory::MemoryBackend),
    Redis(Box<redis::RedisBackend>),
}

impl Backend {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub(crate) async fn get<T: Cacheable>(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Lookup<T>, BackendError> {
        match self {
            Backend::Memory(m) => Ok(m.get(key)),
            Backend::Redis(r) => r.get(key, timeout).await,
        }
    }

    pub(crate) async fn set<T: Cacheable>(
        &self,
        key: &str,
        value: &T,
        meta: &EntryMeta,
        keep_for: Duration,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Memory(m) => {
                m.set(key, value, *meta, keep_for);
                Ok(())
            }
            Backend::Redis(r) => r.set(key, value, meta, keep_for, timeout).await,
        }
    }

    pub(crate) async fn delete(&self, key: &str, timeout: Duration) -> Result<(), BackendError> {
        match self {
            Backend::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Backend::Redis(r) => r.delete(key, timeout).await,
        }
    }

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping(timeout).await,
        }
    }
}
