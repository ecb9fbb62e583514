//! The model and the properties checked on a recorded history.
//!
//! The model: each row `(variant, id)` of the source is a register whose
//! versions only grow (INCR), and writes of one row are ordered by the
//! row's lock, so version order is write order. A cached read is correct
//! when it returns a version at least as new as every write of the row that
//! had completed before the read began.
//!
//! - **(a) read-your-writes**: a read invoked after a write of its row
//!   completed (source update and cache operation) returns a version at
//!   least as new. Same process: always a violation. Across processes: a
//!   violation unless a fault window overlaps [write invoked, read
//!   completed] and excuses it (see [`excuses`]: a snapshot restore, a
//!   failover or the writer's own death until the entry's TTL, any other
//!   fault only until [`AFTER_FAULT`] after it healed), or the read began
//!   within [`CROSS_WINDOW`] of the write's completion and may have shared
//!   a flight begun before the write (the documented window: see
//!   [`may_share`]); those are reported apart, with their lag.
//! - **(a2) cancelled writes are not lost**: a write whose body committed
//!   but whose caller was dropped during the cache operation still counts,
//!   from [`WRITE_BOUND`] after the drop (the cache operation need not be
//!   cancelled with its caller: the source has changed).
//! - **(b) convergence**: after quiesce every cached entry equals the
//!   source or is absent, unless every newer version was written by a
//!   writer that was dropped inside its body or killed (the cache never
//!   heard of it).
//! - **(c) bounded calls**: no call takes longer than its own loader or
//!   write body plus [`READ_BOUND`] / [`WRITE_BOUND`] (on a cluster,
//!   [`CLUSTER_PATTERN_BOUND`] for pattern and prefix invalidations; and any scheduler
//!   stall of its process); no error reaches a caller but the source's
//!   failures (one load in 25 fails on purpose), and those only from a
//!   load of the call's own or one of its row that failed while it ran (it
//!   may have shared it): an error is never cached; a dropped call is
//!   gone within [`CANCEL_BOUND`] of its deadline; every worker stops.
//! - **(d) no orphaned lease**: a read waits out `wait` for another's load
//!   only while a fault is on or a killed worker's lease may live (loads
//!   take milliseconds); and after faults heal and workers stop, every key
//!   serves hits again without waiting for a lease.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::history::{Call, Counters, FaultWindow, Op, Outcome, Variant};
use super::system::WAIT;
use super::worker::OP_TIMEOUT;

/// Scheduling slack on a shared two-core machine.
const SLACK: Duration = Duration::from_millis(100);
/// The most a read may wait on the cache: its GET, the lease loop (`wait`,
/// one poll interval of at most 50 ms past it, then a lease request and a
/// GET), and the leaseholder's write; each backend operation bounded by
/// the op timeout.
pub const READ_BOUND: Duration = WAIT
    .saturating_add(OP_TIMEOUT.saturating_mul(4))
    .saturating_add(Duration::from_millis(50))
    .saturating_add(SLACK);
/// The most a batch read may wait on the cache: a read's, plus the
/// round trips a batch adds (its lease request and write before it waits
/// for others' loads, the write of what it loads after, and, for ids whose
/// lease request found a value, one more read and lease request).
pub const BATCH_READ_BOUND: Duration = READ_BOUND.saturating_add(OP_TIMEOUT.saturating_mul(4));
/// The most a write's cache operation may take: up to four backend
/// operations (SCAN + UNLINK, SSCAN + MULTI) of at most the op timeout.
pub const WRITE_BOUND: Duration = OP_TIMEOUT.saturating_mul(4).saturating_add(SLACK);
/// The most a pattern or prefix invalidation's cache operation may take on
/// a Redis Cluster, where it is more operations, each of at most the op
/// timeout: the slot map read twice, and on every primary at once two
/// passes (leases, then values) of SCAN + UNLINK: six, with room for one
/// more round trip in each pass.
pub const CLUSTER_PATTERN_BOUND: Duration = OP_TIMEOUT.saturating_mul(8).saturating_add(SLACK);
/// How long after a write completed another process may still share a
/// read begun before it: a GET and a lease request, at most the op timeout
/// each, plus a load.
pub const CROSS_WINDOW: Duration = OP_TIMEOUT
    .saturating_mul(2)
    .saturating_add(Duration::from_millis(10));
/// How long after a fault healed another process may still read the value
/// a change made during it replaced: the retry of a change that did not
/// land (README: at most 100 ms after Redis takes writes again), its round
/// trip and a reconnection's (the op timeout each), and scheduling slack.
pub const AFTER_FAULT: Duration = Duration::from_millis(100)
    .saturating_add(OP_TIMEOUT.saturating_mul(2))
    .saturating_add(SLACK);
/// How long past its deadline a dropped call may take to be gone.
pub const CANCEL_BOUND: Duration = SLACK;

/// Which property a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    A,
    A2,
    B,
    C,
    D,
}

impl Property {
    pub const ALL: [Property; 5] = [
        Property::A,
        Property::A2,
        Property::B,
        Property::C,
        Property::D,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Property::A => "(a) read-your-writes",
            Property::A2 => "(a2) cancelled write lost",
            Property::B => "(b) convergence",
            Property::C => "(c) bounded calls",
            Property::D => "(d) orphaned lease",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Property::A => "a",
            Property::A2 => "a2",
            Property::B => "b",
            Property::C => "c",
            Property::D => "d",
        }
    }
}

/// A cached entry after quiesce, and the source.
#[derive(Debug)]
pub struct Entry {
    pub variant: Variant,
    pub key: u64,
    pub source: u64,
    /// `Ok(None)`: absent.
    pub cached: Result<Option<u64>, String>,
}

/// Three calls of a key after quiesce.
#[derive(Debug)]
pub struct Recovery {
    pub variant: Variant,
    pub key: u64,
    pub took: Vec<Duration>,
    pub loads: Vec<u32>,
}

/// What the checker is given.
#[derive(Debug, Default)]
pub struct Input {
    pub calls: Vec<Call>,
    pub stalls: Vec<(u32, u64, u64)>,
    pub lock_expired: usize,
    pub faults: Vec<FaultWindow>,
    pub entries: Vec<Entry>,
    pub recovery: Vec<Recovery>,
    pub problems: Vec<String>,
    /// The workers' cache counters, summed.
    pub counters: Counters,
    /// The case's start, for relative times.
    pub t0: u64,
    /// The workers ran on a Redis Cluster: a pattern or prefix
    /// invalidation is bounded by [`CLUSTER_PATTERN_BOUND`].
    pub cluster: bool,
    /// The workers read through the near tier: a hit in L1 may be served
    /// until the push of another process's change arrives.
    pub near: bool,
}

impl Input {
    /// The most `op`'s cache operation may take, past its own work.
    fn bound(&self, op: Op) -> Duration {
        match op {
            Op::BatchRead => BATCH_READ_BOUND,
            Op::EvictPatternOne | Op::EvictPatternAll | Op::EvictPrefix if self.cluster => {
                CLUSTER_PATTERN_BOUND
            }
            _ if op.is_write() => WRITE_BOUND,
            _ => READ_BOUND,
        }
    }

    /// The longest any write's cache operation may take.
    fn write_bound(&self) -> Duration {
        if self.cluster {
            CLUSTER_PATTERN_BOUND
        } else {
            WRITE_BOUND
        }
    }
}

#[derive(Debug)]
pub struct Violation {
    pub property: Property,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Facts about the run: counts, lags, maxima.
    pub notes: Vec<String>,
    /// The longest any call waited on the cache beyond its own work, ms.
    pub max_excess_ms: f64,
    /// Calls recorded.
    pub calls: usize,
    /// Reads made (returned, dropped or failed).
    pub reads: usize,
    /// Reads that returned a version: those (a) and (a2) check.
    pub reads_returned: usize,
    /// Lags (ns, sorted) of the stale cross-process reads excused by the
    /// shared-read window: how long after the write completed they began.
    pub lags_window: Vec<u64>,
    /// The same, of those excused by a fault in between.
    pub lags_fault: Vec<u64>,
    /// Reads the near tier's L1 answered (0 without it).
    pub l1_hits: u64,
}

impl Report {
    pub fn count(&self, p: Property) -> usize {
        self.violations.iter().filter(|v| v.property == p).count()
    }

    fn violation(&mut self, property: Property, text: String) {
        self.violations.push(Violation { property, text });
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A time relative to the case's start, in ms.
fn at(t: u64, t0: u64) -> String {
    format!("+{:.3}ms", (t as f64 - t0 as f64) / 1e6)
}

fn describe(c: &Call, t0: u64) -> String {
    let outcome = match &c.outcome {
        Outcome::Read(v) => format!("-> v{v}"),
        Outcome::Wrote(v) => format!("wrote v{v}"),
        Outcome::Dropped => match c.committed {
            Some(v) => format!("DROPPED after committing v{v}"),
            None => "DROPPED".to_owned(),
        },
        Outcome::Error(e) => format!("ERROR {e}"),
        Outcome::Failed => "FAILED (the source, on purpose)".to_owned(),
    };
    let deadline = c
        .deadline_ns
        .map(|d| format!(" deadline {:.3}ms", ms(d)))
        .unwrap_or_default();
    format!(
        "P{}/T{} {:<17} {}:{} {:<26} [{} .. {}] took {:.3}ms (own {:.3}ms, {} loads){}",
        c.proc,
        c.task,
        c.op.name(),
        c.variant.name(),
        c.key,
        outcome,
        at(c.invoke, t0),
        at(c.complete, t0),
        ms(c.took_ns()),
        ms(c.own_ns),
        c.loads,
        deadline,
    )
}

/// The `p` quantile (0 to 1) of sorted samples; 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A write the reads of its row must see from `t` on.
struct Constraint<'a> {
    t: u64,
    version: u64,
    call: &'a Call,
    cancelled: bool,
}

/// How many violations of one property are printed in full (of (a) and
/// (b): of each kind, by the write missed and where).
const SHOWN: usize = 3;
/// Of each kind of (a) and (b) violation.
const SHOWN_PER_KIND: usize = 2;

pub fn check(input: &Input) -> Report {
    let mut report = Report::default();
    let mut by_object: BTreeMap<(Variant, u64), Vec<&Call>> = BTreeMap::new();
    for c in &input.calls {
        by_object.entry(c.object()).or_default().push(c);
    }
    for calls in by_object.values_mut() {
        calls.sort_by_key(|c| c.invoke);
    }

    counts(input, &mut report);
    report.l1_hits = input.counters.l1_hits;
    read_your_writes(input, &by_object, &mut report);
    convergence(input, &by_object, &mut report);
    bounded(input, &mut report);
    recovery(input, &mut report);
    orphaned_leases(input, &mut report);
    if input.lock_expired > 0 {
        report.notes.push(format!(
            "warning: {} row locks expired while held: writes of those rows may have reached the cache out of order",
            input.lock_expired
        ));
    }
    report
}

fn counts(input: &Input, report: &mut Report) {
    let reads = input.calls.iter().filter(|c| c.op.is_read()).count();
    report.calls = input.calls.len();
    report.reads = reads;
    report.reads_returned = input
        .calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Read(_)))
        .count();
    let dropped = input
        .calls
        .iter()
        .filter(|c| c.outcome == Outcome::Dropped)
        .count();
    let committed_dropped = input
        .calls
        .iter()
        .filter(|c| c.outcome == Outcome::Dropped && c.committed.is_some())
        .count();
    let procs: std::collections::BTreeSet<u32> = input.calls.iter().map(|c| c.proc).collect();
    let refreshes = input.calls.iter().filter(|c| c.op == Op::Refresh).count();
    report.notes.push(format!(
        "{} calls ({} reads, {} of them refreshes; {} writes) from {} processes; {} dropped by their deadline ({} writes of them after committing)",
        input.calls.len(),
        reads,
        refreshes,
        input.calls.len() - reads,
        procs.len(),
        dropped,
        committed_dropped,
    ));
    let k = &input.counters;
    if k.hits + k.misses > 0 {
        report.notes.push(format!(
            "cache: {} hits, {} misses, {} loads, {} coalesced, {} stale served, {} early and {} stale refreshes, {} waits ran out, {} leases lost to invalidations, {} backend errors, {} skipped by the breaker",
            k.hits, k.misses, k.loads, k.coalesced, k.stale_served, k.early_refreshes, k.stale_refreshes, k.wait_timeouts, k.leases_lost, k.errors, k.skipped
        ));
    }
    if k.l1_hits + k.invalidations_received > 0 {
        report.notes.push(format!(
            "near tier: {} of the hits from L1, {} invalidations received, L1 emptied {} times",
            k.l1_hits, k.invalidations_received, k.near_flushes
        ));
    }
    let mut by_kind: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for w in &input.faults {
        let e = by_kind.entry(w.kind).or_default();
        e.0 += 1;
        e.1 += w.end.saturating_sub(w.start);
    }
    if !by_kind.is_empty() {
        let list: Vec<String> = by_kind
            .iter()
            .map(|(k, (n, total))| format!("{k} x{n} ({:.0} ms)", ms(*total)))
            .collect();
        report
            .notes
            .push(format!("faults injected: {}", list.join(", ")));
        let details: Vec<String> = input
            .faults
            .iter()
            .filter(|w| !w.detail.is_empty())
            .map(|w| format!("{} at {}: {}", w.kind, at(w.start, input.t0), w.detail))
            .take(6)
            .collect();
        if !details.is_empty() {
            report.notes.push(format!("  e.g. {}", details.join("; ")));
        }
    }
    if !input.stalls.is_empty() {
        let worst = input
            .stalls
            .iter()
            .map(|(_, s, e)| e.saturating_sub(*s))
            .max()
            .unwrap_or(0);
        report.notes.push(format!(
            "{} scheduler stalls over 20 ms (worst {:.1} ms)",
            input.stalls.len(),
            ms(worst)
        ));
    }
}

fn fault_between(faults: &[FaultWindow], from: u64, to: u64) -> Option<&FaultWindow> {
    faults.iter().find(|w| w.start <= to && w.end >= from)
}

/// Whether fault `f` excuses a read begun at `read_invoke` (another
/// process's) that missed a write by process `writer`, as README's
/// windows of Guarantee 2 do: Redis restored from its append-only file or
/// a failover may lose a change it acknowledged, and a writer killed
/// before its change landed forgets it (each until the entry's TTL);
/// another process's death stops no write; any other fault delays a
/// change that did not land until at most [`AFTER_FAULT`] after it healed.
fn excuses(f: &FaultWindow, writer: u32, read_invoke: u64) -> bool {
    match f.kind {
        "kill_data" | "kill_primary" => true,
        "worker_kill" => f.detail == format!("worker process {writer} SIGKILLed"),
        _ => read_invoke <= f.end.saturating_add(ns(AFTER_FAULT)),
    }
}

/// The calls of the row around a violation, for the report.
fn context(calls: &[&Call], from: u64, to: u64, t0: u64) -> String {
    let mut out = String::new();
    let near: Vec<&&Call> = calls
        .iter()
        .filter(|c| c.complete >= from && c.invoke <= to)
        .collect();
    let skip = near.len().saturating_sub(14);
    if skip > 0 {
        let _ = writeln!(out, "        ... {skip} earlier calls of the row");
    }
    for c in near.iter().skip(skip) {
        let _ = writeln!(out, "        {}", describe(c, t0));
    }
    out
}

fn read_your_writes(
    input: &Input,
    by_object: &BTreeMap<(Variant, u64), Vec<&Call>>,
    report: &mut Report,
) {
    let t0 = input.t0;
    let grace = ns(input.write_bound());
    let window = ns(CROSS_WINDOW);
    let mut lags_fault = Vec::new();
    let mut heal_lags = Vec::new();
    let mut lags_window = Vec::new();
    let mut window_served: BTreeMap<(&'static str, &str), usize> = BTreeMap::new();
    let mut kinds: BTreeMap<(Property, &'static str, &'static str), usize> = BTreeMap::new();
    for calls in by_object.values() {
        let mut constraints: Vec<Constraint<'_>> = calls
            .iter()
            .filter_map(|c| match (&c.outcome, c.committed) {
                (Outcome::Wrote(v), _) => Some(Constraint {
                    t: c.complete,
                    version: *v,
                    call: c,
                    cancelled: false,
                }),
                (Outcome::Dropped, Some(v)) => Some(Constraint {
                    t: c.complete + grace,
                    version: v,
                    call: c,
                    cancelled: true,
                }),
                _ => None,
            })
            .collect();
        constraints.sort_by_key(|w| w.t);
        let mut prefix_max = Vec::with_capacity(constraints.len());
        let mut m = 0;
        for w in &constraints {
            m = m.max(w.version);
            prefix_max.push(m);
        }
        for r in calls.iter().filter(|c| c.op.is_read()) {
            let Outcome::Read(got) = r.outcome else {
                continue;
            };
            let before = constraints.partition_point(|w| w.t < r.invoke);
            if before == 0 || prefix_max[before - 1] <= got {
                continue;
            }
            let missed: Vec<&Constraint<'_>> = constraints[..before]
                .iter()
                .filter(|w| w.version > got)
                .collect();
            // The worst missed write: one this read had no excuse to miss.
            let mut worst: Option<(&Constraint<'_>, String)> = None;
            let mut lag_max = 0;
            let mut by_fault = false;
            let mut after_heal = 0;
            for w in &missed {
                let lag = r.invoke.saturating_sub(w.call.complete);
                lag_max = lag_max.max(lag);
                let same = w.call.proc == r.proc;
                let fault = input.faults.iter().find(|f| {
                    f.start <= r.complete
                        && f.end >= w.call.invoke
                        && excuses(f, w.call.proc, r.invoke)
                });
                let excuse = if same {
                    None
                } else if let Some(f) = fault {
                    by_fault = true;
                    if !matches!(f.kind, "kill_data" | "kill_primary" | "worker_kill") {
                        after_heal = after_heal.max(r.invoke.saturating_sub(f.end));
                    }
                    Some(format!("fault {} in between", f.kind))
                } else if lag <= window && may_share(r, input.near) {
                    Some("within the shared-read window".to_owned())
                } else {
                    None
                };
                if excuse.is_none() {
                    let why = if same {
                        "same process".to_owned()
                    } else if let Some(f) = fault_between(&input.faults, w.call.invoke, r.complete)
                    {
                        format!(
                            "another process, {:.3} ms after it completed, {:.3} ms after fault {} healed (excused for {:.0} ms)",
                            ms(lag),
                            ms(r.invoke.saturating_sub(f.end)),
                            f.kind,
                            ms(ns(AFTER_FAULT))
                        )
                    } else if may_share(r, input.near) {
                        format!(
                            "another process, no fault in between, {:.3} ms after it completed (window {:.0} ms)",
                            ms(lag),
                            ms(window)
                        )
                    } else {
                        format!(
                            "another process, no fault in between, {:.3} ms after it completed, served {} (no shared-read window)",
                            ms(lag),
                            r.served.as_deref().unwrap_or("by the hand-written system")
                        )
                    };
                    let better = match &worst {
                        None => true,
                        Some((prev, _)) => prev.cancelled && !w.cancelled,
                    };
                    if better {
                        worst = Some((w, why));
                    }
                }
            }
            let Some((w, why)) = worst else {
                if by_fault {
                    lags_fault.push(lag_max);
                    heal_lags.push(after_heal);
                } else {
                    lags_window.push(lag_max);
                    *window_served
                        .entry((r.op.name(), r.served.as_deref().unwrap_or("-")))
                        .or_default() += 1;
                }
                continue;
            };
            let property = if w.cancelled {
                Property::A2
            } else {
                Property::A
            };
            let place = if w.call.proc == r.proc {
                "same process"
            } else {
                "across processes"
            };
            let seen = kinds
                .entry((property, w.call.op.name(), place))
                .or_default();
            *seen += 1;
            if *seen > SHOWN_PER_KIND {
                report.violation(property, String::new());
                continue;
            }
            let mut text = format!(
                "stale read ({why}):\n      read    {}\n      missed  {}\n",
                describe(r, t0),
                describe(w.call, t0)
            );
            if w.cancelled {
                let _ = writeln!(
                    text,
                    "      (the write's body committed v{} and its caller was dropped; the read began {:.3} ms after the drop)",
                    w.version,
                    ms(r.invoke.saturating_sub(w.call.complete))
                );
            }
            // Where the stale version came from: the last call that loaded
            // or wrote it before the read.
            let origin = calls.iter().rev().find(|c| {
                c.invoke < r.invoke
                    && match c.outcome {
                        Outcome::Read(v) => v == got && c.loads > 0,
                        Outcome::Wrote(v) => v == got,
                        _ => c.committed == Some(got),
                    }
            });
            if let Some(o) = origin {
                let _ = writeln!(text, "      origin  {}", describe(o, t0));
            }
            if let Some(f) = fault_between(&input.faults, w.call.invoke, r.complete) {
                let _ = writeln!(
                    text,
                    "      fault   {} [{} .. {}] {}",
                    f.kind,
                    at(f.start, t0),
                    at(f.end, t0),
                    f.detail
                );
            }
            let _ = writeln!(text, "      history of {}:{}:", r.variant.name(), r.key);
            text.push_str(&context(
                calls,
                w.call.invoke.saturating_sub(20_000_000),
                r.complete,
                t0,
            ));
            report.violation(property, text);
        }
    }
    if !kinds.is_empty() {
        let list: Vec<String> = kinds
            .iter()
            .map(|((p, op, place), n)| format!("({}) {op} {place}: {n}", p.short()))
            .collect();
        report.notes.push(format!(
            "stale reads by the write they missed: {}",
            list.join(", ")
        ));
    }
    lags_fault.sort_unstable();
    lags_window.sort_unstable();
    for (lags, what) in [
        (&lags_fault, "with a fault in between"),
        (&lags_window, "within the shared-read window"),
    ] {
        if lags.is_empty() {
            continue;
        }
        report.notes.push(format!(
            "stale cross-process reads {what} (not violations): {}, lag p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lags.len(),
            ms(percentile(lags, 0.5)),
            ms(percentile(lags, 0.99)),
            ms(percentile(lags, 1.0)),
        ));
    }
    heal_lags.sort_unstable();
    if let Some(&worst) = heal_lags.last() {
        report.notes.push(format!(
            "  of those, the latest began {:.3} ms after its fault healed (p99 {:.3} ms; excused up to {:.0} ms)",
            ms(worst),
            ms(percentile(&heal_lags, 0.99)),
            ms(ns(AFTER_FAULT))
        ));
    }
    report.lags_fault = lags_fault;
    if !window_served.is_empty() {
        let by: Vec<String> = window_served
            .iter()
            .map(|((op, served), n)| format!("{op} {served}: {n}"))
            .collect();
        report.notes.push(format!(
            "stale cross-process reads within the shared-read window, by what served them: {}",
            by.join(", ")
        ));
    }
    report.lags_window = lags_window;
}

/// Whether read `r` may have been served by a read or load begun before
/// a change another process made (README, Guarantee 2's windows): it
/// shared another caller's (`Coalesced`); it is a batch's row (a batch
/// waits for the flights other callers here lead, and its outcome is the
/// whole call's); or, through the near tier, a hit (L1 serves an entry
/// until the change's push arrives). A hit or a load of its own cannot
/// be: its read began after the change had landed.
fn may_share(r: &Call, near: bool) -> bool {
    match r.served.as_deref() {
        Some("Coalesced") => true,
        Some("Hit" | "Stale") => near || r.op == Op::BatchRead,
        Some(_) => r.op == Op::BatchRead,
        None => false,
    }
}

fn convergence(
    input: &Input,
    by_object: &BTreeMap<(Variant, u64), Vec<&Call>>,
    report: &mut Report,
) {
    let t0 = input.t0;
    let (mut equal, mut absent, mut excused) = (0, 0, 0);
    let mut shown = 0;
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for e in &input.entries {
        let cached = match &e.cached {
            Ok(None) => {
                absent += 1;
                continue;
            }
            Ok(Some(v)) if *v == e.source => {
                equal += 1;
                continue;
            }
            Ok(Some(v)) => *v,
            Err(err) => {
                report.violation(
                    Property::B,
                    format!(
                        "{}:{}: could not read the entry: {err}",
                        e.variant.name(),
                        e.key
                    ),
                );
                continue;
            }
        };
        let calls: &[&Call] = by_object
            .get(&(e.variant, e.key))
            .map_or(&[], Vec::as_slice);
        let missed: Vec<&&Call> = calls
            .iter()
            .filter(|c| match (&c.outcome, c.committed) {
                (Outcome::Wrote(v), _) => *v > cached,
                (Outcome::Dropped, Some(v)) => v > cached,
                _ => false,
            })
            .collect();
        if cached < e.source && missed.is_empty() {
            // Every newer version came from a writer dropped in its body or
            // killed: the cache was never told.
            excused += 1;
            continue;
        }
        shown += 1;
        let kind = missed.last().map_or("none (ahead of the source)", |c| {
            if c.outcome == Outcome::Dropped {
                "a dropped write"
            } else {
                c.op.name()
            }
        });
        let seen = kinds.entry(kind).or_default();
        *seen += 1;
        if *seen > SHOWN_PER_KIND {
            report.violation(Property::B, String::new());
            continue;
        }
        let mut text = format!(
            "{}:{} holds v{cached} after quiesce; the source has v{}\n",
            e.variant.name(),
            e.key,
            e.source
        );
        for c in missed.iter().take(3) {
            let _ = writeln!(text, "      missed  {}", describe(c, t0));
        }
        if let Some(last) = missed.first() {
            let _ = writeln!(text, "      history of {}:{}:", e.variant.name(), e.key);
            text.push_str(&context(
                calls,
                last.invoke.saturating_sub(20_000_000),
                last.complete + 30_000_000,
                t0,
            ));
        }
        report.violation(Property::B, text);
    }
    if !input.entries.is_empty() {
        report.notes.push(format!(
            "convergence: {} entries: {equal} equal to the source, {absent} absent, {excused} older only by writes the cache never heard of, {} wrong",
            input.entries.len(),
            shown
        ));
    }
    if !kinds.is_empty() {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        report.notes.push(format!(
            "wrong entries by the last write they missed: {}",
            list.join(", ")
        ));
    }
}

fn stalled(stalls: &[(u32, u64, u64)], proc: u32, from: u64, to: u64) -> u64 {
    stalls
        .iter()
        .filter(|(p, s, e)| *p == proc && *s < to && *e > from)
        .map(|(_, s, e)| (*e).min(to).saturating_sub((*s).max(from)))
        .sum()
}

fn bounded(input: &Input, report: &mut Report) {
    let t0 = input.t0;
    let mut worst: [(u64, Option<&Call>); 2] = [(0, None), (0, None)];
    let mut shown = 0;
    let mut flag = |report: &mut Report, text: String| {
        shown += 1;
        report.violation(
            Property::C,
            if shown > SHOWN { String::new() } else { text },
        );
    };
    for c in &input.calls {
        let stall = stalled(&input.stalls, c.proc, c.invoke, c.complete);
        match &c.outcome {
            Outcome::Error(e) => {
                flag(
                    report,
                    format!(
                        "an error reached the caller ({e}):\n      {}",
                        describe(c, t0)
                    ),
                );
            }
            Outcome::Dropped => {
                let deadline = c.deadline_ns.unwrap_or(0);
                let late = c.took_ns().saturating_sub(deadline + stall);
                if late > ns(CANCEL_BOUND) {
                    flag(
                        report,
                        format!(
                            "dropped {:.3} ms after its deadline (bound {:.0} ms): the call blocked its caller\n      {}",
                            ms(late),
                            ms(ns(CANCEL_BOUND)),
                            describe(c, t0)
                        ),
                    );
                }
            }
            Outcome::Failed if !failure_shared(input, c) => {
                flag(
                    report,
                    format!(
                        "the source's failure reached a caller whose loads did not fail, with no failed load of its row during the call to share:\n      {}",
                        describe(c, t0)
                    ),
                );
            }
            Outcome::Read(_) | Outcome::Wrote(_) | Outcome::Failed => {
                let write = usize::from(c.op.is_write());
                let bound = ns(input.bound(c.op));
                let excess = c.took_ns().saturating_sub(c.own_ns + stall);
                if excess > worst[write].0 {
                    worst[write] = (excess, Some(c));
                }
                if excess > bound {
                    flag(
                        report,
                        format!(
                            "took {:.3} ms beyond its own {} (bound {:.0} ms)\n      {}",
                            ms(excess),
                            if write == 1 { "write body" } else { "loader" },
                            ms(bound),
                            describe(c, t0)
                        ),
                    );
                }
            }
        }
    }
    for p in &input.problems {
        flag(report, p.clone());
    }
    let failed: Vec<&Call> = input
        .calls
        .iter()
        .filter(|c| c.outcome == Outcome::Failed)
        .collect();
    if !failed.is_empty() {
        let shared = failed.iter().filter(|c| c.failed_loads == 0).count();
        report.notes.push(format!(
            "source failures on purpose returned: {} ({shared} of them another caller's load, shared)",
            failed.len()
        ));
    }
    report.max_excess_ms = ms(worst[0].0.max(worst[1].0));
    for (i, what, bound) in [(0, "read", READ_BOUND), (1, "write", input.write_bound())] {
        if let (excess, Some(c)) = worst[i] {
            report.notes.push(format!(
                "slowest {what} beyond its own work: {:.3} ms (bound {:.0} ms): {}",
                ms(excess),
                ms(ns(bound)),
                describe(c, t0)
            ));
        }
    }
}

/// Whether the source's failure that `c` returned was one of its own loads'
/// or of a load of its row in its process that failed while it ran (a
/// flight's leader hands its error to those who waited for it; no error
/// crosses processes): an error is never cached, so a failure from nowhere
/// was kept and served.
fn failure_shared(input: &Input, c: &Call) -> bool {
    c.failed_loads > 0
        || input.calls.iter().any(|o| {
            o.failed_loads > 0
                && o.proc == c.proc
                && o.object() == c.object()
                && o.invoke <= c.complete
                && o.complete >= c.invoke
        })
}

/// A read that waited out `wait` for another's load when no leaseholder
/// can have been busy: no fault during the call (a frozen or unreachable
/// server holds a leaseholder's write up), no worker killed within a lease
/// before it. Loads take milliseconds and a dropped leaseholder releases
/// its lease, so such a lease was orphaned (its holder lost track of it).
fn orphaned_leases(input: &Input, report: &mut Report) {
    let t0 = input.t0;
    let margin = ns(OP_TIMEOUT.saturating_mul(2));
    let lease = ns(super::system::LEASE);
    let mut found: BTreeMap<(Variant, u64), (usize, &Call)> = BTreeMap::new();
    let mut calls: Vec<&Call> = input.calls.iter().collect();
    calls.sort_by_key(|c| c.invoke);
    for c in calls.iter().copied() {
        if !c.op.is_read()
            || !matches!(c.outcome, Outcome::Read(_))
            || c.took_ns().saturating_sub(c.own_ns) < ns(WAIT)
        {
            continue;
        }
        let busy = input.faults.iter().any(|w| {
            let reach = if w.kind == "worker_kill" {
                lease
            } else {
                margin
            };
            w.start <= c.complete && w.end + reach >= c.invoke
        });
        if busy || stalled(&input.stalls, c.proc, c.invoke, c.complete) > 0 {
            continue;
        }
        found.entry(c.object()).or_insert((0, c)).0 += 1;
    }
    let mut shown = 0;
    for ((variant, key), (n, first)) in &found {
        shown += 1;
        report.violation(
            Property::D,
            if shown > SHOWN {
                String::new()
            } else {
                let calls: Vec<&Call> = calls
                    .iter()
                    .copied()
                    .filter(|c| c.object() == (*variant, *key))
                    .filter(|c| c.complete + 400_000_000 >= first.invoke && c.invoke <= first.complete)
                    .collect();
                let mut text = format!(
                    "{}:{}: {n} reads waited out `wait` ({:.0} ms) with no fault on and no leaseholder busy: an orphaned lease\n      first   {}\n      history of {}:{}:\n",
                    variant.name(),
                    key,
                    ms(ns(WAIT)),
                    describe(first, t0),
                    variant.name(),
                    key
                );
                text.push_str(&context(&calls, 0, u64::MAX, t0));
                text
            },
        );
    }
}

fn recovery(input: &Input, report: &mut Report) {
    let mut shown = 0;
    for r in &input.recovery {
        let waited = r.took.iter().any(|t| *t >= WAIT);
        let hit = r.loads.iter().skip(1).any(|l| *l == 0);
        if !waited && hit {
            continue;
        }
        shown += 1;
        if shown > SHOWN {
            report.violation(Property::D, String::new());
            continue;
        }
        let took: Vec<String> = r
            .took
            .iter()
            .zip(&r.loads)
            .map(|(t, l)| format!("{:.1} ms/{l} loads", t.as_secs_f64() * 1e3))
            .collect();
        report.violation(
            Property::D,
            format!(
                "{}:{} after quiesce: three calls took {} ({}): {}",
                r.variant.name(),
                r.key,
                took.join(", "),
                if waited {
                    "a call waited out `wait` for a lease nobody holds"
                } else {
                    "no hit"
                },
                "an orphaned lease keeps the key uncached until it expires"
            ),
        );
    }
    if !input.recovery.is_empty() {
        report.notes.push(format!(
            "recovery: {} keys called three times after quiesce, {} without hits or waiting on a lease",
            input.recovery.len(),
            shown
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::{AFTER_FAULT, FaultWindow, Input, Property, check, excuses, ns};
    use crate::consistency::history::{Call, Op, Outcome, Variant};

    /// A call of process `proc` on row 1, from `at` for 1 ms.
    fn call(proc: u32, op: Op, at: u64, outcome: Outcome, served: Option<&str>) -> Call {
        Call {
            proc,
            task: 0,
            op,
            variant: Variant::Plain,
            key: 1,
            invoke: at,
            complete: at + 1_000_000,
            outcome,
            committed: None,
            own_ns: 0,
            loads: 0,
            failed_loads: 0,
            deadline_ns: None,
            served: served.map(str::to_owned),
        }
    }

    /// A read in another process 5 ms after a write completed, returning
    /// the version before it: excused only if it may have shared a read or
    /// load begun before the write (README, Guarantee 2's windows), not if
    /// it hit or loaded on its own.
    #[test]
    fn the_shared_read_window_excuses_only_reads_that_may_have_shared() {
        for (op, served, near, excused) in [
            (Op::Read, Some("Coalesced"), false, true),
            (Op::Read, Some("Hit"), false, false),
            (Op::Read, Some("Loaded"), false, false),
            (Op::Read, None, false, false),
            (Op::Read, Some("Hit"), true, true),
            (Op::Read, Some("Loaded"), true, false),
            (Op::BatchRead, Some("Hit"), false, true),
            (Op::BatchRead, Some("Loaded"), false, true),
        ] {
            let input = Input {
                calls: vec![
                    call(1, Op::Read, 0, Outcome::Read(1), Some("Loaded")),
                    call(1, Op::Put, 10_000_000, Outcome::Wrote(2), None),
                    call(2, op, 16_000_000, Outcome::Read(1), served),
                ],
                near,
                ..Input::default()
            };
            let report = check(&input);
            assert_eq!(
                report.count(Property::A) == 0,
                excused,
                "{op:?} served {served:?} (near: {near}): {:?}",
                report.violations
            );
        }
    }

    /// The source's failure reaches a caller only from a load that failed
    /// during the call: its own, or one of its row in its process that it
    /// may have shared.
    #[test]
    fn a_failure_reaches_only_the_callers_of_a_load_that_failed() {
        let failed = |proc, at, own: u32, key| Call {
            failed_loads: own,
            key,
            ..call(proc, Op::Read, at, Outcome::Failed, None)
        };
        for (calls, shared, what) in [
            (vec![failed(1, 0, 1, 1)], true, "its own load failed"),
            (vec![failed(1, 0, 0, 1)], false, "no load failed"),
            (
                vec![failed(1, 0, 1, 1), failed(1, 500_000, 0, 1)],
                true,
                "the row's load failed while it waited",
            ),
            (
                vec![failed(1, 0, 1, 1), failed(2, 500_000, 0, 1)],
                false,
                "the row's load failed in another process",
            ),
            (
                vec![failed(1, 0, 1, 1), failed(1, 2_000_000, 0, 1)],
                false,
                "the row's load failed before it began",
            ),
            (
                vec![failed(1, 0, 1, 2), failed(1, 500_000, 0, 1)],
                false,
                "another row's load failed",
            ),
        ] {
            let report = check(&Input {
                calls,
                ..Input::default()
            });
            assert_eq!(
                report.count(Property::C) == 0,
                shared,
                "{what}: {:?}",
                report.violations
            );
        }
    }

    fn window(kind: &'static str, detail: &str) -> FaultWindow {
        FaultWindow {
            kind,
            start: 1_000_000_000,
            end: 2_000_000_000,
            detail: detail.to_owned(),
        }
    }

    /// What each fault excuses of a stale read in another process: the
    /// windows README documents, and no more.
    #[test]
    fn a_fault_excuses_a_stale_read_only_within_its_documented_window() {
        let healed = 2_000_000_000;
        let bound = ns(AFTER_FAULT);
        for kind in [
            "freeze",
            "blackhole",
            "cut",
            "latency",
            "refuse_oom",
            "kill_empty",
        ] {
            let f = window(kind, "");
            assert!(excuses(&f, 1, healed + bound), "{kind}: at the bound");
            assert!(!excuses(&f, 1, healed + bound + 1), "{kind}: past it");
        }
        // Until the entry's TTL: Redis may lose an acknowledged change.
        for kind in ["kill_data", "kill_primary"] {
            assert!(excuses(&window(kind, ""), 1, healed + 60 * bound), "{kind}");
        }
        // A writer killed forgets its change; another's death stops none.
        let killed = window("worker_kill", "worker process 3 SIGKILLed");
        assert!(excuses(&killed, 3, healed + 60 * bound));
        assert!(!excuses(&killed, 1, healed));
        assert!(!excuses(&killed, 31, healed));
    }
}
