//! Deadlines of the sans-IO objects a shard drives: a [`TimerWheel`] of `(Instant, key)`.
//!
//! Protocol objects report their next deadline through `poll_timeout()`; the shard pushes
//! it here and sleeps until the earliest one. Stale entries (an object rescheduled
//! earlier or later) are tolerated: the shard calls `handle_timeout(now)` on the key and
//! the object ignores a wake-up that is not yet due. Entries never fire early (deadlines
//! round up to the wheel's 1 ms tick), so a due check on wake-up always passes.

use std::time::Instant;

use crate::wheel::TimerWheel;

/// A shard's deadlines.
#[derive(Debug)]
pub struct Timers<K> {
    wheel: TimerWheel<K>,
}

impl<K: Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            wheel: TimerWheel::new(Instant::now()),
        }
    }
}

impl<K: Copy> Timers<K> {
    /// Wake `key` at `at`.
    pub fn schedule(&mut self, at: Instant, key: K) {
        self.wheel.schedule(at, key);
    }

    /// The earliest deadline (or an earlier instant, when the wheel must move entries
    /// down first: the shard then wakes, finds nothing due, and asks again).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    /// Removes and returns one key whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        self.wheel.pop_expired(now)
    }

    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.wheel.len()
    }

    /// No pending entries.
    pub fn is_empty(&self) -> bool {
        self.wheel.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut t = Timers::default();
        let t0 = Instant::now();
        t.schedule(t0 + Duration::from_millis(30), 3);
        t.schedule(t0 + Duration::from_millis(10), 1);
        t.schedule(t0 + Duration::from_millis(20), 2);
        // Rounded up to the wheel's millisecond tick: never early, at most 1 ms late.
        let next = t.next_deadline().unwrap();
        assert!(next >= t0 + Duration::from_millis(10), "{next:?}");
        assert!(next <= t0 + Duration::from_millis(11), "{next:?}");
        assert_eq!(t.pop_expired(t0), None);
        let now = t0 + Duration::from_millis(26);
        let mut got = vec![t.pop_expired(now).unwrap(), t.pop_expired(now).unwrap()];
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.len(), 1);
    }
}
