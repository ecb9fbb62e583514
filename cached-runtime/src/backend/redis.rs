//! The Redis backend: one auto-reconnecting multiplexed connection
//! (redis-rs `ConnectionManager`) shared by every caller, so concurrent
//! requests pipeline on one socket.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BackendError, LeaseOutcome, Lookup, lease_key};
use crate::Cacheable;
use crate::codec::{self, EntryMeta};

pub(crate) struct RedisBackend {
    client: redis::Client,
    config: ConnectionManagerConfig,
    // Made on first use, inside the caller's Tokio runtime, so building a
    // `Cache` needs neither a runtime nor a reachable server.
    conn: OnceLock<ConnectionManager>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisBackend")
            .field("addr", &info.addr().to_string())
            .field("connected", &self.conn.get().is_some())
            .finish()
    }
}

impl RedisBackend {
    pub(crate) fn new(client: redis::Client, connect_timeout: Duration) -> Self {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // Reconnect attempts are cheap and bounded; the cache's own timeout
            // bounds what a caller waits, so the manager needs no response
            // timeout of its own.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        RedisBackend {
            client,
            config,
            conn: OnceLock::new(),
        }
    }

    fn conn(&self) -> Result<ConnectionManager, BackendError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let made =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                .map_err(BackendError::Redis)?;
        // Two first callers may both make one; the loser's is dropped unused.
        Ok(self.conn.get_or_init(|| made).clone())
    }

    pub(crate) async fn get<T: Cacheable>(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<Lookup<T>, BackendError> {
        let mut conn = self.conn()?;
        let cmd = redis::cmd("GET").arg(key).to_owned();
        let bytes: Option<Vec<u8>> = run(timeout, cmd.query_async(&mut conn)).await?;
        Ok(match bytes {
            None => Lookup::Absent,
            Some(bytes) => match codec::decode::<T>(&bytes) {
                Ok((value, meta)) => Lookup::Found(value, meta),
                Err(e) => Lookup::Unreadable(e),
            },
        })
    }

    pub(crate) async fn set<T: Cacheable>(
        &self,
        key: &str,
        value: &T,
        meta: &EntryMeta,
        keep_for: Duration,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let bytes = codec::encode(value, meta).map_err(BackendError::Encode)?;
        let mut conn = self.conn()?;
        let px = u64::try_from(keep_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("PX")
            .arg(px)
            .to_owned();
        run::<()>(timeout, cmd.query_async(&mut conn)).await
    }

    /// Removes the value and its lease, so a load in flight cannot write an
    /// older value back.
    pub(crate) async fn delete(&self, key: &str, timeout: Duration) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        let cmd = redis::cmd("UNLINK").arg(key).arg(lease_key(key)).to_owned();
        run::<i64>(timeout, cmd.query_async(&mut conn))
            .await
            .map(drop)
    }

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        run::<String>(timeout, redis::cmd("PING").query_async(&mut conn))
            .await
            .map(drop)
    }
}

/// KEYS: value, lease. ARGV: token, lease ms, only-if-absent (1/0).
/// Returns 1 acquired, 0 held by another, 2 a value is present.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
          if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
          return 0",
    )
});

/// KEYS: value, lease. ARGV: token, envelope, keep ms.
/// Stores only while the token holds the lease, then ends the lease.
static SET_IF_LEASED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[2]) == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
            redis.call('DEL', KEYS[2])
            return 1
          end
          return 0",
    )
});

/// KEYS: lease. ARGV: token. Compare-and-delete: only the holder ends it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0",
    )
});

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisBackend {
    pub(crate) async fn acquire_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        only_if_absent: bool,
        timeout: Duration,
    ) -> Result<LeaseOutcome, BackendError> {
        let mut conn = self.conn()?;
        let mut call = ACQUIRE.key(key);
        call.key(lease_key(key))
            .arg(token)
            .arg(millis(ttl))
            .arg(if only_if_absent { "1" } else { "0" });
        let outcome: i64 = run(timeout, call.invoke_async(&mut conn)).await?;
        Ok(match outcome {
            1 => LeaseOutcome::Acquired,
            2 => LeaseOutcome::ValuePresent,
            _ => LeaseOutcome::Held,
        })
    }

    pub(crate) async fn set_if_leased<T: Cacheable>(
        &self,
        key: &str,
        value: &T,
        meta: &EntryMeta,
        keep_for: Duration,
        token: u64,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let bytes = codec::encode(value, meta).map_err(BackendError::Encode)?;
        let mut conn = self.conn()?;
        let mut call = SET_IF_LEASED.key(key);
        call.key(lease_key(key))
            .arg(token)
            .arg(bytes)
            .arg(millis(keep_for));
        let stored: i64 = run(timeout, call.invoke_async(&mut conn)).await?;
        Ok(stored == 1)
    }

    pub(crate) async fn release_lease(
        &self,
        key: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        let mut call = RELEASE.key(lease_key(key));
        call.arg(token);
        run::<i64>(timeout, call.invoke_async(&mut conn))
            .await
            .map(drop)
    }
}

async fn run<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BackendError::Redis(e)),
        Err(_) => Err(BackendError::Timeout),
    }
}
