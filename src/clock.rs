//! Milliseconds on one process-wide monotonic clock, for state kept in atomics.
//!
//! Breakers, retry budgets and slow start store instants in `AtomicU64`s, which an
//! `Instant` does not fit. They read this clock instead: milliseconds since the first reading.
//! It is tokio's clock, so unit tests of time-based logic run on a paused clock
//! (`tokio::time::pause`) and advance it without sleeping.

use std::sync::LazyLock;
use tokio::time::Instant;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the clock's start; never zero, so zero can mean "never".
pub fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64 + 1
}
