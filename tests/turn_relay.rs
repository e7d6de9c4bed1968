//! The TURN relay in-process (`Runtime` with real sockets) against a small TURN client on
//! std sockets and real UDP peers on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::turn::{Relayed, TurnClient, peer, peer_recv};
use icering::config::{Config, IoBackendChoice};
use icering::io::{self, BackendChoice};
use icering::shard::Runtime;
use icering::stun::{Method, attr};
use icering::turn::server::auth::rest_password;

fn backends() -> Vec<IoBackendChoice> {
    let mut v = vec![IoBackendChoice::Portable];
    match io::select_backend(BackendChoice::Uring) {
        Ok(_) => v.push(IoBackendChoice::Uring),
        Err(e) => eprintln!("skipping the uring backend here: {e}"),
    }
    v
}

fn config(backend: IoBackendChoice, shards: usize) -> Config {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = shards;
    c.io.backend = backend;
    c.turn.users = vec!["alice:secret".into(), "bob:hunter2".into()];
    c.turn.static_auth_secrets = vec!["old-secret".into(), "rest-secret".into()];
    c.turn.allow_loopback_peers = true;
    c.turn.min_port = 42000;
    c.turn.max_port = 43999;
    c
}

fn start(c: &Config) -> (Runtime, SocketAddr) {
    let rt = Runtime::start(c).expect("runtime starts");
    let addr = rt.local_addrs()[0];
    (rt, addr)
}

/// Allocate (401 → signed retry) → CreatePermission → Send → peer → Data; ChannelBind →
/// ChannelData both ways; Refresh 0 deletes; with each backend and with two shards.
#[test]
fn full_relay_flow_with_each_backend() {
    for backend in backends() {
        for shards in [1, 2] {
            let (rt, server) = start(&config(backend, shards));
            let mut c = TurnClient::new(server, "alice", "secret");
            // The first Allocate carries no credentials: 401 with REALM and NONCE.
            let relay = c.allocate_ok();
            assert!(c.nonce().unwrap().starts_with("obMatJos2"));
            assert!(relay.ip().is_loopback());
            assert!((42000..=43999).contains(&relay.port()));

            let p = peer();
            let paddr = p.local_addr().unwrap();
            let a = c.create_permission(paddr);
            assert!(a.is_success(), "{:?}", a.code());
            assert!(c.verify(&a));

            c.send_indication(paddr, b"hello peer");
            let (from, data) = peer_recv(&p).expect("peer receives the Send indication");
            assert_eq!(from, relay);
            assert_eq!(data, b"hello peer");

            p.send_to(b"hello client", relay).unwrap();
            assert_eq!(
                c.recv_relayed(),
                Some(Relayed::Data(paddr, b"hello client".to_vec()))
            );

            let a = c.channel_bind(0x4001, paddr);
            assert!(a.is_success(), "{:?}", a.code());
            p.send_to(b"over the channel", relay).unwrap();
            assert_eq!(
                c.recv_relayed(),
                Some(Relayed::Channel(0x4001, b"over the channel".to_vec()))
            );
            c.send_channel_data(0x4001, b"channel to peer");
            let (from, data) = peer_recv(&p).expect("peer receives ChannelData payload");
            assert_eq!((from, data.as_slice()), (relay, &b"channel to peer"[..]));
            // Many datagrams both ways on the channel.
            for i in 0..200u32 {
                c.send_channel_data(0x4001, &i.to_be_bytes());
            }
            for i in 0..200u32 {
                let (_, d) = peer_recv(&p).expect("all 200 arrive on loopback");
                assert_eq!(d, i.to_be_bytes());
            }

            let a = c.refresh(1200);
            assert!(a.is_success());
            assert_eq!(a.msg().lifetime(), Some(1200));
            let a = c.refresh(0);
            assert!(a.is_success(), "{:?}", a.code());
            assert_eq!(a.msg().lifetime(), Some(0));
            // Gone: relaying stops and Refresh gets 437.
            c.send_indication(paddr, b"after delete");
            assert!(peer_recv(&p).is_none(), "nothing relayed after Refresh 0");
            assert_eq!(c.refresh(600).code(), Some(437));

            std::thread::sleep(Duration::from_millis(250));
            let s = rt.stats();
            assert_eq!(s.allocations_created, 1);
            assert_eq!(s.allocations_ended, 1);
            assert!(s.relayed_to_peer >= 202, "{s:?}");
            assert!(s.relayed_to_client >= 2, "{s:?}");
            rt.shutdown().unwrap();
        }
    }
}

#[test]
fn sha256_integrity_and_password_algorithm() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    let mut c = TurnClient::new(server, "bob", "hunter2");
    c.sha256 = true;
    let a = c.allocate();
    assert!(a.is_success(), "{:?}", a.code());
    let m = a.msg();
    assert!(
        m.integrity_sha256_offset().is_some(),
        "answer uses MI-SHA256"
    );
    assert!(m.integrity_offset().is_none());
    assert!(c.verify(&a));
    rt.shutdown().unwrap();
}

#[test]
fn auth_errors_401_438_441_and_no_users_refuses_all() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    // The 401 challenge carries REALM, NONCE and PASSWORD-ALGORITHMS.
    let mut c = TurnClient::new(server, "alice", "wrong");
    let mut buf = [0u8; 512];
    let (tid, n) = c.build(
        Method::ALLOCATE,
        &|w| w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
        &mut buf,
    );
    let a = c.exchange(&buf[..n], tid).unwrap();
    assert_eq!(a.code(), Some(401));
    let m = a.msg();
    assert_eq!(m.realm(), Some("icering"));
    assert!(m.nonce().is_some());
    assert!(m.get(attr::PASSWORD_ALGORITHMS).is_some());
    assert!(m.integrity_offset().is_none());
    // Wrong password: 401 again.
    assert_eq!(c.allocate().code(), Some(401));
    // Unknown user: 401.
    let mut u = TurnClient::new(server, "mallory", "x");
    assert_eq!(u.allocate().code(), Some(401));

    // Stale (forged timestamp) nonce: 438 with a fresh nonce, then the retry succeeds.
    let mut c = TurnClient::new(server, "alice", "secret");
    c.allocate_ok();
    let n = c.nonce().unwrap().to_string();
    let mut forged = n.clone().into_bytes();
    let i = "obMatJos2gAAA".len();
    forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
    c.set_nonce(std::str::from_utf8(&forged).unwrap());
    let mut buf = [0u8; 512];
    let (tid, len) = c.build(
        Method::REFRESH,
        &|w| w.add_u32(attr::LIFETIME, 600),
        &mut buf,
    );
    let a = c.exchange(&buf[..len], tid).unwrap();
    assert_eq!(a.code(), Some(438));
    assert!(a.msg().nonce().is_some() && a.msg().realm().is_some());
    // The client's helper retries with the new nonce.
    assert!(c.refresh(600).is_success());

    // 441: bob on alice's 5-tuple.
    c.user = "bob".into();
    c.pass = "hunter2".into();
    assert_eq!(c.refresh(600).code(), Some(441));
    rt.shutdown().unwrap();

    // The embedded default has no users: everything gets 401.
    let mut d = Config::embedded();
    d.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    d.server.shards = 1;
    let (rt, server) = start(&d);
    let mut c = TurnClient::new(server, "alice", "secret");
    assert_eq!(c.allocate().code(), Some(401));
    assert_eq!(c.allocate().code(), Some(401));
    rt.shutdown().unwrap();
}

#[test]
fn rest_credentials_with_rotated_secrets_and_expiry() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for secret in ["rest-secret", "old-secret"] {
        let user = format!("{}:carol", now + 3600);
        let pass = rest_password(secret.as_bytes(), &user);
        let mut c = TurnClient::new(server, &user, &pass);
        c.allocate_ok();
    }
    let user = format!("{}:carol", now - 10);
    let pass = rest_password(b"rest-secret", &user);
    let mut c = TurnClient::new(server, &user, &pass);
    assert_eq!(c.allocate().code(), Some(401), "expired REST credential");
    let user = format!("{}:carol", now + 3600);
    let pass = rest_password(b"not-configured", &user);
    let mut c = TurnClient::new(server, &user, &pass);
    assert_eq!(c.allocate().code(), Some(401), "unknown secret");
    rt.shutdown().unwrap();
}

#[test]
fn allocate_errors_442_437_400_and_channel_conflicts() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    let mut c = TurnClient::new(server, "alice", "secret");
    let a = c.request(Method::ALLOCATE, &|w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])
    });
    assert_eq!(a.code(), Some(442));
    assert!(c.verify(&a), "errors after authentication are signed");
    assert_eq!(c.request(Method::ALLOCATE, &|_| Ok(())).code(), Some(400));
    // IPv6 relay requested, only IPv4 relay addresses configured: 440.
    let a = c.request(Method::ALLOCATE, &|w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
        w.add_raw(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
    });
    assert_eq!(a.code(), Some(440));
    // Before Allocate: 437 for the other methods.
    let p = peer();
    let paddr = p.local_addr().unwrap();
    assert_eq!(c.create_permission(paddr).code(), Some(437));
    c.allocate_ok();
    assert_eq!(c.allocate().code(), Some(437), "5-tuple already allocated");
    assert_eq!(c.channel_bind(0x3FFF, paddr).code(), Some(400));
    assert!(c.channel_bind(0x4000, paddr).is_success());
    assert!(
        c.channel_bind(0x4000, paddr).is_success(),
        "rebinding refreshes"
    );
    let other: SocketAddr = format!("127.0.0.1:{}", paddr.port() ^ 1).parse().unwrap();
    assert_eq!(c.channel_bind(0x4000, other).code(), Some(400));
    assert_eq!(c.channel_bind(0x4002, paddr).code(), Some(400));
    assert_eq!(
        c.request(Method::CREATE_PERMISSION, &|_| Ok(())).code(),
        Some(400)
    );
    rt.shutdown().unwrap();
}

#[test]
fn peer_policy_403_without_allow_loopback() {
    let mut cfg = config(IoBackendChoice::Auto, 1);
    cfg.turn.allow_loopback_peers = false;
    cfg.turn.denied_peers = vec!["8.8.0.0/16".into()];
    let (rt, server) = start(&cfg);
    let mut c = TurnClient::new(server, "alice", "secret");
    c.allocate_ok();
    for peer in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "169.254.1.1:9",
        "224.0.0.1:9",
        "0.0.0.0:9",
        "8.8.8.8:53",
    ] {
        let a = c.create_permission(peer.parse().unwrap());
        assert_eq!(a.code(), Some(403), "{peer}");
        let a = c.channel_bind(0x4005, peer.parse().unwrap());
        assert_eq!(a.code(), Some(403), "{peer}");
    }
    // One forbidden address refuses the whole request.
    let a = c.request(Method::CREATE_PERMISSION, &|w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "1.1.1.1:9".parse().unwrap())?;
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:9".parse().unwrap())
    });
    assert_eq!(a.code(), Some(403));
    assert!(
        c.create_permission("1.1.1.1:9".parse().unwrap())
            .is_success()
    );
    // A peer of the other family: 443.
    assert_eq!(
        c.create_permission("[2001:4860::1]:9".parse().unwrap())
            .code(),
        Some(443)
    );
    rt.shutdown().unwrap();
}

#[test]
fn quotas_486_per_user_and_508_total() {
    let mut cfg = config(IoBackendChoice::Auto, 2);
    cfg.turn.user_quota = 2;
    cfg.turn.total_quota = 3;
    let (rt, server) = start(&cfg);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TurnClient::new(server, "alice", "secret");
        c.allocate_ok();
        held.push(c);
    }
    let mut c = TurnClient::new(server, "alice", "secret");
    assert_eq!(c.allocate().code(), Some(486));
    let mut b = TurnClient::new(server, "bob", "hunter2");
    b.allocate_ok();
    let mut b2 = TurnClient::new(server, "bob", "hunter2");
    assert_eq!(b2.allocate().code(), Some(508));
    // Freeing one makes room again.
    assert!(held[0].refresh(0).is_success());
    c.allocate_ok();
    rt.shutdown().unwrap();
}

#[test]
fn malformed_packets_do_not_disturb_other_allocations() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    let mut good = TurnClient::new(server, "alice", "secret");
    let relay = good.allocate_ok();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    assert!(good.channel_bind(0x4100, paddr).is_success());

    let mut bad = TurnClient::new(server, "bob", "hunter2");
    let bad_relay = bad.allocate_ok();
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x40],
        vec![0x41, 0x00, 0xff, 0xff, 1, 2, 3], // ChannelData length beyond datagram
        vec![0x4F, 0xFF, 0x00, 0x02, 1, 2],    // unbound channel
        vec![0x40, 0x01, 0x00, 0x01, 9, 0, 0, 0, 0], // too much padding
        vec![
            0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        vec![
            0x00, 0x16, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ], // Send ind. without attrs
        vec![
            0x00, 0x16, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0x12, 0, 4, 0, 1, 2, 3,
        ],
        vec![0xff; 1200],
        vec![0x80; 64],
    ];
    for round in 0..20 {
        for j in &junk {
            bad.sock.send_to(j, server).unwrap();
        }
        // Junk to the relay port of the other allocation, which has no permission.
        p.send_to(b"let me in", bad_relay).unwrap();
        good.send_channel_data(0x4100, &[round as u8; 32]);
    }
    for round in 0..20u8 {
        let (from, d) = peer_recv(&p).expect("good allocation keeps relaying");
        assert_eq!(from, relay);
        assert_eq!(d, vec![round; 32]);
    }
    p.send_to(b"still here", relay).unwrap();
    assert_eq!(
        good.recv_relayed(),
        Some(Relayed::Channel(0x4100, b"still here".to_vec()))
    );
    assert!(good.refresh(600).is_success());
    assert!(bad.refresh(600).is_success());
    std::thread::sleep(Duration::from_millis(250));
    let s = rt.stats();
    assert!(s.dropped() >= 20 * 9, "{s:?}");
    assert!(s.dropped_no_permission >= 20, "{s:?}");
    assert!(
        bad.recv_relayed().is_none(),
        "nothing relayed without permission"
    );
    rt.shutdown().unwrap();
}

#[test]
fn even_port_reservation_token_across_shards() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 2));
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
    // Several clients (different 5-tuples, so likely another shard) try the token; only
    // the first may get the reserved port.
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
    assert_eq!(rtcp.port(), relay.port() + 1);
    let mut d = TurnClient::new(server, "alice", "secret");
    let a = d.request(Method::ALLOCATE, &move |w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
        w.add_raw(attr::RESERVATION_TOKEN, &token)
    });
    assert_eq!(a.code(), Some(508), "a token is used once");
    rt.shutdown().unwrap();
}

#[test]
fn bandwidth_cap_drops_and_counts() {
    let mut cfg = config(IoBackendChoice::Auto, 1);
    cfg.turn.bandwidth = 10_000;
    let (rt, server) = start(&cfg);
    let mut c = TurnClient::new(server, "alice", "secret");
    c.allocate_ok();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    assert!(c.channel_bind(0x4000, paddr).is_success());
    for _ in 0..50 {
        c.send_channel_data(0x4000, &[1u8; 1000]);
    }
    let mut got = 0;
    while peer_recv(&p).is_some() {
        got += 1;
    }
    assert!(
        (5..=20).contains(&got),
        "about 10 kB of 50 kB pass, got {got} kB"
    );
    std::thread::sleep(Duration::from_millis(250));
    assert!(rt.stats().dropped_bandwidth >= 30);
    rt.shutdown().unwrap();
}

#[test]
fn failed_auth_rate_limit_drops_after_n_failures() {
    let mut cfg = config(IoBackendChoice::Auto, 1);
    cfg.turn.max_auth_failures = 3;
    let (rt, server) = start(&cfg);
    let mut c = TurnClient::new(server, "alice", "wrong");
    c.allocate(); // learns the nonce; 1 failure
    let mut buf = [0u8; 512];
    let mut answered = 0;
    for _ in 0..5 {
        let (tid, n) = c.build(
            Method::ALLOCATE,
            &|w| w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
            &mut buf,
        );
        c.sock.send_to(&buf[..n], server).unwrap();
        let mut r = [0u8; 1024];
        if let Ok((len, _)) = c.sock.recv_from(&mut r) {
            let m = icering::stun::Message::parse(&r[..len]).unwrap();
            assert_eq!(m.transaction_id(), &tid);
            answered += 1;
        }
    }
    assert_eq!(
        answered, 2,
        "after 3 failures the source is dropped this minute"
    );
    std::thread::sleep(Duration::from_millis(250));
    let s = rt.stats();
    assert_eq!(s.auth_failures, 3);
    assert!(s.dropped_auth_rate >= 3);
    // The limit is per source IP: even the right password from 127.0.0.1 is dropped now.
    let mut ok = TurnClient::new(server, "alice", "secret");
    let (tid, n) = ok.build(Method::BINDING, &|_| Ok(()), &mut buf);
    assert!(
        ok.exchange(&buf[..n], tid).is_some(),
        "Binding is not rate limited"
    );
    rt.shutdown().unwrap();
}

/// RFC 8656 §7.2: an Allocate retransmitted after it succeeded (same transaction id, same
/// 5-tuple) gets the success response again, not 437; a new Allocate still gets 437.
#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let (rt, server) = start(&config(IoBackendChoice::Auto, 1));
    let mut c = TurnClient::new(server, "alice", "secret");
    // Learn REALM/NONCE (401, then 437: no allocation yet), then build one signed
    // Allocate and send it twice.
    assert_eq!(
        c.create_permission(peer().local_addr().unwrap()).code(),
        Some(437)
    );
    let mut buf = [0u8; 2048];
    let (tid, n) = c.build(
        Method::ALLOCATE,
        &|w| w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
        &mut buf,
    );
    let first = c.exchange(&buf[..n], tid).expect("answer");
    assert!(first.is_success(), "{:?}", first.code());
    let again = c
        .exchange(&buf[..n], tid)
        .expect("answer to the retransmission");
    assert!(again.is_success(), "retransmission got {:?}", again.code());
    assert!(c.verify(&again), "the repeated answer is signed");
    let relay = |a: &common::turn::Answer| {
        a.msg()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()
    };
    assert_eq!(relay(&first), relay(&again));
    assert!(again.msg().lifetime().unwrap() <= 600);
    assert_eq!(
        c.allocate().code(),
        Some(437),
        "a new transaction still gets 437"
    );
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(rt.stats().allocations_created, 1);
    rt.shutdown().unwrap();
}

/// Sends `frames` (equal sizes, the last may be shorter) from `sock` to `to` as one UDP GSO
/// `sendmsg` (`UDP_SEGMENT`), as a client or peer with GSO sends a burst. False if the
/// kernel refuses GSO (the caller then skips the burst check).
fn send_gso_burst(sock: &std::net::UdpSocket, to: SocketAddr, frames: &[Vec<u8>]) -> bool {
    use std::os::fd::AsRawFd;
    let seg = frames[0].len() as u16;
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut _,
            iov_len: f.len(),
        })
        .collect();
    let std::net::SocketAddr::V4(v4) = to else {
        panic!("IPv4 only");
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // CMSG_SPACE(2) = 16 + 8 on 64-bit Linux; 8-aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: plain C structs, filled below; pointers stay valid for the call.
    unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = (&sin as *const libc::sockaddr_in).cast_mut().cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        h.msg_iov = iov.as_mut_ptr();
        h.msg_iovlen = iov.len() as _;
        h.msg_control = cbuf.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = 103; // UDP_SEGMENT
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::copy_nonoverlapping(seg.to_ne_bytes().as_ptr(), libc::CMSG_DATA(c), 2);
        libc::sendmsg(sock.as_raw_fd(), &h, 0) >= 0
    }
}

/// Bursts both ways as single GSO sends (ChannelData from the client to the server
/// socket, payloads from the peer to the relay socket): with GRO the server receives each
/// burst merged and must still relay every datagram on its own, intact and in order; with
/// each backend.
#[test]
fn gso_bursts_are_relayed_datagram_by_datagram() {
    for backend in backends() {
        let (rt, server) = start(&config(backend, 1));
        let mut c = TurnClient::new(server, "alice", "secret");
        let relay = c.allocate_ok();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        assert!(c.channel_bind(0x4002, paddr).is_success());
        const N: u32 = 24;
        // 100-byte payloads, the last one 40 bytes: (seq, filler).
        let payload = |i: u32| {
            let len = if i == N - 1 { 40 } else { 100 };
            let mut v = i.to_be_bytes().to_vec();
            v.extend((4..len).map(|j| (i as usize * 7 + j) as u8));
            v
        };
        let frames: Vec<Vec<u8>> = (0..N)
            .map(|i| {
                let d = payload(i);
                let mut f = 0x4002u16.to_be_bytes().to_vec();
                f.extend((d.len() as u16).to_be_bytes());
                f.extend(&d);
                f
            })
            .collect();
        if !send_gso_burst(&c.sock, server, &frames) {
            eprintln!("kernel refuses UDP GSO: skipping the burst check");
            rt.shutdown().unwrap();
            continue;
        }
        for i in 0..N {
            let (from, d) = peer_recv(&p).expect("every datagram of the burst reaches the peer");
            assert_eq!((from, d), (relay, payload(i)), "{backend:?} to peer {i}");
        }
        let back: Vec<Vec<u8>> = (0..N).map(payload).collect();
        assert!(send_gso_burst(&p, relay, &back));
        for i in 0..N {
            assert_eq!(
                c.recv_relayed(),
                Some(Relayed::Channel(0x4002, payload(i))),
                "{backend:?} to client {i}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
        let s = rt.stats();
        assert_eq!((s.relayed_to_peer, s.relayed_to_client), (24, 24), "{s:?}");
        let sc = &rt.shard_counters()[0];
        let gro = sc
            .io_gro_segments
            .load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{backend:?}: gro_segments {gro}");
        // Both bursts reached a GRO socket whole over loopback.
        assert_eq!(gro, 2 * u64::from(N), "{backend:?}");
        rt.shutdown().unwrap();
    }
}
