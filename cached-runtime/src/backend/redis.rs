//! The Redis backend: two auto-reconnecting multiplexed connections
//! (redis-rs `ConnectionManager`), one for reads, write-throughs and
//! invalidations, shared by every caller so concurrent requests pipeline on
//! one socket, and one for lease traffic, so that a stampede's leader does
//! not queue its lease request behind every other caller's read. On a Redis
//! Cluster the two are redis-rs cluster connections (which keep one
//! multiplexed connection per node and follow `MOVED` and `ASK`), and keys
//! are laid out for slots as [`cluster`](super::cluster) describes.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::cluster;
use super::{BackendError, Fetched, LEASE_SUFFIX, Lease, LeaseIf, LeaseOutcome, lease_key};

/// Keys per SCAN/SSCAN round trip, and so per UNLINK: small enough that no
/// single command holds the server for long.
const SCAN_BATCH: u64 = 500;

/// What a scan of a cluster node removes with each key it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A value: with its lease and tag versions.
    Value,
    /// A lease: with the tag versions its load read.
    Lease,
}

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
    // Read scripts, which a write pause does not hold (`invoke_read`).
    "evalsha_ro",
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
    // On a Redis Cluster: the slot map (redis-rs's, and a pattern
    // invalidation's list of primaries), and what each primary says of
    // itself after a pattern invalidation's pass (a slot it imports).
    "cluster|slots",
    "cluster|nodes",
    // While a slot migrates: a key that has moved is read, and unlinked,
    // on the node that imports it (redis-rs's `ASK` redirections, and an
    // invalidation's `unlink_here`).
    "asking",
];

/// The Redis ACL rule a cache with `namespace` needs, and no more: its keys
/// only (`~{namespace}:*`, and `~{{namespace}:*` for a Redis Cluster's
/// layout), no pub/sub channels, and exactly the commands it sends. Give it to the cache's user, with its password:
///
/// ```text
/// ACL SETUSER placement-cache on >long-random-password <rule>
/// ```
///
/// ```
/// let rule = cached_runtime::redis_acl_rule("placement-v1");
/// assert!(rule.starts_with(
///     "resetkeys ~placement-v1:* ~{placement-v1:* resetchannels -@all +ping +get"
/// ));
/// ```
///
/// The namespace is escaped for the pattern (`*`, `?`, `[`, `]`, `\\`). An
/// empty namespace puts keys at the top level, so the rule allows every key
/// (`~*`): give each application a namespace.
pub fn redis_acl_rule(namespace: &str) -> String {
    let mut rule = String::from("resetkeys ~");
    if !namespace.is_empty() {
        crate::push_escaped(&mut rule, namespace);
        rule.push_str(":* ~{");
        // On a cluster, entry keys are `{namespace:...}` (see `cluster`).
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
    /// `max_value_bytes` as the last argument of a bounded read (`GETRANGE
    /// key 0 end`), formatted once: formatting it on every hit cost about
    /// as much as decoding the envelope's header.
    read_end: String,
    /// How values are written.
    format: codec::Format,
    /// Where keys live.
    layout: Layout,
}

/// Where the backend's keys live.
enum Layout {
    /// One server: keys as the engine names them, tag indexes as sets, and
    /// `{namespace}:~epoch`, bumped by every pattern invalidation (see
    /// [`Lease`]).
    Single {
        epoch_key: String,
        namespace: String,
    },
    /// A Redis Cluster: keys laid out for slots (see
    /// [`cluster`](super::cluster)).
    Cluster { namespace: String },
}

/// The keys one entry's operations touch, as they are named in Redis.
struct EntryKeys<'a> {
    value: Cow<'a, str>,
    lease: String,
    epoch: Cow<'a, str>,
}

impl Layout {
    fn is_cluster(&self) -> bool {
        matches!(self, Layout::Cluster { .. })
    }

    fn entry<'a>(&'a self, key: &'a str) -> EntryKeys<'a> {
        match self {
            Layout::Single { epoch_key, .. } => EntryKeys {
                value: Cow::Borrowed(key),
                lease: lease_key(key),
                epoch: Cow::Borrowed(epoch_key),
            },
            Layout::Cluster { namespace } => {
                let value = cluster::value_key(key);
                let lease = cluster::beside(&value, cluster::LEASE);
                let epoch = cluster::epoch_key(namespace, cluster::slot(value.as_bytes()));
                EntryKeys {
                    value: Cow::Owned(value),
                    lease,
                    epoch: Cow::Owned(epoch),
                }
            }
        }
    }

    /// Where the value of `key` lives.
    fn value<'a>(&self, key: &'a str) -> Cow<'a, str> {
        match self {
            Layout::Single { .. } => Cow::Borrowed(key),
            Layout::Cluster { .. } => Cow::Owned(cluster::value_key(key)),
        }
    }
}

/// Where the backend's connections come from.
enum Source {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        config: redis::cluster::ClusterConfig,
    },
}

/// A connection to one server or to a cluster. Both are handles to a
/// multiplexed connection, cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// A PING. On a cluster, to one primary chosen at random: a PING to
    /// every node would fail for as long as a dead node is still listed.
    async fn ping(&mut self) -> redis::RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            Conn::Single(c) => ping.query_async::<String>(c).await.map(drop),
            Conn::Cluster(c) => c
                .route_command(
                    ping,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await
                .map(drop),
        }
    }
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
    source: Source,
    /// Reads, write-throughs and invalidations.
    main: ArcSwapOption<Conn>,
    /// Leases and guarded writes travel on a connection of their own: on
    /// the shared one, a stampede's leader queued its lease request behind
    /// every other caller's read before its load could start.
    control: ArcSwapOption<Conn>,
    /// Whether the read scripts run as `EVALSHA_RO` (see
    /// [`RedisBackend::invoke_read`]); cleared, for good, by a refusal of
    /// `EVALSHA_RO` that `EVALSHA` does not meet (a server before Redis 7,
    /// a fork without it, an ACL rule that lacks it).
    read_only_scripts: AtomicBool,
    /// Whether an ACL rule without `+cluster|nodes` has been warned of
    /// (see [`RedisBackend::own_views`]).
    warned_nodes_refused: AtomicBool,
}

impl Connections {
    fn fresh(&self) -> Result<Conn, BackendError> {
        match &self.source {
            Source::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(Conn::Single)
                    .map_err(BackendError::Redis)
            }
            Source::Cluster { client, config } => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(config.clone()),
            )),
        }
    }

    fn get(&self, slot: &ArcSwapOption<Conn>) -> Result<Conn, BackendError> {
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
    fn replace(&self, fresh: Conn, control: Option<Conn>) {
        self.main.store(Some(Arc::new(fresh)));
        self.control.store(control.map(Arc::new));
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RedisBackend");
        match &self.conns.source {
            Source::Single { client, .. } => {
                d.field("addr", &client.get_connection_info().addr().to_string())
            }
            Source::Cluster { .. } => d.field("addr", &"cluster"),
        };
        d.field("connected", &self.conns.main.load().is_some())
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// Where a [`RedisBackend`] connects: one server, or a cluster given by its
/// seed nodes.
// Made once per cache, and moved into the backend at once: its size does
// not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl RedisBackend {
    pub(crate) fn new(
        target: Target,
        connect_timeout: Duration,
        breaker: Breaker,
        max_value_bytes: usize,
        format: codec::Format,
        namespace: &str,
    ) -> Self {
        let (source, layout) = match target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    // The cache's own timeout bounds everything a caller
                    // waits, reconnects included, which redis-rs's response
                    // timeout does not; one timer per operation is enough (a
                    // second one cost ~18 µs a hit in `seq_hit`).
                    .set_response_timeout(None)
                    // A refused connection is a definite answer: fail the
                    // call at once (the breaker counts it) rather than retry
                    // inside it and wait out the op timeout; the probe makes
                    // new connections.
                    .set_number_of_retries(0)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                let epoch_key = if namespace.is_empty() {
                    EPOCH.to_owned()
                } else {
                    format!("{namespace}:{EPOCH}")
                };
                (
                    Source::Single { client, config },
                    Layout::Single {
                        epoch_key,
                        namespace: namespace.to_owned(),
                    },
                )
            }
            Target::Cluster(client) => {
                // The cluster connection follows redirections and refreshes
                // its slot map itself; the cache's own timeout bounds what a
                // caller waits for that.
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_response_timeout(Duration::from_secs(3600));
                (
                    Source::Cluster { client, config },
                    Layout::Cluster {
                        namespace: namespace.to_owned(),
                    },
                )
            }
        };
        RedisBackend {
            conns: Arc::new(Connections {
                source,
                main: ArcSwapOption::empty(),
                control: ArcSwapOption::empty(),
                read_only_scripts: AtomicBool::new(true),
                warned_nodes_refused: AtomicBool::new(false),
            }),
            breaker: Arc::new(breaker),
            probe_timeout: connect_timeout,
            max_value_bytes,
            read_end: max_value_bytes.to_string(),
            format,
            layout,
        }
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.layout.is_cluster()
    }

    pub(crate) fn breaker_open(&self) -> bool {
        !self.breaker.is_closed()
    }

    /// Starts the breaker's probe if it is open and its backoff has passed,
    /// as a read would. For the task retrying changes while no read of this
    /// process asks the breaker (a pending tag or pattern keeps them all
    /// from the backend): the probe is what replaces connections gone
    /// silent, which the retries alone would wait on for ever.
    pub(crate) fn let_probe(&self, timeout: Duration) {
        if matches!(
            self.breaker.admit(|| self.probe_bound(timeout)),
            Admit::SkipAndProbe
        ) {
            self.probe(timeout);
        }
    }

    /// Whether the breaker lets an operation through: `Skipped` if not,
    /// after starting its probe when one is due.
    fn admitted(&self, timeout: Duration) -> Result<(), BackendError> {
        match self.breaker.admit(|| self.probe_bound(timeout)) {
            Admit::Pass => Ok(()),
            Admit::Skip => Err(BackendError::Skipped),
            Admit::SkipAndProbe => {
                self.probe(timeout);
                Err(BackendError::Skipped)
            }
        }
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
            self.admitted(timeout)?;
        }
        let result = run(timeout, fut).await;
        match &result {
            Err(e) if e.is_outage() => self.breaker.failed(),
            // An answer, even an error about one key, means the server is up.
            _ => self.breaker.succeeded(),
        }
        result
    }

    /// Runs `ops` (one per key of a cluster, so on as many nodes) at once,
    /// each bounded by `timeout` and answering for its key alone, behind
    /// one admission by the breaker and reported to it once, as one
    /// operation: a failure only if none of them answered. One node down
    /// costs its keys, not the breaker's count of failures in a row one per
    /// key (a batch would open it for every node at once).
    async fn run_each<T>(
        &self,
        timeout: Duration,
        ops: impl IntoIterator<Item = impl Future<Output = redis::RedisResult<T>>>,
    ) -> Result<Vec<Result<T, BackendError>>, BackendError> {
        self.admitted(timeout)?;
        let results =
            futures_util::future::join_all(ops.into_iter().map(|op| run(timeout, op))).await;
        if !results.is_empty()
            && results
                .iter()
                .all(|r| r.as_ref().is_err_and(BackendError::is_outage))
        {
            self.breaker.failed();
        } else {
            self.breaker.succeeded();
        }
        Ok(results)
    }

    /// Tests the backend with a PING on a fresh connection, from a task of
    /// its own so that no caller waits on it; an answer makes that
    /// connection the one callers use (see [`Connections`]).
    /// How long a probe started with `timeout` may take to report: its
    /// three steps (a `PING` on a new connection, the scripts loaded, the
    /// lease connection's `PING`), each with its connect and its timeout.
    fn probe_bound(&self, timeout: Duration) -> Duration {
        timeout.saturating_add(self.probe_timeout).saturating_mul(3)
    }

    fn probe(&self, timeout: Duration) {
        let breaker = Arc::clone(&self.breaker);
        let (Ok(runtime), Ok(mut fresh)) =
            (tokio::runtime::Handle::try_current(), self.conns.fresh())
        else {
            breaker.probed(false);
            return;
        };
        let conns = Arc::clone(&self.conns);
        let timeout = timeout.saturating_add(self.probe_timeout);
        // Reports a failure if the task is dropped unfinished (its runtime
        // shut down): the breaker must not wait for a probe forever.
        let mut report = ProbeReport(Some(breaker));
        runtime.spawn(async move {
            let pong = run(timeout, fresh.ping()).await;
            if pong.is_ok() {
                // A restarted server has lost its script cache: load what
                // every miss runs now, or the first misses after it each
                // pay a NOSCRIPT and a reload. (A cluster's scripts are
                // loaded on every primary by the first NOSCRIPT: a
                // pipeline goes to one node.)
                if let Conn::Single(single) = &mut fresh {
                    let mut load = redis::pipe();
                    for script in [ACQUIRE_LUA.as_str(), SET_IF_LEASED_LUA.as_str()] {
                        load.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
                    }
                    let _ = run::<()>(timeout, load.query_async(single)).await;
                }
                // The lease connection, made now rather than by the first
                // miss (a connect and handshake: a millisecond or more).
                let control = match conns.fresh() {
                    Ok(mut control) => {
                        let pong = run(timeout, control.ping()).await;
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
    fn conn(&self) -> Result<Conn, BackendError> {
        self.conns.get(&self.conns.main)
    }

    /// The connection for lease traffic.
    fn control(&self) -> Result<Conn, BackendError> {
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
        if self.layout.is_cluster() {
            let read = self.fetch_cluster(conn, key, tags);
            return Box::pin(self.run(Gate::Breaker, timeout, read)).await;
        }
        if !tags.is_empty() {
            let keys: Vec<&str> = std::iter::once(key)
                .chain(tags.iter().map(String::as_str))
                .collect();
            let read = async {
                match self
                    .invoke_read::<redis::Value>(
                        &mut conn,
                        &FETCH_TAGGED,
                        &keys,
                        &[self.read_end.as_str()],
                    )
                    .await?
                {
                    redis::Value::Nil => Ok(Fetched::Absent),
                    redis::Value::BulkString(bytes) => Ok(self.received(bytes)),
                    redis::Value::Int(_) => Ok(Fetched::WrongKind),
                    other => other.extract_error().map(|_| Fetched::WrongKind),
                }
            };
            return Box::pin(self.run(Gate::Breaker, timeout, read)).await;
        }
        let key = self.layout.value(key);
        let key = key.as_ref();
        // Sized up front, and the reply taken apart by hand rather than
        // through `query_async`: this is every hit's path. GETRANGE rather
        // than GET: at most one byte over the size limit comes back, so a
        // huge value someone else wrote under the key costs a bounded read.
        let mut cmd = redis::Cmd::with_capacity(4, 24 + key.len());
        cmd.arg("GETRANGE")
            .arg(key)
            .arg("0")
            .arg(self.read_end.as_str());
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

    /// A read on a cluster. An entry stored with tags carries a mark in its
    /// envelope (see [`cluster`](super::cluster)), and the versions it was
    /// stored with beside it; it is served only if each of the call's tags
    /// is among them and each of them is still current, so a tag
    /// invalidation outdates an entry for every reader, tagged or not. An
    /// untagged call sends one `GETRANGE`, as on one server, and reads the
    /// versions only when the entry is marked; a tagged call reads the
    /// entry and its stored versions in one round trip, in parallel with
    /// its tags' current versions. An entry the call's tags do not name
    /// costs one more round trip, for their versions.
    async fn fetch_cluster(
        &self,
        mut conn: Conn,
        key: &str,
        tags: &[String],
    ) -> redis::RedisResult<Fetched> {
        let value = cluster::value_key(key);
        if tags.is_empty() {
            // Every untagged hit's path: one command (sized up front, as
            // on one server), nothing else made unless the entry is marked.
            // Not `query_async`, which turns an error reply into an error
            // of the read: `WRONGTYPE` is an answer (a value of another
            // kind, overwritten by the load), as on one server.
            use redis::aio::ConnectionLike as _;
            let mut cmd = redis::Cmd::with_capacity(4, 24 + value.len());
            cmd.arg("GETRANGE")
                .arg(&value)
                .arg("0")
                .arg(self.read_end.as_str());
            let entry = conn.req_packed_command(&cmd).await?;
            let mut bytes = match entry {
                redis::Value::BulkString(bytes) => bytes,
                other => return Self::not_bytes(other),
            };
            if !codec::take_tagged_mark(&mut bytes) {
                return Ok(self.received(bytes));
            }
            // Boxed, as the tagged path below: the untagged hit's future
            // stays small (it is boxed and copied on every call).
            return Box::pin(self.fetch_marked(conn, &value)).await;
        }
        Box::pin(self.fetch_tagged(conn, &value, tags)).await
    }

    /// An untagged read that found a marked entry: reads it again, the
    /// value with the versions beside it in one transaction, so that both
    /// are of one write (a newer entry's versions must not vouch for this
    /// one).
    async fn fetch_marked(&self, mut conn: Conn, value: &str) -> redis::RedisResult<Fetched> {
        let (entry, stored) = self.entry_with_versions(&mut conn, value).await?;
        let mut bytes = match entry {
            redis::Value::BulkString(bytes) => bytes,
            other => return Self::not_bytes(other),
        };
        if !codec::take_tagged_mark(&mut bytes) {
            return Ok(self.received(bytes));
        }
        self.fetched_if_current(conn, bytes, stored, &[], Vec::new())
            .await
    }

    /// A tagged read on a cluster (see [`RedisBackend::fetch_cluster`]).
    async fn fetch_tagged(
        &self,
        mut conn: Conn,
        value: &str,
        tags: &[String],
    ) -> redis::RedisResult<Fetched> {
        let mut versions_conn = conn.clone();
        let tag_names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let (entry, stored, current) = {
            let entry = self.entry_with_versions(&mut conn, value);
            let current = self.current_versions(&mut versions_conn, &tag_names);
            let ((entry, stored), current) = tokio::try_join!(entry, current)?;
            (entry, stored, current)
        };
        let mut bytes = match entry {
            redis::Value::BulkString(bytes) => bytes,
            other => return Self::not_bytes(other),
        };
        if !codec::take_tagged_mark(&mut bytes) {
            // Stored without tags: no tag of the call reaches it.
            return Ok(Fetched::Absent);
        }
        self.fetched_if_current(versions_conn, bytes, stored, &tag_names, current)
            .await
    }

    /// What a read that did not bring bytes back means: nothing there
    /// (`Nil`), a value of another kind (`WRONGTYPE`), or an error.
    fn not_bytes(reply: redis::Value) -> redis::RedisResult<Fetched> {
        match reply {
            redis::Value::Nil => Ok(Fetched::Absent),
            redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(Fetched::WrongKind),
            other => other.extract_error().map(|_| Fetched::WrongKind),
        }
    }

    /// The value at `value` (bounded) and the tag versions stored beside
    /// it, in one `MULTI`/`EXEC` (one slot): both of one write. Each reply
    /// is taken apart on its own, so that a value of another kind under
    /// either key is an answer about this entry (see [`version_text`]), not
    /// a failure of the read.
    async fn entry_with_versions(
        &self,
        conn: &mut Conn,
        value: &str,
    ) -> redis::RedisResult<(redis::Value, Option<String>)> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .ignore_errors()
            .cmd("GETRANGE")
            .arg(value)
            .arg("0")
            .arg(self.read_end.as_str())
            .cmd("GET")
            .arg(cluster::beside(value, cluster::TAGS));
        let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
        let Ok([entry, stored]) = <[redis::Value; 2]>::try_from(replies) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a read's replies do not match its keys",
            )));
        };
        Ok((entry, version_text(stored)?))
    }

    /// `bytes`, an entry marked as stored with tags, if every tag version
    /// stored beside it (`stored`) is current and names each of `tags`
    /// (whose current versions are `current`).
    async fn fetched_if_current(
        &self,
        conn: Conn,
        bytes: Vec<u8>,
        stored: Option<String>,
        tags: &[&str],
        current: Vec<(&str, Option<String>)>,
    ) -> redis::RedisResult<Fetched> {
        Ok(if self.all_current(conn, stored, tags, current).await? {
            self.received(bytes)
        } else {
            Fetched::Absent
        })
    }

    /// Whether the tag versions an entry was stored with (`stored`, as
    /// written beside it) name each of `tags` (whose current versions are
    /// `current`) and are all current: the rule for serving a marked entry.
    /// The versions of stored tags not among `tags` are read here.
    async fn all_current(
        &self,
        mut conn: Conn,
        stored: Option<String>,
        tags: &[&str],
        mut current: Vec<(&str, Option<String>)>,
    ) -> redis::RedisResult<bool> {
        // Marked but without its versions (evicted apart from it): no tag
        // invalidation can be checked, so it is not served.
        let Some(stored) = stored.as_deref().and_then(cluster::parse_versions) else {
            return Ok(false);
        };
        if stored.is_empty() || !tags.iter().all(|tag| stored.iter().any(|(t, _)| t == tag)) {
            return Ok(false);
        }
        let others: Vec<&str> = stored
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| !tags.contains(t))
            .collect();
        if !others.is_empty() {
            let more = self.current_versions(&mut conn, &others).await?;
            current.extend(others.into_iter().zip(more.into_iter().map(|(_, v)| v)));
        }
        Ok(stored.iter().all(|(tag, version)| {
            current
                .iter()
                .find(|(t, _)| t == tag)
                .is_some_and(|(_, now)| now.as_deref() == Some(*version))
        }))
    }

    /// The current version of each of `tags` on a cluster (`None`: it has
    /// none), read in parallel.
    async fn current_versions<'t>(
        &self,
        conn: &mut Conn,
        tags: &[&'t str],
    ) -> redis::RedisResult<Vec<(&'t str, Option<String>)>> {
        let reads = tags.iter().map(|tag| {
            let mut conn = conn.clone();
            async move {
                // Not `query_async`, which turns an error reply into an
                // error of the whole read.
                use redis::aio::ConnectionLike as _;
                let mut get = redis::cmd("GET");
                get.arg(cluster::version_key(tag));
                let version = conn.req_packed_command(&get).await?;
                Ok::<_, redis::RedisError>((*tag, version_text(version)?))
            }
        });
        futures_util::future::try_join_all(reads).await
    }

    /// The versions of `tags` on a cluster, as an entry stores them, each
    /// made if missing and kept at least `keep` (so that it outlives what
    /// is stored with it). No tags: the empty list.
    async fn versions(
        &self,
        conn: &mut Conn,
        tags: &[String],
        keep: Duration,
    ) -> redis::RedisResult<String> {
        if tags.is_empty() {
            return Ok(String::new());
        }
        let reads = tags.iter().map(|tag| {
            let mut conn = conn.clone();
            async move {
                cluster::VERSION
                    .key(cluster::version_key(tag))
                    .arg(cluster::new_version())
                    .arg(millis(keep))
                    .invoke_async::<String>(&mut conn)
                    .await
            }
        });
        let versions = futures_util::future::try_join_all(reads).await?;
        Ok(cluster::versions_text(
            tags.iter()
                .map(String::as_str)
                .zip(versions.into_iter().map(Cow::Owned)),
        ))
    }

    /// The versions a load, write-through or fill stores with its value
    /// (on a cluster; the empty list on one server, whose scripts record
    /// tags in their indexes).
    async fn versions_for_write(
        &self,
        tags: &[String],
        keep: Duration,
        timeout: Duration,
        gate: Gate,
    ) -> Result<String, BackendError> {
        if tags.is_empty() || !self.layout.is_cluster() {
            return Ok(String::new());
        }
        let mut conn = self.conn()?;
        let read = self.versions(&mut conn, tags, keep);
        self.run(gate, timeout, read).await
    }

    /// On a cluster, marks the envelope of an entry stored with tags (see
    /// [`cluster`](super::cluster)): a read checks the versions beside a
    /// marked entry, and only those.
    fn mark_if_tagged(&self, bytes: &mut [u8], tags: &[String]) {
        if self.layout.is_cluster() && !tags.is_empty() {
            codec::mark_tagged(bytes);
        }
    }

    /// Runs a read script (one that writes nothing) with `keys` and
    /// `args`, as `EVALSHA_RO` while the server takes it. A write pause
    /// (`CLIENT PAUSE WRITE`, which a failover sends to the old primary)
    /// holds every `EVALSHA` until it ends, even of a script the server
    /// does not hold (it cannot know what the script does), so every
    /// tagged hit ran to its operation timeout and loaded; it runs
    /// `EVALSHA_RO`, and answers its `NOSCRIPT` at once (the script is then
    /// loaded, which a pause allows, and called again). A server before
    /// Redis 7 (an unknown command), a fork without it, or an ACL rule
    /// written without `+evalsha_ro` (`NOPERM`) refuses it: the read is
    /// sent again as `EVALSHA`, and if that answers, this backend uses
    /// `EVALSHA` for good, with one warning.
    async fn invoke_read<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        script: &'static redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let read_only = &self.conns.read_only_scripts;
        if read_only.load(Ordering::Relaxed) {
            let mut cmd = redis::cmd("EVALSHA_RO");
            cmd.arg(script.get_hash())
                .arg(keys.len())
                .arg(keys)
                .arg(args);
            match cmd.query_async(conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.prepare_invoke().load_async(conn).await?;
                    return cmd.query_async(conn).await;
                }
                // Refused, but not for an outage or a passing state: this
                // server (before Redis 7, a fork) or this ACL user may not
                // have `EVALSHA_RO`, whatever its words. `EVALSHA` decides:
                // where it answers, it is used from now on.
                Err(e) if may_refuse_read_only_scripts(&e) => {
                    let plain = Self::invoke_plain(conn, script, keys, args).await;
                    if plain.is_ok() && read_only.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %e,
                            "EVALSHA_RO refused: tagged reads use EVALSHA, which a write pause (CLIENT PAUSE WRITE, a failover) holds; on Redis 7, add +evalsha_ro to the ACL rule (see redis_acl_rule)"
                        );
                    }
                    return plain;
                }
                answer => return answer,
            }
        }
        Self::invoke_plain(conn, script, keys, args).await
    }

    /// A read script run with `EVALSHA` (`EVAL` once after `NOSCRIPT`).
    async fn invoke_plain<T: redis::FromRedisValue>(
        conn: &mut Conn,
        script: &'static redis::Script,
        keys: &[&str],
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let mut call = script.prepare_invoke();
        call.key(keys).arg(args);
        call.invoke_async(conn).await
    }

    /// What a bounded read brought back: GETRANGE answers an empty string
    /// for a missing key (no entry is empty), and one byte over the limit
    /// for a larger value. A compressed entry that would expand past
    /// `max_decompressed_bytes` is refused here, before anything decodes
    /// it: a few kilobytes of zstd can claim 64 MiB.
    fn received(&self, bytes: Vec<u8>) -> Fetched {
        let limit = self.format.max_decompressed;
        if bytes.is_empty() {
            Fetched::Absent
        } else if bytes.len() > self.max_value_bytes {
            Fetched::TooLarge(self.max_value_bytes)
        } else if codec::compressed_claim(&bytes).is_some_and(|n| n > limit) {
            Fetched::Expands(limit)
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
        let versions = self
            .versions_for_write(tags, keep_for, timeout, Gate::Always)
            .await?;
        let token = fastrand::u64(1..);
        let mut conn = self.conn()?;
        let keys = self.layout.entry(key);
        // Sent whole with EVAL: a claim must land even when its caller
        // stopped waiting (see ACQUIRE_LUA).
        let tag_keys = self.tag_keys(&keys, tags, &[cluster::LEASE_TAGS, cluster::TAGS]);
        let mut call = redis::cmd("EVAL");
        call.arg(self.scripts().acquire_lua)
            .arg(3 + tag_keys.len())
            .arg(keys.value.as_ref())
            .arg(&keys.lease)
            .arg(keys.epoch.as_ref());
        for tag in &tag_keys {
            call.arg(tag.as_ref());
        }
        call.arg(token)
            .arg(millis(claim_for(timeout)))
            .arg(CLAIM)
            .arg(millis(keep_for))
            .arg(&[] as &[u8]);
        if self.layout.is_cluster() {
            call.arg(&versions);
        } else {
            call.arg(epoch_seed());
        }
        let (_, epoch, replaced): (i64, u64, String) = self
            .run(Gate::Always, timeout, call.query_async(&mut conn))
            .await?;
        // As a load does: a tag invalidation from now on that reaches the
        // entry this write replaces must reach the value it writes.
        if !replaced.is_empty() {
            self.take_over_versions(key, token, &replaced, tags, keep_for, timeout)
                .await?;
        }
        self.store_if_leased(key, bytes, keep_for, Lease { token, epoch }, tags, timeout)
            .await
    }

    /// The scripts of this layout.
    fn scripts(&self) -> &'static Scripts {
        if self.layout.is_cluster() {
            &CLUSTER
        } else {
            &SINGLE
        }
    }

    /// The keys a script that records tags takes after an entry's own: the
    /// tag indexes on one server; on a cluster, the tag-version keys beside
    /// the value named by `beside`.
    fn tag_keys<'a>(
        &self,
        keys: &EntryKeys<'_>,
        tags: &'a [String],
        beside: &[&str],
    ) -> Vec<Cow<'a, str>> {
        match self.layout {
            Layout::Single { .. } => tags.iter().map(|t| Cow::Borrowed(t.as_str())).collect(),
            Layout::Cluster { .. } => beside
                .iter()
                .map(|suffix| Cow::Owned(cluster::beside(&keys.value, suffix)))
                .collect(),
        }
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
        let mut bytes = self.encode(value, meta)?;
        self.mark_if_tagged(&mut bytes, tags);
        let versions = self
            .versions_for_write(tags, keep_for, timeout, Gate::Always)
            .await?;
        let mut conn = self.conn()?;
        let keys = self.layout.entry(key);
        let mut call = self.scripts().fill.key(keys.value.as_ref());
        call.key(&keys.lease);
        for tag in self.tag_keys(&keys, tags, &[cluster::TAGS]) {
            call.key(tag.as_ref());
        }
        call.arg(bytes).arg(millis(keep_for));
        if self.layout.is_cluster() {
            call.arg(&versions);
        }
        let stored: i64 = self
            .run(Gate::Always, timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(stored == 1)
    }

    /// Removes the values and their leases, so no load in flight can write
    /// an older value back. (On a cluster the keys are in many slots: the
    /// cluster connection sends each node its share.)
    pub(crate) async fn invalidate(
        &self,
        keys: &[String],
        timeout: Duration,
    ) -> Result<(), BackendError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        if let Conn::Cluster(cluster_conn) = &conn {
            let mut leases = Vec::with_capacity(keys.len() * 2);
            let mut values = Vec::with_capacity(keys.len() * 2);
            for key in keys {
                let entry = self.layout.entry(key);
                leases.push(cluster::beside(&entry.value, cluster::LEASE_TAGS));
                leases.push(entry.lease);
                values.push(cluster::beside(&entry.value, cluster::TAGS));
                values.push(entry.value.into_owned());
            }
            return self
                .unlink_each(cluster_conn, None, leases, values, timeout)
                .await
                .map(drop);
        }
        let mut cmd = redis::cmd("UNLINK");
        for key in keys {
            let entry = self.layout.entry(key);
            cmd.arg(entry.value.as_ref()).arg(&entry.lease);
        }
        self.run::<i64>(Gate::Always, timeout, cmd.query_async(&mut conn))
            .await
            .map(drop)
    }

    /// Removes keys of a cluster wherever they are now, every key of
    /// `first` before any of `then`, under one timeout; returns how many
    /// were removed. `on`: the node a scan found them on, or `None` for the
    /// primary serving each one's slot.
    ///
    /// Not one `UNLINK` of many: while a slot migrates, its keys move one
    /// `MIGRATE` at a time, so an entry's value, lease and tag versions can
    /// sit on two nodes, and a command naming keys of both meets `TRYAGAIN`
    /// on either, which the cluster connection retries until the whole slot
    /// has moved (every change of such an entry timed out, and another
    /// process read the old value, for as long as the migration took). Nor
    /// one `UNLINK` a key, whose `ASK` the cluster connection follows with
    /// `ASKING` and the command as two requests on a shared connection, so
    /// that redirected commands sent at once take each other's `ASKING`.
    /// Instead, each slot's primary (or the node scanned) is sent
    /// [`UNLINK_HERE`], which removes the keys it holds and names those it
    /// passed over (see [`unlink_wherever`]). On a steady cluster that is
    /// one call per slot, as redis-rs split the `UNLINK`.
    ///
    /// Leases (`first`) go before values: a load holding one cannot store
    /// once it is gone, so no value read before the change is written back
    /// meanwhile.
    async fn unlink_each(
        &self,
        conn: &ClusterConnection,
        on: Option<&(String, u16)>,
        first: Vec<String>,
        then: Vec<String>,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let both = async {
            match unlink_wherever(conn, on, &first, &then).await {
                Err(e) if is_script_refusal(&e) => {
                    // A server without script flags (before Redis 7) or
                    // a rule without EVAL: a key a command.
                    let first = unlink_where_they_are(conn, first).await?;
                    Ok(first + unlink_where_they_are(conn, then).await?)
                }
                other => other,
            }
        };
        self.run(Gate::Always, timeout, both).await
    }

    /// SCAN + UNLINK in batches (never KEYS): each round trip does bounded
    /// work, so a large invalidation never blocks the server. The epoch is
    /// bumped first, so that no load whose lease predates the scan stores
    /// its value, whether or not the scan sees its key.
    pub(crate) async fn invalidate_pattern(
        &self,
        pattern: &str,
        timeout: Duration,
        sweep: bool,
    ) -> Result<u64, BackendError> {
        let (epoch_key, namespace) = match &self.layout {
            Layout::Single {
                epoch_key,
                namespace,
            } => (epoch_key, namespace),
            Layout::Cluster { .. } => {
                return self.invalidate_pattern_cluster(pattern, timeout).await;
            }
        };
        let mut conn = self.conn()?;
        // The epoch made first if absent (see `epoch_seed`); the `INCR`'s
        // answer is the one that counts (an `-OOM` refusal included).
        let mut bump = redis::pipe();
        bump.ignore_errors()
            .cmd("SET")
            .arg(epoch_key)
            .arg(epoch_seed())
            .arg("NX")
            .cmd("INCR")
            .arg(epoch_key);
        let bump = async {
            let replies: Vec<redis::Value> = bump.query_async(&mut conn).await?;
            let incr = replies.into_iter().nth(1).unwrap_or(redis::Value::Nil);
            match incr.extract_error() {
                // Not a number there (written by hand: the name is the
                // cache's own), which no `INCR` will ever take: replaced
                // by a new epoch, a bump that no lease recorded.
                Err(e) if is_not_a_number(&e) => {
                    redis::cmd("SET")
                        .arg(epoch_key)
                        .arg(epoch_seed())
                        .query_async::<()>(&mut conn)
                        .await?;
                    Ok(0)
                }
                other => redis::from_redis_value::<i64>(other?).map_err(redis::RedisError::from),
            }
        };
        let bumped = self.run(Gate::Always, timeout, bump).await;
        // Refused for memory (`-OOM`, `noeviction`), Redis still takes the
        // deletions: with `sweep` (until an attempt has swept: see
        // `Pending::swept`), what matches now is removed at once, and the
        // error is returned after, so that the whole change is retried (the
        // epoch included) once Redis takes writes. Later retries stop at the
        // epoch: nothing matching can be written meanwhile (leased stores,
        // writes too, are refused), and a scan of the keyspace every retry
        // would only load a server already in trouble.
        let refused = match bumped {
            Ok(_) => None,
            Err(e) if sweep && e.is_refused_for_memory() => Some(e),
            Err(e) => return Err(e),
        };
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
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .run(Gate::Always, timeout, scan.query_async(&mut conn))
                .await?;
            let keys = ours(keys);
            // Never the cache's own records in the namespace, whose names
            // begin with `~` (a pattern as `*` or `*:7` matches them): the
            // epoch, removed, would read as 0 again, as when a load in
            // flight took its lease, and the load would store what it read
            // before the change; a tag's index, removed while the entries
            // it lists stay, would leave them out of the tag's next
            // invalidation. The memory backend matches entries only.
            let keys: Vec<&String> = keys
                .iter()
                .filter(|k| !crate::key::is_record(k, namespace))
                .collect();
            if !keys.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                for key in keys {
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
                return match refused {
                    None => Ok(removed),
                    Some(e) => Err(e),
                };
            }
            cursor = next;
        }
    }

    /// A pattern invalidation on a cluster:
    ///
    /// 1. every primary of the slot map is scanned (all at once) for the
    ///    leases of matching entries, `{pattern}:~lease`, which are
    ///    removed: the load holding one cannot store what it read before
    ///    the change (what the epoch does on one server);
    /// 2. then for `{pattern}`, each value found unlinked with its lease
    ///    and tag versions;
    /// 3. after each of those passes, every primary is asked what it is
    ///    now (`CLUSTER NODES`): one that imports a slot, or serves one the
    ///    map did not give it, may have received keys that `MIGRATE` moved
    ///    during the pass, after its own scan and before the source's scan
    ///    reached them, and is scanned once more, as is a node a slot
    ///    migrates to that the map does not list (see
    ///    [`cluster::after_pass`] and [`RedisBackend::reach`]);
    /// 4. the slot map is read again: if it changed (a failover, a
    ///    resharding moved keys between nodes mid-scan), or a primary no
    ///    longer serves what the map gave it, the scan runs again on the
    ///    new map, up to four times, and then gives up with an error rather
    ///    than claim a complete invalidation.
    async fn invalidate_pattern_cluster(
        &self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let conn = self.conn()?;
        let Conn::Cluster(cluster_conn) = conn else {
            unreachable!("a cluster layout has cluster connections")
        };
        let mut map = self.slot_map(&cluster_conn, timeout).await?;
        let values = cluster::value_pattern(pattern);
        let leases = cluster::beside(&values, cluster::LEASE);
        let mut removed = 0;
        for _ in 0..4 {
            // Leases first, on every primary at once: a load that read the
            // source before the change holds its lease from before this
            // pass began, so either this pass removes the lease (and its
            // write is refused) or the write landed first, and the value
            // is there for the second pass to remove.
            let nodes = cluster::primaries(&map);
            let mut stale = false;
            for (glob, found) in [(&leases, Found::Lease), (&values, Found::Value)] {
                let mut n = self
                    .scan_nodes(&cluster_conn, &nodes, glob, found, timeout)
                    .await?;
                match cluster::after_pass(
                    &map,
                    &self.own_views(&cluster_conn, &nodes, timeout).await?,
                ) {
                    cluster::AfterPass::Complete => {}
                    cluster::AfterPass::Rescan { listed, unlisted } => {
                        let mut again: Vec<(String, u16)> =
                            listed.into_iter().map(|i| nodes[i].clone()).collect();
                        for far in unlisted {
                            if self.reach(&cluster_conn, &far, timeout).await {
                                again.push(far.addr);
                            } else {
                                stale = true;
                            }
                        }
                        n += self
                            .scan_nodes(&cluster_conn, &again, glob, found, timeout)
                            .await?;
                    }
                    cluster::AfterPass::Stale => stale = true,
                }
                if found == Found::Value {
                    removed += n;
                }
                if stale {
                    break;
                }
            }
            let now = self.slot_map(&cluster_conn, timeout).await?;
            if now == map && !stale {
                return Ok(removed);
            }
            map = now;
        }
        Err(BackendError::Redis(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the cluster's slot map kept changing during a pattern invalidation",
        ))))
    }

    /// [`Self::scan_node`] on each of `nodes` at once. Returns how many
    /// keys were removed.
    async fn scan_nodes(
        &self,
        conn: &ClusterConnection,
        nodes: &[(String, u16)],
        glob: &str,
        found: Found,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let scans = nodes
            .iter()
            .map(|(host, port)| self.scan_node(conn, host, *port, glob, found, timeout));
        Ok(futures_util::future::try_join_all(scans)
            .await?
            .into_iter()
            .sum())
    }

    /// Whether the cluster connection can send to `far`, a node the slot
    /// map does not list, by its address: redis-rs holds connections to
    /// the nodes of its map and to those a redirection sent it to, and
    /// drops the others when it reads the map again. If it has none, a
    /// read of a key of a slot `far` imports, one the slot's primary does
    /// not hold, is sent: the primary answers `ASK` to `far`, and the
    /// connection follows it there, connecting.
    async fn reach(
        &self,
        conn: &ClusterConnection,
        far: &cluster::Unlisted,
        timeout: Duration,
    ) -> bool {
        let ping = || {
            let mut conn = conn.clone();
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: far.addr.0.clone(),
                port: far.addr.1,
            });
            async move {
                conn.route_command(redis::cmd("PING").to_owned(), node)
                    .await?
                    .extract_error()
            }
        };
        if run(timeout, ping()).await.is_ok() {
            return true;
        }
        let Layout::Cluster { namespace } = &self.layout else {
            return false;
        };
        // Never written: absent on the slot's primary, so redirected.
        let probe = cluster::probe_key(namespace, usize::from(far.slot));
        let mut read = redis::cmd("GETRANGE");
        read.arg(&probe).arg(0).arg(0);
        let mut sender = conn.clone();
        let _ = run(timeout, read.query_async::<redis::Value>(&mut sender)).await;
        run(timeout, ping()).await.is_ok()
    }

    /// What each of `nodes` says of itself (`CLUSTER NODES`), asked at
    /// once; `None` for an answer that does not read, and for every node
    /// when the ACL rule refuses the command (a rule written before it was
    /// needed: warned of once), so that every primary is scanned again.
    async fn own_views(
        &self,
        conn: &ClusterConnection,
        nodes: &[(String, u16)],
        timeout: Duration,
    ) -> Result<Vec<Option<cluster::OwnView>>, BackendError> {
        let asks = nodes.iter().map(|(host, port)| {
            let mut conn = conn.clone();
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            async move {
                // A refusal may come back as an answer: made an error here.
                let ask = async {
                    conn.route_command(redis::cmd("CLUSTER").arg("NODES").to_owned(), routing)
                        .await?
                        .extract_error()
                };
                let reply = self.run(Gate::Always, timeout, ask).await?;
                Ok::<_, BackendError>(
                    redis::from_redis_value::<String>(reply)
                        .ok()
                        .and_then(|text| cluster::own_view(&text)),
                )
            }
        });
        match futures_util::future::try_join_all(asks).await {
            Err(BackendError::Redis(e)) if super::is_permission(&e) => {
                if !self
                    .conns
                    .warned_nodes_refused
                    .swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        error = %e,
                        "CLUSTER NODES refused: each pass of a pattern invalidation scans every primary twice, and a key that a resharding moves to a node that serves no slot yet may be missed; add +cluster|nodes to the ACL rule (see redis_acl_rule)"
                    );
                }
                Ok(vec![None; nodes.len()])
            }
            views => views,
        }
    }

    /// The cluster's slot map, as one node sees it.
    async fn slot_map(
        &self,
        conn: &ClusterConnection,
        timeout: Duration,
    ) -> Result<Vec<cluster::SlotRange>, BackendError> {
        self.run(Gate::Always, timeout, read_slot_map(conn)).await
    }

    /// SCAN + UNLINK on one node of a cluster, as on one server: each key
    /// matching `glob` with what goes with it (see [`Found`]).
    async fn scan_node(
        &self,
        conn: &ClusterConnection,
        host: &str,
        port: u16,
        glob: &str,
        found: Found,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let mut conn = conn.clone();
        let node = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            })
        };
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(glob)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .to_owned();
            let reply = self
                .run(Gate::Always, timeout, conn.route_command(scan, node()))
                .await?;
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(reply).map_err(|e| BackendError::Redis(e.into()))?;
            let mut keys = ours(keys);
            // Never the cache's own records (tags' versions), as on one
            // server: only entries and their leases.
            if let Layout::Cluster { namespace } = &self.layout {
                keys.retain(|k| !cluster::is_record(k, namespace));
            }
            if !keys.is_empty() {
                // Where they are now (see `unlink_each`): a key of a slot
                // that migrates may have left this node since the scan.
                let (mut first, mut then) = (Vec::new(), Vec::new());
                for key in keys {
                    match found {
                        Found::Value => {
                            first.push(cluster::beside(&key, cluster::LEASE));
                            first.push(cluster::beside(&key, cluster::LEASE_TAGS));
                            then.push(cluster::beside(&key, cluster::TAGS));
                            then.push(key);
                        }
                        Found::Lease => {
                            first.push(cluster::lease_tags_of(&key));
                            first.push(key);
                        }
                    }
                }
                let here = (host.to_owned(), port);
                removed += self
                    .unlink_each(&conn, Some(&here), first, then, timeout)
                    .await?;
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
    ///
    /// On a cluster, replaces the tag's version instead (one command): the
    /// entries stored under the old one are never served again and expire
    /// on their own. How many there were is not known: answers 0.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        timeout: Duration,
    ) -> Result<u64, BackendError> {
        let mut conn = self.conn()?;
        if self.layout.is_cluster() {
            // XX: a missing version serves nothing already.
            let mut replace = redis::cmd("SET");
            replace
                .arg(cluster::version_key(tag))
                .arg(cluster::new_version())
                .arg("XX")
                .arg("KEEPTTL");
            self.run::<Option<String>>(Gate::Always, timeout, replace.query_async(&mut conn))
                .await?;
            return Ok(0);
        }
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SSCAN")
                .arg(tag)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .to_owned();
            let scanned = self
                .run::<(u64, Vec<Vec<u8>>)>(Gate::Always, timeout, scan.query_async(&mut conn))
                .await;
            let (next, keys) = match scanned {
                // A value of another kind where the tag's set is kept
                // (written by hand: the name is the cache's own) lists no
                // entry, and no entry is served under it: removed, the
                // invalidation has landed (retried, it would fail for ever,
                // and keep every read of this process from the cache).
                Err(BackendError::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                    let unlink = redis::cmd("UNLINK").arg(tag).to_owned();
                    self.run::<u64>(Gate::Always, timeout, unlink.query_async(&mut conn))
                        .await?;
                    return Ok(removed);
                }
                other => other?,
            };
            let keys = ours(keys);
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
        self.run(Gate::Always, timeout, conn.ping()).await
    }
}

/// Records KEYS[1] under each tag set KEYS[first..], keeping each set at
/// least `ms` (ARGV[ms_arg]) so it outlives its members. Each addition also
/// drops up to two random members whose entry and lease are both gone
/// (expired, evicted), so a set stays within about twice its live members
/// however many keys pass through it. A value of another kind where a set
/// is kept (written by hand: the name is the cache's own) is replaced: it
/// lists no entry, so none is served under it anyway, and the script
/// failing on it left the lease it had just taken behind it.
const TAG_LUA: &str = r"
local function tag(first, ms)
  for i = first, #KEYS do
    if type(redis.pcall('SADD', KEYS[i], KEYS[1])) == 'table' then
      redis.call('DEL', KEYS[i])
      redis.call('SADD', KEYS[i], KEYS[1])
    end
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
/// identity. Returns {1, epoch, replaced} acquired, {0, 0, ''} held by
/// another, {2, 0, ''} a value is present, {3, 0, ''} the entry changed;
/// `replaced` is always empty on one server (see [`ACQUIRE_CLUSTER_LUA`]).
/// Tags are recorded when the load (or write) starts, so a tag
/// invalidation while it runs finds the key and destroys the lease. A key
/// with no TTL under the lease's name is not a lease (every lease
/// expires): something written there by hand, which would otherwise hold
/// the key for good; the lease is taken over it.
///
/// Sent whole with EVAL for a claim, not EVALSHA: a claim must land even
/// when its caller stopped waiting (a frozen server runs it when it
/// wakes), and EVALSHA on a server that lost its script cache (a restart)
/// answers NOSCRIPT, which only a caller still waiting would retry.
///
/// On one server, ARGV[6] is a random seed for the namespace's epoch,
/// written when it is absent (see [`epoch_seed`]), or not a number (a
/// value written by hand there: a new epoch no lease recorded).
static ACQUIRE_LUA: LazyLock<String> = LazyLock::new(|| {
    acquire_lua(
        TAG_LUA,
        "local replaced = ''",
        "tag(4, ARGV[4])
        local epoch = redis.pcall('GET', KEYS[3])
        if type(epoch) ~= 'string' or not tonumber(epoch) then
          redis.call('SET', KEYS[3], ARGV[6])
        end",
    )
});

/// [`ACQUIRE_LUA`] on a cluster, where the slot's epoch is never written
/// (a pattern invalidation removes leases instead): one that is not a
/// number (written by hand: the name is the cache's own) is removed, as
/// one server replaces its own; it failed every lease of the slot. KEYS:
/// value, lease, epoch, the lease's tag
/// versions, the entry's. ARGV: as on one server, then the versions the
/// load starts from, kept beside its lease (always, even none: a store
/// whose record of them is gone stores nothing). `replaced`: the versions
/// the entry the lease replaces was stored with, when they name a tag the
/// load does not; a tag invalidation reached that entry, so it must reach
/// what replaces it. The lease's versions then end with
/// [`cluster::TAKING_OVER`] until the load adds those tags' current ones
/// (see [`RedisBackend::take_over_versions`]).
static ACQUIRE_CLUSTER_LUA: LazyLock<String> = LazyLock::new(|| {
    acquire_lua(
        cluster::TAG_NAMES_LUA,
        "local replaced = ''
        if redis.call('EXISTS', KEYS[1]) == 1 then
          local stored = redis.call('GET', KEYS[5])
          local theirs = stored and tag_names(stored)
          if theirs then
            local ours = tag_names(ARGV[6]) or {}
            for name in pairs(theirs) do
              if not ours[name] then replaced = stored; break end
            end
          end
        end",
        &format!(
            "redis.call('SET', KEYS[4], ARGV[6] .. (replaced == '' and '' or '{}'), 'PX', ARGV[2])
            local epoch = redis.pcall('GET', KEYS[3])
            if epoch and not (type(epoch) == 'string' and tonumber(epoch)) then
              redis.call('DEL', KEYS[3])
            end",
            cluster::TAKING_OVER.escape_default()
        ),
    )
});

fn acquire_lua(prelude: &str, replaced: &str, record_tags: &str) -> String {
    format!(
        "{prelude}
        if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {{2, 0, ''}} end
        if ARGV[3] == '2' then
          local v = redis.call('GET', KEYS[1])
          if not v or string.sub(v, 11, 38) ~= ARGV[5] then return {{3, 0, ''}} end
        end
        {replaced}
        if ARGV[3] == '3' then
          redis.call('UNLINK', KEYS[1])
          redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        elseif not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
          if redis.call('PTTL', KEYS[2]) ~= -1 then return {{0, 0, ''}} end
          redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        end
        {record_tags}
        return {{1, tonumber(redis.call('GET', KEYS[3]) or '0'), replaced}}"
    )
}

/// A value for the namespace's epoch (one server) where there is none: a
/// random one, below 2^52 (Lua's numbers hold it exactly). The epoch is a
/// key like any other, which `allkeys-lru` may evict; made again from 0, it
/// would come back to a value a lease recorded before an invalidation (0
/// itself, or 1 after an `INCR`), and the load holding that lease would
/// store what it read before the change. A random start comes back to none
/// of them, and an absent epoch matches no lease (each lease's script
/// makes it first).
fn epoch_seed() -> u64 {
    fastrand::u64(1..1 << 52)
}

/// [`ACQUIRE_LUA`]'s condition for a write-through's claim.
const CLAIM: &str = "3";

/// What [`SET_IF_LEASED_LUA`] (or its cluster form) answered.
enum Stored {
    No,
    Yes,
    /// Stored with these tag versions (on a cluster), which the caller
    /// checks are still current.
    WithVersions(String),
}

impl Stored {
    fn from_reply(reply: redis::Value) -> redis::RedisResult<Stored> {
        Ok(match reply {
            redis::Value::Int(1) => Stored::Yes,
            redis::Value::Int(_) => Stored::No,
            other => Stored::WithVersions(redis::from_redis_value(other)?),
        })
    }
}

/// KEYS: value, lease, epoch, tags... ARGV: token, envelope, keep ms, epoch.
/// Stores only while the token holds the lease, no pattern invalidation
/// has bumped the epoch since it was taken, and each tag's index still
/// lists the key (the lease recorded it there), then ends the lease.
/// Returns 0 not stored, 1 stored. An index that lost the key while the
/// lease held (swept by a pattern invalidation of `*`, evicted) cannot
/// say whether a tag invalidation came meanwhile: one did not find the
/// key, so it did not destroy the lease, and the load would store the
/// value it read before it (found by a review).
static SET_IF_LEASED_LUA: LazyLock<String> = LazyLock::new(|| {
    set_if_leased_lua(
        TAG_LUA,
        "for i = 4, #KEYS do
          if redis.pcall('SISMEMBER', KEYS[i], KEYS[1]) ~= 1 then
            redis.call('DEL', KEYS[2])
            return 0
          end
        end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        redis.call('DEL', KEYS[2])
        tag(4, ARGV[3])
        return 1",
    )
});

/// [`SET_IF_LEASED_LUA`] on a cluster. KEYS: value, lease, epoch, the
/// entry's tag versions, the lease's: the versions the load started from
/// (its own tags', and those it took over) are stored beside the value,
/// which is marked as stored with them. Returns those versions when there
/// are any, for the caller to check they are still current (it must not
/// read them back: another write may have replaced them since). If they
/// are gone while the lease holds (evicted, lost in a failover), nothing is
/// stored: the value might be one a tag invalidation was to reach.
static SET_IF_LEASED_CLUSTER_LUA: LazyLock<String> = LazyLock::new(|| {
    set_if_leased_lua(
        &format!("{}{}", cluster::HOLD_LUA, *cluster::MARK_LUA),
        "local held = redis.call('GET', KEYS[5])
        if not held then
          redis.call('DEL', KEYS[2])
          return 0
        end
        redis.call('SET', KEYS[1], held == '' and ARGV[2] or marked(ARGV[2]), 'PX', ARGV[3])
        redis.call('DEL', KEYS[2])
        hold(KEYS[4], held, ARGV[3])
        redis.call('DEL', KEYS[5])
        if held == '' then return 1 end
        return held",
    )
});

fn set_if_leased_lua(prelude: &str, store: &str) -> String {
    format!(
        "{prelude}
        if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
        if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[4] then
          redis.call('DEL', KEYS[2])
          return 0
        end
        {store}"
    )
}

/// KEYS: value, lease, tags... ARGV: envelope, keep ms. A plain fill:
/// stores unless a lease is held (a load or a write-through in flight).
fn fill_lua(prelude: &str, record_tags: &str) -> String {
    format!(
        "{prelude}
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        {record_tags}
        return 1"
    )
}

/// The scripts that record tags, as one server or a cluster records them.
struct Scripts {
    /// The lease script's text, for a claim sent whole (see [`ACQUIRE_LUA`]).
    acquire_lua: &'static str,
    acquire: redis::Script,
    set_if_leased: redis::Script,
    fill: redis::Script,
}

/// The scripts on one server.
static SINGLE: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire_lua: ACQUIRE_LUA.as_str(),
    acquire: redis::Script::new(&ACQUIRE_LUA),
    set_if_leased: redis::Script::new(&SET_IF_LEASED_LUA),
    fill: redis::Script::new(&fill_lua(TAG_LUA, "tag(3, ARGV[2])")),
});

/// The scripts on a cluster. The fill's KEYS: value, lease, the entry's tag
/// versions; its ARGV ends with the versions.
static CLUSTER: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    acquire_lua: ACQUIRE_CLUSTER_LUA.as_str(),
    acquire: redis::Script::new(&ACQUIRE_CLUSTER_LUA),
    set_if_leased: redis::Script::new(&SET_IF_LEASED_CLUSTER_LUA),
    fill: redis::Script::new(&fill_lua(
        cluster::HOLD_LUA,
        "hold(KEYS[3], ARGV[3], ARGV[2])",
    )),
});

/// Whether `EVALSHA_RO`'s error `e` may say that the server or the ACL
/// user cannot run it (Redis 6 answers `ERR unknown command`, a rule
/// without it `NOPERM`, a fork its own words): any error reply but those
/// of an outage or a passing state, which `EVALSHA` would meet as well.
/// (The script's own errors are ruled out by `EVALSHA` failing the same.)
fn may_refuse_read_only_scripts(e: &redis::RedisError) -> bool {
    const PASSING: [&str; 9] = [
        "NOSCRIPT",
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "MOVED",
        "ASK",
        "READONLY",
    ];
    e.code().is_some_and(|code| !PASSING.contains(&code))
}

/// KEYS: value, tags... The value while every tag index lists it, else
/// nil; 0 if the key, or one of its tag indexes, holds another kind of
/// value (someone else's data under the name: the entry cannot be served,
/// and the script does not fail, so a batch's other ids are still read).
static FETCH_TAGGED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local v = redis.pcall('GETRANGE', KEYS[1], 0, ARGV[1])
          if type(v) == 'table' and v.err then return 0 end
          if v == '' then return false end
          for i = 2, #KEYS do
            local m = redis.pcall('SISMEMBER', KEYS[i], KEYS[1])
            if type(m) == 'table' and m.err then return 0 end
            if m == 0 then return false end
          end
          return v",
    )
});

/// [`FETCH_TAGGED`] for many keys, in one call (one server). KEYS: each
/// value followed by its tags. ARGV: the read's end, then each value's
/// count of tags. One answer per value, as [`FETCH_TAGGED`]'s (`false`
/// reads as nil).
static FETCH_TAGGED_MANY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local out, k = {}, 1
          for i = 2, #ARGV do
            local key, n = KEYS[k], tonumber(ARGV[i])
            local v = redis.pcall('GETRANGE', key, 0, ARGV[1])
            if type(v) == 'table' and v.err then v = 0
            elseif v == '' then v = false
            else
              for j = k + 1, k + n do
                local m = redis.pcall('SISMEMBER', KEYS[j], key)
                if type(m) == 'table' and m.err then v = 0; break end
                if m == 0 then v = false; break end
              end
            end
            out[#out + 1] = v
            k = k + n + 1
          end
          return out",
    )
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
/// does not depend on it: a store after the claim expired is refused, and
/// the write-through is then retried as an invalidation (another process
/// may have taken the key's lease meanwhile, and read the source before
/// the writer's transaction committed). A claim whose store never comes
/// (its process died) holds other processes' misses this long at most.
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
        // On a cluster, the versions this load starts from: read before
        // the lease, so that a tag invalidation from now on outdates what
        // it stores.
        let versions = self
            .versions_for_write(tags, tag_for, timeout, Gate::Breaker)
            .await?;
        let mut conn = self.control()?;
        let identity = match &cond {
            LeaseIf::Unchanged(meta) => codec::identity(meta),
            _ => [0; codec::IDENTITY_LEN],
        };
        let keys = self.layout.entry(key);
        let mut call = self.scripts().acquire.key(keys.value.as_ref());
        call.key(&keys.lease).key(keys.epoch.as_ref());
        for tag in self.tag_keys(&keys, tags, &[cluster::LEASE_TAGS, cluster::TAGS]) {
            call.key(tag.as_ref());
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
        if self.layout.is_cluster() {
            call.arg(&versions);
        } else {
            call.arg(epoch_seed());
        }
        let (outcome, epoch, replaced): (i64, u64, String) = self
            .run(Gate::Breaker, timeout, call.invoke_async(&mut conn))
            .await?;
        // Only an acquired lease answers what it replaces.
        if !replaced.is_empty() {
            self.take_over_versions(key, token, &replaced, tags, tag_for, timeout)
                .await?;
        }
        Ok(lease_outcome(outcome, epoch))
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
                let keys = self.layout.entry(key);
                let mut call = DROP_IF_LEASED.key(keys.value.as_ref());
                call.key(&keys.lease).arg(lease.token);
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
        mut bytes: Vec<u8>,
        keep_for: Duration,
        lease: Lease,
        tags: &[String],
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.mark_if_tagged(&mut bytes, tags);
        let mut conn = self.control()?;
        let keys = self.layout.entry(key);
        let mut call = self.scripts().set_if_leased.key(keys.value.as_ref());
        call.key(&keys.lease).key(keys.epoch.as_ref());
        for tag in self.tag_keys(&keys, tags, &[cluster::TAGS, cluster::LEASE_TAGS]) {
            call.key(tag.as_ref());
        }
        call.arg(lease.token)
            .arg(bytes)
            .arg(millis(keep_for))
            .arg(lease.epoch);
        let stored: redis::Value = self
            .run(Gate::Always, timeout, call.invoke_async(&mut conn))
            .await?;
        Ok(
            match Stored::from_reply(stored).map_err(BackendError::Redis)? {
                Stored::No => false,
                Stored::Yes => true,
                Stored::WithVersions(held) => self.still_current(held, tags, timeout).await,
            },
        )
    }

    /// On a cluster, after a lease was taken over an entry stored with tag
    /// versions (`replaced`, as stored beside it): a tag invalidation of
    /// those tags reached the key, so it must reach what this load stores
    /// too, whatever tags the load names itself (an untagged batch names
    /// none). Adds
    /// the current versions of the tags the load does not name to those
    /// its lease keeps, which it stores with its value. Read after the
    /// lease and before the load begins: an invalidation from now on
    /// outdates what the load stores, and one that came before came before
    /// the load's read too. An entry whose versions do not read as a list
    /// was served to no one: nothing to take over.
    async fn take_over_versions(
        &self,
        key: &str,
        token: u64,
        replaced: &str,
        tags: &[String],
        keep: Duration,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        // Not a list (the script reads it as one: it cannot happen): the
        // lease's versions keep their last line, and its value is served
        // to no one.
        let Some(others) = cluster::to_take_over(replaced, tags) else {
            return Ok(());
        };
        let mut conn = self.control()?;
        let keys = self.layout.entry(key);
        let add = async {
            let versions = self.versions(&mut conn, &others, keep).await?;
            cluster::TAKE_OVER
                .key(&keys.lease)
                .key(cluster::beside(&keys.value, cluster::LEASE_TAGS))
                .arg(token)
                .arg(versions)
                .invoke_async::<i64>(&mut conn)
                .await
        };
        // Not added (the lease is gone): its store is refused anyway.
        self.run(Gate::Always, timeout, add).await.map(drop)
    }

    /// On a cluster, after an entry was stored with tag versions (`held`:
    /// its call's `tags`, and those it took over from the entry it
    /// replaced): whether they are all still current. A tag invalidation
    /// does not touch the leases of its entries there (it replaces the
    /// tag's version), so a load that read the source before one stores
    /// what it read (unreachable, stored with the old version); this is how
    /// its process learns of it, to hand the value to no caller who joined
    /// the load after the invalidation (they read again). A check that
    /// fails answers `false` too: read again rather than trust.
    async fn still_current(&self, held: String, tags: &[String], timeout: Duration) -> bool {
        let Ok(mut conn) = self.conn() else {
            return false;
        };
        let tag_names: Vec<&str> = tags.iter().map(String::as_str).collect();
        let check = async {
            let current = self.current_versions(&mut conn, &tag_names).await?;
            self.all_current(conn, Some(held), &tag_names, current)
                .await
        };
        self.run(Gate::Always, timeout, check)
            .await
            .unwrap_or(false)
    }

    pub(crate) async fn release_lease(
        &self,
        key: &str,
        token: u64,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let mut conn = self.control()?;
        let mut call = redis::cmd("EVAL");
        call.arg(RELEASE_LUA)
            .arg(1)
            .arg(self.layout.entry(key).lease)
            .arg(token);
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

/// Sends `cmds` as one pipeline, one reply per command (an error reply as
/// its `Err`). Script calls that found their script missing (a restarted
/// server lost its script cache) are sent again, once, after loading
/// `scripts`: the others ran, and must not run twice. A cluster runs a
/// pipeline within one slot only: there each command is sent on its own,
/// all at once, and the cluster connection takes each to its node. An
/// outage answered to any command (`LOADING`, `READONLY`...) is the
/// failure of all.
async fn pipeline(
    conn: &mut Conn,
    cmds: &[redis::Cmd],
    scripts: &[&redis::Script],
) -> PipelineReplies {
    async fn send(conn: &mut Conn, cmds: &[&redis::Cmd]) -> PipelineReplies {
        if let Conn::Cluster(cluster) = conn {
            let sends = cmds.iter().map(|cmd| {
                let mut conn = cluster.clone();
                async move {
                    use redis::aio::ConnectionLike as _;
                    conn.req_packed_command(cmd)
                        .await
                        .and_then(redis::Value::extract_error)
                }
            });
            let replies = futures_util::future::join_all(sends).await;
            // A failure to reach the cluster fails the whole batch, as it
            // does on one server.
            if let Some(Err(e)) = replies.iter().find(|r| {
                r.as_ref()
                    .is_err_and(|e| e.is_io_error() || e.is_connection_dropped())
            }) {
                return Err(e.clone());
            }
            return Ok(replies);
        }
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
        Ok(replies
            .into_iter()
            .map(redis::Value::extract_error)
            .collect())
    }
    // An answer that says the server is unwell (LOADING, READONLY,
    // MASTERDOWN...) fails the whole pipeline, so that the breaker counts
    // it as the outage it is, as a read's does (see `RedisBackend::entries`),
    // rather than as an error about one key.
    fn outage(replies: Vec<redis::RedisResult<redis::Value>>) -> PipelineReplies {
        match replies
            .iter()
            .find_map(|reply| reply.as_ref().err().filter(|e| super::is_outage(e)))
        {
            Some(e) => Err(e.clone()),
            None => Ok(replies),
        }
    }
    let all: Vec<&redis::Cmd> = cmds.iter().collect();
    let mut replies = send(conn, &all).await?;
    let missing: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, reply)| {
            matches!(reply, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        })
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return outage(replies);
    }
    for script in scripts {
        script.prepare_invoke().load_async(conn).await?;
    }
    let again: Vec<&redis::Cmd> = missing.iter().map(|&i| &cmds[i]).collect();
    for (i, reply) in missing.into_iter().zip(send(conn, &again).await?) {
        replies[i] = reply;
    }
    outage(replies)
}

/// A pipeline's answers, one per command, or the failure of all.
type PipelineReplies = redis::RedisResult<Vec<redis::RedisResult<redis::Value>>>;

impl RedisBackend {
    /// Reads every key as [`RedisBackend::fetch`] reads it with `tags[i]`,
    /// one answer per key. On one server in one round trip (untagged, a
    /// pipeline; tagged, one script call), which succeeds or fails as a
    /// whole. On a cluster each key is read as a single call reads it, all
    /// at once, each with its own timeout and its own answer: a primary
    /// that fails costs the keys it owns, not the others.
    pub(crate) async fn fetch_many(
        &self,
        keys: &[&str],
        tags: &[&[String]],
        timeout: Duration,
    ) -> Result<Vec<Result<Fetched, BackendError>>, BackendError> {
        debug_assert_eq!(keys.len(), tags.len());
        if self.is_cluster() {
            let conn = self.conn()?;
            let reads = keys
                .iter()
                .zip(tags)
                .map(|(key, tags)| self.fetch_cluster(conn.clone(), key, tags));
            return self.run_each(timeout, reads).await;
        }
        let entries = if tags.iter().all(|t| t.is_empty()) {
            self.fetch_pipelined(keys, timeout).await?
        } else {
            self.fetch_many_tagged(keys, tags, timeout).await?
        };
        Ok(entries.into_iter().map(Ok).collect())
    }

    /// Reads every key in one pipeline of bounded reads (GETRANGE, as
    /// [`RedisBackend::fetch`] reads one), on one server: one answer per
    /// key.
    async fn fetch_pipelined(
        &self,
        keys: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Fetched>, BackendError> {
        debug_assert!(!self.layout.is_cluster(), "a cluster reads key by key");
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        // Each command sized up front, as a single read's is: grown one
        // argument at a time, each was reallocated about three times,
        // 96,000 instructions per 100-id batch (callgrind), an eighth of
        // the client's work besides decoding the values.
        let mut pipe = redis::Pipeline::with_capacity(keys.len());
        pipe.ignore_errors();
        for key in keys {
            let mut cmd = redis::Cmd::with_capacity(4, 24 + key.len());
            cmd.arg("GETRANGE")
                .arg(*key)
                .arg("0")
                .arg(self.read_end.as_str());
            pipe.add_command(cmd);
        }
        let read = async {
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            self.entries(replies, keys.len())
        };
        Box::pin(self.run(Gate::Breaker, timeout, read)).await
    }

    /// The entries a read of `n` keys answered, one per key: absent, the
    /// bounded bytes, or another kind of value (`WRONGTYPE` from
    /// `GETRANGE`, `0` from a tagged read's script). Any other error reply
    /// (LOADING, MASTERDOWN) fails the whole read, and counts as the
    /// outage it is.
    fn entries(&self, replies: Vec<redis::Value>, n: usize) -> redis::RedisResult<Vec<Fetched>> {
        if replies.len() != n {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a read's replies do not match its keys",
            )));
        }
        replies
            .into_iter()
            .map(|reply| match reply {
                redis::Value::Nil => Ok(Fetched::Absent),
                redis::Value::BulkString(bytes) => Ok(self.received(bytes)),
                redis::Value::Int(_) => Ok(Fetched::WrongKind),
                redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(Fetched::WrongKind),
                other => other.extract_error().map(|_| Fetched::WrongKind),
            })
            .collect()
    }

    /// On one server, each key read as a tagged [`RedisBackend::fetch`]
    /// reads it (`tags[i]`: served only while each tag's index lists the
    /// key), in one script call: one answer per key.
    async fn fetch_many_tagged(
        &self,
        keys: &[&str],
        tags: &[&[String]],
        timeout: Duration,
    ) -> Result<Vec<Fetched>, BackendError> {
        debug_assert!(!self.layout.is_cluster(), "a cluster reads key by key");
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let counts: Vec<String> = tags.iter().map(|t| t.len().to_string()).collect();
        let mut args: Vec<&str> = Vec::with_capacity(1 + counts.len());
        args.push(self.read_end.as_str());
        args.extend(counts.iter().map(String::as_str));
        let mut names: Vec<&str> = Vec::with_capacity(keys.len() * 2);
        for (key, tags) in keys.iter().zip(tags) {
            names.push(key);
            names.extend(tags.iter().map(String::as_str));
        }
        let read = async {
            let replies: Vec<redis::Value> = self
                .invoke_read(&mut conn, &FETCH_TAGGED_MANY, &names, &args)
                .await?;
            self.entries(replies, keys.len())
        };
        Box::pin(self.run(Gate::Breaker, timeout, read)).await
    }

    /// [`RedisBackend::acquire_lease`] for many keys, in one pipeline;
    /// `tags[i]` are key `i`'s (on a cluster, none: a tagged key's lease
    /// there reads its tags' versions first, see `Backend::acquire_leases`).
    pub(crate) async fn acquire_leases(
        &self,
        asks: &[(&str, LeaseIf)],
        tags: &[&[String]],
        token: u64,
        ttl: Duration,
        tag_for: Duration,
        timeout: Duration,
    ) -> Result<Vec<Result<LeaseOutcome, BackendError>>, BackendError> {
        debug_assert!(!self.is_cluster() || tags.iter().all(|t| t.is_empty()));
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.control()?;
        let scripts = self.scripts();
        let (ttl, tag_ms) = (millis(ttl), millis(tag_for));
        let cmds: Vec<redis::Cmd> = asks
            .iter()
            .zip(tags)
            .map(|((key, cond), tags)| {
                // As `acquire_lease`. (A batch, which refreshes nothing
                // early, never asks `Unchanged`: cargo-mutants' deletion of
                // this arm is equivalent today.)
                let identity = match cond {
                    LeaseIf::Unchanged(meta) => codec::identity(meta),
                    _ => [0; codec::IDENTITY_LEN],
                };
                let (mode, seen): (&str, &[u8]) = match cond {
                    LeaseIf::Absent => ("1", &[]),
                    LeaseIf::Any => ("0", &[]),
                    LeaseIf::Unchanged(_) => ("2", &identity),
                };
                let keys = self.layout.entry(key);
                let tag_keys = self.tag_keys(&keys, tags, &[cluster::LEASE_TAGS, cluster::TAGS]);
                let mut named: Vec<&[u8]> = vec![
                    keys.value.as_bytes(),
                    keys.lease.as_bytes(),
                    keys.epoch.as_bytes(),
                ];
                named.extend(tag_keys.iter().map(|k| k.as_bytes()));
                let mut cmd = evalsha(&scripts.acquire, &named);
                cmd.arg(token).arg(ttl).arg(mode).arg(tag_ms).arg(seen);
                if self.layout.is_cluster() {
                    // Untagged ids (a tagged one is leased as a single
                    // call is: see `Backend::acquire_leases`).
                    cmd.arg("");
                } else {
                    cmd.arg(epoch_seed());
                }
                cmd
            })
            .collect();
        let ask = async {
            let replies = pipeline(&mut conn, &cmds, &[&scripts.acquire]).await?;
            Ok(replies
                .into_iter()
                .map(|reply| -> redis::RedisResult<(i64, u64, String)> {
                    Ok(redis::from_redis_value(reply?)?)
                })
                .collect::<Vec<_>>())
        };
        // One answer per key: an error about one key (a foreign value of
        // another type under its tag's index) fails that key's request
        // alone (an outage fails them all: see `pipeline`).
        let answers = self.run(Gate::Breaker, timeout, ask).await?;
        // (On a cluster.) These entries carry no tags of their own: the
        // versions of those a lease replaces are taken over (a rare case: a
        // key shared with a tagged function), each key at once.
        let take_over =
            answers
                .iter()
                .zip(asks.iter().zip(tags))
                .filter_map(|(answer, ((key, _), tags))| match answer {
                    // Only an acquired lease answers what it replaces.
                    Ok((_, _, replaced)) if !replaced.is_empty() => Some(async move {
                        self.take_over_versions(key, token, replaced, tags, tag_for, timeout)
                            .await
                    }),
                    _ => None,
                });
        for taken in futures_util::future::join_all(take_over).await {
            taken?;
        }
        Ok(answers
            .into_iter()
            .map(|answer| {
                let (outcome, epoch, _) = answer.map_err(BackendError::Redis)?;
                Ok(lease_outcome(outcome, epoch))
            })
            .collect())
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
        let set_if_leased = &self.scripts().set_if_leased;
        let mut unstorable: Vec<Option<BackendError>> = Vec::with_capacity(items.len());
        let cmds: Vec<redis::Cmd> = items
            .iter()
            .map(|item| {
                let keys = self.layout.entry(item.key);
                let lease = keys.lease.as_bytes();
                let key = keys.value.as_bytes();
                let token = item.lease.token;
                let Some((value, meta, keep_for)) = &item.write else {
                    unstorable.push(None);
                    let mut cmd = evalsha(&RELEASE, &[lease]);
                    cmd.arg(token);
                    return cmd;
                };
                match self.encode(*value, meta) {
                    Ok(mut bytes) => {
                        unstorable.push(None);
                        self.mark_if_tagged(&mut bytes, item.tags);
                        let tag_keys =
                            self.tag_keys(&keys, item.tags, &[cluster::TAGS, cluster::LEASE_TAGS]);
                        let mut named: Vec<&[u8]> = vec![key, lease, keys.epoch.as_bytes()];
                        named.extend(tag_keys.iter().map(|k| k.as_bytes()));
                        let mut cmd = evalsha(set_if_leased, &named);
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
                        let mut cmd = evalsha(&DROP_IF_LEASED, &[key, lease]);
                        cmd.arg(token);
                        cmd
                    }
                }
            })
            .collect();
        let scripts: [&redis::Script; 3] = [set_if_leased, &DROP_IF_LEASED, &RELEASE];
        let replies = self
            .run(Gate::Always, timeout, pipeline(&mut conn, &cmds, &scripts))
            .await?;
        let mut answers: Vec<Result<bool, BackendError>> = Vec::with_capacity(items.len());
        // Stored with versions taken over (see `take_over_versions`): still
        // current? Checked all at once, after the rest.
        let mut to_check: Vec<(usize, String)> = Vec::new();
        for (i, ((reply, unstorable), item)) in
            replies.into_iter().zip(unstorable).zip(items).enumerate()
        {
            let answer = match (reply, unstorable) {
                (Err(e), _) => Err(BackendError::Redis(e)),
                (Ok(_), Some(e)) => Err(e),
                // A release answers 0 when the lease was already gone:
                // released all the same.
                (Ok(_), None) if item.write.is_none() => Ok(true),
                (Ok(reply), None) => match Stored::from_reply(reply) {
                    Ok(Stored::No) => Ok(false),
                    Ok(Stored::Yes) => Ok(true),
                    Ok(Stored::WithVersions(held)) => {
                        to_check.push((i, held));
                        Ok(false)
                    }
                    Err(e) => Err(BackendError::Redis(e)),
                },
            };
            answers.push(answer);
        }
        let checks = to_check
            .into_iter()
            .map(|(i, held)| async move { (i, self.still_current(held, &[], timeout).await) });
        for (i, current) in futures_util::future::join_all(checks).await {
            answers[i] = Ok(current);
        }
        Ok(answers)
    }
}

/// What the acquire script's first two answers mean (see [`ACQUIRE_LUA`]).
fn lease_outcome(outcome: i64, epoch: u64) -> LeaseOutcome {
    match outcome {
        1 => LeaseOutcome::Acquired(epoch),
        2 => LeaseOutcome::ValuePresent,
        3 => LeaseOutcome::Changed,
        _ => LeaseOutcome::Held,
    }
}

/// A tag's version, or the versions stored beside an entry, as `GET`
/// answered them on a cluster: `None` if absent, and also if the key holds
/// something else (a value of another kind, bytes that are not text), which
/// can only be someone else's data. Either way nothing is served by it: a
/// marked entry is served only while its versions read as current. Other
/// error replies (LOADING, MASTERDOWN) fail the read.
fn version_text(reply: redis::Value) -> redis::RedisResult<Option<String>> {
    match reply {
        redis::Value::Nil => Ok(None),
        redis::Value::BulkString(bytes) => Ok(String::from_utf8(bytes).ok()),
        redis::Value::ServerError(e) if e.code() == "WRONGTYPE" => Ok(None),
        other => other.extract_error().map(|_| None),
    }
}

/// `UNLINK`s each of `keys`, one key a command, all at once; returns how
/// many were removed. A key of a migrating slot that has moved is answered
/// `ASK`, which the cluster connection follows with `ASKING` and then the
/// command, two requests on the target's shared connection: redirected
/// commands sent at once can take each other's `ASKING` and come back
/// redirected (seen: an invalidation of ten entries of a migrating slot
/// failed with `ASK`). Those are sent again one at a time, each straight
/// to the node its `ASK` named, behind `ASKING` in one pipeline (so that
/// nothing comes between them). Left to the cluster connection, a retry
/// could be redirected back and forth, with backoff, for seconds: an
/// invalidation of 20 entries of a half-moved slot timed out at 2 s now
/// and then in CI.
async fn unlink_where_they_are(
    conn: &ClusterConnection,
    keys: Vec<String>,
) -> redis::RedisResult<u64> {
    let unlink_one = |key: String| {
        let mut conn = conn.clone();
        async move {
            let removed = redis::cmd("UNLINK")
                .arg(&key)
                .query_async::<u64>(&mut conn)
                .await;
            (key, removed)
        }
    };
    let mut removed = 0;
    let mut again = Vec::new();
    // One at a time: sent at once, the cluster connection followed the
    // `ASK`s of several itself, their `ASKING`s taken by each other, and
    // retried them back and forth with backoff past any timeout (1 run in
    // 6 of `invalidations_land_on_a_cluster_that_refuses_their_script`).
    // This is the path of a cluster that refuses scripts, a key a command.
    for key in keys {
        let (key, result) = unlink_one(key).await;
        match result {
            Ok(n) => removed += n,
            Err(e) if redirected(&e) => {
                // `ASK {slot} {host}:{port}`.
                let asked = (e.code() == Some("ASK"))
                    .then(|| e.redirect_node())
                    .flatten()
                    .and_then(|(addr, _slot)| addr.rsplit_once(':'))
                    .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)));
                again.push((key, asked));
            }
            Err(e) => return Err(e),
        }
    }
    for (key, asked) in again {
        if let Some((host, port)) = asked {
            // Boxed: inline, it made every invalidation's future larger, and
            // a debug build's worker overflowed its stack (the checker, in CI).
            match Box::pin(unlink_asked(conn, host, port, &key)).await {
                Ok(n) => {
                    removed += n;
                    continue;
                }
                // Redirected again (the migration moved on): as below.
                Err(e) if redirected(&e) => {}
                Err(e) => return Err(e),
            }
        }
        removed += unlink_one(key).await.1?;
    }
    Ok(removed)
}

/// `UNLINK key` on the node at `host:port`, behind `ASKING` in one
/// pipeline: a node importing the key's slot answers for it.
async fn unlink_asked(
    conn: &ClusterConnection,
    host: String,
    port: u16,
    key: &str,
) -> redis::RedisResult<u64> {
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").cmd("UNLINK").arg(key);
    second_of_two(conn, SingleNodeRoutingInfo::ByAddress { host, port }, pipe).await
}

/// Sends `pipe`, a command and the one it prepares (`ASKING` or `PING`
/// before the command), to `node` on one connection; answers the second
/// reply, or the first's error (a refused `ASKING`, from a rule without
/// it, is the error to report).
async fn second_of_two<T: redis::FromRedisValue>(
    conn: &ClusterConnection,
    node: SingleNodeRoutingInfo,
    pipe: redis::Pipeline,
) -> redis::RedisResult<T> {
    let mut replies = conn
        .clone()
        .route_pipeline(pipe, 0, 2, node)
        .await?
        .into_iter();
    replies
        .next()
        .map(redis::Value::extract_error)
        .transpose()?;
    let reply = replies.next().unwrap_or(redis::Value::Nil);
    Ok(redis::from_redis_value(reply.extract_error()?)?)
}

/// [`RedisBackend::unlink_each`]'s work: the leases `first`, then the
/// values `then`. Each node's share at once; a node that passes over a
/// lease (in a migrating slot, one that has moved, or that never existed)
/// leaves the values for after it.
///
/// What the first node passed over is asked again of its slot's primary
/// by the slot map as it is now (`CLUSTER SLOTS`), alone: redis-rs routes
/// by its own map, which may be stale (a slot moved since this process
/// last used it; a script with no declared keys draws no `MOVED` to
/// correct it), and a node that never served the slot passes over every
/// key while the keys may still be on the real primary (seen in a review).
/// The leases that primary passes over have left it for good, and go to
/// every primary behind `ASKING`. The values it passes over go to it once
/// more first, since one left for after its lease may still be there and
/// `MIGRATE` may take it at any moment: asked at once, the target could
/// answer "not here" before it arrives and the source "gone" after it
/// left (seen in a review, with a `MIGRATE` held up by a large key), and
/// the call return `Ok` with the value on the target. `MIGRATE` removes a
/// key from its source only once the target has it, so a value its
/// primary passed over is on the target, or nowhere.
async fn unlink_wherever(
    conn: &ClusterConnection,
    on: Option<&(String, u16)>,
    first: &[String],
    then: &[String],
) -> redis::RedisResult<u64> {
    let groups: Vec<(SingleNodeRoutingInfo, Vec<&String>, Vec<&String>)> = match on {
        Some((host, port)) => {
            let node = SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            };
            vec![(node, first.iter().collect(), then.iter().collect())]
        }
        None => by_slot(None, first.iter(), then.iter()),
    };
    let (mut removed, leases_over, values_over) = unlink_shares(conn, groups).await?;
    if leases_over.is_empty() && values_over.is_empty() {
        return Ok(removed);
    }
    let map = read_slot_map(conn).await?;
    let groups = by_slot(Some(&map), leases_over.into_iter(), values_over.into_iter());
    let (n, leases_over, values_over) = unlink_shares(conn, groups).await?;
    removed += n;
    if leases_over.is_empty() && values_over.is_empty() {
        return Ok(removed);
    }
    // A lease its primary passed over has left it (it cannot come back):
    // it is on the node importing the slot, or nowhere.
    removed += unlink_elsewhere(conn, &map, leases_over).await?;
    // A value may still be on its slot's primary (left for after its
    // lease), and `MIGRATE` may move it at any moment: asked there first,
    // then, if it had left, where it went.
    let groups = by_slot(Some(&map), std::iter::empty(), values_over.into_iter());
    let (n, _, still) = unlink_shares(conn, groups).await?;
    Ok(removed + n + unlink_elsewhere(conn, &map, still).await?)
}

/// Sends each node its share at once: its leases, then its values (left
/// alone where a lease was passed over). Returns how many keys went, and
/// the leases and the values passed over.
async fn unlink_shares<'k>(
    conn: &ClusterConnection,
    groups: Vec<(SingleNodeRoutingInfo, Vec<&'k String>, Vec<&'k String>)>,
) -> redis::RedisResult<(u64, Vec<&'k String>, Vec<&'k String>)> {
    let mut removed = 0;
    let (mut leases_over, mut values_over) = (Vec::new(), Vec::new());
    let sent = groups.into_iter().map(|(node, first, then)| async move {
        let answer = unlink_here(conn, node, false, &first, &then).await;
        (answer, first, then)
    });
    for (answer, first, then) in futures_util::future::join_all(sent).await {
        let (n, over) = answer?;
        removed += n;
        for i in over {
            match first.get(i) {
                Some(key) => leases_over.push(*key),
                None => values_over.extend(then.get(i - first.len())),
            }
        }
    }
    Ok((removed, leases_over, values_over))
}

/// Keys grouped by slot, each group routed to the primary serving it (by
/// `map`, else by redis-rs's own map): the leases `first`, then the
/// values `then`, of each slot.
fn by_slot<'k>(
    map: Option<&[cluster::SlotRange]>,
    first: impl Iterator<Item = &'k String>,
    then: impl Iterator<Item = &'k String>,
) -> Vec<(SingleNodeRoutingInfo, Vec<&'k String>, Vec<&'k String>)> {
    use redis::cluster_routing::{Route, SlotAddr};
    type Shares<'k> = (Vec<&'k String>, Vec<&'k String>);
    let mut slots: std::collections::BTreeMap<u16, Shares<'k>> = Default::default();
    let slot = |key: &String| u16::try_from(cluster::slot(key.as_bytes())).unwrap_or(0);
    for key in first {
        slots.entry(slot(key)).or_default().0.push(key);
    }
    for key in then {
        slots.entry(slot(key)).or_default().1.push(key);
    }
    slots
        .into_iter()
        .map(|(slot, (first, then))| {
            let owner = map.and_then(|map| {
                map.iter()
                    .find(|range| range.first <= slot && slot <= range.last)
            });
            let node = match owner {
                Some(range) => SingleNodeRoutingInfo::ByAddress {
                    host: range.host.clone(),
                    port: range.port,
                },
                None => SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)),
            };
            (node, first, then)
        })
        .collect()
}

/// Unlinks keys that have left their slot's primary: on every primary of
/// the slot map at once, each call behind `ASKING` (which a node importing
/// their slot obeys); those no primary took (a slot migrating to a node
/// the map does not list yet, which serves no slot) one `UNLINK` a key,
/// which the cluster connection follows to wherever `ASK` sends it.
async fn unlink_elsewhere(
    conn: &ClusterConnection,
    map: &[cluster::SlotRange],
    keys: Vec<&String>,
) -> redis::RedisResult<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let nodes = cluster::primaries(map);
    let asks = nodes.iter().map(|(host, port)| {
        let node = SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        };
        unlink_here(conn, node, true, &[], &keys)
    });
    let mut removed = 0;
    let mut taken = vec![false; keys.len()];
    for answer in futures_util::future::join_all(asks).await {
        let (n, over) = answer?;
        removed += n;
        // `over` ascends, as the script walks its keys.
        for (i, took) in taken.iter_mut().enumerate() {
            if over.binary_search(&i).is_err() {
                *took = true;
            }
        }
    }
    let left: Vec<String> = keys
        .into_iter()
        .zip(taken)
        .filter(|(_, took)| !took)
        .map(|(key, _)| key.clone())
        .collect();
    Ok(removed + unlink_where_they_are(conn, left).await?)
}

/// The cluster's slot map, as one primary sees it (`CLUSTER SLOTS`).
async fn read_slot_map(conn: &ClusterConnection) -> redis::RedisResult<Vec<cluster::SlotRange>> {
    let reply = conn
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    cluster::slot_map(reply)
}

/// Unlinks each key given (as an argument, after their count of leases:
/// `ARGV[1]`) that this node holds now, and passes over the others: a key
/// of a slot the node does not serve, or of a slot it is migrating away
/// that has left it, raises an error that `pcall` catches. Once a lease
/// is passed over, the values after the leases are passed over too (left
/// for the caller to unlink after that lease, wherever it is). Answers how
/// many keys it removed, and the positions (from 0) of those it passed
/// over. No declared keys, and keys of many slots allowed (script flags,
/// Redis 7), so that one call takes a node's share of a batch; and run
/// under `maxmemory` (`allow-oom`), as `UNLINK` is, since it only frees
/// memory (a script that may write is refused there otherwise, and
/// invalidations with it).
const UNLINK_HERE: &str = r"#!lua flags=allow-cross-slot-keys,allow-oom
local leases = tonumber(ARGV[1])
local removed, passed, lease_passed = 0, {}, false
for i = 2, #ARGV do
  local at = i - 2
  if at >= leases and lease_passed then
    passed[#passed + 1] = at
  else
    local n = redis.pcall('UNLINK', ARGV[i])
    if type(n) == 'number' then
      removed = removed + n
    else
      passed[#passed + 1] = at
      lease_passed = lease_passed or at < leases
    end
  end
end
return {removed, passed}
";

/// Sends [`UNLINK_HERE`] with the leases `first` and the values `then`
/// to `node`, in one pipeline behind `ASKING` when `asking` (so that a
/// node importing their slot serves them), else behind `PING` (which
/// clears an `ASKING` the cluster connection sent on the same connection
/// for a redirection of its own, after which the node would answer for
/// keys it has not received yet); returns how many it removed and the
/// indexes (in `first` then `then`) of the keys it passed over.
async fn unlink_here(
    conn: &ClusterConnection,
    node: SingleNodeRoutingInfo,
    asking: bool,
    first: &[&String],
    then: &[&String],
) -> redis::RedisResult<(u64, Vec<usize>)> {
    let mut eval = redis::cmd("EVAL");
    eval.arg(UNLINK_HERE).arg(0).arg(first.len());
    for key in first.iter().chain(then) {
        eval.arg(key.as_str());
    }
    let mut pipe = redis::pipe();
    pipe.cmd(if asking { "ASKING" } else { "PING" });
    pipe.add_command(eval);
    second_of_two(conn, node, pipe).await
}

/// Whether an error says the script of [`unlink_here`] cannot run here at
/// all (no script flags before Redis 7, a rule without `EVAL`), rather
/// than that the server is unwell.
fn is_script_refusal(e: &redis::RedisError) -> bool {
    !e.is_io_error()
        && !e.is_timeout()
        && !super::is_outage(e)
        && e.code()
            .is_some_and(|code| code == "ERR" || code == "NOPERM")
}

/// The keys a scan found that can be the cache's: its keys are text, so a
/// name that is not UTF-8 is someone else's, and is left alone (read as
/// text, one such name failed the whole scan, and the invalidation was
/// retried for ever, keeping this process from the cache meanwhile).
fn ours(keys: Vec<Vec<u8>>) -> Vec<String> {
    keys.into_iter()
        .filter_map(|key| String::from_utf8(key).ok())
        .collect()
}

/// Whether `INCR` was refused for what the key holds: not an integer, or
/// not a string at all.
fn is_not_a_number(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
        || (e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("not an integer")))
}

/// Whether a cluster's answer sends the command elsewhere, or asks it
/// again later, because its slot is moving.
fn redirected(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("ASK" | "MOVED" | "TRYAGAIN"))
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

    /// The errors of `EVALSHA_RO` after which `EVALSHA` is tried (and used
    /// from now on where it answers): any error reply, whatever its words
    /// (Redis 6's, a rule's `NOPERM`, a fork's own, a script's own, which
    /// `EVALSHA` then meets too), but not an outage or a passing state.
    #[test]
    fn any_error_reply_but_a_passing_one_lets_evalsha_decide() {
        let reply = |text: &str| {
            redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply")
        };
        for refusal in [
            "ERR unknown command 'EVALSHA_RO', with args beginning with: 'abc' '1' ",
            "ERR unknown command `EVALSHA_RO`, with args beginning with: `abc`, `1`, ",
            "NOPERM User older-rule has no permissions to run the 'evalsha_ro' command",
            "ERR EVALSHA_RO is not supported here",
            "UNSUPPORTED command",
            "ERR Error running script (call to f_abc): user_script:1: Script attempted to access nonexistent global variable",
        ] {
            assert!(
                super::may_refuse_read_only_scripts(&reply(refusal)),
                "{refusal}"
            );
        }
        for passing in [
            "NOSCRIPT No matching script. Please use EVAL.",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down",
            "CLUSTERDOWN The cluster is down",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(
                !super::may_refuse_read_only_scripts(&reply(passing)),
                "{passing}"
            );
        }
        let cut =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!super::may_refuse_read_only_scripts(&cut), "an outage");
    }
}
