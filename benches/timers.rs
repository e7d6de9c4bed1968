//! A shard's deadlines at scale: 100,000 keys (agents) that each, when due, schedule their
//! next deadline 2–5 s later (keepalives, consent), as a serve shard holding 100k sessions
//! does. Time advances 1 ms per step; a step pops everything due and reschedules it.
//! icering's timing wheel (`icering::wheel::TimerWheel`, what `shard::Timers` uses) against
//! the binary heap of `(Instant, key)` it replaced, in the same run.
//!
//! `cargo bench --bench timers`; the figure is time per step of 1 ms (~33 due keys).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use icering::wheel::TimerWheel;

const KEYS: u32 = 100_000;

/// A deterministic next deadline offset for `key` at `step`: 2,000–4,999 ms.
fn offset(key: u32, step: u64) -> Duration {
    let x = (u64::from(key) ^ step.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    Duration::from_millis(2_000 + (x >> 40) % 3_000)
}

struct Heap(BinaryHeap<Reverse<(Instant, u32)>>);

impl Heap {
    fn step(&mut self, now: Instant, n: u64) -> usize {
        let mut due = 0;
        while let Some(Reverse((at, _))) = self.0.peek()
            && *at <= now
        {
            let Reverse((_, k)) = self.0.pop().unwrap();
            self.0.push(Reverse((now + offset(k, n), k)));
            due += 1;
        }
        due
    }
}

fn wheel_step(w: &mut TimerWheel<u32>, now: Instant, n: u64, popped: &mut Vec<u32>) -> usize {
    while let Some(k) = w.pop_expired(now) {
        popped.push(k);
    }
    let due = popped.len();
    for k in popped.drain(..) {
        w.schedule(now + offset(k, n), k);
    }
    due
}

fn benches(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("timers_100k_keys_1ms_step");
    g.bench_function("wheel", |b| {
        let mut w = TimerWheel::new(t0);
        for k in 0..KEYS {
            w.schedule(t0 + offset(k, 0), k);
        }
        let mut popped = Vec::new();
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(wheel_step(
                &mut w,
                t0 + Duration::from_millis(n),
                n,
                &mut popped,
            ))
        });
    });
    g.bench_function("binary_heap", |b| {
        let mut h = Heap(BinaryHeap::new());
        for k in 0..KEYS {
            h.0.push(Reverse((t0 + offset(k, 0), k)));
        }
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            black_box(h.step(t0 + Duration::from_millis(n), n))
        });
    });
    g.finish();
}

criterion_group!(all, benches);

fn main() {
    all();
    Criterion::default().configure_from_args().final_summary();
}
