//! Compile-time behaviour of `#[cached]`: misuse is a plain-words error at the
//! offending token (`ui/fail`), and every supported form compiles cleanly
//! under `-D warnings` (`ui/pass`).
//!
//! The `.stderr` snapshots follow rustc's wording, which changes between
//! releases: they are pinned to the toolchain in `rust-toolchain.toml`.
//! Regenerate with `TRYBUILD=overwrite cargo test -p cached-tests --test ui`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
