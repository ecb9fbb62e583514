//! [`Source`]: the "database" behind a test's loaders, which counts every
//! load and can be made slow, changed, failed or made to panic.

#![deny(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

/// The error of a [`Source`] that is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceDown;

/// A source of truth that counts its loads. Clones share it: two services
/// holding clones (each with a cache of its own) are two processes in front
/// of one database.
///
/// Its value is a version, 1 at first, that writers change; [`Source::load`]
/// reads it the way a real query does (at the start, then takes its time),
/// so a load can be overtaken by a write.
#[derive(Debug, Clone)]
pub struct Source {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    loads: AtomicU32,
    version: AtomicU64,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    panicking: AtomicBool,
}

impl Default for Source {
    fn default() -> Source {
        Source::new()
    }
}

impl Source {
    /// A source at version 1 that answers at once.
    pub fn new() -> Source {
        Source::slow(Duration::ZERO)
    }

    /// A source at version 1 whose loads take `delay`.
    pub fn slow(delay: Duration) -> Source {
        let source = Source {
            state: Arc::new(State {
                loads: AtomicU32::new(0),
                version: AtomicU64::new(1),
                delay_ms: AtomicU64::new(0),
                failing: AtomicBool::new(false),
                panicking: AtomicBool::new(false),
            }),
        };
        source.set_delay(delay);
        source
    }

    /// Loads so far (of [`Source::load`] and [`Source::count_load`]).
    pub fn loads(&self) -> u32 {
        self.state.loads.load(SeqCst)
    }

    /// Counts one load that reads something else (a row of the test's
    /// own); returns how many loads came before it.
    pub fn count_load(&self) -> u32 {
        self.state.loads.fetch_add(1, SeqCst)
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.state.version.load(SeqCst)
    }

    /// A writer commits `version`.
    pub fn set_version(&self, version: u64) {
        self.state.version.store(version, SeqCst);
    }

    /// A writer commits the next version; returns it.
    pub fn bump_version(&self) -> u64 {
        self.state.version.fetch_add(1, SeqCst) + 1
    }

    /// Loads that start from now on take `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, SeqCst);
    }

    /// Loads that start from now on fail with [`SourceDown`] (or succeed
    /// again, with `false`).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, SeqCst);
    }

    /// Loads that start from now on panic after their delay (or not, with
    /// `false`).
    pub fn set_panicking(&self, panicking: bool) {
        self.state.panicking.store(panicking, SeqCst);
    }

    /// One load: counted, reads the version and whether to fail or panic
    /// when it starts, then takes the delay (no await at all when there is
    /// none) and answers.
    ///
    /// # Panics
    ///
    /// When [`Source::set_panicking`] asked it to.
    pub async fn load(&self) -> Result<u64, SourceDown> {
        // What this load does is read before it is counted: a test that
        // sees the count and then changes the source changes only later
        // loads.
        let state = &self.state;
        let (version, failing, panicking) = (
            state.version.load(SeqCst),
            state.failing.load(SeqCst),
            state.panicking.load(SeqCst),
        );
        let delay = state.delay_ms.load(SeqCst);
        self.count_load();
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        assert!(!panicking, "the loader panics, as asked");
        if failing {
            Err(SourceDown)
        } else {
            Ok(version)
        }
    }
}
