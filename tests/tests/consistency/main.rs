//! The randomized, model-based consistency checker with fault injection:
//! its code, cases and documentation are in `cached_tests::consistency`
//! (`tests/src/consistency/`), which the benchmark harness runs too. This
//! is the test's `main`: a worker process when `CONSISTENCY_WORKER` is set,
//! else the orchestrator, whose exit code is non-zero when a case failed.
//!
//! ```sh
//! cargo test -p cached-tests --test consistency                      # every case
//! cargo test -p cached-tests --test consistency -- redis/freeze      # cases whose name contains this
//! cargo test -p cached-tests --test consistency -- --list
//! CONSISTENCY_SEED=42 CONSISTENCY_SECS=30 cargo test -p cached-tests --test consistency
//! ```

use cached_tests::consistency::{self, Options};

fn main() {
    if let Ok(json) = std::env::var(consistency::WORKER_ENV) {
        consistency::worker_main(&json);
    }
    let options = Options::from_env();
    if options.list {
        for name in consistency::case_names(&options) {
            println!("{name}: test");
        }
        return;
    }
    let summary = consistency::run(&options, &mut std::io::stdout());
    std::process::exit(summary.exit_code());
}
