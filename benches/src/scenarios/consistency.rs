//! `consistency`: the tests' randomized, model-based consistency checker
//! (`cached_tests::consistency`), run for longer, with its figures as rows.
//!
//! Every case of the `consistency` test: `this` on Redis with each fault
//! (none, frozen, killed and restarted empty or with its data, writes
//! refused with -OOM or -READONLY, blackholed, slowed, connections cut, a
//! worker process killed, all of them mixed) and on memory, and the
//! control, the seed guide's hand-written cache-aside. Worker processes are
//! this binary, re-executed (`main` hands them to the checker first).
//!
//! Figures per case: `reads` (made; `reads_returned` of them returned a
//! version, the rest were dropped by their caller's deadline), violations
//! of each property ((a) read-your-writes, (a2) a committed write lost with
//! its dropped caller, (b) convergence, (c) bounded calls, (d) orphaned
//! leases) and their sum, and the two documented windows in which a
//! process may read an older version than another process wrote: stale
//! reads begun within the shared-read window of the write's completion, and
//! those with a fault in between, each with its lag (from the write's
//! completion to the read's start) at p99 and max. Then a `total` row per
//! system. Violations are reported as found, known failing or not: the
//! `result` is the test's verdict. The checker's own report (notes, and
//! every violation with the history around it) goes to stderr as it runs.
//!
//! `CONSISTENCY_SECS` sets the run time per case (default [`DEFAULT_SECS`]);
//! `CONSISTENCY_SEED`, `CONSISTENCY_CASES=redis/freeze,...`,
//! `CONSISTENCY_TASKS`, `CONSISTENCY_WORKERS` as for the test.

use cached_tests::consistency::{self, CaseSummary, Lags, Options, Summary, Violations};

use crate::harness::{Redis, Row};

/// Run time per case: on the project's 2-core machine the `this` cases make
/// about 24,000 reads between them per second of this (1,300 to 3,000 a
/// second per case, by fault), so 48 s gives about 1,140,000, in about 11
/// minutes with the control.
pub const DEFAULT_SECS: f64 = 48.0;

/// The reads the `this` cases should make between them.
const READS_TARGET: usize = 1_000_000;

pub async fn consistency(_: &Redis) -> Vec<Row> {
    let options = Options::parse(&[], DEFAULT_SECS);
    // The checker starts runtimes of its own: on a thread of its own.
    let run = std::thread::spawn(move || consistency::run(&options, &mut std::io::stderr()));
    let summary = match tokio::task::spawn_blocking(move || run.join()).await {
        Ok(Ok(summary)) => summary,
        _ => {
            return vec![
                Row::new("consistency", "this")
                    .with("error", "the checker panicked: see its message above"),
            ];
        }
    };
    rows(&summary)
}

fn rows(summary: &Summary) -> Vec<Row> {
    let mut rows: Vec<Row> = summary.cases.iter().map(case_row).collect();
    for system in ["this", "hand_written"] {
        let cases: Vec<&CaseSummary> = summary
            .cases
            .iter()
            .filter(|c| c.system == system)
            .collect();
        if cases.is_empty() {
            continue;
        }
        let reads: usize = cases.iter().map(|c| c.reads).sum();
        if system == "this" && reads < READS_TARGET {
            eprintln!(
                "consistency: the `this` cases made {reads} reads, under {READS_TARGET}: raise CONSISTENCY_SECS"
            );
        }
        let failing: Vec<&str> = cases
            .iter()
            .filter(|c| !c.control && c.violations.total() > 0)
            .map(|c| c.name.as_str())
            .collect();
        let row = Row::new("consistency", system)
            .with(
                "case",
                match cases.len() {
                    1 => "total (1 case)".to_owned(),
                    n => format!("total ({n} cases)"),
                },
            )
            .with("reads", reads as u64)
            .with(
                "reads_returned",
                cases.iter().map(|c| c.reads_returned as u64).sum::<u64>(),
            );
        let row = figures(
            row,
            &summary.violations_of(system),
            &Lags::merged(cases.iter().map(|c| &c.window)),
            &Lags::merged(cases.iter().map(|c| &c.fault_lags)),
        );
        let row = if system == "this" {
            row.with(
                "cases_violating",
                if failing.is_empty() {
                    "none".to_owned()
                } else {
                    failing.join(",")
                },
            )
        } else {
            row
        };
        rows.push(
            row.with(
                "secs",
                cases.iter().map(|c| c.took.as_secs_f64()).sum::<f64>(),
            )
            .with("seed", summary.seed.to_string()),
        );
    }
    rows
}

fn case_row(c: &CaseSummary) -> Row {
    let row = Row::new("consistency", c.system)
        .with("case", c.name.clone())
        .with("reads", c.reads as u64)
        .with("reads_returned", c.reads_returned as u64);
    let result = match (c.control, c.passed) {
        (true, true) => "ok: violations found, as the control must have",
        (true, false) => "FAILED: the control shows no violation",
        (false, _) => c.kind.name(),
    };
    figures(row, &c.violations, &c.window, &c.fault_lags)
        .with("result", result)
        .with("secs", c.took.as_secs_f64())
}

/// Violations per property, then each window's stale reads and lags.
fn figures(row: Row, v: &Violations, window: &Lags, fault: &Lags) -> Row {
    let [a, a2, b, c, d] = v.by_property().map(|(_, n)| n as u64);
    let ms = |lags: &Lags, q| lags.quantile_ms(q).unwrap_or(f64::NAN);
    row.with("violations", v.total() as u64)
        .with("violations_a", a)
        .with("violations_a2", a2)
        .with("violations_b", b)
        .with("violations_c", c)
        .with("violations_d", d)
        .with("window_stale_reads", window.count() as u64)
        .with("window_lag_p99_ms", ms(window, 0.99))
        .with("window_lag_max_ms", ms(window, 1.0))
        .with("fault_stale_reads", fault.count() as u64)
        .with("fault_lag_p99_ms", ms(fault, 0.99))
        .with("fault_lag_max_ms", ms(fault, 1.0))
}
