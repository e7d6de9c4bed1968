//! Scenario tests over many seeds: loss, role conflicts, late trickle, lite, restart,
//! dual-stack multi-homed hosts.
mod sim;

use std::time::Duration;

use icering::ice::{CandidateKind, ConnectionState, IceConfig, IceEvent};
use sim::{HostSpec, Link, NatType, Sim, config};

fn nat(seed: u64) -> Option<NatType> {
    [
        None,
        Some(NatType::FULL_CONE),
        Some(NatType::RESTRICTED),
        Some(NatType::PORT_RESTRICTED),
    ][(seed % 4) as usize]
}

fn connect(s: &mut Sim, limit: Duration) -> bool {
    s.run(limit, |s| s.both_connected())
}

/// Asserts both agents connect within `limit`, naming the seed and both states if not.
fn assert_connects(s: &mut Sim, seed: u64, limit: Duration) {
    assert!(
        connect(s, limit),
        "seed {seed}: {:?}/{:?}",
        s.state(0),
        s.state(1)
    );
}

/// A host behind `nat` (or none), otherwise default.
fn behind(nat: Option<NatType>) -> HostSpec {
    HostSpec {
        nat,
        ..Default::default()
    }
}

#[test]
fn twenty_percent_loss_with_duplication_and_reordering() {
    for seed in 0..200u64 {
        let link = Link {
            loss: 0.2,
            duplicate: 0.05,
            reorder: 0.1,
            jitter: Duration::from_millis(30),
            ..Default::default()
        };
        let mut s = Sim::new(seed, link);
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 1000, false), behind(nat(seed / 4)));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(30));
        // Both settle on one pair (a lost nomination response may delay the controlled).
        s.run(Duration::from_secs(3), |_| false);
        assert!(s.verify_same_pair(8), "seed {seed}: pairs disagree");
    }
}

#[test]
fn role_conflict_both_controlling() {
    let mut switched = 0;
    for seed in 0..150u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 77, seed % 3 != 0), behind(nat(seed + 1)));
        // seed % 3 == 0: both controlled instead.
        if seed % 3 == 0 {
            s.peers[0].agent.set_controlling(false);
        }
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        let (a, b) = (
            s.peers[0].agent.is_controlling(),
            s.peers[1].agent.is_controlling(),
        );
        assert!(a != b, "seed {seed}: roles not resolved");
        // The larger tie-breaker ends up controlling (§7.3.1.1).
        let ta = s.peers[0].agent.tie_breaker();
        let tb = s.peers[1].agent.tie_breaker();
        assert_eq!(a, ta > tb, "seed {seed}");
        switched += s
            .peers
            .iter()
            .filter(|p| {
                p.events
                    .iter()
                    .any(|e| matches!(e, IceEvent::RoleChanged { .. }))
            })
            .count();
        s.run(Duration::from_secs(1), |_| false);
        assert!(s.verify_same_pair(3), "seed {seed}");
    }
    assert!(switched >= 150);
}

#[test]
fn trickle_late_candidates_and_credentials() {
    for seed in 0..150u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 5, false), behind(nat(seed + 2)));
        // B's candidates arrive 1–3 s late; credentials only after 500 ms.
        s.peers[1].signal_delay = Duration::from_millis(1000 + (seed % 20) * 100);
        s.run(Duration::from_millis(500), |_| false);
        assert_eq!(s.peers[0].agent.selected_pair(), None);
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        s.run(Duration::from_secs(1), |_| false);
        assert!(s.verify_same_pair(3), "seed {seed}");
        assert!(s.peers[0].events.contains(&IceEvent::GatheringComplete));
    }
}

/// Both behind port-restricted NATs; the controlling agent's candidates reach the peer
/// only ~13.5–15 s in. Until then its checks to the peer's srflx are filtered by the
/// peer's NAT, and by the time the peer's first check opens it they have used all but
/// their last retransmissions. The peer's check shows the path is open, so the unanswered
/// check starts over with a full budget (in the NAT lab with 20 % loss the last tries were
/// lost and both sides stayed Checking).
#[test]
fn a_check_unanswered_behind_the_peers_nat_starts_over_when_the_peer_checks() {
    for seed in 0..20u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(Some(NatType::PORT_RESTRICTED)));
        s.add_peer(
            config(seed + 5, false),
            behind(Some(NatType::PORT_RESTRICTED)),
        );
        s.peers[0].signal_delay = Duration::from_millis(13_500 + seed * 75);
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(40));
        s.run(Duration::from_secs(1), |_| false);
        assert!(s.verify_same_pair(3), "seed {seed}");
    }
}

#[test]
fn lite_peer_and_full_agent() {
    for seed in 0..150u64 {
        let mut s = Sim::new(
            seed,
            Link {
                loss: 0.05,
                ..Default::default()
            },
        );
        // Full agent behind a NAT, lite agent public (the usual SFU deployment). The full
        // agent is told the peer is lite and becomes controlling whatever it started as.
        s.add_peer(config(seed, seed % 2 == 0), behind(nat(seed)));
        s.add_peer(
            IceConfig {
                lite: true,
                seed: seed + 9,
                ..Default::default()
            },
            HostSpec {
                nat: None,
                srflx: false,
                ..Default::default()
            },
        );
        s.peers[0].agent.set_remote_lite(true);
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        assert!(s.peers[0].agent.is_controlling());
        assert!(!s.peers[1].agent.is_controlling());
        s.run(Duration::from_secs(1), |_| false);
        assert!(s.verify_same_pair(4), "seed {seed}");
        // The lite agent never sent a request: everything it sent answered one.
        // Keepalives keep it connected for a while.
        s.run(Duration::from_secs(12), |_| false);
        assert!(s.both_connected(), "seed {seed}: liveness");
    }
}

#[test]
fn restart_mid_session_data_continues() {
    for seed in 0..150u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 3, false), behind(nat(seed + 1)));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        s.run(Duration::from_secs(1), |_| false);
        let before = s.peers[0].agent.selected_pair();
        // Restart both sides; re-signal everything.
        s.peers[0].agent.restart(None, None).unwrap();
        s.peers[1].agent.restart(None, None).unwrap();
        // Data keeps flowing on the old pair while checks run.
        assert_eq!(s.peers[0].agent.selected_pair(), before);
        assert!(s.verify_same_pair(2), "seed {seed}: data during restart");
        s.exchange_credentials(0, 1);
        for i in 0..2 {
            let other = 1 - i;
            let cands: Vec<_> = s.peers[i].agent.local_candidates().to_vec();
            for c in cands {
                if c.kind != icering::ice::CandidateKind::PeerReflexive {
                    s.peers[other].agent.add_remote_candidate(c).unwrap();
                }
            }
        }
        assert!(
            s.run(Duration::from_secs(20), |s| s.both_connected()
                && s.peers.iter().all(|p| p.agent.selected_rtt().is_some())),
            "seed {seed}: no new selection after restart {:?}/{:?}",
            s.state(0),
            s.state(1)
        );
        s.run(Duration::from_secs(1), |_| false);
        assert!(s.verify_same_pair(3), "seed {seed}: after restart");
    }
}

/// After a restart the old path has no pair: the agent keeps its addresses apart. They
/// must survive a second restart before any new selection, keep classifying the peer's
/// data, and go (Disconnected, data dropped) when the old path's interface goes.
#[test]
fn old_path_survives_a_second_restart_and_goes_with_its_interface() {
    use icering::ice::Handled;
    use icering::net::Received;
    for seed in 0..40u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 3, false), behind(nat(seed + 1)));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        let before = s.peers[0].agent.selected_pair();
        let (local, remote) = before.unwrap();
        s.peers[0].agent.restart(None, None).unwrap();
        s.peers[1].agent.restart(None, None).unwrap();
        s.peers[0].agent.restart(None, None).unwrap();
        assert_eq!(s.peers[0].agent.selected_pair(), before, "seed {seed}");
        assert!(
            s.verify_same_pair(2),
            "seed {seed}: data after two restarts"
        );
        let now = s.now;
        let data = |a: &mut icering::ice::IceAgent| {
            a.handle_packet(
                now,
                Received {
                    source: remote,
                    destination: local,
                    contents: &[0x80, 7, 7],
                },
            )
        };
        assert_eq!(data(&mut s.peers[0].agent), Handled::Data, "seed {seed}");
        assert!(
            s.peers[0].agent.remove_local_candidates(local) > 0,
            "seed {seed}"
        );
        assert_eq!(s.peers[0].agent.selected_pair(), None, "seed {seed}");
        assert_eq!(s.state(0), ConnectionState::Disconnected, "seed {seed}");
        assert_eq!(data(&mut s.peers[0].agent), Handled::Dropped, "seed {seed}");
    }
}

#[test]
fn dual_stack_multihomed_prefers_ipv6_and_agrees() {
    for seed in 0..100u64 {
        let link = Link {
            loss: 0.02,
            reorder: 0.05,
            ..Default::default()
        };
        let mut s = Sim::new(seed, link);
        let spec = HostSpec {
            nat: nat(seed),
            v4_ifaces: 2,
            ipv6: true,
            srflx: true,
        };
        s.add_peer(config(seed, true), spec);
        s.add_peer(
            config(seed + 1, false),
            HostSpec {
                nat: nat(seed + 3),
                ..spec
            },
        );
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        s.run(Duration::from_secs(2), |_| false);
        let (l, r) = s.peers[0].agent.selected_pair().unwrap();
        assert!(
            l.is_ipv6() && r.is_ipv6(),
            "seed {seed}: selected {l} -> {r}"
        );
        assert!(s.verify_same_pair(3), "seed {seed}");
    }
}

#[test]
fn consent_loss_fails_and_disconnect_recovers() {
    for seed in 0..50u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), HostSpec::default());
        s.add_peer(config(seed + 1, false), HostSpec::default());
        s.exchange_credentials(0, 1);
        assert!(connect(&mut s, Duration::from_secs(10)));
        // Blackhole the network: disconnected after ~5 s, failed after ~25 s.
        s.link.loss = 1.0;
        assert!(s.run(Duration::from_secs(8), |s| s.state(0)
            == ConnectionState::Disconnected));
        let t = s.elapsed();
        s.link.loss = 0.0;
        assert!(
            s.run(Duration::from_secs(5), |s| s.both_connected()),
            "seed {seed}: no recovery"
        );
        s.link.loss = 1.0;
        assert!(s.run(Duration::from_secs(40), |s| s.state(0)
            == ConnectionState::Failed
            && s.state(1) == ConnectionState::Failed));
        assert!(s.elapsed() > t);
        assert_eq!(s.peers[0].agent.selected_pair(), None);
    }
}

/// Aggressive nomination (RFC 5245 §8.1.2; deprecated by RFC 8445 §8.1.1 but still sent
/// by some peers): the controlling agent puts USE-CANDIDATE on every check. Both sides
/// connect through 5 % loss and settle on one pair.
#[test]
fn aggressive_nomination_with_loss_agrees() {
    for seed in 0..100u64 {
        let link = Link {
            loss: 0.05,
            ..Default::default()
        };
        let mut s = Sim::new(seed, link);
        s.add_peer(
            IceConfig {
                aggressive_nomination: true,
                ..config(seed, true)
            },
            behind(nat(seed)),
        );
        s.add_peer(config(seed + 500, false), behind(nat(seed / 4)));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        assert!(s.peers[0].agent.is_controlling());
        s.run(Duration::from_secs(3), |_| false);
        assert!(s.both_connected(), "seed {seed}: liveness");
        assert!(s.verify_same_pair(8), "seed {seed}: pairs disagree");
    }
}

/// Both peers behind symmetric NATs: no direct path. One side also has a relayed candidate
/// (a forwarding host in the sim standing in for a TURN allocation); the agents pair it,
/// connect through it and agree on a pair whose local side is that relayed candidate.
#[test]
fn symmetric_nats_connect_through_relayed_candidate() {
    for seed in 0..100u64 {
        let link = Link {
            loss: 0.02,
            ..Default::default()
        };
        let mut s = Sim::new(seed, link);
        let spec = behind(Some(NatType::SYMMETRIC));
        s.add_peer(config(seed, seed % 2 == 0), spec);
        s.add_peer(config(seed + 300, seed % 2 == 1), spec);
        // Relay on peer 0 or peer 1, so both roles get to hold it.
        let holder = (seed / 2 % 2) as usize;
        let relay: std::net::SocketAddr = "198.51.100.7:49152".parse().unwrap();
        s.add_relay(holder, relay, "203.0.113.99:40000".parse().unwrap());
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        s.run(Duration::from_secs(2), |_| false);
        assert!(s.verify_same_pair(4), "seed {seed}: pairs disagree");
        let (l, _) = s.peers[holder].agent.selected_pair().unwrap();
        assert_eq!(l, relay, "seed {seed}: holder not on the relay");
        let (_, r) = s.peers[1 - holder].agent.selected_pair().unwrap();
        assert_eq!(r, relay, "seed {seed}: peer not sending to the relay");
        assert!(
            s.peers[holder]
                .agent
                .local_candidates()
                .iter()
                .any(|c| c.kind == CandidateKind::Relayed && c.addr == relay)
        );
    }
}

/// Gives peer `to` the credentials of peer `from`.
fn credentials(s: &mut Sim, from: usize, to: usize) {
    let (u, p) = s.peers[from].agent.local_credentials();
    let (u, p) = (u.to_owned(), p.to_owned());
    s.peers[to].agent.set_remote_credentials(&u, &p).unwrap();
}

/// ICE PAC: the controlled agent gets none of the controlling agent's candidates (as a
/// browser's mDNS host names reach an agent that does not resolve them), only its
/// end-of-candidates, and has gathered all its own, before the controlling agent (which
/// waits for the answer) sends its first check. It must not fail with its empty check
/// list: the controlling agent's checks form a peer-reflexive candidate, and both select
/// its pair.
#[test]
fn unresolvable_candidates_connect_through_a_peer_reflexive_pair() {
    for seed in 0..50u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), HostSpec::default());
        s.add_peer(config(seed + 1000, false), HostSpec::default());
        s.peers[0].hide_candidates = true;
        credentials(&mut s, 0, 1);
        s.run(Duration::from_secs(2), |_| false);
        assert!(!s.peers[1].agent.local_candidates().is_empty());
        credentials(&mut s, 1, 0);
        assert_connects(&mut s, seed, Duration::from_secs(10));
        let (_, remote) = s.peers[1].agent.selected_candidates().expect("selected");
        assert_eq!(remote.kind, CandidateKind::PeerReflexive, "seed {seed}");
        // Never Failed on the way (an application would have given up on it).
        assert!(
            !s.peers[1]
                .events
                .contains(&IceEvent::ConnectionState(ConnectionState::Failed)),
            "seed {seed}: {:?}",
            s.peers[1].events
        );
        assert!(s.verify_same_pair(3), "seed {seed}: pairs disagree");
    }
}

/// ICE PAC: with nothing to check on either side and both ends signalled, an agent
/// waits 39.5 s for the peer's checks before it reports Failed, then does.
#[test]
fn nothing_to_check_fails_only_after_the_pac_wait() {
    for seed in 0..20u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), HostSpec::default());
        s.add_peer(config(seed + 1000, false), HostSpec::default());
        s.peers[0].hide_candidates = true;
        s.peers[1].hide_candidates = true;
        s.exchange_credentials(0, 1);
        assert!(
            !s.run(Duration::from_secs(39), |s| s.any_failed()),
            "seed {seed}: failed after {:?}",
            s.elapsed()
        );
        assert!(
            s.run(Duration::from_secs(5), |s| s.state(0)
                == ConnectionState::Failed
                && s.state(1) == ConnectionState::Failed),
            "seed {seed}: {:?}/{:?} after {:?}",
            s.state(0),
            s.state(1),
            s.elapsed()
        );
    }
}

/// RFC 7675 §5.1 after an ICE restart: the old path keeps carrying data while the new
/// checks run, but it gets no consent checks (its credentials are gone), so it is dropped
/// once its last consent is 30 s old if no new pair was selected by then (here the peer
/// never learns the new credentials).
#[test]
fn a_restarts_old_path_ends_with_its_consent() {
    use icering::ice::Handled;
    use icering::net::Received;
    for seed in 0..20u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(nat(seed)));
        s.add_peer(config(seed + 3, false), behind(nat(seed + 1)));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        let (local, remote) = s.peers[0].agent.selected_pair().unwrap();
        s.peers[0].agent.restart(None, None).unwrap();
        let data = |s: &mut Sim| {
            let now = s.now;
            s.peers[0].agent.handle_packet(
                now,
                Received {
                    source: remote,
                    destination: local,
                    contents: &[0x80, 7, 7],
                },
            )
        };
        // Well inside the consent timeout: still the path for data.
        s.run(Duration::from_secs(20), |_| false);
        assert_eq!(
            s.peers[0].agent.selected_pair(),
            Some((local, remote)),
            "seed {seed}"
        );
        assert_eq!(data(&mut s), Handled::Data, "seed {seed}");
        // Past it: gone, and so is the data it carried.
        s.run(Duration::from_secs(15), |_| false);
        assert_eq!(s.peers[0].agent.selected_pair(), None, "seed {seed}");
        assert_eq!(s.state(0), ConnectionState::Disconnected, "seed {seed}");
        assert_eq!(data(&mut s), Handled::Dropped, "seed {seed}");
    }
}

/// An agent whose only path went (here its interface) is Disconnected with nothing left
/// to check: it reports Failed after the PAC wait, not never.
#[test]
fn a_lost_only_path_fails_after_the_pac_wait() {
    for seed in 0..20u64 {
        let mut s = Sim::new(seed, Link::default());
        s.add_peer(config(seed, true), behind(None));
        s.add_peer(config(seed + 3, false), behind(None));
        s.exchange_credentials(0, 1);
        assert_connects(&mut s, seed, Duration::from_secs(20));
        let (local, _) = s.peers[0].agent.selected_pair().unwrap();
        // The interface goes: nothing reaches its address any more.
        s.peers[0].ifaces.retain(|(a, _)| *a != local);
        let _ = s.peers[0].agent.remove_local_candidates(local);
        assert_eq!(s.state(0), ConnectionState::Disconnected, "seed {seed}");
        assert!(
            !s.run(Duration::from_secs(39), |s| s.state(0)
                == ConnectionState::Failed),
            "seed {seed}: failed after {:?}",
            s.elapsed()
        );
        assert!(
            s.run(Duration::from_secs(5), |s| s.state(0)
                == ConnectionState::Failed),
            "seed {seed}: still {:?}",
            s.state(0)
        );
    }
}
