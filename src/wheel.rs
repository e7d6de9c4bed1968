//! A hierarchical timing wheel (Varghese & Lauck): deadlines of very many sans-IO objects
//! in O(1) per schedule and amortised O(1) per expiry, where a binary heap pays
//! O(log n) cache misses for each (at 100k agents a shard's heap was the top item of its
//! profile).
//!
//! Six levels of 64 slots: level `L` slot width is `64^L` ticks of 1 ms, so the wheel
//! spans 2^36 ms (~795 days) ahead of its current time; a later deadline is clamped to
//! that horizon (~782 days ahead), and the wheel's time itself runs on without limit. An entry sits at the
//! lowest level whose slot can hold it without wrapping; when the wheel's time reaches a
//! higher-level slot, that slot's entries move down ("cascade") until they reach level 0,
//! whose slots are single ticks. Deadlines round *up* to the next tick, so nothing ever
//! expires early.
//!
//! No clock is read (except by `Default`, an empty wheel starting now): time is the
//! `Instant` passed in. Stale entries are the caller's
//! business (as with a heap): the wheel returns every key scheduled, once per schedule.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
/// Furthest a deadline may lie ahead of the wheel's time, in ticks: one turn of the top
/// level minus one of its slots, so an entry never lands in the top slot the wheel is in.
const HORIZON: u64 =
    (1 << (SLOT_BITS * LEVELS as u32)) - (1 << (SLOT_BITS * (LEVELS as u32 - 1))) - 1;

/// No entry (end of a slot's list).
const NIL: u32 = u32::MAX;

/// One level: the head entry of each of its 64 slots and a bitmap of the non-empty ones.
#[derive(Debug)]
struct Level {
    occupied: u64,
    heads: [u32; SLOTS],
}

/// An entry in the wheel's slab, linked into its slot's list.
#[derive(Debug, Clone, Copy)]
struct Entry<K> {
    tick: u64,
    key: K,
    next: u32,
}

/// A timing wheel of `(deadline, key)` entries with 1 ms ticks. Entries live in one slab
/// (its free list reuses them), linked into their slots: memory follows the number of
/// entries, not how they spread over slots.
#[derive(Debug)]
pub struct TimerWheel<K> {
    origin: Instant,
    /// Ticks since `origin` the wheel has processed: every entry with a deadline at or
    /// before it has been moved to `due`.
    elapsed: u64,
    levels: Box<[Level]>,
    entries: Vec<Entry<K>>,
    /// Head of the list of free entries.
    free: u32,
    /// Expired keys not yet returned, in deadline order.
    due: VecDeque<K>,
    len: usize,
}

impl<K: Copy> Default for TimerWheel<K> {
    /// An empty wheel starting now.
    fn default() -> Self {
        TimerWheel::new(Instant::now())
    }
}

impl<K: Copy> TimerWheel<K> {
    /// An empty wheel whose tick 0 is `origin` (deadlines before it count as due).
    pub fn new(origin: Instant) -> Self {
        TimerWheel {
            origin,
            elapsed: 0,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    heads: [NIL; SLOTS],
                })
                .collect(),
            entries: Vec::new(),
            free: NIL,
            due: VecDeque::new(),
            len: 0,
        }
    }

    /// Wake `key` at `at` (rounded up to the next millisecond).
    pub fn schedule(&mut self, at: Instant, key: K) {
        let d = at.saturating_duration_since(self.origin);
        let tick = d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000));
        self.len += 1;
        let tick = tick.min(self.elapsed + HORIZON);
        if tick <= self.elapsed {
            self.due.push_back(key);
            return;
        }
        let e = Entry {
            tick,
            key,
            next: NIL,
        };
        let i = if self.free == NIL {
            self.entries.push(e);
            (self.entries.len() - 1) as u32
        } else {
            let i = self.free;
            self.free = self.entries[i as usize].next;
            self.entries[i as usize] = e;
            i
        };
        self.link(i);
    }

    /// Puts entry `i` into its slot (or, if due, its key into `due` and the entry back on
    /// the free list).
    fn link(&mut self, i: u32) {
        let e = &mut self.entries[i as usize];
        if e.tick <= self.elapsed {
            self.due.push_back(e.key);
            e.next = self.free;
            self.free = i;
            return;
        }
        let (level, slot) = position(self.elapsed, e.tick);
        let l = &mut self.levels[level];
        e.next = l.heads[slot];
        l.heads[slot] = i;
        l.occupied |= 1 << slot;
    }

    /// When the earliest entry is due, at the latest: exact for entries within 64 ms of
    /// the wheel's time, the start of their slot for later ones (the caller then wakes
    /// early, [`pop_expired`](Self::pop_expired) moves them down, and this answers again).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.due.is_empty() {
            return Some(self.at(self.elapsed));
        }
        self.next_slot().map(|(_, _, start)| self.at(start))
    }

    /// Removes and returns one key whose deadline is at or before `now`, earliest first
    /// (keys due in the same millisecond in no particular order).
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        if self.due.is_empty() {
            let now_tick = now.saturating_duration_since(self.origin).as_millis() as u64;
            self.advance(now_tick);
        }
        let k = self.due.pop_front()?;
        self.len -= 1;
        Some(k)
    }

    /// Number of pending entries (due ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// No pending entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, tick: u64) -> Instant {
        self.origin + Duration::from_millis(tick)
    }

    /// The earliest non-empty slot as (level, slot, its first tick). Lower levels always
    /// come first: a level-`L` entry lies beyond the current level-`L-1` rotation.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level, l) in self.levels.iter().enumerate() {
            if l.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let now_slot = ((self.elapsed >> shift) & (SLOTS as u64 - 1)) as u32;
            // Slots at or after the current one, in rotation order.
            let rotated = l.occupied.rotate_right(now_slot);
            let offset = u64::from(rotated.trailing_zeros());
            let slot = (u64::from(now_slot) + offset) as usize % SLOTS;
            let width = 1u64 << shift;
            let rotation = self.elapsed & !((width << SLOT_BITS) - 1);
            let mut start = rotation + slot as u64 * width;
            if start < self.elapsed & !(width - 1) {
                start += width << SLOT_BITS;
            }
            return Some((level, slot, start.max(self.elapsed)));
        }
        None
    }

    /// Processes time up to `now_tick`: level-0 slots due go to `due`; higher slots whose
    /// start has come cascade down.
    fn advance(&mut self, now_tick: u64) {
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now_tick {
                break;
            }
            self.elapsed = start;
            let l = &mut self.levels[level];
            l.occupied &= !(1 << slot);
            let mut i = std::mem::replace(&mut l.heads[slot], NIL);
            while i != NIL {
                let next = self.entries[i as usize].next;
                self.link(i);
                i = next;
            }
        }
        self.elapsed = self.elapsed.max(now_tick);
    }
}

/// The level and slot of an entry due at `tick` when the wheel is at `elapsed`
/// (`elapsed < tick <= elapsed + HORIZON`): the level of the highest 6-bit group where
/// they differ, the top level for a deadline past the top level's current turn (it then
/// sits in a slot behind the current one, read as the next turn's).
fn position(elapsed: u64, tick: u64) -> (usize, usize) {
    let differ = (elapsed ^ tick) | (SLOTS as u64 - 1);
    let level = (((63 - differ.leading_zeros()) / SLOT_BITS) as usize).min(LEVELS - 1);
    let slot = ((tick >> (SLOT_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
    (level, slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pops_only_when_due_and_never_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.schedule(t0 + ms(30), 3);
        w.schedule(t0 + ms(10), 1);
        w.schedule(t0 + Duration::from_micros(20_100), 2); // rounds up to 21 ms
        assert_eq!(w.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(w.pop_expired(t0 + ms(9)), None);
        assert_eq!(w.pop_expired(t0 + ms(10)), Some(1));
        assert_eq!(w.pop_expired(t0 + ms(20)), None);
        assert_eq!(w.pop_expired(t0 + ms(21)), Some(2));
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_deadline(), Some(t0 + ms(30)));
    }

    /// `Default` starts the wheel now: a deadline lands within its rounding (at most 1 ms
    /// late), never early.
    #[test]
    fn default_starts_now_and_pops_in_order() {
        let mut t = TimerWheel::default();
        let t0 = Instant::now();
        t.schedule(t0 + ms(30), 3);
        t.schedule(t0 + ms(10), 1);
        t.schedule(t0 + ms(20), 2);
        let next = t.next_deadline().unwrap();
        assert!(next >= t0 + ms(10), "{next:?}");
        assert!(next <= t0 + ms(11), "{next:?}");
        assert_eq!(t.pop_expired(t0), None);
        let now = t0 + ms(26);
        let mut got = vec![t.pop_expired(now).unwrap(), t.pop_expired(now).unwrap()];
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        assert_eq!(t.pop_expired(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn far_deadlines_cascade_down() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let far = [5_000u64, 600_000, 3_600_000, 86_400_000];
        for (i, d) in far.iter().enumerate() {
            w.schedule(t0 + ms(*d), i);
        }
        for (i, d) in far.iter().enumerate() {
            // Wake at every deadline the wheel announces until this one is due.
            let mut guard = 0;
            assert_eq!(w.pop_expired(t0 + ms(*d - 1)), None, "early");
            loop {
                let next = w.next_deadline().unwrap();
                assert!(next <= t0 + ms(*d), "announced after the deadline");
                if let Some(k) = w.pop_expired(next) {
                    assert_eq!(k, i);
                    assert_eq!(next, t0 + ms(*d));
                    break;
                }
                guard += 1;
                assert!(guard < 10, "too many wake-ups");
            }
        }
        assert!(w.is_empty());
    }

    /// Past the span of 2^36 ms from the origin (795 days of uptime), deadlines still fire
    /// on time, near and far ones, across the top level's turn.
    #[test]
    fn keeps_time_past_its_span() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let start = (1u64 << 36) - 3_000;
        let day = 86_400_000u64;
        let ahead = [1u64, 2_000, 5_000, day, 40 * day];
        // The wheel's time moves to `start` first (nothing due).
        assert_eq!(w.pop_expired(t0 + ms(start)), None);
        for (i, a) in ahead.iter().enumerate() {
            w.schedule(t0 + ms(start + a), i);
        }
        let mut fired = Vec::new();
        let mut now = start;
        while !w.is_empty() {
            let next = w.next_deadline().expect("pending");
            let t = next.saturating_duration_since(t0).as_millis() as u64;
            assert!(t >= now, "next deadline in the past");
            now = t;
            while let Some(k) = w.pop_expired(t0 + ms(now)) {
                fired.push((k, now - start));
            }
        }
        let want: Vec<(usize, u64)> = ahead.iter().copied().enumerate().collect();
        assert_eq!(fired, want);
    }

    /// Against a model (a sorted map): random schedules and random steps of time, the
    /// wheel returns exactly the keys whose (rounded-up) deadline has passed.
    #[test]
    fn matches_a_sorted_model() {
        let t0 = Instant::now();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..20 {
            let mut w = TimerWheel::new(t0);
            let mut model: BTreeMap<(u64, u32), ()> = BTreeMap::new();
            let mut now = 0u64;
            let mut key = 0u32;
            for _ in 0..3_000 {
                for _ in 0..(rnd() % 4) {
                    let span = [70u64, 5_000, 300_000, 20_000_000][(rnd() % 4) as usize];
                    let at = now + rnd() % span;
                    w.schedule(t0 + ms(at), key);
                    model.insert((at, key), ());
                    key += 1;
                }
                now += rnd() % [2u64, 50, 4_000][(rnd() % 3) as usize];
                let mut got = Vec::new();
                while let Some(k) = w.pop_expired(t0 + ms(now)) {
                    got.push(k);
                }
                got.sort_unstable();
                let due: Vec<(u64, u32)> = model.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
                let mut want: Vec<u32> = due.iter().map(|(_, k)| *k).collect();
                want.sort_unstable();
                for k in &due {
                    model.remove(k);
                }
                assert_eq!(got, want, "at {now} ms");
                assert_eq!(w.len(), model.len());
                if let Some((&(first, _), _)) = model.iter().next() {
                    let next = w.next_deadline().expect("entries pending");
                    assert!(next <= t0 + ms(first), "next deadline after the earliest");
                    assert!(next >= t0 + ms(now), "next deadline in the past");
                }
            }
        }
    }
}
