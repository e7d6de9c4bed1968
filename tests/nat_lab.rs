//! The NAT lab (issue 7): two `icering ping` processes behind real Linux NATs (iptables in
//! network namespaces, `tests/nat/`) reaching each other through `icering serve` (STUN and
//! TURN) in a "public" namespace. Each scenario asserts the selected pair's candidate types
//! on both sides and data both ways. docs/nat.md has the topology and the matrix.
//!
//! Needs root, `ip` and `iptables`; without them each test prints "skipped: <reason>" and
//! passes, except under `CI=true`, where it fails.

mod common;
mod nat;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use nat::{
    HOST_A, HOST_B, Impair, Lab, Nat, PingRun, ROUTER_A_WAN, ROUTER_B_WAN, SERVER, SERVER2,
    STRANGER, Selected, Spec, TURN_PASS, TURN_PORT, TURN_USER, in_ns, lab_or_skip, server,
};

fn stun_flags() -> Vec<String> {
    vec!["--stun".into(), format!("stun:{SERVER}:{TURN_PORT}")]
}

fn turn_flags(transport: &str) -> Vec<String> {
    vec![
        "--turn".into(),
        format!("turn:{SERVER}:{TURN_PORT}?transport={transport}"),
        "--turn-user".into(),
        TURN_USER.into(),
        "--turn-pass".into(),
        TURN_PASS.into(),
    ]
}

fn flags(parts: &[Vec<String>]) -> Vec<String> {
    parts.concat()
}

/// Both sides exited 0 after 3 messages each way; returns both selected pairs.
fn exchanged(a: &PingRun, b: &PingRun) -> (Selected, Selected) {
    eprintln!(
        "--- A (controlling)\n{}\n--- B (controlled)\n{}",
        a.text, b.text
    );
    a.assert_exchanged(true, 3, b);
    b.assert_exchanged(false, 3, a);
    let sa = a
        .selected()
        .unwrap_or_else(|| panic!("A: no selected pair\n{}", a.text));
    let sb = b
        .selected()
        .unwrap_or_else(|| panic!("B: no selected pair\n{}", b.text));
    eprintln!("A selected {sa:?}\nB selected {sb:?}");
    (sa, sb)
}

fn ip(a: SocketAddr) -> IpAddr {
    a.ip()
}

/// A std UDP socket in host A's or B's namespace on its LAN address.
fn host_socket(lab: &Lab, a_side: bool) -> UdpSocket {
    let (ns, host) = if a_side {
        (&lab.host_a, HOST_A)
    } else {
        (&lab.host_b, HOST_B)
    };
    in_ns(ns, || UdpSocket::bind((host, 0)).unwrap()).unwrap()
}

/// Whether `sock` receives anything within 300 ms (the lab has no other traffic to it).
fn receives(sock: &UdpSocket) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf).is_ok()
}

/// The NATs behave as documented (RFC 4787): MASQUERADE maps endpoint-independently,
/// `--random-fully` per destination; both filter address-and-port-dependently. Checked with
/// STUN Binding against `icering serve` on two addresses and unsolicited packets from the
/// public side. Needs no ICE.
#[test]
fn lab_nats_map_and_filter_as_rfc4787_says() {
    if !lab_or_skip("lab_nats_map_and_filter_as_rfc4787_says") {
        return;
    }
    let mut lab = Lab::new(&Spec {
        nat_a: Nat::EndpointIndependent,
        nat_b: Nat::Symmetric,
        impair_a: None,
        block_udp_port: None,
    })
    .unwrap();
    lab.start_icering_serve().unwrap();

    // Mapping.
    let a = host_socket(&lab, true);
    let a1 = common::binding_round_trip(&a, server(SERVER), [1; 12]);
    let a2 = common::binding_round_trip(&a, server(SERVER2), [2; 12]);
    assert_eq!(ip(a1), IpAddr::V4(ROUTER_A_WAN), "A is seen at its router");
    assert_eq!(
        a1, a2,
        "endpoint-independent mapping: one mapping for both servers"
    );
    let b = host_socket(&lab, false);
    let b1 = common::binding_round_trip(&b, server(SERVER), [3; 12]);
    let b2 = common::binding_round_trip(&b, server(SERVER2), [4; 12]);
    assert_eq!(ip(b1), IpAddr::V4(ROUTER_B_WAN));
    assert_eq!(ip(b2), IpAddr::V4(ROUTER_B_WAN));
    assert_ne!(
        b1.port(),
        b2.port(),
        "symmetric: a new mapping per destination"
    );

    // Filtering: an unsolicited sender, and the server's IP from another port, are
    // dropped; once the host has sent to the stranger, the stranger's answer gets in.
    let (stranger, server_other_port) = in_ns(&lab.public, || {
        (
            UdpSocket::bind((STRANGER, 0)).unwrap(),
            UdpSocket::bind((SERVER, TURN_PORT + 1)).unwrap(),
        )
    })
    .unwrap();
    for (host, mapped) in [(&a, a1), (&b, b1)] {
        stranger.send_to(b"unsolicited", mapped).unwrap();
        assert!(
            !receives(host),
            "{mapped}: unsolicited packet passed the NAT"
        );
        server_other_port.send_to(b"other port", mapped).unwrap();
        assert!(
            !receives(host),
            "{mapped}: port-dependent filtering expected"
        );
        host.send_to(b"hello", stranger.local_addr().unwrap())
            .unwrap();
        stranger
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (_, seen_as) = stranger.recv_from(&mut buf).expect("host reaches stranger");
        stranger.send_to(b"reply", seen_as).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (n, from) = host.recv_from(&mut buf).expect("reply passes the NAT");
        assert_eq!(
            (&buf[..n], from),
            (&b"reply"[..], stranger.local_addr().unwrap())
        );
    }
}

/// Baseline with no NAT: the hosts route to each other, host candidates only, across a
/// link with 20 % loss and 100 ms delay each way → a host/host pair and data both ways.
#[test]
fn routed_without_nat_host_pair_through_loss_and_delay() {
    if !lab_or_skip("routed_without_nat_host_pair_through_loss_and_delay") {
        return;
    }
    let lab = Lab::new(&Spec {
        nat_a: Nat::None,
        nat_b: Nat::None,
        impair_a: Some(Impair {
            loss_percent: 20,
            delay: Duration::from_millis(100),
        }),
        block_udp_port: None,
    })
    .unwrap();
    eprintln!("impaired link: {:?}", lab.impairment);
    let (a, b) = lab.ping_pair(&[], &[]);
    eprintln!("wire: {:?}", lab.wire_stats());
    let (sa, sb) = exchanged(&a, &b);
    assert_eq!(ip(sa.local), IpAddr::V4(HOST_A), "{sa:?}");
    assert_eq!(ip(sa.remote), IpAddr::V4(HOST_B), "{sa:?}");
    assert_eq!(ip(sb.local), IpAddr::V4(HOST_B), "{sb:?}");
    assert_eq!(ip(sb.remote), IpAddr::V4(HOST_A), "{sb:?}");
    for s in [&sa, &sb] {
        for k in s.kinds().into_iter().flatten() {
            assert_eq!(k, "host", "{s:?}");
        }
    }
}

/// The lab part of scenario 5: with UDP to the TURN port dropped at the routers,
/// `icering serve` in the public namespace answers a STUN Binding over TCP from behind the
/// NAT (seen at the router's address), and not over UDP.
#[test]
fn lab_blocks_udp_to_the_turn_port_but_tcp_reaches_the_server() {
    let name = "lab_blocks_udp_to_the_turn_port_but_tcp_reaches_the_server";
    if !lab_or_skip(name) {
        return;
    }
    let mut lab = Lab::new(&Spec {
        nat_a: Nat::Symmetric,
        nat_b: Nat::Symmetric,
        impair_a: None,
        block_udp_port: Some(TURN_PORT),
    })
    .unwrap();
    lab.start_icering_serve().unwrap();
    let mut req = [0u8; 64];
    let n = common::binding_request([7; 12], &mut req);

    let udp = host_socket(&lab, true);
    for _ in 0..3 {
        udp.send_to(&req[..n], server(SERVER)).unwrap();
        assert!(!receives(&udp), "UDP to the TURN port passed the block");
    }

    let mut tcp = in_ns(&lab.host_a, || {
        std::net::TcpStream::connect_timeout(&server(SERVER), Duration::from_secs(5))
    })
    .unwrap()
    .expect("TCP to the server through the NAT");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&req[..n]).unwrap();
    let mut head = [0u8; 20];
    tcp.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    tcp.read_exact(&mut msg[20..]).unwrap();
    let m = icering::stun::Message::parse(&msg).expect("the answer parses");
    assert_eq!(m.transaction_id(), &[7; 12]);
    assert_eq!(m.class(), icering::stun::Class::Success);
    let mapped = m.xor_mapped_address().expect("XOR-MAPPED-ADDRESS").unwrap();
    assert_eq!(ip(mapped), IpAddr::V4(ROUTER_A_WAN), "seen through the NAT");
}

/// A panicking test still removes its namespaces (and so its veths, rules and processes).
#[test]
fn lab_is_torn_down_when_the_test_panics() {
    if !lab_or_skip("lab_is_torn_down_when_the_test_panics") {
        return;
    }
    let names = std::sync::Mutex::new(Vec::new());
    let ping = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new(&Spec {
            nat_a: Nat::Symmetric,
            nat_b: Nat::None,
            impair_a: Some(Impair {
                loss_percent: 20,
                delay: Duration::from_millis(100),
            }),
            block_udp_port: None,
        })
        .unwrap();
        lab.start_icering_serve().unwrap();
        *ping.lock().unwrap() = Some(lab.spawn_ping(true, &[]).unwrap());
        *names.lock().unwrap() = vec![
            lab.public.clone(),
            lab.router_a.clone(),
            lab.router_b.clone(),
            lab.host_a.clone(),
            lab.host_b.clone(),
        ];
        let listed = nat::run(&["ip", "netns", "list"]).unwrap();
        for n in names.lock().unwrap().iter() {
            assert!(listed.contains(n.as_str()), "{n} not created: {listed}");
        }
        panic!("deliberate");
    }));
    assert!(r.is_err());
    let listed = nat::run(&["ip", "netns", "list"]).unwrap();
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} left behind: {listed}");
    }
    let status = ping.into_inner().unwrap().unwrap().wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the ping inside was killed"
    );
}

/// Asserts a direct (NAT-traversed) pair: no relay; each side's remote is the peer's NAT
/// (server-reflexive or peer-reflexive).
fn assert_direct(sa: &Selected, sb: &Selected) {
    for (s, peer_router) in [(sa, ROUTER_B_WAN), (sb, ROUTER_A_WAN)] {
        assert!(!s.has_kind("relay"), "relay selected: {s:?}");
        assert_eq!(ip(s.remote), IpAddr::V4(peer_router), "{s:?}");
        let rk = s.remote_kind.as_deref();
        assert!(matches!(rk, Some("srflx" | "prflx")), "{s:?}");
    }
}

/// Asserts a relayed pair on both sides: a relay candidate (on [`SERVER`]) in each pair.
fn assert_relayed(sa: &Selected, sb: &Selected) {
    for s in [sa, sb] {
        assert!(s.has_kind("relay"), "no relay candidate: {s:?}");
        assert!(
            ip(s.local) == IpAddr::V4(SERVER) || ip(s.remote) == IpAddr::V4(SERVER),
            "relay address is not the server's: {s:?}"
        );
    }
}

/// Scenarios 1–3: NATs `nat_a`/`nat_b`, `icering serve` as STUN and TURN/UDP server for
/// both pings; the selected pairs once both exchanged their messages.
fn pings_with_stun_and_turn(nat_a: Nat, nat_b: Nat) -> (Selected, Selected) {
    let mut lab = Lab::new(&Spec {
        nat_a,
        nat_b,
        impair_a: None,
        block_udp_port: None,
    })
    .unwrap();
    lab.start_icering_serve().unwrap();
    let f = flags(&[stun_flags(), turn_flags("udp")]);
    let (a, b) = lab.ping_pair(&f, &f);
    eprintln!("--- server log\n{}", lab.server_log());
    exchanged(&a, &b)
}

/// Scenario 1: both NATs endpoint-independent → a direct srflx/prflx pair, though a relay
/// is offered too.
#[test]
fn nat1_both_endpoint_independent_select_a_direct_pair() {
    if !lab_or_skip("nat1_both_endpoint_independent_select_a_direct_pair") {
        return;
    }
    let (sa, sb) = pings_with_stun_and_turn(Nat::EndpointIndependent, Nat::EndpointIndependent);
    assert_direct(&sa, &sb);
}

/// Scenario 2: A symmetric, B endpoint-independent → relayed.
#[test]
fn nat2_one_symmetric_selects_the_relay() {
    if !lab_or_skip("nat2_one_symmetric_selects_the_relay") {
        return;
    }
    let (sa, sb) = pings_with_stun_and_turn(Nat::Symmetric, Nat::EndpointIndependent);
    assert_relayed(&sa, &sb);
}

/// Scenario 3: both symmetric → relayed.
#[test]
fn nat3_both_symmetric_select_the_relay() {
    if !lab_or_skip("nat3_both_symmetric_select_the_relay") {
        return;
    }
    let (sa, sb) = pings_with_stun_and_turn(Nat::Symmetric, Nat::Symmetric);
    assert_relayed(&sa, &sb);
}

/// Scenario 4: endpoint-independent NATs, 20 % loss and 100 ms delay each way on A's
/// uplink, STUN only → still a direct pair, data both ways.
#[test]
fn nat4_loss_and_delay_still_connect() {
    if !lab_or_skip("nat4_loss_and_delay_still_connect") {
        return;
    }
    let mut lab = Lab::new(&Spec {
        nat_a: Nat::EndpointIndependent,
        nat_b: Nat::EndpointIndependent,
        impair_a: Some(Impair {
            loss_percent: 20,
            delay: Duration::from_millis(100),
        }),
        block_udp_port: None,
    })
    .unwrap();
    eprintln!("impaired link: {:?}", lab.impairment);
    lab.start_icering_serve().unwrap();
    let f = stun_flags();
    let (a, b) = lab.ping_pair(&f, &f);
    eprintln!("wire: {:?}", lab.wire_stats());
    let (sa, sb) = exchanged(&a, &b);
    assert_direct(&sa, &sb);
}

/// Scenario 5: UDP to the TURN port blocked at both routers, both NATs symmetric → TURN
/// over TCP relays, `icering serve` being the relay (STUN/TURN over TCP on its UDP port).
#[test]
fn nat5_turn_over_tcp_when_udp_is_blocked() {
    if lab_or_skip("nat5_turn_over_tcp_when_udp_is_blocked") {
        turn_over_tcp_through_symmetric_nats(Lab::start_icering_serve);
    }
}

/// Scenario 5's topology and assertions, with the relay `start` puts in the public
/// namespace.
fn turn_over_tcp_through_symmetric_nats(start: fn(&mut Lab) -> Result<(), String>) {
    let mut lab = Lab::new(&Spec {
        nat_a: Nat::Symmetric,
        nat_b: Nat::Symmetric,
        impair_a: None,
        block_udp_port: Some(TURN_PORT),
    })
    .unwrap();
    start(&mut lab).unwrap();
    let f = turn_flags("tcp");
    let (a, b) = lab.ping_pair(&f, &f);
    eprintln!("--- server log\n{}", lab.server_log());
    let (sa, sb) = exchanged(&a, &b);
    assert_relayed(&sa, &sb);
    // No STUN, so neither NAT's mapping is known to the other side's relay: only
    // relay-to-relay can work, each allocated over TCP (UDP to the port is dropped).
    for (s, run) in [(&sa, &a), (&sb, &b)] {
        assert_eq!(s.kinds(), [Some("relay"), Some("relay")], "{s:?}");
        assert!(
            run.stdout.contains("?transport=tcp: relayed address"),
            "{}",
            run.text
        );
    }
}

/// Scenario 5 with coturn as the relay: the same topology and assertions, so icering's TURN
/// client over TCP is also checked against an independent server.
#[test]
fn nat5_turn_over_tcp_via_coturn() {
    if lab_or_skip("nat5_turn_over_tcp_via_coturn")
        && nat::tool_or_skip("nat5_turn_over_tcp_via_coturn", "turnserver")
    {
        turn_over_tcp_through_symmetric_nats(Lab::start_coturn);
    }
}
