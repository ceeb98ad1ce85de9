//! The scheduler's data structures and traffic-shaping arithmetic: the timer
//! wheel and queues, rates and the GCRA limiter, retry backoff, "N in D" reply
//! thresholds and limits that recover step by step. Nothing here reads a clock: every call takes
//! `now` in nanoseconds from an arbitrary origin, so tests control time and
//! never sleep.

pub mod backoff;
pub mod calendar;
pub mod queues;
pub mod rate;
pub mod recovery;
pub mod window;

/// Nanoseconds since an arbitrary, fixed origin (the caller's monotonic clock).
pub type Nanos = u64;

pub const SECOND: Nanos = 1_000_000_000;
