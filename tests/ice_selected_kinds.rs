//! The selected pair's candidate kinds, as `icering ping` prints them (and the NAT lab
//! greps them): the local side is the valid pair's local candidate (RFC 8445
//! §7.2.5.3.2), so a direct path through endpoint-independent NATs reads srflx → srflx,
//! an open network host → host, and a symmetric NAT's unknown mapping prflx.

mod sim;

use std::time::Duration;

use icering::ice::CandidateKind::{self, Host, PeerReflexive, ServerReflexive};
use sim::{HostSpec, Link, NatType, Sim, config};

fn selected_kinds(
    a: Option<NatType>,
    b: Option<NatType>,
    seed: u64,
) -> [(CandidateKind, CandidateKind); 2] {
    let mut s = Sim::new(seed, Link::default());
    for (i, nat) in [a, b].into_iter().enumerate() {
        s.add_peer(
            config(seed * 2 + i as u64, i == 0),
            HostSpec {
                nat,
                ..Default::default()
            },
        );
    }
    s.exchange_credentials(0, 1);
    s.run(Duration::from_secs(30), |s| s.both_connected());
    assert!(s.both_connected(), "{a:?}/{b:?} seed {seed}");
    // Let the controlled side's own checks on the pair finish too.
    s.run(Duration::from_secs(3), |_| false);
    [0, 1].map(|i| {
        let (l, r) = s.peers[i].agent.selected_candidates().expect("selected");
        (l.kind, r.kind)
    })
}

#[test]
fn open_network_selects_host_host() {
    for seed in 0..5 {
        assert_eq!(
            selected_kinds(None, None, seed),
            [(Host, Host), (Host, Host)],
            "seed {seed}"
        );
    }
}

#[test]
fn endpoint_independent_nats_select_srflx_srflx() {
    for seed in 0..5 {
        let nat = Some(NatType::PORT_RESTRICTED);
        assert_eq!(
            selected_kinds(nat, nat, seed),
            [
                (ServerReflexive, ServerReflexive),
                (ServerReflexive, ServerReflexive)
            ],
            "seed {seed}"
        );
    }
}

#[test]
fn symmetric_nat_behind_one_side_shows_a_peer_reflexive_local() {
    for seed in 0..5 {
        let [(sym_local, _), (_, other_remote)] =
            selected_kinds(Some(NatType::SYMMETRIC), Some(NatType::FULL_CONE), seed);
        assert_eq!(sym_local, PeerReflexive, "seed {seed}");
        assert_eq!(other_remote, PeerReflexive, "seed {seed}");
    }
}
