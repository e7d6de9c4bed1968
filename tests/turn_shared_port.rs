//! Shared-port relay sockets (`[turn] relay_socket = "shared-port"`) in-process with real
//! sockets: one wildcard socket per relay port carries that port for every relay IP; the
//! allocation is found by the datagram's destination IP and relayed datagrams leave from
//! the relay IP the client was told. Relay IPs 127.0.0.2 and 127.0.0.3 (all of 127/8 is
//! local on Linux), peers and clients on 127.0.0.1. The relay port ranges sit below the
//! ephemeral port range (32768-60999): a wildcard relay socket takes its port on every
//! address, so it must not race other tests' port-0 binds.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::turn::{Relayed, TurnClient, peer, peer_recv};
use icering::config::{Config, IoBackendChoice, RelaySocket};
use icering::io::{self, BackendChoice};
use icering::shard::Runtime;
use icering::stun::{Method, attr};

fn backends() -> Vec<IoBackendChoice> {
    let mut v = vec![IoBackendChoice::Portable];
    match io::select_backend(BackendChoice::Uring) {
        Ok(_) => v.push(IoBackendChoice::Uring),
        Err(e) => eprintln!("skipping the uring backend here: {e}"),
    }
    v
}

const R2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const R3: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

fn config(backend: IoBackendChoice, shards: usize, ports: (u16, u16)) -> Config {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = shards;
    c.server.tcp = false;
    c.io.backend = backend;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    c.turn.relay_ips = vec![R2, R3];
    c.turn.relay_socket = RelaySocket::SharedPort;
    (c.turn.min_port, c.turn.max_port) = ports;
    c
}

fn port_sockets(rt: &Runtime) -> u64 {
    rt.shard_counters()
        .iter()
        .map(|c| c.relay_port_sockets.load(Ordering::Relaxed))
        .sum()
}

/// Waits (up to 5 s) until `f` holds: counters are published once per shard loop turn.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether anyone holds UDP `port` on the wildcard address (our bind fails if so).
fn port_taken(port: u16) -> bool {
    UdpSocket::bind(("0.0.0.0", port)).is_err()
}

/// Two clients allocate on the two relay IPs and get the same port (one socket); data
/// goes both ways through Send/Data and ChannelData, each datagram on the right
/// allocation, the peer seeing the relay IP it was told; datagrams to that port on a
/// local IP that is no relay IP are dropped and counted; the socket closes when the
/// second allocation is deleted (Refresh 0). Both io backends.
#[test]
fn two_relay_ips_share_one_port_socket() {
    for (k, backend) in backends().into_iter().enumerate() {
        let base = 31100 + 50 * k as u16;
        let rt = Runtime::start(&config(backend, 1, (base, base + 49))).expect("starts");
        let server = rt.local_addrs()[0];
        let mut c1 = TurnClient::new(server, "alice", "secret");
        let mut c2 = TurnClient::new(server, "alice", "secret");
        let r1 = c1.allocate_ok();
        let r2 = c2.allocate_ok();
        assert_ne!(r1.ip(), r2.ip(), "{backend:?}: one allocation per relay IP");
        assert!([R2, R3].contains(&r1.ip()) && [R2, R3].contains(&r2.ip()));
        assert_eq!(
            r1.port(),
            r2.port(),
            "{backend:?}: the same port, one socket"
        );
        let port = r1.port();
        assert!((base..=base + 49).contains(&port));
        eventually("one port socket", || port_sockets(&rt) == 1);
        assert!(port_taken(port), "bound on the wildcard address");

        // c1: Send indication → peer p1, answered with a Data indication.
        let p1 = peer();
        let p1a = p1.local_addr().unwrap();
        assert!(c1.create_permission(p1a).is_success());
        c1.send_indication(p1a, b"from c1");
        let (from, data) = peer_recv(&p1).expect("p1 receives c1's datagram");
        assert_eq!(
            (from, data.as_slice()),
            (r1, &b"from c1"[..]),
            "{backend:?}"
        );
        p1.send_to(b"to c1", r1).unwrap();
        assert_eq!(
            c1.recv_relayed(),
            Some(Relayed::Data(p1a, b"to c1".to_vec()))
        );

        // c2: ChannelData both ways with p2.
        let p2 = peer();
        let p2a = p2.local_addr().unwrap();
        assert!(c2.channel_bind(0x4002, p2a).is_success());
        c2.send_channel_data(0x4002, b"from c2");
        let (from, data) = peer_recv(&p2).expect("p2 receives c2's datagram");
        assert_eq!(
            (from, data.as_slice()),
            (r2, &b"from c2"[..]),
            "{backend:?}"
        );
        p2.send_to(b"to c2", r2).unwrap();
        assert_eq!(
            c2.recv_relayed(),
            Some(Relayed::Channel(0x4002, b"to c2".to_vec()))
        );
        // Nothing crossed over.
        assert_eq!(c1.recv_relayed(), None);
        // The destination IP picks the allocation: p1 (permitted on both, same IP as p2)
        // to r2 reaches c2 as a Data indication, not c1.
        p1.send_to(b"p1 to r2", r2).unwrap();
        assert_eq!(
            c2.recv_relayed(),
            Some(Relayed::Data(p1a, b"p1 to r2".to_vec()))
        );
        assert_eq!(c1.recv_relayed(), None);
        // Many both ways on the channel, answered from r2 every time (GSO runs by source).
        for i in 0..100u32 {
            c2.send_channel_data(0x4002, &i.to_be_bytes());
        }
        for i in 0..100u32 {
            let (from, d) = peer_recv(&p2).expect("all 100 arrive on loopback");
            assert_eq!((from, d), (r2, i.to_be_bytes().to_vec()));
        }

        // The same port on local IPs that are no relay IPs: dropped and counted.
        let before = rt.stats().dropped_not_relayed;
        for ip in ["127.0.0.1", "127.0.0.4"] {
            p1.send_to(b"not relayed", (ip, port)).unwrap();
        }
        eventually("two datagrams dropped as not relayed", || {
            rt.stats().dropped_not_relayed == before + 2
        });
        assert_eq!(c1.recv_relayed(), None);
        assert_eq!(c2.recv_relayed(), None);

        // Deleting c1 keeps the socket (c2 still uses it) and frees r1's slot only.
        assert!(c1.refresh(0).is_success());
        p2.send_to(b"still here", r2).unwrap();
        assert_eq!(
            c2.recv_relayed(),
            Some(Relayed::Channel(0x4002, b"still here".to_vec()))
        );
        p1.send_to(b"to a free slot", r1).unwrap();
        eventually("a datagram to the freed slot dropped", || {
            rt.stats().dropped_not_relayed == before + 3
        });
        assert_eq!(port_sockets(&rt), 1);
        assert!(port_taken(port));
        // A new allocation takes the free slot of that socket again.
        let mut c3 = TurnClient::new(server, "alice", "secret");
        assert_eq!(c3.allocate_ok(), r1, "{backend:?}: the free slot is reused");
        assert!(c3.refresh(0).is_success());

        // The last one deleted: the socket closes.
        assert!(c2.refresh(0).is_success());
        eventually("no port socket left", || port_sockets(&rt) == 0);
        eventually("the port is free again", || !port_taken(port));
        let s = rt.stats();
        assert_eq!((s.allocations_created, s.allocations_ended), (3, 3));
        rt.shutdown().unwrap();
    }
}

/// EVEN-PORT with R=1 in shared-port mode: an even port, and (same relay IP, port + 1)
/// reserved for the token, which another client (likely another shard) claims; the token
/// works once.
#[test]
fn even_port_reservation_in_shared_port_mode() {
    let rt = Runtime::start(&config(IoBackendChoice::Auto, 2, (31300, 31399))).unwrap();
    let server = rt.local_addrs()[0];
    let mut rtp = TurnClient::new(server, "alice", "secret");
    let a = rtp.request(Method::ALLOCATE, &|w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
        w.add_raw(attr::EVEN_PORT, &[0x80])
    });
    assert!(a.is_success(), "{:?}", a.code());
    let m = a.msg();
    let relay = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = m.get(attr::RESERVATION_TOKEN).unwrap().value.to_vec();
    let mut c = TurnClient::new(server, "alice", "secret");
    let t2 = token.clone();
    let a = c.request(Method::ALLOCATE, &move |w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
        w.add_raw(attr::RESERVATION_TOKEN, &t2)
    });
    assert!(a.is_success(), "{:?}", a.code());
    let rtcp = a
        .msg()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    assert_eq!(rtcp, SocketAddr::new(relay.ip(), relay.port() + 1));
    // The claimed socket relays for its allocation, from its relayed address.
    let p = peer();
    let pa = p.local_addr().unwrap();
    assert!(c.create_permission(pa).is_success());
    c.send_indication(pa, b"rtcp");
    assert_eq!(peer_recv(&p), Some((rtcp, b"rtcp".to_vec())));
    let mut d = TurnClient::new(server, "alice", "secret");
    let a = d.request(Method::ALLOCATE, &move |w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
        w.add_raw(attr::RESERVATION_TOKEN, &token)
    });
    assert_eq!(a.code(), Some(508), "a token is used once");
    rt.shutdown().unwrap();
}

/// IPv6 in shared-port mode: REQUESTED-ADDRESS-FAMILY IPv6 gets the `[::]:P` socket of
/// the IPv6 family (`IPV6_V6ONLY`, `IPV6_RECVPKTINFO`), the peer sees `[::1]:P` as the
/// source and its answer comes back; an IPv4 allocation on the same server keeps its own
/// IPv4 port socket.
#[test]
fn ipv6_relay_in_shared_port_mode() {
    for (k, backend) in backends().into_iter().enumerate() {
        let base = 31400 + 50 * k as u16;
        let mut c = config(backend, 1, (base, base + 49));
        let v6: IpAddr = "::1".parse().unwrap();
        c.turn.relay_ips = vec![R2, v6];
        let rt = Runtime::start(&c).unwrap();
        let server = rt.local_addrs()[0];
        let mut c6 = TurnClient::new(server, "alice", "secret");
        let a = c6.request(Method::ALLOCATE, &|w| {
            w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
            w.add_raw(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
        });
        assert!(a.is_success(), "{:?}", a.code());
        let r6 = a
            .msg()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap();
        assert_eq!(r6.ip(), v6);
        let mut c4 = TurnClient::new(server, "alice", "secret");
        let r4 = c4.allocate_ok();
        assert_eq!(r4.ip(), R2);
        let p = UdpSocket::bind("[::1]:0").unwrap();
        p.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let pa = p.local_addr().unwrap();
        assert!(c6.channel_bind(0x4003, pa).is_success());
        c6.send_channel_data(0x4003, b"over v6");
        assert_eq!(
            peer_recv(&p),
            Some((r6, b"over v6".to_vec())),
            "{backend:?}"
        );
        p.send_to(b"back over v6", r6).unwrap();
        assert_eq!(
            c6.recv_relayed(),
            Some(Relayed::Channel(0x4003, b"back over v6".to_vec()))
        );
        // One port socket per family.
        eventually("two port sockets", || port_sockets(&rt) == 2);
        rt.shutdown().unwrap();
    }
}

/// A relay IP that is no local address is refused at start (a wildcard socket would bind,
/// and only the sends from that IP would fail).
#[test]
fn non_local_relay_ip_is_refused_at_start() {
    let mut c = config(IoBackendChoice::Auto, 1, (31500, 31549));
    c.turn.relay_ips = vec![R2, "192.0.2.1".parse().unwrap()];
    let e = Runtime::start(&c).expect_err("192.0.2.1 is not local");
    assert!(e.to_string().contains("192.0.2.1"), "{e}");
}
