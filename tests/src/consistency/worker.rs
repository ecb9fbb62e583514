//! A worker: tasks that call the system at random (reads, and writes that
//! update the source and then the cache), drop some calls at a random
//! deadline, and record every call. In Redis mode each worker is a process
//! of its own (this binary, re-executed with [`ENV`] set); in memory mode
//! the orchestrator runs one in-process.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use cached_runtime::Cache;
use serde::{Deserialize, Serialize};

use super::history::{Call, Counters, Op, Outcome, Record, Recorder, Variant, now_ns};
use super::system::{Ctx, Db, DbError, Framework, HandWritten, KEYS, Svc, System, group};

/// Set (to the JSON of a [`WorkerConfig`]) in a worker process.
pub const ENV: &str = "CONSISTENCY_WORKER";

/// The cache's operation timeout, everywhere.
pub const OP_TIMEOUT: Duration = Duration::from_millis(50);

/// Share of calls dropped at a random deadline, by `tokio::time::timeout`
/// and by `select!` against a sleep.
const DROP_BY_TIMEOUT: f64 = 0.15;
const DROP_BY_SELECT: f64 = 0.1;
/// The longest such deadline, µs.
const MAX_DEADLINE_US: u64 = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub proc: u32,
    pub seed: u64,
    pub hand_written: bool,
    /// The cache's Redis (through the proxy); `None`: the memory backend.
    pub cache_url: Option<String>,
    pub source_url: String,
    pub namespace: String,
    pub history: PathBuf,
    pub tasks: u32,
    /// The kinds of write to make (empty: all of them).
    pub writes: Vec<Op>,
    /// Redis with the near tier in front of it (each process an L1 of
    /// its own).
    #[serde(default)]
    pub near: bool,
    /// A Redis Cluster's seed nodes instead of `cache_url` (not empty:
    /// the cluster backend).
    #[serde(default)]
    pub cluster_urls: Vec<String>,
}

/// A worker process's `main`: runs until its stdin closes (the
/// orchestrator's stop), then exits.
pub fn main_worker(json: &str) -> ! {
    let config: WorkerConfig = serde_json::from_str(json).expect("a worker configuration");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, SeqCst);
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let url = config
            .cache_url
            .clone()
            .or_else(|| config.cluster_urls.first().cloned())
            .expect("a worker process runs on Redis");
        let system = build(&config, &url).await;
        run(&config, system, stop).await;
    });
    std::process::exit(0)
}

/// The system of a worker on the cache at `cache_url` (or on the cluster
/// of `config.cluster_urls`).
async fn build(config: &WorkerConfig, cache_url: &str) -> System {
    let db = Db::connect(&config.source_url).await;
    if config.hand_written {
        return System::HandWritten(HandWritten::connect(cache_url, db, OP_TIMEOUT).await);
    }
    let builder = if config.cluster_urls.is_empty() {
        Cache::builder().redis(cache_url)
    } else {
        Cache::builder().redis_cluster(config.cluster_urls.clone())
    };
    let mut builder = builder
        .namespace(config.namespace.clone())
        .op_timeout(OP_TIMEOUT);
    if config.near {
        builder = builder.near_cache(cached_runtime::NearCache::new());
    }
    let cache = builder.build().expect("a valid cache");
    System::Framework(Box::new(Framework::new(Svc::new(cache, db))))
}

/// The framework on a cache built by the caller (memory mode, probes).
pub async fn framework(cache: Cache, source_url: &str) -> Framework {
    Framework::new(Svc::new(cache, Db::connect(source_url).await))
}

/// Runs the tasks until `stop`, waits for the calls in flight, gives
/// background refreshes a moment to finish, and flushes the history.
pub async fn run(config: &WorkerConfig, system: System, stop: Arc<AtomicBool>) {
    let (recorder, writer) = Recorder::to_file(&config.history);
    let done = Arc::new(AtomicBool::new(false));
    let stalls = tokio::spawn(watch_stalls(
        config.proc,
        recorder.clone(),
        Arc::clone(&done),
    ));
    let mut tasks = Vec::new();
    for task in 0..config.tasks {
        let rng = fastrand::Rng::with_seed(
            config
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(task)),
        );
        let ctx = TaskCtx {
            proc: config.proc,
            task,
            system: system.clone(),
            db: match &system {
                System::Framework(f) => f.svc.db.clone(),
                System::HandWritten(h) => h.db.clone(),
            },
            recorder: recorder.clone(),
            writes: config.writes.clone(),
        };
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(ctx.drive(rng, stop)));
    }
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("worker {}: a task failed: {e}", config.proc);
        }
    }
    // Background refreshes and lease releases run in tasks of their own.
    tokio::time::sleep(Duration::from_millis(400)).await;
    if let System::Framework(f) = &system {
        recorder.record(Record::Stats {
            proc: config.proc,
            counters: Counters::of(&f.svc.cache),
        });
    }
    done.store(true, SeqCst);
    let _ = stalls.await;
    drop(recorder);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
}

/// Records the times the process's scheduler ran a 10 ms timer more than
/// 20 ms late: every call of the process was held up by the machine then.
async fn watch_stalls(proc: u32, recorder: Recorder, done: Arc<AtomicBool>) {
    const TICK: Duration = Duration::from_millis(10);
    while !done.load(SeqCst) {
        let started = Instant::now();
        let start = now_ns();
        tokio::time::sleep(TICK).await;
        let late = started.elapsed().saturating_sub(TICK);
        if late > Duration::from_millis(20) {
            recorder.record(Record::Stall {
                proc,
                start: start + 10_000_000,
                end: now_ns(),
            });
        }
    }
}

struct TaskCtx {
    proc: u32,
    task: u32,
    system: System,
    db: Db,
    recorder: Recorder,
    writes: Vec<Op>,
}

/// How a caller gives up on a call.
#[derive(Clone, Copy)]
enum Deadline {
    None,
    Timeout(Duration),
    Select(Duration),
}

impl Deadline {
    fn pick(rng: &mut fastrand::Rng) -> Deadline {
        let r = rng.f64();
        let d = Duration::from_micros(rng.u64(0..MAX_DEADLINE_US));
        if r < DROP_BY_TIMEOUT {
            Deadline::Timeout(d)
        } else if r < DROP_BY_TIMEOUT + DROP_BY_SELECT {
            Deadline::Select(d)
        } else {
            Deadline::None
        }
    }

    fn ns(self) -> Option<u64> {
        match self {
            Deadline::None => None,
            Deadline::Timeout(d) | Deadline::Select(d) => {
                Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            }
        }
    }

    /// `None`: the call was dropped.
    async fn run<T>(self, fut: impl Future<Output = T>) -> Option<T> {
        match self {
            Deadline::None => Some(fut.await),
            Deadline::Timeout(d) => tokio::time::timeout(d, fut).await.ok(),
            Deadline::Select(d) => {
                tokio::select! {
                    v = fut => Some(v),
                    () = tokio::time::sleep(d) => None,
                }
            }
        }
    }
}

/// Share of a variant's calls that are writes. The `stale` and `early`
/// rows are written rarely, so that their entries live past their TTL
/// (served stale) or near it (refreshed early) between writes.
fn write_share(variant: Variant) -> f64 {
    match variant {
        Variant::Plain | Variant::Tagged => 0.3,
        Variant::Stale => 0.02,
        Variant::Early => 0.05,
    }
}

/// Share of the `plain`, `early` and `tagged` reads made in a batch.
const BATCH_SHARE: f64 = 0.25;

/// Share of the single reads made through the reader's `_refresh`
/// companion (small: the `stale` and `early` rows must live past, or near,
/// their TTL between changes).
const REFRESH_SHARE: f64 = 0.05;

/// A random call: what, on which row.
fn pick(rng: &mut fastrand::Rng, hand_written: bool, only: &[Op]) -> (Op, Variant, u64) {
    let variant = Variant::ALL[rng.usize(..Variant::ALL.len())];
    let key = rng.u64(..KEYS);
    if rng.f64() >= write_share(variant) {
        // A quarter of the reads of the variants with a batch reader read
        // the row in a batch.
        let batch = !hand_written
            && matches!(variant, Variant::Plain | Variant::Early | Variant::Tagged)
            && rng.f64() < BATCH_SHARE;
        let op = if batch {
            Op::BatchRead
        } else if !hand_written && rng.f64() < REFRESH_SHARE {
            Op::Refresh
        } else {
            Op::Read
        };
        return (op, variant, key);
    }
    if hand_written {
        return (Op::EvictKey, variant, key);
    }
    let mut writes = vec![Op::Put, Op::Put, Op::EvictKey, Op::EvictPatternOne];
    // Evictions of every row of the variant: not of the rarely written ones.
    if matches!(variant, Variant::Plain | Variant::Tagged) {
        writes.extend([Op::EvictPatternAll, Op::EvictPrefix]);
    }
    if variant == Variant::Tagged {
        writes.push(Op::EvictTag);
    }
    if !only.is_empty() {
        writes.retain(|w| only.contains(w));
        if writes.is_empty() {
            return (Op::Read, variant, key);
        }
    }
    (writes[rng.usize(..writes.len())], variant, key)
}

impl TaskCtx {
    async fn drive(self, mut rng: fastrand::Rng, stop: Arc<AtomicBool>) {
        let hand_written = matches!(self.system, System::HandWritten(_));
        while !stop.load(SeqCst) {
            let (op, variant, key) = pick(&mut rng, hand_written, &self.writes);
            let deadline = Deadline::pick(&mut rng);
            if op.is_write() {
                self.write(op, variant, key, deadline, rng.u64(1..)).await;
            } else if op == Op::BatchRead {
                // The row and up to three others of the variant (of its
                // group, for `tagged`: the batch's tag is a parameter).
                let mut ids = vec![key];
                for _ in 0..rng.usize(1..4) {
                    let mut other = rng.u64(..KEYS);
                    if variant == Variant::Tagged {
                        other = other - group(other) + group(key);
                    }
                    if !ids.contains(&other) {
                        ids.push(other);
                    }
                }
                self.batch_read(variant, ids, deadline).await;
            } else {
                self.read(op, variant, key, deadline).await;
            }
            tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
        }
    }

    /// A single read (`Op::Read`), or a refresh (`Op::Refresh`).
    async fn read(&self, op: Op, variant: Variant, key: u64, deadline: Deadline) {
        let ctx = Ctx::default();
        let invoke = now_ns();
        let (got, served) = match &self.system {
            System::Framework(f) => {
                let call = async {
                    if op == Op::Refresh {
                        f.refresh(variant, key, ctx.clone()).await
                    } else {
                        f.read(variant, key, ctx.clone()).await
                    }
                };
                match deadline.run(cached_runtime::with_outcome(call)).await {
                    Some((got, served)) => (Some(got), served),
                    None => (None, None),
                }
            }
            System::HandWritten(h) => (deadline.run(h.read(variant, key, ctx.clone())).await, None),
        };
        let complete = now_ns();
        let outcome = match got {
            None => Outcome::Dropped,
            Some(Ok(row)) if row.variant == variant && row.id == key => Outcome::Read(row.version),
            Some(Ok(row)) => Outcome::Error(format!("another row's value: {row:?}")),
            Some(Err(DbError::Failed)) => Outcome::Failed,
            Some(Err(e)) => Outcome::Error(format!("{e:?}")),
        };
        self.record(
            op, variant, key, invoke, complete, outcome, &ctx, deadline, served,
        );
    }

    /// A batch read, recorded as one call per row with the batch's times
    /// (and its loads and own time, which all of them share).
    async fn batch_read(&self, variant: Variant, ids: Vec<u64>, deadline: Deadline) {
        let System::Framework(f) = &self.system else {
            return;
        };
        let ctx = Ctx::default();
        let invoke = now_ns();
        let (got, served) = match deadline
            .run(cached_runtime::with_outcome(f.read_many(
                variant,
                ids.clone(),
                ctx.clone(),
            )))
            .await
        {
            Some((got, served)) => (Some(got), served),
            None => (None, None),
        };
        let complete = now_ns();
        for id in ids {
            let outcome = match &got {
                None => Outcome::Dropped,
                Some(Ok(rows)) => match rows.get(&id) {
                    Some(row) if row.variant == variant && row.id == id => {
                        Outcome::Read(row.version)
                    }
                    Some(row) => Outcome::Error(format!("another row's value: {row:?}")),
                    None => Outcome::Error("absent from the batch's map".into()),
                },
                Some(Err(DbError::Failed)) => Outcome::Failed,
                Some(Err(e)) => Outcome::Error(format!("{e:?}")),
            };
            self.record(
                Op::BatchRead,
                variant,
                id,
                invoke,
                complete,
                outcome,
                &ctx,
                deadline,
                served,
            );
        }
    }

    async fn write(&self, op: Op, variant: Variant, key: u64, deadline: Deadline, token: u64) {
        // The row lock is the database's, held around the whole write (the
        // source update and the cache operation), outside the deadline.
        if !self.db.lock(variant, key, token).await {
            return;
        }
        let ctx = Ctx::default();
        let invoke = now_ns();
        let got = match &self.system {
            System::Framework(f) => deadline.run(f.write(op, variant, key, ctx.clone())).await,
            System::HandWritten(h) => deadline.run(h.write(variant, key, ctx.clone())).await,
        };
        let complete = now_ns();
        if !self.db.unlock(variant, key, token).await {
            self.recorder.record(Record::LockExpired {
                proc: self.proc,
                variant,
                key,
                at: now_ns(),
            });
        }
        let outcome = match got {
            None => Outcome::Dropped,
            Some(Ok(row)) => Outcome::Wrote(row.version),
            Some(Err(e)) => Outcome::Error(format!("{e:?}")),
        };
        self.record(
            op, variant, key, invoke, complete, outcome, &ctx, deadline, None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        op: Op,
        variant: Variant,
        key: u64,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
        ctx: &Ctx,
        deadline: Deadline,
        served: Option<cached_runtime::Outcome>,
    ) {
        self.recorder.record(Record::Call(Call {
            proc: self.proc,
            task: self.task,
            op,
            variant,
            key,
            invoke,
            complete,
            outcome,
            committed: ctx.committed(),
            own_ns: ctx.own_ns(),
            loads: ctx.loads(),
            failed_loads: ctx.failed(),
            deadline_ns: deadline.ns(),
            served: served.map(|o| format!("{o:?}")),
        }));
    }
}
