//! Time per established connection: two agents (1 host candidate each) exchanging STUN in
//! memory under a virtual clock, from creation to both having selected a pair.
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use icering::ice::{Candidate, IceAgent, IceConfig};
use icering::net::Received;

fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent, buf: &mut [u8]) {
    if x.poll_timeout().is_some_and(|t| t <= now) {
        x.handle_timeout(now);
    }
    while let Some(t) = x.poll_transmit(now, buf) {
        let pkt = Received {
            source: t.source,
            destination: t.destination,
            contents: &buf[..t.size],
        };
        y.handle_packet(now, pkt);
    }
}

fn establish(seed: u64, start: Instant) -> (IceAgent, IceAgent) {
    let mut a = IceAgent::new(IceConfig {
        controlling: true,
        seed,
        ..Default::default()
    })
    .unwrap();
    let mut b = IceAgent::new(IceConfig {
        seed: seed ^ 0xFF,
        ..Default::default()
    })
    .unwrap();
    let ca = Candidate::host("10.0.0.1:5000".parse().unwrap());
    let cb = Candidate::host("10.0.0.2:6000".parse().unwrap());
    a.add_local_candidate(ca.clone()).unwrap();
    b.add_local_candidate(cb.clone()).unwrap();
    let (u, p) = a.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    b.set_remote_credentials(&u, &p).unwrap();
    let (u, p) = b.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    a.set_remote_credentials(&u, &p).unwrap();
    a.add_remote_candidate(b.local_candidates()[0].clone())
        .unwrap();
    b.add_remote_candidate(a.local_candidates()[0].clone())
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut now = start;
    a.handle_timeout(now);
    b.handle_timeout(now);
    while a.selected_pair().is_none() || b.selected_pair().is_none() {
        pump(now, &mut a, &mut b, &mut buf);
        pump(now, &mut b, &mut a, &mut buf);
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        now = next.map_or(now + Duration::from_millis(1), |t| t.max(now));
    }
    (a, b)
}

fn bench(c: &mut Criterion) {
    let start = Instant::now();
    let mut seed = 0;
    c.bench_function("icering: establish agent pair (in memory)", |bch| {
        bch.iter(|| {
            seed += 1;
            establish(seed, start)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
