//! Agent-level checks: untrusted bytes, memory footprint of a connected agent.
use std::time::{Duration, Instant};

use icering::ice::{Candidate, CandidateKind, Foundation, Handled, IceAgent, IceConfig};
use icering::net::Received;
use icering::stun::{Class, IntegrityKey, Message, MessageType, MessageWriter, Method, attr};
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
    connected_to(IceConfig {
        seed: 2,
        ..Default::default()
    })
}

/// A controlling full agent connected to one made from `b` (controlled, or lite).
fn connected_to(b: IceConfig) -> (IceAgent, IceAgent, Instant) {
    let mut a = IceAgent::new(IceConfig {
        controlling: true,
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    let mut b = IceAgent::new(b).unwrap();
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

/// A Binding request from `b` to `a` (USERNAME `a:b`, PRIORITY, ICE-CONTROLLED) with the
/// `extra` attributes before MESSAGE-INTEGRITY, signed with `pwd`.
fn request_with(
    a: &IceAgent,
    b: &IceAgent,
    tid: &[u8; 12],
    extra: &[u16],
    pwd: &str,
    buf: &mut [u8],
) -> usize {
    let mut w =
        MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Request), tid).unwrap();
    let user = format!("{}:{}", a.local_credentials().0, b.local_credentials().0);
    w.add_raw(attr::USERNAME, user.as_bytes()).unwrap();
    w.add_u32(attr::PRIORITY, 0x6E00_01FF).unwrap();
    w.add_raw(attr::ICE_CONTROLLED, &b.tie_breaker().to_be_bytes())
        .unwrap();
    w.add_raw(attr::USE_CANDIDATE, &[]).unwrap();
    for &t in extra {
        w.add_raw(t, &[1, 2, 3, 4]).unwrap();
    }
    w.add_message_integrity(&IntegrityKey::new(pwd.as_bytes()))
        .unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

/// The response `a` queued for transaction `tid`, as owned bytes.
fn response_for(a: &mut IceAgent, now: Instant, tid: &[u8; 12]) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    while let Some(t) = a.poll_transmit(now, &mut buf) {
        let m = Message::parse(&buf[..t.size]).unwrap();
        if m.transaction_id() == tid {
            assert_eq!(t.destination, "10.0.0.2:7000".parse().unwrap());
            return buf[..t.size].to_vec();
        }
    }
    panic!("no response for the request");
}

/// RFC 8489 §6.3.1.1: an authentic check with unknown comprehension-required attributes
/// gets a signed 420 listing them (not the comprehension-optional ones), and the agent
/// learns nothing from it: no peer-reflexive candidate, no pair, no nomination.
#[test]
fn unknown_required_attribute_gets_420() {
    let (mut a, b, now) = connected_pair();
    let (pairs, remotes, selected) = (
        a.pair_count(),
        a.remote_candidates().len(),
        a.selected_pair(),
    );
    let state = a.state();
    let tid = [7u8; 12];
    let mut buf = [0u8; 1500];
    let pwd = a.local_credentials().1.to_owned();
    let n = request_with(&a, &b, &tid, &[0x7F01, 0xC057, 0x0031], &pwd, &mut buf);
    let pkt = Received {
        source: "10.0.0.2:7000".parse().unwrap(),
        destination: "10.0.0.1:5000".parse().unwrap(),
        contents: &buf[..n],
    };
    assert_eq!(a.handle_packet(now, pkt), Handled::Stun);
    let resp = response_for(&mut a, now, &tid);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.method(), Method::BINDING);
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.error_code().unwrap().code, 420);
    let listed: Vec<u16> =
        attr::unknown_attributes(m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value).collect();
    assert_eq!(listed, vec![0x7F01, 0x0031]);
    m.verify_integrity(&IntegrityKey::new(pwd.as_bytes()))
        .unwrap();
    m.verify_fingerprint().unwrap();
    assert!(m.xor_mapped_address().is_none());
    assert_eq!(a.pair_count(), pairs);
    assert_eq!(a.remote_candidates().len(), remotes);
    assert_eq!(a.selected_pair(), selected);
    assert_eq!(a.state(), state);
    assert_eq!(a.poll_event(), None);
}

/// Integrity comes first: a forged request with an unknown attribute gets an unsigned 401,
/// and a comprehension-optional unknown alone does not trigger a 420.
#[test]
fn unknown_attribute_needs_integrity_first() {
    let (mut a, b, now) = connected_pair();
    let mut buf = [0u8; 1500];
    let tid = [8u8; 12];
    let n = request_with(
        &a,
        &b,
        &tid,
        &[0x7F01],
        "wrongwrongwrongwrongwrong",
        &mut buf,
    );
    let pkt = Received {
        source: "10.0.0.2:7000".parse().unwrap(),
        destination: "10.0.0.1:5000".parse().unwrap(),
        contents: &buf[..n],
    };
    a.handle_packet(now, pkt);
    let resp = response_for(&mut a, now, &tid);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.error_code().unwrap().code, 401);
    assert!(m.integrity_offset().is_none());
    assert!(m.get(attr::UNKNOWN_ATTRIBUTES).is_none());

    let tid = [9u8; 12];
    let pwd = a.local_credentials().1.to_owned();
    let n = request_with(&a, &b, &tid, &[0xC057], &pwd, &mut buf);
    let pkt = Received {
        source: "10.0.0.2:7000".parse().unwrap(),
        destination: "10.0.0.1:5000".parse().unwrap(),
        contents: &buf[..n],
    };
    a.handle_packet(now, pkt);
    let resp = response_for(&mut a, now, &tid);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
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

/// With `aggressive_nomination` the controlling agent's very first check already carries
/// USE-CANDIDATE (the scenario in ice_scenarios.rs relies on it); by default it does not.
#[test]
fn aggressive_nomination_flags_first_check() {
    for aggressive in [false, true] {
        let mut a = IceAgent::new(IceConfig {
            controlling: true,
            aggressive_nomination: aggressive,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        let b = IceAgent::new(IceConfig {
            seed: 2,
            ..Default::default()
        })
        .unwrap();
        a.add_local_candidate(Candidate::host("10.0.0.1:5000".parse().unwrap()))
            .unwrap();
        let (u, p) = b.local_credentials();
        let (u, p) = (u.to_owned(), p.to_owned());
        a.set_remote_credentials(&u, &p).unwrap();
        a.add_remote_candidate(Candidate::host("10.0.0.2:6000".parse().unwrap()))
            .unwrap();
        let now = Instant::now();
        a.handle_timeout(now);
        let mut buf = [0u8; 1500];
        let t = a.poll_transmit(now, &mut buf).expect("a first check");
        let m = Message::parse(&buf[..t.size]).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.use_candidate(), aggressive);
    }
}

/// Foundations derived from a hash are its decimal text (as pion/ice and libwebrtc write
/// them), for the shortest and longest u32s too.
#[test]
fn foundation_from_hash_is_decimal_text() {
    for h in [0, 7, 10, 99, 100, 123_456_789, 1_000_000_000, u32::MAX] {
        let f = Foundation::from_hash(h);
        assert_eq!(f.as_str(), h.to_string());
        assert_eq!(f.as_bytes(), h.to_string().as_bytes());
        assert_eq!(Some(f), Foundation::new(&h.to_string()));
    }
}

/// A check from an unknown address makes a remote peer-reflexive candidate (§7.3.1.3)
/// whose foundation is the FNV-1a hash of `prflx<address>` in decimal, for IPv4 and IPv6.
#[test]
fn remote_prflx_foundation_hashes_its_address() {
    fn fnv1a(s: &str) -> u32 {
        s.bytes().fold(0x811C_9DC5, |h: u32, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    }
    for (local, source) in [
        ("10.0.0.1:5000", "10.0.0.2:7000"),
        ("[2001:db8::1]:5000", "[2001:db8::2]:7000"),
    ] {
        // Controlling, so the request's ICE-CONTROLLED is no role conflict.
        let mut a = IceAgent::new(IceConfig {
            controlling: true,
            seed: 5,
            ..Default::default()
        })
        .unwrap();
        let b = IceAgent::new(IceConfig {
            seed: 6,
            ..Default::default()
        })
        .unwrap();
        a.add_local_candidate(Candidate::host(local.parse().unwrap()))
            .unwrap();
        let (u, p) = b.local_credentials();
        a.set_remote_credentials(u, p).unwrap();
        let mut buf = [0u8; 1500];
        let pwd = a.local_credentials().1.to_owned();
        let n = request_with(&a, &b, &[3u8; 12], &[], &pwd, &mut buf);
        let pkt = Received {
            source: source.parse().unwrap(),
            destination: local.parse().unwrap(),
            contents: &buf[..n],
        };
        assert_eq!(a.handle_packet(Instant::now(), pkt), Handled::Stun);
        let r = &a.remote_candidates()[0];
        assert_eq!(r.kind, CandidateKind::PeerReflexive);
        assert_eq!(r.addr, source.parse().unwrap());
        let want = fnv1a(&format!("prflx{source}"));
        assert_eq!(r.foundation.as_str(), want.to_string(), "{source}");
    }
}

/// A restart announces the kept local candidates again (the peer forgets them with the old
/// credentials, RFC 8445 §9), not those of a removed interface, then the end of gathering
/// if gathering had ended. An agent that could not check yet stays New; a closed one
/// refuses.
#[test]
fn restart_announces_the_live_candidates_again() {
    use icering::ice::IceEvent;
    let mut a = IceAgent::new(IceConfig {
        seed: 3,
        ..Default::default()
    })
    .unwrap();
    let (kept, gone) = (
        "10.0.0.1:5000".parse().unwrap(),
        "10.0.0.9:5001".parse().unwrap(),
    );
    a.add_local_candidate(Candidate::host(kept)).unwrap();
    a.add_local_candidate(Candidate::host(gone)).unwrap();
    let announced = |a: &mut IceAgent| {
        let mut seen = Vec::new();
        while let Some(e) = a.poll_event() {
            match e {
                IceEvent::LocalCandidate(c) => seen.push(Some(c.addr)),
                IceEvent::GatheringComplete => seen.push(None),
                _ => {}
            }
        }
        seen
    };
    assert_eq!(announced(&mut a), [Some(kept), Some(gone)]);
    a.restart(None, None).unwrap();
    assert_eq!(
        announced(&mut a),
        [Some(kept), Some(gone)],
        "still gathering"
    );
    a.end_of_local_candidates();
    assert_eq!(a.remove_local_candidates(gone), 1);
    let _ = announced(&mut a);
    let old = a.local_credentials().0.to_owned();
    a.restart(None, None).unwrap();
    assert_ne!(a.local_credentials().0, old);
    assert_eq!(announced(&mut a), [Some(kept), None]);
    assert_eq!(a.state(), icering::ice::ConnectionState::New);
    a.close();
    assert!(matches!(
        a.restart(None, None),
        Err(icering::ice::IceError::Closed)
    ));
    assert!(announced(&mut a).is_empty());
}

/// A lite agent's old path after a restart goes once the peer has been silent on it for
/// `failed_timeout` (a lite agent sends nothing that could end it otherwise), and the
/// agent fails: it does not wait forever in Checking.
#[test]
fn a_restarted_lite_agent_fails_when_the_peer_never_checks_again() {
    use icering::ice::ConnectionState;
    let (_a, mut b, now) = connected_to(IceConfig {
        lite: true,
        seed: 6,
        ..Default::default()
    });
    assert_eq!(b.state(), ConnectionState::Connected);
    b.restart(None, None).unwrap();
    assert_eq!(b.state(), ConnectionState::Checking);
    assert!(b.selected_pair().is_some(), "the old path carries data");
    let deadline = b.poll_timeout().expect("a deadline for the old path");
    assert!(deadline > now);
    // The peer's data on the old path keeps it (and pushes the deadline back).
    let (local, remote) = b.selected_pair().unwrap();
    let later = deadline - Duration::from_secs(1);
    let data = Received {
        source: remote,
        destination: local,
        contents: &[0x80, 1, 2],
    };
    assert_eq!(b.handle_packet(later, data), Handled::Data);
    b.handle_timeout(deadline);
    assert_eq!(b.state(), ConnectionState::Checking);
    let deadline = b.poll_timeout().expect("a later deadline");
    assert!(deadline > later);
    b.handle_timeout(deadline);
    assert_eq!(b.state(), ConnectionState::Failed);
    assert_eq!(b.selected_pair(), None);
}
