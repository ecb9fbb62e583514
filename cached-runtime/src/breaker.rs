//! The circuit breaker in front of a remote backend.
//!
//! Closed: every operation goes to the backend; failures in a row are
//! counted, and `failures` of them open the breaker. Open: reads and lease
//! requests skip the backend at once (the caller goes straight to its
//! loader, with no added wait). Once the backoff has passed, one probe (a
//! `PING` from a task of its own, so that no caller pays for it) tests the
//! backend: an answer closes the breaker, a failure doubles the backoff up to
//! its bound; a probe that does not report in its own bound (its runtime no
//! longer runs it) is replaced by another. Any operation that succeeds while
//! open (a write-through, an invalidation or a leaseholder's write, which are
//! always attempted) closes it too.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::stats::names;

/// Circuit-breaker settings of a [`CacheBuilder`](crate::CacheBuilder).
///
/// ```
/// use std::time::Duration;
/// use cached_runtime::{Cache, CircuitBreaker};
///
/// let cache = Cache::builder()
///     .circuit_breaker(CircuitBreaker {
///         failures: 3,
///         ..CircuitBreaker::default()
///     })
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Failures in a row (timeouts, connection errors, an unavailable
    /// server) that open the breaker. 0 turns the breaker off.
    pub failures: u32,
    /// How long the breaker stays open before the first probe.
    pub min_backoff: Duration,
    /// The longest wait between two probes (each failed probe doubles it).
    /// Bounds how long after the backend's recovery the cache is used again.
    pub max_backoff: Duration,
}

impl Default for CircuitBreaker {
    /// 5 failures in a row; probes after 100 ms, then at most every 250 ms
    /// (a probe is one PING from a background task: cheap, and hits resume
    /// soon after the backend is back).
    fn default() -> Self {
        CircuitBreaker {
            failures: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        }
    }
}

impl CircuitBreaker {
    /// No breaker: every operation goes to the backend and waits out its
    /// timeout.
    pub const fn disabled() -> Self {
        CircuitBreaker {
            failures: 0,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
/// Open, with a probe running.
const PROBING: u8 = 2;

/// What [`Breaker::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go to the backend.
    Pass,
    /// Skip it.
    Skip,
    /// Skip it, and start the probe (this caller won the right to).
    SkipAndProbe,
}

pub(crate) struct Breaker {
    settings: CircuitBreaker,
    /// Labels its logs and metrics.
    name: String,
    state: AtomicU8,
    failures: AtomicU32,
    /// Open: when the next probe may start. Probing: by when the probe
    /// running must have reported, past which another may start. Ms since
    /// `epoch`.
    probe_at_ms: AtomicU64,
    backoff: Mutex<Duration>,
    epoch: Instant,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state_name())
            .field("failures", &self.failures.load(Relaxed))
            .finish()
    }
}

impl Breaker {
    pub(crate) fn new(settings: CircuitBreaker, name: String) -> Breaker {
        let breaker = Breaker {
            settings,
            name,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            probe_at_ms: AtomicU64::new(0),
            backoff: Mutex::new(settings.min_backoff),
            epoch: Instant::now(),
        };
        // The gauge's series exists from the start, at what the other
        // breakers of the namespace make it: building one is no
        // transition, and does not close theirs.
        metrics::gauge!(names::BREAKER_STATE, "namespace" => breaker.name.clone()).increment(0.0);
        breaker
    }

    fn now_ms(&self) -> u64 {
        crate::clock::duration_ms(self.epoch.elapsed())
    }

    /// Whether an operation may go to the backend now. One atomic load while
    /// closed. A probe it starts has `probe_bound()` to report; one that has
    /// not by then (its task is on a runtime that no longer runs it: kept,
    /// but not polled) is given up on, and the next caller starts another,
    /// rather than every call skip the backend for good.
    #[inline]
    pub(crate) fn admit(&self, probe_bound: impl FnOnce() -> Duration) -> Admit {
        let state = self.state.load(Relaxed);
        if state == CLOSED {
            return Admit::Pass;
        }
        let now = self.now_ms();
        let due = self.probe_at_ms.load(Relaxed);
        // One caller wins the probe due now: the first after the backoff,
        // or another once the running one is overdue.
        if now < due
            || self
                .probe_at_ms
                .compare_exchange(
                    due,
                    now.saturating_add(crate::clock::duration_ms(probe_bound())),
                    Relaxed,
                    Relaxed,
                )
                .is_err()
        {
            return Admit::Skip;
        }
        let won = if state == OPEN {
            self.state
                .compare_exchange(OPEN, PROBING, Relaxed, Relaxed)
                .is_ok()
        } else {
            // Still probing: the probe did not report in its bound.
            let overdue = self.state.load(Relaxed) == PROBING;
            if overdue {
                tracing::debug!(cache = %self.name, "cache breaker probe overdue; probing again");
            }
            overdue
        };
        if won {
            Admit::SkipAndProbe
        } else {
            Admit::Skip
        }
    }

    /// Whether the breaker is letting operations through.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Relaxed) == CLOSED
    }

    /// An operation that reached the backend succeeded.
    #[inline]
    pub(crate) fn succeeded(&self) {
        // Reads of a healthy backend write nothing shared.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.state.load(Relaxed) != CLOSED {
            self.close();
        }
    }

    /// An operation failed in a way that says the backend is unwell.
    pub(crate) fn failed(&self) {
        if self.settings.failures == 0 {
            return;
        }
        let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        if failures < self.settings.failures || self.state.load(Relaxed) != CLOSED {
            return;
        }
        let backoff = self.settings.min_backoff;
        // Armed before the state changes, so that no caller sees it open
        // with the last cycle's probe time and probes at once.
        {
            let mut current = self.backoff_lock();
            *current = backoff;
            self.arm(backoff);
        }
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Relaxed, Relaxed)
            .is_ok()
        {
            self.export_state(true);
            tracing::warn!(
                cache = %self.name,
                failures,
                retry_in_ms = backoff.as_millis() as u64,
                "cache circuit breaker opened: calls skip the backend and go to their loaders"
            );
        }
    }

    /// What the probe found.
    pub(crate) fn probed(&self, ok: bool) {
        if ok {
            self.close();
            return;
        }
        let backoff = {
            let mut backoff = self.backoff_lock();
            *backoff = backoff.saturating_mul(2).min(self.settings.max_backoff);
            *backoff
        };
        self.arm(backoff);
        // Only from PROBING: an operation that succeeded meanwhile closed it.
        if self
            .state
            .compare_exchange(PROBING, OPEN, Relaxed, Relaxed)
            .is_ok()
        {
            tracing::debug!(cache = %self.name, retry_in_ms = backoff.as_millis() as u64, "cache backend still unavailable");
        }
    }

    fn arm(&self, backoff: Duration) {
        let at = self
            .now_ms()
            .saturating_add(crate::clock::duration_ms(backoff));
        self.probe_at_ms.store(at, Relaxed);
    }

    fn close(&self) {
        let was = self.state.swap(CLOSED, Relaxed);
        if was != CLOSED {
            self.failures.store(0, Relaxed);
            self.export_state(false);
            tracing::info!(cache = %self.name, "cache circuit breaker closed: the backend answers again");
        }
    }

    fn backoff_lock(&self) -> std::sync::MutexGuard<'_, Duration> {
        crate::lock(&self.backoff)
    }

    fn state_name(&self) -> &'static str {
        match self.state.load(Relaxed) {
            CLOSED => "closed",
            OPEN => "open",
            _ => "probing",
        }
    }

    /// `cache_breaker_state` (how many breakers of the namespace are open:
    /// for one cache, 0 closed and 1 open) and
    /// `cache_breaker_transitions_total{to}`, labelled with the namespace,
    /// after a transition: to open (`opened`) or closed. Each is called
    /// once per transition (a compare-and-swap from closed, a swap from
    /// open), so the gauge adds and takes away exactly one per breaker,
    /// whatever other caches of the namespace do.
    fn export_state(&self, opened: bool) {
        let gauge = metrics::gauge!(names::BREAKER_STATE, "namespace" => self.name.clone());
        if opened {
            gauge.increment(1.0);
        } else {
            gauge.decrement(1.0);
        }
        let to = if opened { "open" } else { "closed" };
        metrics::counter!(names::BREAKER_TRANSITIONS, "namespace" => self.name.clone(), "to" => to)
            .increment(1);
    }
}

impl Drop for Breaker {
    /// A breaker dropped open leaves the namespace's count of open ones.
    fn drop(&mut self) {
        if self.state.load(Relaxed) != CLOSED {
            metrics::gauge!(names::BREAKER_STATE, "namespace" => self.name.clone()).decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe's bound to report, longer than any test here waits.
    const BOUND: Duration = Duration::from_secs(60);

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(
            CircuitBreaker {
                failures,
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(50),
            },
            "test".into(),
        )
    }

    #[test]
    fn opens_after_failures_in_a_row_only() {
        let b = breaker(3);
        b.failed();
        b.failed();
        b.succeeded();
        b.failed();
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Pass);
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Skip);
    }

    #[test]
    fn one_probe_after_the_backoff_and_recovery() {
        let b = breaker(1);
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Skip);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(|| BOUND), Admit::SkipAndProbe);
        assert_eq!(b.admit(|| BOUND), Admit::Skip, "one probe at a time");
        b.probed(false);
        // Backoff doubled to 40 ms: not yet.
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(|| BOUND), Admit::Skip);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.admit(|| BOUND), Admit::SkipAndProbe);
        b.probed(true);
        assert_eq!(b.admit(|| BOUND), Admit::Pass);
        assert!(b.is_closed());
    }

    /// A probe that does not report within its bound is given up on: one
    /// caller (not every one) starts another, and the first report to
    /// arrive counts.
    #[test]
    fn an_overdue_probe_is_replaced_by_one_more() {
        let b = breaker(1);
        let bound = || Duration::from_millis(40);
        b.failed();
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(bound), Admit::SkipAndProbe);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.admit(bound), Admit::Skip, "within the probe's bound");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(b.admit(bound), Admit::SkipAndProbe, "overdue: another");
        assert_eq!(b.admit(bound), Admit::Skip, "one more, not one each");
        b.probed(true);
        assert_eq!(b.admit(bound), Admit::Pass);
    }

    #[test]
    fn backoff_is_bounded_and_resets_on_reopening() {
        let b = breaker(1);
        b.failed();
        for _ in 0..5 {
            b.state.store(PROBING, Relaxed);
            b.probed(false);
        }
        assert_eq!(*b.backoff_lock(), Duration::from_millis(50));
        b.succeeded();
        assert!(b.is_closed());
        b.failed();
        assert_eq!(*b.backoff_lock(), Duration::from_millis(20));
    }

    #[test]
    fn a_probe_that_closes_it_forgets_the_failures() {
        let b = breaker(3);
        for _ in 0..3 {
            b.failed();
        }
        assert!(!b.is_closed());
        b.state.store(PROBING, Relaxed);
        b.probed(true);
        assert!(b.is_closed());
        // Two failures after the recovery: fewer than three in a row.
        b.failed();
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Pass, "the count started again");
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Skip);
    }

    #[test]
    fn failures_while_open_do_not_put_the_probe_off() {
        // Write-throughs and invalidations still reach a backend that is
        // down, and fail: they must not push the probe back each time.
        let b = Breaker::new(
            CircuitBreaker {
                failures: 1,
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(400),
            },
            "test".into(),
        );
        b.failed();
        std::thread::sleep(Duration::from_millis(60));
        b.failed();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            b.admit(|| BOUND),
            Admit::SkipAndProbe,
            "probed 100 ms after opening"
        );
    }

    #[test]
    fn a_success_while_open_closes_it() {
        let b = breaker(1);
        b.failed();
        assert_eq!(b.admit(|| BOUND), Admit::Skip);
        b.succeeded();
        assert!(b.is_closed());
        assert_eq!(b.admit(|| BOUND), Admit::Pass);
        // A probe that fails after that success leaves it closed.
        b.probed(false);
        assert!(b.is_closed());
    }

    #[test]
    fn debug_shows_the_state_and_the_count() {
        let b = breaker(2);
        b.failed();
        assert_eq!(
            format!("{b:?}"),
            "Breaker { state: \"closed\", failures: 1 }"
        );
        b.failed();
        assert_eq!(format!("{b:?}"), "Breaker { state: \"open\", failures: 2 }");
        b.state.store(PROBING, Relaxed);
        assert!(format!("{b:?}").contains("\"probing\""));
    }

    #[test]
    fn the_state_gauge_and_transitions_follow_each_change() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let b = breaker(1);
            b.failed();
            b.state.store(PROBING, Relaxed);
            b.probed(false);
            b.state.store(PROBING, Relaxed);
            b.probed(true);
        });
        let mut gauge = None;
        let mut transitions = std::collections::BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            assert_eq!(label("namespace").as_deref(), Some("test"));
            match value {
                DebugValue::Gauge(g) if key.name() == names::BREAKER_STATE => {
                    gauge = Some(g.into_inner());
                }
                DebugValue::Counter(n) if key.name() == names::BREAKER_TRANSITIONS => {
                    transitions.insert(label("to").expect("a `to` label"), n);
                }
                other => panic!("unexpected {}: {other:?}", key.name()),
            }
        }
        assert_eq!(gauge, Some(0.0), "closed again");
        // Opened once (a failed probe is no transition), closed once;
        // made is no transition.
        assert_eq!(
            transitions.into_iter().collect::<Vec<_>>(),
            [("closed".to_owned(), 1), ("open".to_owned(), 1)]
        );
    }

    #[test]
    fn disabled_never_opens() {
        let b = breaker(0);
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.admit(|| BOUND), Admit::Pass);
    }
}
