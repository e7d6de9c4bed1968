//! Sans-IO tests of the relay with a synthetic clock: lifetimes, permission and channel
//! expiry driven by `handle_timeout`, nonce expiry, and the `Later` replay contract.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::stun::{IntegrityKey, MessageType, MessageWriter, attr, long_term_key_md5};

#[derive(Default)]
struct FakePorts {
    opened: u32,
    closed: Vec<Sock>,
    later: bool,
}

impl RelayPorts for FakePorts {
    fn open(&mut self, ip: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        if self.later {
            return Err(OpenError::Later);
        }
        self.opened += 1;
        Ok((
            Sock(100 + self.opened),
            SocketAddr::new(ip, 50000 + self.opened as u16),
        ))
    }
    fn close(&mut self, sock: Sock) {
        self.closed.push(sock);
    }
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

const LISTEN: Sock = Sock(0);

struct Harness {
    t0: Instant,
    server: Server,
    ports: FakePorts,
    client: SocketAddr,
    nonce: Option<String>,
    out: Vec<u8>,
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        let mut cfg = TurnConfig::new(t0, 1_700_000_000, [9; 32]);
        cfg.users = vec![("alice".into(), "pw".into())];
        cfg.policy.allow_private = true;
        Harness {
            t0,
            server: Server::new(ServerConfig {
                software: String::new(),
                turn: Some(cfg),
            }),
            ports: FakePorts::default(),
            client: "192.0.2.10:4000".parse().unwrap(),
            nonce: None,
            out: vec![0; 2048],
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn request(
        &mut self,
        secs: u64,
        method: Method,
        attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), crate::stun::StunError>,
    ) -> (Outcome, Option<u16>) {
        let mut buf = [0u8; 512];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), &[3; 12])
                .unwrap();
        attrs(&mut w).unwrap();
        if let Some(n) = &self.nonce {
            w.add_raw(attr::USERNAME, b"alice").unwrap();
            w.add_raw(attr::REALM, b"icering").unwrap();
            w.add_raw(attr::NONCE, n.as_bytes()).unwrap();
            let k = long_term_key_md5("alice", "icering", "pw");
            w.add_message_integrity(&IntegrityKey::new(&k)).unwrap();
        }
        let n = w.finish();
        let now = self.at(secs);
        let o = self.server.handle(
            now,
            LISTEN,
            self.client,
            &buf[..n],
            &mut self.out,
            &mut self.ports,
        );
        let code = match o {
            Outcome::Reply(len) => {
                let m = Message::parse(&self.out[..len]).unwrap();
                if let Some(n) = m.nonce() {
                    self.nonce = Some(n.to_string());
                }
                m.error_code().map(|e| e.code)
            }
            _ => None,
        };
        (o, code)
    }

    fn allocate(&mut self, secs: u64) -> (Outcome, Option<u16>) {
        self.request(secs, Method::ALLOCATE, &|w| {
            w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        })
    }

    fn peer_sends(&mut self, secs: u64, relay: Sock, peer: &str) -> Outcome {
        let now = self.at(secs);
        self.server.handle(
            now,
            relay,
            peer.parse().unwrap(),
            b"payload",
            &mut self.out,
            &mut self.ports,
        )
    }
}

#[test]
fn lifetimes_expire_through_handle_timeout() {
    let mut h = Harness::new();
    assert_eq!(h.allocate(0).1, Some(401));
    let (o, code) = h.allocate(0);
    assert_eq!(code, None, "{o:?}");
    assert_eq!(h.server.allocations(), 1);
    let relay = Sock(101);
    let (_, c) = h.request(0, Method::CREATE_PERMISSION, &|w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "10.0.0.1:7000".parse().unwrap())
    });
    assert_eq!(c, None);
    let (_, c) = h.request(100, Method::CHANNEL_BIND, &|w| {
        w.add_raw(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])?;
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "10.0.0.2:7000".parse().unwrap())
    });
    assert_eq!(c, None);
    assert!(matches!(
        h.peer_sends(10, relay, "10.0.0.1:7000"),
        Outcome::Send { .. }
    ));
    assert_eq!(
        h.peer_sends(10, relay, "10.0.0.3:7000"),
        Outcome::Drop(DropReason::NoPermission)
    );
    // Sweep at 301 s: the CreatePermission permission (300 s) is gone, the ChannelBind one
    // (installed at 100 s) is not.
    let now = h.at(301);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(
        h.peer_sends(301, relay, "10.0.0.1:7000"),
        Outcome::Drop(DropReason::NoPermission)
    );
    let o = h.peer_sends(301, relay, "10.0.0.2:7000");
    assert!(
        matches!(o, Outcome::Send { len: 11, .. }),
        "ChannelData: {o:?}"
    );
    // Refresh 0 (the nonce from 0 s is still fresh at 590 s) deletes the allocation and
    // closes its relay socket.
    let (_, c) = h.request(590, Method::REFRESH, &|w| w.add_u32(attr::LIFETIME, 0));
    assert_eq!(c, None);
    assert_eq!(h.server.allocations(), 0);
    assert_eq!(h.ports.closed, vec![relay]);

    // A new allocation left to expire.
    h.client = "192.0.2.10:4001".parse().unwrap();
    let (_, c) = h.allocate(700);
    assert_eq!(c, Some(438), "nonce issued at 0 s is stale at 700 s");
    let (_, c) = h.allocate(700);
    assert_eq!(c, None);
    let now = h.at(1299);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(h.server.allocations(), 1);
    let now = h.at(1301);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(h.server.allocations(), 0, "600 s lifetime ran out");
    assert_eq!(h.ports.closed.len(), 2);
    assert_eq!(h.server.stats().allocations_ended, 2);
}

#[test]
fn later_leaves_no_state_and_replay_succeeds() {
    let mut h = Harness::new();
    assert_eq!(h.allocate(0).1, Some(401));
    h.ports.later = true;
    let (o, _) = h.allocate(0);
    assert_eq!(o, Outcome::Later);
    assert_eq!(h.server.allocations(), 0);
    h.ports.later = false;
    let (o, c) = h.allocate(0);
    assert!(matches!(o, Outcome::Reply(_)) && c.is_none());
    assert_eq!(h.server.allocations(), 1);
}

#[test]
fn untrusted_bytes_never_panic() {
    let mut h = Harness::new();
    assert_eq!(h.allocate(0).1, Some(401));
    h.allocate(0);
    let mut seed = 0x1234_5678u32;
    let mut buf = [0u8; 300];
    for i in 0..20_000 {
        let len = (i % 300) as usize;
        for b in buf[..len].iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        // Make a share of them look like STUN or ChannelData.
        match i % 3 {
            0 if len >= 20 => {
                buf[0] &= 0x3F;
                buf[4..8].copy_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
                buf[2..4].copy_from_slice(&((len as u16 - 20) & !3).to_be_bytes());
            }
            1 if len >= 4 => buf[0] = 0x40 | (buf[0] & 0x3F),
            _ => {}
        }
        let now = h.at(1);
        for sock in [LISTEN, Sock(101), Sock(7)] {
            let _ = h
                .server
                .handle(now, sock, h.client, &buf[..len], &mut h.out, &mut h.ports);
        }
    }
    assert_eq!(h.server.allocations(), 1);
}

/// RFC 8656 §12: for 5 minutes after a channel binding expires, its number cannot be
/// bound to another peer nor the peer to another number (400), and the channel carries no
/// data; rebinding the same number to the same peer is allowed. After the cool-down both
/// are free.
#[test]
fn expired_channel_cools_down_for_five_minutes() {
    let mut h = Harness::new();
    let p: SocketAddr = "10.0.0.2:7000".parse().unwrap();
    let q: SocketAddr = "10.0.0.3:7000".parse().unwrap();
    let relay = Sock(101);
    // A request, once more with the fresh nonce if the last one went stale (438).
    let fresh =
        |h: &mut Harness,
         secs: u64,
         m: Method,
         f: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), crate::stun::StunError>| {
            match h.request(secs, m, f).1 {
                Some(438) => h.request(secs, m, f).1,
                c => c,
            }
        };
    let bind = |ch: u8, peer: SocketAddr| {
        move |w: &mut MessageWriter<'_>| {
            w.add_raw(attr::CHANNEL_NUMBER, &[0x40, ch, 0, 0])?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        }
    };
    let permit = |peer: SocketAddr| {
        move |w: &mut MessageWriter<'_>| w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
    };
    assert_eq!(h.allocate(0).1, Some(401));
    assert_eq!(h.allocate(0).1, None);
    assert_eq!(fresh(&mut h, 0, Method::CHANNEL_BIND, &bind(0, p)), None);
    let lifetime = |w: &mut MessageWriter<'_>| w.add_u32(attr::LIFETIME, 3600);
    assert_eq!(fresh(&mut h, 500, Method::REFRESH, &lifetime), None);
    assert_eq!(
        fresh(&mut h, 550, Method::CREATE_PERMISSION, &permit(p)),
        None
    );
    assert!(matches!(
        h.peer_sends(550, relay, "10.0.0.2:7000"),
        Outcome::Send { len: 11, .. }
    ));

    // The binding (600 s) has expired: cooling down.
    let now = h.at(601);
    h.server.handle_timeout(now, &mut h.ports);
    let o = h.peer_sends(601, relay, "10.0.0.2:7000");
    assert!(
        matches!(o, Outcome::Send { len, .. } if len > 11),
        "a Data indication: {o:?}"
    );
    assert_eq!(
        fresh(&mut h, 602, Method::CHANNEL_BIND, &bind(0, q)),
        Some(400)
    );
    assert_eq!(
        fresh(&mut h, 602, Method::CHANNEL_BIND, &bind(1, p)),
        Some(400)
    );
    let now = h.at(899);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(
        fresh(&mut h, 899, Method::CHANNEL_BIND, &bind(0, q)),
        Some(400)
    );

    // Cool-down over (600 + 300 s): the number and the peer are free.
    let now = h.at(901);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(fresh(&mut h, 901, Method::CHANNEL_BIND, &bind(0, q)), None);
    assert_eq!(fresh(&mut h, 901, Method::CHANNEL_BIND, &bind(1, p)), None);

    // Rebinding the same number to the same peer during the cool-down is a refresh.
    let now = h.at(1502);
    h.server.handle_timeout(now, &mut h.ports);
    assert_eq!(fresh(&mut h, 1502, Method::CHANNEL_BIND, &bind(1, p)), None);
    assert_eq!(
        fresh(&mut h, 1502, Method::CREATE_PERMISSION, &permit(p)),
        None
    );
    assert!(matches!(
        h.peer_sends(1502, relay, "10.0.0.2:7000"),
        Outcome::Send { len: 11, .. }
    ));
}
