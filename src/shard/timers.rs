//! Deadlines of the sans-IO objects a shard drives: a [`TimerWheel`](crate::wheel::TimerWheel) of `(Instant, key)`.
//!
//! Protocol objects report their next deadline through `poll_timeout()`; the shard pushes
//! it here and sleeps until the earliest one. Stale entries (an object rescheduled
//! earlier or later) are tolerated: the shard calls `handle_timeout(now)` on the key and
//! the object ignores a wake-up that is not yet due. Entries never fire early (deadlines
//! round up to the wheel's 1 ms tick), so a due check on wake-up always passes.

pub use crate::wheel::TimerWheel as Timers;
