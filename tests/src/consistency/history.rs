//! The history: every call a worker made, as one JSON line each, on one
//! clock that every process on the machine shares (`SystemTime`, in
//! nanoseconds since the epoch), plus what the orchestrator did (faults).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Nanoseconds since the epoch: comparable across processes on one machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The cached functions under test, one per set of options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// TTL only.
    Plain,
    /// `stale`: served past its TTL while refreshed in the background.
    Stale,
    /// `early_refresh`: refreshed in the background before its TTL.
    Early,
    /// `tags`: evictable by tag.
    Tagged,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Plain,
        Variant::Stale,
        Variant::Early,
        Variant::Tagged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Stale => "stale",
            Variant::Early => "early",
            Variant::Tagged => "tagged",
        }
    }
}

/// What a call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A `#[cached]` reader.
    Read,
    /// A `#[cached(batch)]` reader of the row and a few others (one call
    /// recorded per row, with the batch's times).
    BatchRead,
    /// The reader's `{name}_refresh` companion: reads the source and
    /// replaces the entry (returns the version it read, so it is checked
    /// as a read; what it stores, by the reads after it). Serialized last,
    /// so that histories recorded before it still parse.
    Refresh,
    /// Source update, then `#[cache_put]` of the new row.
    Put,
    /// Source update, then `#[cache_evict(keys = ...)]`.
    EvictKey,
    /// Source update, then `#[cache_evict(patterns = ["{prefix}:{id}:*"])]`
    /// (the pattern also matches the key's lease).
    EvictPatternOne,
    /// Source update, then `#[cache_evict(patterns = ["{prefix}:*:row"])]`
    /// (every row of the variant; the pattern does not match leases).
    EvictPatternAll,
    /// Source update, then `#[cache_evict(prefixes = ["{prefix}"])]`.
    EvictPrefix,
    /// Source update, then `#[cache_evict(tags = ["grp:{group}"])]`.
    EvictTag,
}

impl Op {
    pub const WRITES: [Op; 6] = [
        Op::Put,
        Op::EvictKey,
        Op::EvictPatternOne,
        Op::EvictPatternAll,
        Op::EvictPrefix,
        Op::EvictTag,
    ];

    pub fn is_write(self) -> bool {
        !self.is_read()
    }

    pub fn is_read(self) -> bool {
        matches!(self, Op::Read | Op::BatchRead | Op::Refresh)
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::BatchRead => "batch_read",
            Op::Refresh => "refresh",
            Op::Put => "put",
            Op::EvictKey => "evict_key",
            Op::EvictPatternOne => "evict_pattern_one",
            Op::EvictPatternAll => "evict_pattern_all",
            Op::EvictPrefix => "evict_prefix",
            Op::EvictTag => "evict_tag",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A read returned this version of the row.
    Read(u64),
    /// A write returned: the source now has this version, and the cache
    /// operation after it returned too.
    Wrote(u64),
    /// The caller was dropped (its deadline passed) before the call returned.
    Dropped,
    /// The call returned an error (none should: the source never fails
    /// but on purpose).
    Error(String),
    /// The call returned the source's failure on purpose
    /// (`DbError::Failed`): of a load of its own, or of one it shared.
    Failed,
}

/// One call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The process (unique per spawned worker, replacements included).
    pub proc: u32,
    pub task: u32,
    pub op: Op,
    pub variant: Variant,
    pub key: u64,
    /// When the call was made and when it returned or was dropped.
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
    /// Writes: the version the body wrote to the source, if the body
    /// returned (so a dropped write may still have changed the source and
    /// left only the cache operation undone).
    pub committed: Option<u64>,
    /// Time spent in this call's own loader or write body, ns.
    pub own_ns: u64,
    /// How many times this call's own loader ran.
    pub loads: u32,
    /// How many of those loads failed on purpose.
    #[serde(default)]
    pub failed_loads: u32,
    /// The deadline the caller gave the call, if any, ns.
    pub deadline_ns: Option<u64>,
    /// What the cache did for a read that returned (the name of its
    /// `cached_runtime::Outcome`: `Hit`, `Coalesced`, ...; a batch's, for
    /// each of its rows). `None` for writes and the hand-written system.
    #[serde(default)]
    pub served: Option<String>,
}

impl Call {
    pub fn object(&self) -> (Variant, u64) {
        (self.variant, self.key)
    }

    pub fn took_ns(&self) -> u64 {
        self.complete.saturating_sub(self.invoke)
    }
}

/// A line of a history file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Call(Call),
    /// The process's scheduler did not run a 10 ms timer for this long:
    /// the machine, not the cache, held every call of the process up.
    Stall {
        proc: u32,
        start: u64,
        end: u64,
    },
    /// The cache's counters at the end of a worker (every cache name
    /// summed): what the workload exercised.
    Stats {
        proc: u32,
        counters: Counters,
    },
    /// A writer's row lock (the database's) expired while held: writes of
    /// the object may have reached the cache out of order.
    LockExpired {
        proc: u32,
        variant: Variant,
        key: u64,
        at: u64,
    },
}

/// Sums of `cached_runtime::CacheStats` fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub stale_served: u64,
    pub early_refreshes: u64,
    pub stale_refreshes: u64,
    pub coalesced: u64,
    pub wait_timeouts: u64,
    pub leases_lost: u64,
    pub errors: u64,
    pub skipped: u64,
    /// With the near tier: reads its L1 answered.
    #[serde(default)]
    pub l1_hits: u64,
    /// With the near tier: keys Redis said changed.
    #[serde(default)]
    pub invalidations_received: u64,
    /// With the near tier: times L1 was emptied, not trusted.
    #[serde(default)]
    pub near_flushes: u64,
}

impl Counters {
    pub fn of(cache: &cached_runtime::Cache) -> Counters {
        let mut c = Counters::default();
        for s in cache.stats() {
            c.hits += s.hits;
            c.misses += s.misses;
            c.loads += s.loads;
            c.stale_served += s.stale_served;
            c.early_refreshes += s.early_refreshes;
            c.stale_refreshes += s.stale_refreshes;
            c.coalesced += s.coalesced;
            c.wait_timeouts += s.wait_timeouts;
            c.leases_lost += s.leases_lost;
            c.errors += s.errors;
            c.skipped += s.skipped;
        }
        if let Some(near) = cache.near_stats() {
            c.l1_hits = near.l1_hits;
            c.invalidations_received = near.invalidations_received;
            c.near_flushes = near.flushes;
        }
        c
    }

    pub fn add(&mut self, o: &Counters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.loads += o.loads;
        self.stale_served += o.stale_served;
        self.early_refreshes += o.early_refreshes;
        self.stale_refreshes += o.stale_refreshes;
        self.coalesced += o.coalesced;
        self.wait_timeouts += o.wait_timeouts;
        self.leases_lost += o.leases_lost;
        self.errors += o.errors;
        self.skipped += o.skipped;
        self.l1_hits += o.l1_hits;
        self.invalidations_received += o.invalidations_received;
        self.near_flushes += o.near_flushes;
    }
}

/// A fault the orchestrator injected, from when it began until it was
/// healed.
#[derive(Debug, Clone)]
pub struct FaultWindow {
    pub kind: &'static str,
    pub start: u64,
    pub end: u64,
    /// What it was (a latency, the worker killed...).
    pub detail: String,
}

/// Appends records to a history file from a thread of its own, one line
/// and one write each, so a worker killed with SIGKILL loses only the calls
/// it had not finished.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

impl Recorder {
    /// Starts the writer thread; it ends when every `Recorder` is dropped,
    /// after writing what was sent. Join the handle to be sure it is all out.
    pub fn to_file(path: &Path) -> (Recorder, std::thread::JoinHandle<()>) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open history file {}: {e}", path.display()));
        let (tx, rx) = mpsc::channel::<Record>();
        let handle = std::thread::spawn(move || {
            let mut line = Vec::with_capacity(512);
            while let Ok(record) = rx.recv() {
                line.clear();
                serde_json::to_writer(&mut line, &record).expect("a record serializes");
                line.push(b'\n');
                if let Err(e) = file.write_all(&line) {
                    eprintln!("history: write failed: {e}");
                    return;
                }
            }
        });
        (Recorder { tx }, handle)
    }

    pub fn record(&self, record: Record) {
        let _ = self.tx.send(record);
    }
}

/// Reads every history file in `dir`. A torn last line (a worker killed
/// mid-write) is skipped; any other line that does not parse is a broken
/// recorder, whose skipped calls could hide a violation: it panics.
///
/// # Panics
///
/// On a line that does not parse, other than a file's last.
pub fn read_dir(dir: &Path) -> Vec<Record> {
    let mut records = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return records;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Record>(line) {
                Ok(record) => records.push(record),
                Err(_) if n + 1 == lines.len() => {}
                Err(e) => panic!(
                    "{}: line {} of {} does not parse ({e}): {line}",
                    path.display(),
                    n + 1,
                    lines.len()
                ),
            }
        }
    }
    records
}
