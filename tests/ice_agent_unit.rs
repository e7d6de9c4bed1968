//! Agent-level checks: untrusted bytes, memory footprint of a connected agent.
use std::time::{Duration, Instant};

use icering::ice::{Candidate, Handled, IceAgent, IceConfig};
use icering::net::Received;
use proptest::prelude::*;

fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent) {
    let mut buf = [0u8; 1500];
    x.handle_timeout(now);
    while let Some(t) = x.poll_transmit(now, &mut buf) {
        let pkt = Received {
            source: t.source,
            destination: t.destination,
            contents: &buf[..t.size],
        };
        y.handle_packet(now, pkt);
    }
}

fn connected_pair() -> (IceAgent, IceAgent, Instant) {
    let mut a = IceAgent::new(IceConfig {
        controlling: true,
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    let mut b = IceAgent::new(IceConfig {
        seed: 2,
        ..Default::default()
    })
    .unwrap();
    a.add_local_candidate(Candidate::host("10.0.0.1:5000".parse().unwrap()))
        .unwrap();
    b.add_local_candidate(Candidate::host("10.0.0.2:6000".parse().unwrap()))
        .unwrap();
    let (u, p) = a.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    b.set_remote_credentials(&u, &p).unwrap();
    let (u, p) = b.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    a.set_remote_credentials(&u, &p).unwrap();
    for c in a.local_candidates().to_vec() {
        b.add_remote_candidate(c).unwrap();
    }
    for c in b.local_candidates().to_vec() {
        a.add_remote_candidate(c).unwrap();
    }
    let mut now = Instant::now();
    for _ in 0..100 {
        pump(now, &mut a, &mut b);
        pump(now, &mut b, &mut a);
        now += Duration::from_millis(10);
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, b, now)
}

#[test]
fn connected_agent_footprint() {
    let (a, b, _) = connected_pair();
    assert!(a.selected_pair().is_some() && b.selected_pair().is_some());
    let stack = std::mem::size_of::<IceAgent>();
    println!(
        "size_of::<IceAgent>() = {stack} B, heap ≈ {} B, total ≈ {} B (1 local, 1 remote; the controlled side: {} B heap)",
        a.heap_size(),
        stack + a.heap_size(),
        b.heap_size()
    );
    assert!(stack + a.heap_size() <= 2048);
}

#[test]
fn data_only_from_validated_addresses() {
    let (mut a, _b, now) = connected_pair();
    let ok = Received {
        source: "10.0.0.2:6000".parse().unwrap(),
        destination: "10.0.0.1:5000".parse().unwrap(),
        contents: &[0x80, 1, 2],
    };
    assert_eq!(a.handle_packet(now, ok), Handled::Data);
    let bad = Received {
        source: "10.0.0.9:6000".parse().unwrap(),
        ..ok
    };
    assert_eq!(a.handle_packet(now, bad), Handled::Dropped);
}

proptest! {
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), stun in any::<bool>()) {
        let (mut a, _b, now) = connected_pair();
        let mut d = data;
        if stun && d.len() >= 20 {
            d[0] &= 0x3F;
            d[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            let l = ((d.len() - 20) & !3) as u16;
            d.truncate(20 + l as usize);
            d[2..4].copy_from_slice(&l.to_be_bytes());
        }
        let pkt = Received { source: "10.0.0.2:6000".parse().unwrap(), destination: "10.0.0.1:5000".parse().unwrap(), contents: &d };
        let _ = a.handle_packet(now, pkt);
        let mut buf = [0u8; 1500];
        a.handle_timeout(now + Duration::from_secs(1));
        while a.poll_transmit(now, &mut buf).is_some() {}
    }
}
