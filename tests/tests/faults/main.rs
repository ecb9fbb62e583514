//! The fault-injection suite: one module per fault, each against a real
//! `redis-server` of its own that the test freezes (SIGSTOP), kills,
//! restarts, or fills with values this framework did not write. No mocks.
//!
//! Every test asserts what the caller sees (the loader's value, in bounded
//! time) and what the cache did about it (counted, overwritten or skipped).

mod support;

mod breaker;
mod frozen;
mod garbage;
mod late_writes;
mod loading;
mod lost_changes;
mod oversize;
mod pending_reads;
mod refused;
mod restart;
mod stranded;
mod strict;
mod wrongtype;
