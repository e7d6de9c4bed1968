//! Every pair of NAT types, host + srflx candidates, no relay: which connect directly.
mod sim;

use std::time::Duration;

use sim::{HostSpec, Link, NatType, Sim, config};

const SEEDS: u64 = 20;

fn kinds() -> [(&'static str, Option<NatType>); 6] {
    [
        ("open", None),
        ("full-cone", Some(NatType::FULL_CONE)),
        ("restricted", Some(NatType::RESTRICTED)),
        ("port-restricted", Some(NatType::PORT_RESTRICTED)),
        ("addr-dependent", Some(NatType::ADDRESS_DEPENDENT)),
        ("symmetric", Some(NatType::SYMMETRIC)),
    ]
}

/// Expected outcome without a relay. A NAT whose mapping is not endpoint-independent
/// (symmetric, address-dependent) gives the peer a port it never saw in the srflx
/// candidate: that works only if the other side's NAT has an endpoint-independent
/// mapping (so the triggered check back reuses its srflx port) and does not filter on the
/// source port. Two endpoint-independent mappings always connect.
fn expect_connect(a: Option<NatType>, b: Option<NatType>) -> bool {
    use sim::{Filtering, Mapping};
    let eim = |n: Option<NatType>| n.is_none_or(|n| n.mapping == Mapping::EndpointIndependent);
    let port_filter =
        |n: Option<NatType>| n.is_some_and(|n| n.filtering == Filtering::AddressAndPortDependent);
    match (eim(a), eim(b)) {
        (true, true) => true,
        (false, false) => false,
        (true, false) => !port_filter(a),
        (false, true) => !port_filter(b),
    }
}

#[test]
fn nat_matrix() {
    let mut table = String::new();
    let mut runs = 0;
    for (na, a) in kinds() {
        for (nb, b) in kinds() {
            let want = expect_connect(a, b);
            let mut ok = 0;
            for seed in 0..SEEDS {
                let link = Link {
                    delay: Duration::from_millis(10 + seed % 40),
                    ..Default::default()
                };
                let mut s = Sim::new(seed * 7919 + 13, link);
                s.add_peer(
                    config(seed * 2 + 1, true),
                    HostSpec {
                        nat: a,
                        ..Default::default()
                    },
                );
                s.add_peer(
                    config(seed * 2 + 2, false),
                    HostSpec {
                        nat: b,
                        ..Default::default()
                    },
                );
                s.exchange_credentials(0, 1);
                s.run(Duration::from_secs(40), |s| {
                    s.both_connected() || s.any_failed()
                });
                runs += 1;
                if s.both_connected() {
                    assert!(
                        s.verify_same_pair(3),
                        "{na}/{nb} seed {seed}: pairs disagree"
                    );
                    ok += 1;
                } else {
                    // Both must give up, not hang (after the PAC wait: ICE PAC).
                    assert!(
                        s.run(Duration::from_secs(60), |s| {
                            s.peers
                                .iter()
                                .all(|p| p.agent.state() == icering::ice::ConnectionState::Failed)
                        }),
                        "{na} <-> {nb} seed {seed}: still {:?}/{:?} after {:?}",
                        s.state(0),
                        s.state(1),
                        s.elapsed()
                    );
                }
                assert_eq!(
                    s.both_connected(),
                    want,
                    "{na} <-> {nb} seed {seed}: connected={} states {:?}/{:?}",
                    s.both_connected(),
                    s.state(0),
                    s.state(1)
                );
            }
            table.push_str(&format!(
                "{na:>16} <-> {nb:<16} {}/{SEEDS} {}\n",
                ok,
                if want {
                    "connect"
                } else {
                    "fail (needs relay)"
                }
            ));
        }
    }
    println!("{table}{runs} runs");
}
