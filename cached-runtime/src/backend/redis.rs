//! The Redis backend: two auto-reconnecting multiplexed connections
//! (redis-rs `ConnectionManager`), one for reads, write-throughs and
//! invalidations, shared by every caller so concurrent requests pipeline on
//! one socket, and one for lease traffic, so that a stampede's leader does
//! not queue its lease request behind every other caller's read.

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BackendError, Fetched, LEASE_SUFFIX, Lease, LeaseIf, LeaseOutcome, lease_key};

/// Keys per SCAN/SSCAN round trip, and so per UNLINK: small enough that no
/// single command holds the server for long.
const SCAN_BATCH: u64 = 500;

/// The name of the invalidation epoch under a namespace. Text parts of keys
/// escape `~`, so no entry key is it.
const EPOCH: &str = "~epoch";
use crate::Cacheable;
use crate::breaker::{Admit, Breaker};
use crate::codec::{self, EntryMeta};

/// Every command this backend sends, directly or from its Lua scripts: what
/// [`redis_acl_rule`] allows. A command added to the backend must be added
/// here, or the ACL test (which runs the Redis suite as a user with exactly
/// this rule) fails.
const COMMANDS: &[&str] = &[
    // Reads, leases, write-throughs and invalidations.
    "ping",
    "get",
    "getrange",
    "set",
    "unlink",
    "incr",
    "scan",
    "sscan",
    "srem",
    // A tag invalidation's batch (UNLINK and SREM together).
    "multi",
    "exec",
    // The scripts, and what they call.
    "eval",
    "evalsha",
    "script|load",
    "del",
    "exists",
    "pexpire",
    "pttl",
    "sadd",
    "sismember",
    "srandmember",
    // The near tier's tracking connection: RESP3 (`HELLO 3`), then
    // `CLIENT TRACKING ON BCAST PREFIX {namespace}:` and its heartbeat
    // (`PING`, above).
    "hello",
    "client|tracking",
    // When the URL names a database other than 0. (redis-rs's `CLIENT
    // SETINFO` on connecting may be refused: it ignores the answer.)
    "select",
];

/// The Redis ACL rule a cache with `namespace` needs, and no more: its keys
/// only (`~{namespace}:*`), no pub/sub channels, and exactly the commands it
/// sends. Give it to the cache's user, with its password:
///
/// ```text
/// ACL SETUSER placement-cache on >long-random-password <rule>
/// ```
///
/// ```
/// let rule = cached_runtime::redis_acl_rule("placement-v1");
/// assert!(rule.starts_with("resetkeys ~placement-v1:* resetchannels -@all +ping +get"));
/// ```
///
/// The namespace is escaped for the pattern (`*`, `?`, `[`, `]`, `\\`). An
/// empty namespace puts keys at the top level, so the rule allows every key
/// (`~*`): give each application a namespace.
pub fn redis_acl_rule(namespace: &str) -> String {
    let mut rule = String::from("resetkeys ~");
    if !namespace.is_empty() {
        crate::push_escaped(&mut rule, namespace);
        rule.push(':');
    }
    rule.push_str("* resetchannels -@all");
    for command in COMMANDS {
        rule.push_str(" +");
        rule.push_str(command);
    }
    rule
}

pub(crate) struct RedisBackend {
    conns: Arc<Connections>,
    breaker: Arc<Breaker>,
    /// How long a probe may take: making a fresh connection, then a PING.
    probe_timeout: Duration,
    /// The largest encoded value stored (and read: see `fetch`), compressed
    /// if the format compresses it.
    max_value_bytes: usize,
    /// How values are written.
    format: codec::Format,
    /// `{namespace}:~epoch`: bumped by every pattern invalidation (see
    /// [`Lease`]).
    epoch_key: String,
}

/// Tells the breaker how its probe went, or that it failed if dropped first.
struct ProbeReport(Option<Arc<Breaker>>);

impl Drop for ProbeReport {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.probed(false);
        }
    }
}

/// Whether an operation waits on the circuit breaker. Reads and lease
/// requests do: skipping them costs a hit at most, and the caller goes to
/// its loader. Write-throughs, invalidations, and a leaseholder's write or
/// release do not: skipping one would leave an old value behind for when
/// the backend is back, or a lease that others wait on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    Breaker,
    Always,
}

/// The backend's connections, made on first use inside the caller's Tokio
/// runtime (so building a `Cache` needs neither a runtime nor a reachable
/// server), and replaced by the breaker's probe: redis-rs re-makes a
/// connection that fails, but not one that goes silent (a blackholed or
/// stranded socket answers nothing until the kernel gives up, many minutes
/// later), so every probe uses a fresh connection and, when it answers,
/// becomes the connection callers use.
struct Connections {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Reads, write-throughs and invalidations.
    main: ArcSwapOption<ConnectionManager>,
    /// Leases and guarded writes travel on a connection of their own: on
    /// the shared one, a stampede's leader queued its lease request behind
    /// every other caller's read before its load could start.
    control: ArcSwapOption<ConnectionManager>,
}

impl Connections {
    fn fresh(&self) -> Result<ConnectionManager, BackendError> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
            .map_err(BackendError::Redis)
    }

    fn get(
        &self,
        slot: &ArcSwapOption<ConnectionManager>,
    ) -> Result<ConnectionManager, BackendError> {
        if let Some(c) = slot.load().as_deref() {
            return Ok(c.clone());
        }
        let made = Arc::new(self.fresh()?);
        // Two first callers may both make one; the loser's is dropped unused.
        slot.rcu(|current| current.clone().or_else(|| Some(Arc::clone(&made))));
        Ok(slot
            .load()
            .as_deref()
            .cloned()
            .unwrap_or_else(|| (*made).clone()))
    }

    /// `fresh` answered a probe: callers use it from now on, and lease
    /// traffic `control` (made and answering already, so that the first
    /// miss after an outage waits for no connect), or a new one made on
    /// its next use.
    fn replace(&self, fresh: ConnectionManager, control: Option<ConnectionManager>) {
        self.main.store(Some(Arc::new(fresh)));
        self.control.store(control.map(Arc::new));
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.conns.client.get_connection_info();
        f.debug_struct("RedisBackend")
            .field("addr", &info.addr().to_string())
            .field("connected", &self.conns.main.load().is_some())
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl RedisBackend {
    pub(crate) fn new(
        client: redis::Client,
        connect_timeout: Duration,
        breaker: Breaker,
        max_value_bytes: usize,
        format: codec::Format,
        namespace: &str,
    ) -> Self {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // The cache's own timeout bounds everything a caller waits,
            // reconnects included, which redis-rs's response timeout does not;
            // one timer per operation is enough (a second one cost ~18 µs a
            // hit in `seq_hit`).
            .set_response_timeout(None)
            // A refused connection is a definite answer: fail the call at
            // once (the breaker counts it) rather than retry inside it and
            // wait out the op timeout; the probe makes new connections.
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        RedisBackend {
            conns: Arc::new(Connections {
                client,
                config,
                main: ArcSwapOption::empty(),
                control: ArcSwapOption::empty(),
            }),
            breaker: Arc::new(breaker),
            probe_timeout: connect_timeout,
            max_value_bytes,
            format,
            epoch_key: if namespace.is_empty() {
                EPOCH.to_owned()
            } else {
                format!("{namespace}:{EPOCH}")
            },
        }
    }

    pub(crate) fn breaker_open(&self) -> bool {
        !self.breaker.is_closed()
    }

    /// Runs one operation within `timeout`, through the breaker, and tells
    /// the breaker how it went.
    async fn run<T>(
        &self,
        gate: Gate,
        timeout: Duration,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        if gate == Gate::Breaker {
            match self.breaker.admit() {
                Admit::Pass => {}
                Admit::Skip => return Err(BackendError::Skipped),
                Admit::SkipAndProbe => {
                    self.probe(timeout);
                    return Err(BackendError::Skipped);
                }
            }
        }
        let result = run(timeout, fut).await;
        match &result {
            Err(e) if e.is_outage() => self.breaker.failed(),
            // An answer, even an error about one key, means the server is up.
            _ => self.breaker.succeeded(),
        }
        result
    }

    /// Tests the backend with a PING on a fresh connection, from a task of
    /// its own so that no caller waits on it; an answer makes that
    /// connection the one callers use (see [`Connections`]).
    fn probe(&self, timeout: Duration) {
        let breaker = Arc::clone(&self.breaker);
        let (Ok(runtime), Ok(mut fresh)) =
            (tokio::runtime::Handle::try_current(), self.conns.fresh())
        else {
            breaker.probed(false);
            return;
        };
        let conns = Arc::clone(&self.conns);
        let timeout = timeout + self.probe_timeout;
        // Reports a failure if the task is dropped unfinished (its runtime
        // shut down): the breaker must not wait for a probe forever.
        let mut report = ProbeReport(Some(breaker));
        runtime.spawn(async move {
            let pong = run::<String>(timeout, redis::cmd("PING").query_async(&mut fresh)).await;
            if pong.is_ok() {
                // A restarted server has lost its script cache: load what
                // every miss runs now, or the first misses after it each
                // pay a NOSCRIPT and a reload.
                let mut load = redis::pipe();
                for script in [ACQUIRE_LUA.as_str(), SET_IF_LEASED_LUA.as_str()] {
                    load.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
                }
                let _ = run::<()>(timeout, load.query_async(&mut fresh)).await;
                // The lease connection, made now rather than by the first
                // miss (a connect and handshake: a millisecond or more).
                let control = match conns.fresh() {
                    Ok(mut control) => {
                        let pong =
                            run::<String>(timeout, redis::cmd("PING").query_async(&mut control))
                                .await;
                        pong.is_ok().then_some(control)
                    }
                    Err(_) => None,
                };
                conns.replace(fresh, control);
            }
            if let Some(breaker) = report.0.take() {
                breaker.probed(pong.is_ok());
            }
        });
    }

    /// The encoded value, if it is within the size limit.
    fn encode<T: Cacheable>(
        &self,
        value: Option<&T>,
        meta: &EntryMeta,
    ) -> Result<Vec<u8>, BackendError> {
        let bytes = codec::encode_as(value, meta, &self.format).map_err(BackendError::Encode)?;
        if bytes.len() > self.max_value_bytes {
            return Err(BackendError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// The connection for reads, writes and invalidations.
    #[inline]
    fn conn(&self) -> Result<ConnectionManager, BackendError> {
        self.conns.get(&self.conns.main)
    }

    /// The connection for lease traffic.
    fn control(&self) -> Result<ConnectionManager, BackendError> {
        self.conns.get(&self.conns.control)
    }

    /// Reads the entry under `key`. With `tags` (the call's full tag keys),
    /// only while every one of their indexes lists the key: under an
    /// eviction policy (`allkeys-lru`) Redis may evict an index before its
    /// entries, and an entry its tag can no longer reach must not be
    /// served (a tag invalidation would miss it). Such an entry reads as
    /// absent; the call loads and records the tag again.
    pub(crate) async fn fetch(
        &self,
        key: &str,
        tags: &[String],
        timeout: Duration,
    ) -> Result<Fetched, BackendError> {
        use redis::aio::ConnectionLike as _;
        let mut conn = self.conn()?;
        if !tags.is_empty() {
            let mut call = FETCH_TAGGED.key(key);
            for tag in tags {
                call.key(tag);
            }
            call.arg(self.max_value_bytes);
            let read = async {
                match call.invoke_async::<redis::Value>(&mut conn).await? {
                    redis::Value::Nil => Ok(Fetched::Absent),
                    redis::Value::BulkString(bytes) => Ok(self.received(bytes)),
                    redis::Value::Int(_) => Ok(Fetched::WrongKind),
                    other => other.extract_error().map(|_| Fetched::WrongKind),
                }
            };
            return Box::pin(self.run(Gate::Breaker, timeout, read)).await;
        }
        // Sized up front, and the reply taken apart by hand rather than
        // through `query_async`: this is every hit's path. GETRANGE rather
        // than GET: at most one byte over the size limit comes back, so a
        // huge value someone else wrote under the key costs a bounded read.
        let mut cmd = redis::Cmd::with_capacity(4, 24 + key.len());
        cmd.arg("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(self.max_value_bytes);
        // Boxed: the timer inside is cache-line aligned and would make every
        // hit's future large and over-aligned (seen under `concurrent_hit`).
        // The reply is taken apart inside the breaker's watch, so that an
        // error reply (LOADING, MASTERDOWN) counts as the outage it is.
        let read = async {
            match conn.req_packed_command(&cmd).await? {
                redis::Value::Nil => Ok(Fetched::Absent),
                redis::Value::BulkString(bytes) => Ok(self.received(bytes)),
                // An answer about this key, not an outage.
                redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(Fetched::WrongKind),
                other => other.extract_error().map(|_| Fetched::WrongKind),
            }
        };
        Box::pin(self.run(Gate::Breaker, timeout, read)).await
    }

    /// What a bounded read brought back: GETRANGE answers an empty string
    /// for a missing key (no entry is empty), and one byte over the limit
    /// for a larger value.
    fn received(&self, bytes: Vec<u8>) -> Fetched {
        if bytes.is_empty() {
            Fetched::Absent
        } else if bytes.len() > self.max_value_bytes {
            Fetched::TooLarge(self.max_value_bytes)
        } else {
            Fetched::Encoded(bytes)
        }
    }

    /// A write-through, in two steps, so that a write its caller stopped
    /// waiting for can never land over a newer one:
    ///
    /// 1. **Claim**: removes the value and takes the key's lease, whoever
    ///    held it (a load in flight then cannot store what it read before
    ///    the change), for twice the operation timeout (see [`claim_for`]).
    /// 2. **Store** while the claim holds, as a leaseholder stores.
    ///
    /// A claim that lands late (it waited in a socket, a proxy or a frozen
    /// server after its caller gave up, or its process died) only removes
    /// a value and holds the key briefly: its store is never sent, or is
    /// refused, because a later write claimed the key or an invalidation
    /// removed the claim. A single `SET` sent before a newer write could
    /// arrive after it and replace it for a whole TTL. Returns whether the
    /// value was stored: `false` when another change came between the two
    /// steps, which leaves the key empty or newer, never older.
    pub(crate) async fn put<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let bytes = match self.encode(value, meta) {
            Ok(bytes) => bytes,
            Err(e) => {
                // The new value cannot be stored; the old one must not stay.
                self.invalidate(&[key.to_owned()], timeout).await?;
                return Err(e);
            }
        };
        let token = fastrand::u64(1..);
        let mut conn = self.conn()?;
        // Sent whole with EVAL: a claim must land even when its caller
        // stopped waiting (see ACQUIRE_LUA).
        let mut call = redis::cmd("EVAL");
        call.arg(ACQUIRE_LUA.as_str())
            .arg(3 + tags.len())
            .arg(key)
            .arg(lease_key(key))
            .arg(&self.epoch_key);
        for tag in tags {
            call.arg(tag);
        }
        call.arg(token)
            .arg(millis(claim_for(timeout)))
            .arg(CLAIM)
            .arg(millis(keep_for))
            .arg(&[] as &[u8]);
        let (_, epoch): (i64, u64) = self
            .run(Gate::Always, timeout, call.query_async(&mut conn))
            .await?;
        self.store_if_leased(key, bytes, keep_for, Lease { token, epoch }, tags, timeout)
            .await
    }

    /// A plain fill (see [`Backend::fill`](super::Backend::fill)).
    pub(crate) async fn fill<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let bytes = self.encode(value, meta)?;
        let mut conn = self.conn()?;
        let mut call = FILL.key(key);
        call.key(lease_key(key));
        for tag in tags {
            call.key(tag);
        }
        call.arg(bytes).arg(millis(keep_for));
        let stored: i64 = self
            .run(Gate::Always, timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(stored == 1)
    }

    /// Removes the values and their leases, so no load in flight can write
    /// an older value back.
    pub(crate) async fn invalidate(
        &self,
        keys: &[String],
        timeout: Duration,
    ) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("UNLINK");
        for key in keys {
            cmd.arg(key).arg(lease_key(key));
        }
        self.run::<i64>(Gate::Always, timeout, cmd.query_async(&mut conn))
            .await
            .map(drop)
    }

    /// SCAN + UNLINK in batches (never KEYS): each round trip does bounded
    /// work, so a large invalidation never blocks the server. The epoch is
    /// bumped first, so that no load whose lease predates the scan stores
    /// its value, whether or not the scan sees its key.
    pub(crate) async fn invalidate_pattern(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let mut conn = self.conn()?;
        let bump = redis::cmd("INCR").arg(&self.epoch_key).to_owned();
        self.run::<i64>(Gate::Always, timeout, bump.query_async(&mut conn))
            .await?;
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self
                .run(Gate::Always, timeout, scan.query_async(&mut conn))
                .await?;
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                for key in &keys {
                    unlink.arg(key);
                    if !key.ends_with(LEASE_SUFFIX) {
                        unlink.arg(lease_key(key));
                    }
                }
                let n: u64 = self
                    .run(Gate::Always, timeout, unlink.query_async(&mut conn))
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Removes every entry recorded under the tag, in SSCAN batches. A key
    /// is dropped from the tag only once its entry is gone, so a failed or
    /// partial invalidation leaves the rest for the next one.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let mut conn = self.conn()?;
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SSCAN")
                .arg(tag)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self
                .run(Gate::Always, timeout, scan.query_async(&mut conn))
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                pipe.atomic();
                let unlink = pipe.cmd("UNLINK");
                for key in &keys {
                    unlink.arg(key).arg(lease_key(key));
                }
                pipe.cmd("SREM").arg(tag).arg(&keys).ignore();
                let (n,): (u64,) = self
                    .run(Gate::Always, timeout, pipe.query_async(&mut conn))
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        self.run::<String>(
            Gate::Always,
            timeout,
            redis::cmd("PING").query_async(&mut conn),
        )
        .await
        .map(drop)
    }
}

/// Records KEYS[1] under each tag set KEYS[first..], keeping each set at
/// least `ms` (ARGV[ms_arg]) so it outlives its members. Each addition also
/// drops up to two random members whose entry and lease are both gone
/// (expired, evicted), so a set stays within about twice its live members
/// however many keys pass through it.
const TAG_LUA: &str = r"
local function tag(first, ms)
  for i = first, #KEYS do
    redis.call('SADD', KEYS[i], KEYS[1])
    if redis.call('PTTL', KEYS[i]) < tonumber(ms) then redis.call('PEXPIRE', KEYS[i], ms) end
    for _, m in ipairs(redis.call('SRANDMEMBER', KEYS[i], 2)) do
      if m ~= KEYS[1] and redis.call('EXISTS', m, m .. ':~lease') == 0 then
        redis.call('SREM', KEYS[i], m)
      end
    end
  end
end
";

/// KEYS: value, lease, epoch, tags... ARGV: token, lease ms, condition (1:
/// only if absent, 0: any, 2: only if the entry's identity, bytes 11-38 of
/// its envelope, is still ARGV[5], 3: a write-through's claim, which
/// removes the value and takes the lease from whoever holds it), tag ms,
/// identity. Returns {1, epoch} acquired, {0, 0} held by another, {2, 0} a
/// value is present, {3, 0} the entry changed.
/// Tags are recorded when the load (or write) starts, so a tag
/// invalidation while it runs finds the key and destroys the lease.
///
/// Sent whole with EVAL for a claim, not EVALSHA: a claim must land even
/// when its caller stopped waiting (a frozen server runs it when it
/// wakes), and EVALSHA on a server that lost its script cache (a restart)
/// answers NOSCRIPT, which only a caller still waiting would retry.
static ACQUIRE_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{TAG_LUA}
        if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {{2, 0}} end
        if ARGV[3] == '2' then
          local v = redis.call('GET', KEYS[1])
          if not v or string.sub(v, 11, 38) ~= ARGV[5] then return {{3, 0}} end
        end
        if ARGV[3] == '3' then
          redis.call('UNLINK', KEYS[1])
          redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        elseif not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
          return {{0, 0}}
        end
        tag(4, ARGV[4])
        return {{1, tonumber(redis.call('GET', KEYS[3]) or '0')}}"
    )
});

/// [`ACQUIRE_LUA`], by its digest (EVALSHA, loaded again after NOSCRIPT).
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&ACQUIRE_LUA));

/// [`ACQUIRE_LUA`]'s condition for a write-through's claim.
const CLAIM: &str = "3";

/// KEYS: value, lease, epoch, tags... ARGV: token, envelope, keep ms, epoch.
/// Stores only while the token holds the lease and no pattern invalidation
/// has bumped the epoch since it was taken, then ends the lease.
static SET_IF_LEASED_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{TAG_LUA}
        if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
        if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[4] then
          redis.call('DEL', KEYS[2])
          return 0
        end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        redis.call('DEL', KEYS[2])
        tag(4, ARGV[3])
        return 1"
    )
});

/// [`SET_IF_LEASED_LUA`], by its digest.
static SET_IF_LEASED: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&SET_IF_LEASED_LUA));

/// KEYS: value, tags... The value while every tag index lists it, else
/// nil; 0 if the key holds another kind of value.
static FETCH_TAGGED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local v = redis.pcall('GETRANGE', KEYS[1], 0, ARGV[1])
          if type(v) == 'table' and v.err then return 0 end
          if v == '' then return false end
          for i = 2, #KEYS do
            if redis.call('SISMEMBER', KEYS[i], KEYS[1]) == 0 then return false end
          end
          return v",
    )
});

/// KEYS: value, lease, tags... ARGV: envelope, keep ms. A plain fill:
/// stores unless a lease is held (a load or a write-through in flight).
static FILL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "{TAG_LUA}
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        tag(3, ARGV[2])
        return 1"
    ))
});

/// KEYS: value, lease. ARGV: token. Removes the value and ends the lease,
/// only while the token holds it (a load whose value cannot be stored).
static DROP_IF_LEASED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
          redis.call('DEL', KEYS[1], KEYS[2])
          return 1",
    )
});

/// KEYS: lease. ARGV: token. Compare-and-delete: only the holder ends it.
///
/// Sent whole with EVAL, like a write-through's claim: a release often runs when no one
/// waits for its answer (a guard dropped, a lease request that timed out),
/// and EVALSHA on a server that lost its script cache answers NOSCRIPT,
/// which only a caller still waiting would retry.
const RELEASE_LUA: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
          return 0";

/// How long a write-through's claim holds the key: twice its operation
/// timeout (the claim's reply, then the store), within 20 ms and 1 s. Safety
/// does not depend on it (a store after the claim expired is refused, and
/// leaves the key empty); a claim whose store never comes (its process died)
/// holds other processes' misses this long at most.
fn claim_for(op_timeout: Duration) -> Duration {
    op_timeout
        .saturating_mul(2)
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

fn millis(d: Duration) -> u64 {
    crate::clock::duration_ms(d.min(crate::clock::LONGEST)).max(1)
}

impl RedisBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn acquire_lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        cond: LeaseIf,
        tags: &[String],
        tag_for: Duration,
        timeout: Duration,
    ) -> Result<LeaseOutcome, BackendError> {
        let mut conn = self.control()?;
        let identity = match &cond {
            LeaseIf::Unchanged(meta) => codec::identity(meta),
            _ => [0; codec::IDENTITY_LEN],
        };
        let mut call = ACQUIRE.key(key);
        call.key(lease_key(key)).key(&self.epoch_key);
        for tag in tags {
            call.key(tag);
        }
        let (mode, seen): (&str, &[u8]) = match &cond {
            LeaseIf::Absent => ("1", &[]),
            LeaseIf::Any => ("0", &[]),
            LeaseIf::Unchanged(_) => ("2", &identity),
        };
        call.arg(token)
            .arg(millis(ttl))
            .arg(mode)
            .arg(millis(tag_for))
            .arg(seen);
        let (outcome, epoch): (i64, u64) = self
            .run(Gate::Breaker, timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(match outcome {
            1 => LeaseOutcome::Acquired(epoch),
            2 => LeaseOutcome::ValuePresent,
            3 => LeaseOutcome::Changed,
            _ => LeaseOutcome::Held,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn set_if_leased<T: Cacheable>(
        &self,
        key: &str,
        value: Option<&T>,
        meta: &EntryMeta,
        keep_for: Duration,
        lease: Lease,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let bytes = match self.encode(value, meta) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Not stored: the value there is older than this load, so it
                // goes too (if the lease still holds), and the lease ends so
                // that others load at once.
                let mut conn = self.control()?;
                let mut call = DROP_IF_LEASED.key(key);
                call.key(lease_key(key)).arg(lease.token);
                if let Err(dropped) = self
                    .run::<i64>(Gate::Always, timeout, call.invoke_async(&mut conn))
                    .await
                {
                    tracing::debug!(cache_key = %key, error = %dropped, "could not drop an entry after an oversize load; it expires on its own");
                }
                return Err(e);
            }
        };
        self.store_if_leased(key, bytes, keep_for, lease, tags, timeout)
            .await
    }

    /// Stores `bytes` while `lease` holds, then ends it; whether it did.
    async fn store_if_leased(
        &self,
        key: &str,
        bytes: Vec<u8>,
        keep_for: Duration,
        lease: Lease,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let mut conn = self.control()?;
        let mut call = SET_IF_LEASED.key(key);
        call.key(lease_key(key)).key(&self.epoch_key);
        for tag in tags {
            call.key(tag);
        }
        call.arg(lease.token)
            .arg(bytes)
            .arg(millis(keep_for))
            .arg(lease.epoch);
        let stored: i64 = self
            .run(Gate::Always, timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(stored == 1)
    }

    pub(crate) async fn release_lease(
        &self,
        key: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let mut conn = self.control()?;
        let mut call = redis::cmd("EVAL");
        call.arg(RELEASE_LUA).arg(1).arg(lease_key(key)).arg(token);
        self.run::<i64>(Gate::Always, timeout, call.query_async(&mut conn))
            .await
            .map(drop)
    }
}

/// KEYS: lease. ARGV: token. [`RELEASE_LUA`], by its digest, for a batch's
/// pipeline (whose caller waits for the answer, and sends it again after a
/// NOSCRIPT).
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_LUA));

/// A script call by digest with its keys, as one command of a pipeline;
/// its arguments follow.
fn evalsha(script: &redis::Script, keys: &[&[u8]]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    cmd
}

/// Sends `cmds` as one pipeline, one reply per command (an error reply in
/// its place). Script calls that found their script missing (a restarted
/// server lost its script cache) are sent again, once, after loading
/// `scripts`: the others ran, and must not run twice.
async fn pipeline(
    conn: &mut ConnectionManager,
    cmds: &[redis::Cmd],
    scripts: &[&redis::Script],
) -> redis::RedisResult<Vec<redis::Value>> {
    async fn send(
        conn: &mut ConnectionManager,
        cmds: &[&redis::Cmd],
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command((*cmd).clone());
        }
        let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        if replies.len() != cmds.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline's replies do not match its commands",
            )));
        }
        Ok(replies)
    }
    let all: Vec<&redis::Cmd> = cmds.iter().collect();
    let mut replies = send(conn, &all).await?;
    let missing: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(
            |(_, reply)| matches!(reply, redis::Value::ServerError(e) if e.code() == "NOSCRIPT"),
        )
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(replies);
    }
    for script in scripts {
        script.prepare_invoke().load_async(conn).await?;
    }
    let again: Vec<&redis::Cmd> = missing.iter().map(|&i| &cmds[i]).collect();
    for (i, reply) in missing.into_iter().zip(send(conn, &again).await?) {
        replies[i] = reply;
    }
    Ok(replies)
}

impl RedisBackend {
    /// Reads every key in one pipeline of bounded reads (GETRANGE, as
    /// [`RedisBackend::fetch`] reads one): one answer per key.
    pub(crate) async fn fetch_many(
        &self,
        keys: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Fetched>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in keys {
            pipe.cmd("GETRANGE")
                .arg(*key)
                .arg(0)
                .arg(self.max_value_bytes);
        }
        let read = async {
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            if replies.len() != keys.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a pipeline's replies do not match its commands",
                )));
            }
            replies
                .into_iter()
                .map(|reply| match reply {
                    redis::Value::Nil => Ok(Fetched::Absent),
                    redis::Value::BulkString(bytes) => Ok(self.received(bytes)),
                    redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => {
                        Ok(Fetched::WrongKind)
                    }
                    // Any other error reply (LOADING, MASTERDOWN) fails the
                    // whole read, and counts as the outage it is.
                    other => other.extract_error().map(|_| Fetched::WrongKind),
                })
                .collect()
        };
        Box::pin(self.run(Gate::Breaker, timeout, read)).await
    }

    /// [`RedisBackend::acquire_lease`] for many keys, in one pipeline.
    pub(crate) async fn acquire_leases(
        &self,
        asks: &[(&str, LeaseIf)],
        token: u64,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Vec<LeaseOutcome>, BackendError> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.control()?;
        let (ttl, tag_ms) = (millis(ttl), 1u64);
        let cmds: Vec<redis::Cmd> = asks
            .iter()
            .map(|(key, cond)| {
                let identity = match cond {
                    LeaseIf::Unchanged(meta) => codec::identity(meta),
                    _ => [0; codec::IDENTITY_LEN],
                };
                let (mode, seen): (&str, &[u8]) = match cond {
                    LeaseIf::Absent => ("1", &[]),
                    LeaseIf::Any => ("0", &[]),
                    LeaseIf::Unchanged(_) => ("2", &identity),
                };
                let lease = lease_key(key);
                let mut cmd = evalsha(
                    &ACQUIRE,
                    &[key.as_bytes(), lease.as_bytes(), self.epoch_key.as_bytes()],
                );
                cmd.arg(token).arg(ttl).arg(mode).arg(tag_ms).arg(seen);
                cmd
            })
            .collect();
        let ask = async {
            let replies = pipeline(&mut conn, &cmds, &[&ACQUIRE]).await?;
            replies
                .into_iter()
                .map(|reply| {
                    let (outcome, epoch): (i64, u64) =
                        redis::from_redis_value(reply.extract_error()?)?;
                    Ok(match outcome {
                        1 => LeaseOutcome::Acquired(epoch),
                        2 => LeaseOutcome::ValuePresent,
                        3 => LeaseOutcome::Changed,
                        _ => LeaseOutcome::Held,
                    })
                })
                .collect::<redis::RedisResult<Vec<_>>>()
        };
        self.run(Gate::Breaker, timeout, ask).await
    }

    /// [`RedisBackend::set_if_leased`] and [`RedisBackend::release_lease`]
    /// for many keys, in one pipeline.
    pub(crate) async fn finish_leases<T: Cacheable>(
        &self,
        items: &[super::LeaseFinish<'_, T>],
        timeout: Duration,
    ) -> Result<Vec<Result<bool, BackendError>>, BackendError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.control()?;
        let mut unstorable: Vec<Option<BackendError>> = Vec::with_capacity(items.len());
        let cmds: Vec<redis::Cmd> = items
            .iter()
            .map(|item| {
                let lease = lease_key(item.key);
                let key = item.key.as_bytes();
                let token = item.lease.token;
                let Some((value, meta, keep_for)) = &item.write else {
                    unstorable.push(None);
                    let mut cmd = evalsha(&RELEASE, &[lease.as_bytes()]);
                    cmd.arg(token);
                    return cmd;
                };
                match self.encode(*value, meta) {
                    Ok(bytes) => {
                        unstorable.push(None);
                        let mut cmd = evalsha(
                            &SET_IF_LEASED,
                            &[key, lease.as_bytes(), self.epoch_key.as_bytes()],
                        );
                        cmd.arg(token)
                            .arg(bytes)
                            .arg(millis(*keep_for))
                            .arg(item.lease.epoch);
                        cmd
                    }
                    // Not stored: the value there is older than this load,
                    // so it goes too (while the lease holds), and the lease
                    // ends so that others load at once.
                    Err(e) => {
                        unstorable.push(Some(e));
                        let mut cmd = evalsha(&DROP_IF_LEASED, &[key, lease.as_bytes()]);
                        cmd.arg(token);
                        cmd
                    }
                }
            })
            .collect();
        let scripts: [&redis::Script; 3] = [&SET_IF_LEASED, &DROP_IF_LEASED, &RELEASE];
        let replies = self
            .run(Gate::Always, timeout, pipeline(&mut conn, &cmds, &scripts))
            .await?;
        Ok(replies
            .into_iter()
            .zip(unstorable)
            .zip(items)
            .map(|((reply, unstorable), item)| {
                let done: i64 = reply
                    .extract_error()
                    .and_then(|v| Ok(redis::from_redis_value(v)?))
                    .map_err(BackendError::Redis)?;
                match unstorable {
                    Some(e) => Err(e),
                    // A release answers 0 when the lease was already gone:
                    // released all the same.
                    None if item.write.is_none() => Ok(true),
                    None => Ok(done == 1),
                }
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_claim_holds_twice_the_op_timeout_within_its_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(super::claim_for(ms(50)), ms(100));
        assert_eq!(super::claim_for(ms(1)), ms(20));
        assert_eq!(
            super::claim_for(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(super::claim_for(Duration::MAX), Duration::from_secs(1));
    }
}
