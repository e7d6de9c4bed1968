//! Deadlines of the sans-IO objects a shard drives: a min-heap of `(Instant, key)`.
//!
//! Protocol objects report their next deadline through `poll_timeout()`; the shard pushes
//! it here and sleeps until the earliest one. Stale entries (an object rescheduled
//! earlier or later) are tolerated: the shard calls `handle_timeout(now)` on the key and
//! the object ignores a wake-up that is not yet due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of deadlines.
#[derive(Debug)]
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// Wake `key` at `at`.
    pub fn schedule(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns one key whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No pending entries.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.schedule(t0 + Duration::from_millis(30), 3);
        t.schedule(t0 + Duration::from_millis(10), 1);
        t.schedule(t0 + Duration::from_millis(20), 2);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_expired(t0), None);
        let now = t0 + Duration::from_millis(25);
        assert_eq!(t.pop_expired(now), Some(1));
        assert_eq!(t.pop_expired(now), Some(2));
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.len(), 1);
    }
}
