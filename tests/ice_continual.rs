//! An interface going away under a connected pair (continual gathering, the mobile case):
//! the side that moves gathers a candidate on its new address (trickled to the peer) and
//! removes the candidates of the old one with `IceAgent::remove_local_candidates`; the
//! network drops everything to and from the old address from then on. Both sides must end
//! up on the same new pair and Connected again, whichever side moved, by renomination.
//! In memory, on virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use icering::ice::{Candidate, ConnectionState, IceAgent, IceConfig, IceEvent};
use icering::net::Received;

struct Side {
    agent: IceAgent,
    /// Every state it went through after the move.
    states: Vec<ConnectionState>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Drains `x`'s events: candidates trickle to `y`, states are recorded.
fn signal(x: &mut Side, y: &mut Side) {
    while let Some(e) = x.agent.poll_event() {
        match e {
            IceEvent::LocalCandidate(c) => y.agent.add_remote_candidate(c).unwrap(),
            IceEvent::ConnectionState(s) => x.states.push(s),
            _ => {}
        }
    }
}

/// Runs `x`'s timer if due and delivers its transmits to `y`, except those to or from an
/// address in `dead`.
fn pump(now: Instant, x: &mut Side, y: &mut Side, dead: &[SocketAddr], buf: &mut [u8]) {
    if x.agent.poll_timeout().is_some_and(|t| t <= now) {
        x.agent.handle_timeout(now);
    }
    while let Some(t) = x.agent.poll_transmit(now, buf) {
        if dead.contains(&t.source) || dead.contains(&t.destination) {
            continue;
        }
        let pkt = Received {
            source: t.source,
            destination: t.destination,
            contents: &buf[..t.size],
        };
        y.agent.handle_packet(now, pkt);
    }
}

/// Runs both sides until `done` holds or `limit` of virtual time passed; the time reached.
fn run(
    mut now: Instant,
    limit: Duration,
    a: &mut Side,
    b: &mut Side,
    dead: &[SocketAddr],
    done: impl Fn(&Side, &Side) -> bool,
) -> Instant {
    let end = now + limit;
    let mut buf = [0u8; 1500];
    while now < end && !done(a, b) {
        pump(now, a, b, dead, &mut buf);
        signal(a, b);
        pump(now, b, a, dead, &mut buf);
        signal(b, a);
        let next = [a.agent.poll_timeout(), b.agent.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        now = next.map_or(now + Duration::from_millis(10), |t| {
            t.max(now + Duration::from_micros(1))
        });
    }
    now
}

fn side(controlling: bool, seed: u64, host: &str) -> Side {
    let mut agent = IceAgent::new(IceConfig {
        controlling,
        seed,
        ..Default::default()
    })
    .unwrap();
    agent
        .add_local_candidate(Candidate::host(addr(host)))
        .unwrap();
    Side {
        agent,
        states: Vec::new(),
    }
}

fn connected(s: &Side) -> bool {
    matches!(
        s.agent.state(),
        ConnectionState::Connected | ConnectionState::Completed
    )
}

/// A controlling (at 10.0.0.1) and B controlled (at 10.0.1.1), connected.
fn pair(seed: u64) -> (Side, Side, Instant) {
    let mut a = side(true, seed, "10.0.0.1:1000");
    let mut b = side(false, seed + 1, "10.0.1.1:2000");
    let (u, p) = a.agent.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    b.agent.set_remote_credentials(&u, &p).unwrap();
    let (u, p) = b.agent.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    a.agent.set_remote_credentials(&u, &p).unwrap();
    let start = Instant::now();
    a.agent.handle_timeout(start);
    b.agent.handle_timeout(start);
    let both = |a: &Side, b: &Side| {
        connected(a)
            && connected(b)
            && a.agent.selected_pair().is_some()
            && b.agent.selected_pair().is_some()
    };
    let now = run(start, Duration::from_secs(10), &mut a, &mut b, &[], both);
    assert!(both(&a, &b), "the pair did not connect");
    signal(&mut a, &mut b);
    signal(&mut b, &mut a);
    a.states.clear();
    b.states.clear();
    (a, b, now)
}

/// `mover` gets `new` and loses `old`; both must settle on (new, the other's address).
fn moves(mover_is_a: bool, seed: u64) {
    let (mut a, mut b, now) = pair(seed);
    let (old, new, other) = if mover_is_a {
        ("10.0.0.1:1000", "10.0.0.2:1000", "10.0.1.1:2000")
    } else {
        ("10.0.1.1:2000", "10.0.1.2:2000", "10.0.0.1:1000")
    };
    let (old, new, other) = (addr(old), addr(new), addr(other));
    {
        let m = if mover_is_a { &mut a } else { &mut b };
        m.agent.add_local_candidate(Candidate::host(new)).unwrap();
        assert_eq!(m.agent.remove_local_candidates(old), 1);
    }
    let settled = |a: &Side, b: &Side| {
        let (m, o) = if mover_is_a { (a, b) } else { (b, a) };
        connected(a)
            && connected(b)
            && m.agent.selected_pair() == Some((new, other))
            && o.agent.selected_pair() == Some((other, new))
    };
    run(
        now,
        Duration::from_secs(60),
        &mut a,
        &mut b,
        &[old],
        settled,
    );
    assert!(
        settled(&a, &b),
        "not settled on the new address: a {:?} {:?} {:?}, b {:?} {:?} {:?}",
        a.agent.state(),
        a.agent.selected_pair(),
        a.states,
        b.agent.state(),
        b.agent.selected_pair(),
        b.states
    );
    // The mover lost its selected pair at once; neither side failed on the way (the
    // peer of the mover moves once its old pair goes quiet, Disconnected, well before
    // consent would run out and fail it).
    let m = if mover_is_a { &a } else { &b };
    assert_eq!(
        m.states.first(),
        Some(&ConnectionState::Disconnected),
        "{:?}",
        m.states
    );
    for s in [&a, &b] {
        assert!(
            !s.states.contains(&ConnectionState::Failed),
            "{:?}",
            s.states
        );
    }
}

#[test]
fn controlled_side_moves_to_a_new_address() {
    for seed in 0..50 {
        moves(false, seed * 7 + 1);
    }
}

#[test]
fn controlling_side_moves_to_a_new_address() {
    for seed in 0..50 {
        moves(true, seed * 7 + 3);
    }
}

/// Removing an address the selected pair does not use changes nothing, and a removed
/// address pairs with no later remote candidate.
#[test]
fn removing_an_unused_address_keeps_the_connection() {
    let (mut a, mut b, now) = pair(5);
    let spare = addr("10.0.0.9:1000");
    a.agent.add_local_candidate(Candidate::host(spare)).unwrap();
    let now = run(now, Duration::from_secs(3), &mut a, &mut b, &[], |_, _| {
        false
    });
    assert_eq!(a.agent.remove_local_candidates(spare), 1);
    assert_eq!(a.agent.remove_local_candidates(spare), 1, "still listed");
    assert_eq!(a.agent.remove_local_candidates(addr("10.9.9.9:1")), 0);
    let pairs = a.agent.pair_count();
    a.agent
        .add_remote_candidate(Candidate::host(addr("10.0.1.7:2000")))
        .unwrap();
    // One new pair, from the remaining local address only.
    assert_eq!(a.agent.pair_count(), pairs + 1);
    run(
        now,
        Duration::from_secs(20),
        &mut a,
        &mut b,
        &[spare],
        |_, _| false,
    );
    assert!(connected(&a) && connected(&b));
    assert_eq!(a.agent.selected_pair().unwrap().0, addr("10.0.0.1:1000"));
    assert!(a.states.is_empty(), "{:?}", a.states);
}
