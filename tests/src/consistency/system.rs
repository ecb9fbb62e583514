//! The systems under test: a service whose readers are `#[cached]` in four
//! variants and whose writers update the source and then `#[cache_put]` or
//! `#[cache_evict]` (by key, pattern, prefix, tag); and the control, the
//! seed guide's cache-aside written by hand with the `redis` crate.
//!
//! The source of truth is a `redis-server` that no fault touches: row
//! `(variant, id)` is a counter, its version, bumped with INCR.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cached_runtime::{Cache, cache_evict, cache_put, cached};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use super::history::Variant;

/// Rows per variant.
pub const KEYS: u64 = 8;
/// The readers' `lease`: how long a lease outlives a holder that died.
pub const LEASE: Duration = Duration::from_secs(3);
/// The readers' `wait`: how long a caller waits for another's load.
pub const WAIT: Duration = Duration::from_millis(300);
/// How long the database's row lock outlives a writer that died.
const ROW_LOCK: Duration = Duration::from_millis(1500);

/// A row of the source: which one, and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub variant: Variant,
    pub id: u64,
    pub version: u64,
}

#[derive(Debug, Clone)]
pub enum DbError {
    /// The convergence probe's loader: "not in the cache".
    Probe,
    /// The source failed (it is never faulted: reported as an error that
    /// reached the caller).
    #[allow(dead_code)] // read through `Debug`, in the history
    Source(String),
    /// A query that failed on purpose: one load in [`FAILING_LOADS`]
    /// reads its row and then fails, as a query cut by a deadlock or a
    /// statement timeout does. Never cached: it reaches the caller whose
    /// load it was, and those who shared that load.
    Failed,
}

/// One load in this many fails ([`DbError::Failed`]).
pub const FAILING_LOADS: u32 = 25;

impl From<redis::RedisError> for DbError {
    fn from(e: redis::RedisError) -> DbError {
        DbError::Source(e.to_string())
    }
}

/// What one call's own loader or write body did, filled in as it runs.
/// Passed as an argument (not part of the key), so a background refresh
/// gets a copy too, which is harmless: it only adds to a call already
/// recorded.
#[derive(Debug, Clone, Default)]
pub struct Ctx(Arc<CtxInner>);

#[derive(Debug, Default)]
struct CtxInner {
    own_ns: AtomicU64,
    loads: AtomicU32,
    failed: AtomicU32,
    committed: AtomicU64,
}

impl Ctx {
    fn spent(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.own_ns.fetch_add(ns, SeqCst);
    }

    pub fn own_ns(&self) -> u64 {
        self.0.own_ns.load(SeqCst)
    }

    pub fn loads(&self) -> u32 {
        self.0.loads.load(SeqCst)
    }

    /// How many of [`Ctx::loads`] failed on purpose ([`DbError::Failed`]).
    pub fn failed(&self) -> u32 {
        self.0.failed.load(SeqCst)
    }

    /// The version a write's body committed, once it returned.
    pub fn committed(&self) -> Option<u64> {
        Some(self.0.committed.load(SeqCst)).filter(|v| *v > 0)
    }
}

/// The source of truth.
#[derive(Clone)]
pub struct Db {
    conn: redis::aio::MultiplexedConnection,
}

impl Db {
    pub async fn connect(url: &str) -> Db {
        let client = redis::Client::open(url).expect("a valid source URL");
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("the source answers");
        Db { conn }
    }

    fn row_key(variant: Variant, id: u64) -> String {
        format!("row:{}:{id}", variant.name())
    }

    /// The row's version now (0: never written).
    pub async fn version(&self, variant: Variant, id: u64) -> Result<u64, DbError> {
        let v: Option<u64> = self.conn.clone().get(Db::row_key(variant, id)).await?;
        Ok(v.unwrap_or(0))
    }

    /// A slow query: reads the row, then takes 0-3 ms more before returning
    /// it (the window in which a write can overtake the load).
    pub async fn read_slowly(&self, variant: Variant, id: u64) -> Result<u64, DbError> {
        let v = self.version(variant, id).await?;
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
        Ok(v)
    }

    pub async fn incr(&self, variant: Variant, id: u64) -> Result<u64, DbError> {
        Ok(self.conn.clone().incr(Db::row_key(variant, id), 1).await?)
    }

    /// Takes the row's lock (a writer holds it across its source update and
    /// its cache operation, as a transaction holds a row lock, so writes
    /// of one row reach the cache in the source's order). Gives up after
    /// two seconds.
    pub async fn lock(&self, variant: Variant, id: u64, token: u64) -> bool {
        let key = format!("lock:{}:{id}", variant.name());
        let started = Instant::now();
        let px = u64::try_from(ROW_LOCK.as_millis()).unwrap_or(1500);
        while started.elapsed() < Duration::from_secs(2) {
            let set: Result<Option<String>, _> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(px)
                .query_async(&mut self.conn.clone())
                .await;
            if matches!(set, Ok(Some(_))) {
                return true;
            }
            tokio::time::sleep(Duration::from_micros(500 + fastrand::u64(0..1000))).await;
        }
        false
    }

    /// Releases the row's lock if `token` still holds it; `false`: it had
    /// expired (the write took longer than the lock lives).
    pub async fn unlock(&self, variant: Variant, id: u64, token: u64) -> bool {
        let released: Result<i64, _> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(format!("lock:{}:{id}", variant.name()))
        .arg(token)
        .invoke_async(&mut self.conn.clone())
        .await;
        matches!(released, Ok(1))
    }
}

/// The service in front of the source, shared by the four variants.
#[derive(Clone)]
pub struct Svc {
    pub cache: Cache,
    pub db: Db,
    /// Probe mode: every loader fails at once, so a call returns only what
    /// the cache holds (fresh or stale) and stores nothing.
    pub probe: Arc<AtomicBool>,
    /// Whether loads fail on purpose now and then ([`DbError::Failed`]):
    /// while the workers run, not in the recovery after them.
    pub failures: Arc<AtomicBool>,
}

impl Svc {
    pub fn new(cache: Cache, db: Db) -> Svc {
        Svc {
            cache,
            db,
            probe: Arc::default(),
            failures: Arc::new(AtomicBool::new(true)),
        }
    }

    async fn load(&self, variant: Variant, id: u64, ctx: &Ctx) -> Result<Row, DbError> {
        if self.probe.load(SeqCst) {
            return Err(DbError::Probe);
        }
        let started = Instant::now();
        ctx.0.loads.fetch_add(1, SeqCst);
        let version = self.db.read_slowly(variant, id).await;
        ctx.spent(started);
        let version = version?;
        if self.failures.load(SeqCst) && fastrand::u32(..FAILING_LOADS) == 0 {
            ctx.0.failed.fetch_add(1, SeqCst);
            return Err(DbError::Failed);
        }
        Ok(Row {
            variant,
            id,
            version,
        })
    }

    /// A batch's query: each row read as [`Svc::load`] reads one.
    async fn load_many(
        &self,
        variant: Variant,
        ids: Vec<u64>,
        ctx: &Ctx,
    ) -> Result<HashMap<u64, Row>, DbError> {
        let mut rows = HashMap::with_capacity(ids.len());
        for id in ids {
            rows.insert(id, self.load(variant, id, ctx).await?);
        }
        Ok(rows)
    }

    /// A write's transaction: now and then (one in 30) a slow one, 120 to
    /// 400 ms of work before the commit while it holds the row's lock, as a
    /// transaction stalled on a lock or a slow disk is: loads of the old
    /// row, leases and their stores, and shared reads of other processes
    /// overlap it far longer than the 0-3 ms of a quick one.
    async fn commit(&self, variant: Variant, id: u64, ctx: &Ctx) -> Result<Row, DbError> {
        let started = Instant::now();
        if fastrand::u32(..30) == 0 {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(120..400))).await;
        }
        let version = self.db.incr(variant, id).await;
        ctx.spent(started);
        let version = version?;
        ctx.0.committed.store(version, SeqCst);
        Ok(Row {
            variant,
            id,
            version,
        })
    }
}

// The four variants, written out: the attributes take string literals, and
// a `macro_rules!` would hide the parameters from their templates (hygiene).
// Every variant has a reader and the same writers; keys are
// `{prefix}:{id}:row`. `evict_pattern_one` evicts `{prefix}:{id}:*` (the
// row's key and its lease); `evict_pattern_all` evicts `{prefix}:*:row`
// (every row of the variant, as `user:*:profile` would, not their leases).
// The readers' `lease` and `wait` are [`LEASE`] and [`WAIT`].

/// The `plain` variant (`ttl = "2s"`).
#[derive(Clone)]
pub struct Plain(pub Svc);

impl Plain {
    #[cached(prefix = "plain", key = "{id}:row", cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "2s")]
    pub async fn read(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.load(Variant::Plain, id, &ctx).await
    }

    /// The batch reader of the same entries.
    #[cached(prefix = "plain", key = "{ids}:row", batch = ids, cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "2s")]
    pub async fn read_many(&self, ids: Vec<u64>, ctx: Ctx) -> Result<HashMap<u64, Row>, DbError> {
        self.0.load_many(Variant::Plain, ids, &ctx).await
    }

    #[cache_put(prefix = "plain", key = "{id}:row", cache = self.0.cache, ttl = "2s")]
    pub async fn put(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.commit(Variant::Plain, id, &ctx).await
    }

    #[cache_evict(keys = ["plain:{id}:row"], cache = self.0.cache)]
    pub async fn evict_key(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Plain, id, &ctx).await
    }

    #[cache_evict(patterns = ["plain:{id}:*"], cache = self.0.cache)]
    pub async fn evict_pattern_one(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Plain, id, &ctx).await
    }

    #[cache_evict(patterns = ["plain:*:row"], cache = self.0.cache)]
    pub async fn evict_pattern_all(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Plain, id, &ctx).await
    }

    #[cache_evict(prefixes = ["plain"], cache = self.0.cache)]
    pub async fn evict_prefix(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Plain, id, &ctx).await
    }
}

/// The `stale` variant (`ttl = "1s", stale = "2s"`).
#[derive(Clone)]
pub struct Stale(pub Svc);

impl Stale {
    #[cached(prefix = "stale", key = "{id}:row", cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "1s", stale = "2s")]
    pub async fn read(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.load(Variant::Stale, id, &ctx).await
    }

    /// The same entries, read with `soft_timeout` (the odd ids): a caller
    /// of a stale entry waits up to 30 ms for its refresh.
    #[cached(prefix = "stale", key = "{id}:row", cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "1s", stale = "2s", soft_timeout = "30ms")]
    pub async fn read_soft(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.load(Variant::Stale, id, &ctx).await
    }

    #[cache_put(prefix = "stale", key = "{id}:row", cache = self.0.cache, ttl = "1s", stale = "2s")]
    pub async fn put(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.commit(Variant::Stale, id, &ctx).await
    }

    #[cache_evict(keys = ["stale:{id}:row"], cache = self.0.cache)]
    pub async fn evict_key(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Stale, id, &ctx).await
    }

    #[cache_evict(patterns = ["stale:{id}:*"], cache = self.0.cache)]
    pub async fn evict_pattern_one(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Stale, id, &ctx).await
    }

    #[cache_evict(patterns = ["stale:*:row"], cache = self.0.cache)]
    pub async fn evict_pattern_all(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Stale, id, &ctx).await
    }

    #[cache_evict(prefixes = ["stale"], cache = self.0.cache)]
    pub async fn evict_prefix(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Stale, id, &ctx).await
    }
}

/// The `early` variant (`ttl = "1s", early_refresh = 200.0`).
#[derive(Clone)]
pub struct Early(pub Svc);

impl Early {
    #[cached(prefix = "early", key = "{id}:row", cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "1s", early_refresh = 200.0)]
    pub async fn read(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.load(Variant::Early, id, &ctx).await
    }

    /// The batch reader of the same entries (which it does not refresh).
    #[cached(prefix = "early", key = "{ids}:row", batch = ids, cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "1s")]
    pub async fn read_many(&self, ids: Vec<u64>, ctx: Ctx) -> Result<HashMap<u64, Row>, DbError> {
        self.0.load_many(Variant::Early, ids, &ctx).await
    }

    #[cache_put(prefix = "early", key = "{id}:row", cache = self.0.cache, ttl = "1s")]
    pub async fn put(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.commit(Variant::Early, id, &ctx).await
    }

    #[cache_evict(keys = ["early:{id}:row"], cache = self.0.cache)]
    pub async fn evict_key(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Early, id, &ctx).await
    }

    #[cache_evict(patterns = ["early:{id}:*"], cache = self.0.cache)]
    pub async fn evict_pattern_one(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Early, id, &ctx).await
    }

    #[cache_evict(patterns = ["early:*:row"], cache = self.0.cache)]
    pub async fn evict_pattern_all(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Early, id, &ctx).await
    }

    #[cache_evict(prefixes = ["early"], cache = self.0.cache)]
    pub async fn evict_prefix(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Early, id, &ctx).await
    }
}

/// The `tagged` variant (`ttl = "2s", tags = ["grp:{group}"]`).
#[derive(Clone)]
pub struct Tagged(pub Svc);

impl Tagged {
    #[cached(prefix = "tagged", key = "{id}:row", cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "2s", tags = ["grp:{group}"])]
    pub async fn read(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.load(Variant::Tagged, id, &ctx).await
    }

    /// The batch reader of the same entries: rows of one group (whose tag
    /// is a parameter, as in the single reader), each under it.
    #[cached(prefix = "tagged", key = "{ids}:row", batch = ids, cache = self.0.cache, lease = "3s", wait = "300ms", ttl = "2s", tags = ["grp:{group}"])]
    pub async fn read_many(
        &self,
        ids: Vec<u64>,
        group: u64,
        ctx: Ctx,
    ) -> Result<HashMap<u64, Row>, DbError> {
        let _ = group;
        self.0.load_many(Variant::Tagged, ids, &ctx).await
    }

    #[cache_put(prefix = "tagged", key = "{id}:row", cache = self.0.cache, ttl = "2s", tags = ["grp:{group}"])]
    pub async fn put(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.commit(Variant::Tagged, id, &ctx).await
    }

    #[cache_evict(keys = ["tagged:{id}:row"], cache = self.0.cache)]
    pub async fn evict_key(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Tagged, id, &ctx).await
    }

    #[cache_evict(patterns = ["tagged:{id}:*"], cache = self.0.cache)]
    pub async fn evict_pattern_one(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Tagged, id, &ctx).await
    }

    #[cache_evict(patterns = ["tagged:*:row"], cache = self.0.cache)]
    pub async fn evict_pattern_all(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Tagged, id, &ctx).await
    }

    #[cache_evict(prefixes = ["tagged"], cache = self.0.cache)]
    pub async fn evict_prefix(&self, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        self.0.commit(Variant::Tagged, id, &ctx).await
    }
}

impl Tagged {
    /// Every row of the group (`id % 2`).
    #[cache_evict(tags = ["grp:{group}"], cache = self.0.cache)]
    pub async fn evict_tag(&self, id: u64, group: u64, ctx: Ctx) -> Result<Row, DbError> {
        let _ = group;
        self.0.commit(Variant::Tagged, id, &ctx).await
    }
}

/// The tag group of a row.
pub fn group(id: u64) -> u64 {
    id % 2
}

/// The four variants over one service.
#[derive(Clone)]
pub struct Framework {
    pub svc: Svc,
    pub plain: Plain,
    pub stale: Stale,
    pub early: Early,
    pub tagged: Tagged,
}

impl Framework {
    pub fn new(svc: Svc) -> Framework {
        Framework {
            plain: Plain(svc.clone()),
            stale: Stale(svc.clone()),
            early: Early(svc.clone()),
            tagged: Tagged(svc.clone()),
            svc,
        }
    }

    pub async fn read(&self, variant: Variant, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        let g = group(id);
        match variant {
            Variant::Plain => self.plain.read(id, g, ctx).await,
            Variant::Stale if id % 2 == 1 => self.stale.read_soft(id, g, ctx).await,
            Variant::Stale => self.stale.read(id, g, ctx).await,
            Variant::Early => self.early.read(id, g, ctx).await,
            Variant::Tagged => self.tagged.read(id, g, ctx).await,
        }
    }

    /// The reader's `_refresh` companion: the row read from the source,
    /// replacing its entry (`stale`: the reader without `soft_timeout`).
    pub async fn refresh(&self, variant: Variant, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        let g = group(id);
        match variant {
            Variant::Plain => self.plain.read_refresh(id, g, ctx).await,
            Variant::Stale => self.stale.read_refresh(id, g, ctx).await,
            Variant::Early => self.early.read_refresh(id, g, ctx).await,
            Variant::Tagged => self.tagged.read_refresh(id, g, ctx).await,
        }
    }

    /// A batch read of `ids` (the variants with a batch reader: `plain`,
    /// `early`, and `tagged`, whose ids are of one group).
    pub async fn read_many(
        &self,
        variant: Variant,
        ids: Vec<u64>,
        ctx: Ctx,
    ) -> Result<HashMap<u64, Row>, DbError> {
        match variant {
            Variant::Plain => self.plain.read_many(ids, ctx).await,
            Variant::Early => self.early.read_many(ids, ctx).await,
            Variant::Tagged => {
                let g = ids.first().copied().map_or(0, group);
                debug_assert!(ids.iter().all(|id| group(*id) == g), "one group");
                self.tagged.read_many(ids, g, ctx).await
            }
            Variant::Stale => unreachable!("no batch reader"),
        }
    }

    pub async fn write(
        &self,
        op: super::history::Op,
        variant: Variant,
        id: u64,
        ctx: Ctx,
    ) -> Result<Row, DbError> {
        use super::history::Op;
        let g = group(id);
        macro_rules! on {
            ($v:expr) => {
                match op {
                    Op::Put => $v.put(id, g, ctx).await,
                    Op::EvictKey => $v.evict_key(id, ctx).await,
                    Op::EvictPatternOne => $v.evict_pattern_one(id, ctx).await,
                    Op::EvictPatternAll => $v.evict_pattern_all(id, ctx).await,
                    Op::EvictPrefix => $v.evict_prefix(id, ctx).await,
                    Op::EvictTag | Op::Read | Op::BatchRead | Op::Refresh => {
                        unreachable!("not a write of every variant")
                    }
                }
            };
        }
        match (variant, op) {
            (Variant::Tagged, Op::EvictTag) => self.tagged.evict_tag(id, g, ctx).await,
            (Variant::Plain, _) => on!(self.plain),
            (Variant::Stale, _) => on!(self.stale),
            (Variant::Early, _) => on!(self.early),
            (Variant::Tagged, _) => on!(self.tagged),
        }
    }
}

/// The control: the seed guide's cache-aside by hand. GET; on a miss read
/// the source and SET it with a TTL; writers update the source and DEL.
/// It has the stale-set race that leases close, so the checker must find
/// violations in it.
#[derive(Clone)]
pub struct HandWritten {
    pub conn: redis::aio::ConnectionManager,
    pub db: Db,
    pub op_timeout: Duration,
}

impl HandWritten {
    pub async fn connect(cache_url: &str, db: Db, op_timeout: Duration) -> HandWritten {
        let client = redis::Client::open(cache_url).expect("a valid cache URL");
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_millis(250)));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .expect("a lazy connection");
        HandWritten {
            conn,
            db,
            op_timeout,
        }
    }

    pub fn key(variant: Variant, id: u64) -> String {
        format!("hand:{}:{id}", variant.name())
    }

    pub async fn read(&self, variant: Variant, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        let key = HandWritten::key(variant, id);
        let mut conn = self.conn.clone();
        let got = tokio::time::timeout(self.op_timeout, conn.get::<_, Option<u64>>(&key)).await;
        if let Ok(Ok(Some(version))) = got {
            return Ok(Row {
                variant,
                id,
                version,
            });
        }
        let started = Instant::now();
        ctx.0.loads.fetch_add(1, SeqCst);
        let version = self.db.read_slowly(variant, id).await;
        ctx.spent(started);
        let version = version?;
        let _ =
            tokio::time::timeout(self.op_timeout, conn.set_ex::<_, _, ()>(&key, version, 2)).await;
        Ok(Row {
            variant,
            id,
            version,
        })
    }

    pub async fn write(&self, variant: Variant, id: u64, ctx: Ctx) -> Result<Row, DbError> {
        let started = Instant::now();
        let version = self.db.incr(variant, id).await;
        ctx.spent(started);
        let version = version?;
        ctx.0.committed.store(version, SeqCst);
        let mut conn = self.conn.clone();
        let _ = tokio::time::timeout(
            self.op_timeout,
            conn.del::<_, ()>(HandWritten::key(variant, id)),
        )
        .await;
        Ok(Row {
            variant,
            id,
            version,
        })
    }
}

/// The system a worker drives.
#[derive(Clone)]
pub enum System {
    Framework(Box<Framework>),
    HandWritten(HandWritten),
}
