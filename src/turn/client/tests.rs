//! The client against our own TURN server, both sans-IO, in one deterministic loop with a
//! synthetic clock: 401 → authenticated Allocate (SHA-256 as offered), loss and
//! retransmission, 438 on a stale nonce, permissions, Send indications then ChannelData,
//! data from a peer, refreshes across the server's lifetimes, close; and the Binding client.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::turn::server::{
    OpenError, Outcome, PortWish, RelayPorts, Server, ServerConfig, Sock, TurnConfig,
};

const LISTEN: Sock = Sock(0);

#[derive(Default)]
struct Ports {
    opened: Vec<(Sock, SocketAddr)>,
    closed: Vec<Sock>,
}

impl RelayPorts for Ports {
    fn open(&mut self, ip: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        let n = self.opened.len() as u32 + 1;
        let s = (Sock(100 + n), SocketAddr::new(ip, 50000 + n as u16));
        self.opened.push(s);
        Ok(s)
    }
    fn close(&mut self, sock: Sock) {
        self.closed.push(sock);
    }
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

/// The client, our server and peers wired together with a loss filter.
struct Net {
    t0: Instant,
    now: Instant,
    server: Server,
    ports: Ports,
    server_addr: SocketAddr,
    client: Client,
    /// Drop the next n datagrams client → server.
    drop_to_server: u32,
    /// Drop everything client → server.
    blackhole: bool,
    /// Drop the next n success responses server → client.
    drop_successes: u32,
    /// Datagrams the relay sent to peers: (peer, payload).
    to_peers: Vec<(SocketAddr, Vec<u8>)>,
    /// Data the client delivered: (peer, payload).
    delivered: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<ClientEvent>,
    /// Datagrams the client sent to the server (kind by first byte).
    sent: Vec<Vec<u8>>,
}

const CLIENT: &str = "198.51.100.7:5000";
const PEER: &str = "10.1.2.3:7000";

impl Net {
    fn new(password: &str, tweak: impl FnOnce(&mut TurnConfig)) -> Net {
        let t0 = Instant::now();
        let mut cfg = TurnConfig::new(t0, 1_700_000_000, [5; 32]);
        cfg.users = vec![("alice".into(), "secret".into())];
        cfg.relay_ips = vec!["192.0.2.1".parse().unwrap()];
        cfg.policy.allow_private = true;
        tweak(&mut cfg);
        let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mut ccfg = ClientConfig::new(server_addr, CLIENT.parse().unwrap(), "alice", password);
        ccfg.seed = 42;
        Net {
            t0,
            now: t0,
            server: Server::new(ServerConfig {
                software: String::new(),
                turn: Some(cfg),
            }),
            ports: Ports::default(),
            server_addr,
            client: Client::new(ccfg, t0),
            drop_to_server: 0,
            blackhole: false,
            drop_successes: 0,
            to_peers: Vec::new(),
            delivered: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Delivers a datagram from the server to the client.
    fn deliver_to_client(&mut self, bytes: &[u8]) {
        let from = self.server_addr;
        match self.client.handle_packet(self.now, from, bytes) {
            Handled::Data { peer, data } => self.delivered.push((peer, data.to_vec())),
            Handled::Consumed => {}
            Handled::NotOurs => panic!("client refused a datagram from its server"),
        }
    }

    fn deliver_to_server(&mut self, bytes: &[u8]) {
        self.sent.push(bytes.to_vec());
        if self.blackhole {
            return;
        }
        if self.drop_to_server > 0 {
            self.drop_to_server -= 1;
            return;
        }
        let mut out = vec![0u8; 2048];
        let client = self.client.local();
        match self
            .server
            .handle(self.now, LISTEN, client, bytes, &mut out, &mut self.ports)
        {
            Outcome::Reply(n) => {
                let success = Message::parse(&out[..n]).is_ok_and(|m| m.class() == Class::Success);
                if success && self.drop_successes > 0 {
                    self.drop_successes -= 1;
                } else {
                    self.deliver_to_client(&out[..n]);
                }
            }
            Outcome::Send { to, len, .. } => self.to_peers.push((to, out[..len].to_vec())),
            Outcome::Later | Outcome::Drop(_) => {}
        }
    }

    /// Runs timers and exchanges until quiet at the current time.
    fn pump(&mut self) {
        let mut buf = [0u8; 1500];
        for _ in 0..100 {
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                self.client.handle_timeout(self.now);
            }
            self.server.handle_timeout(self.now, &mut self.ports);
            let Some(t) = self.client.poll_transmit(self.now, &mut buf) else {
                break;
            };
            assert_eq!(t.destination, self.server_addr);
            let bytes = buf[..t.size].to_vec();
            self.deliver_to_server(&bytes);
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
    }

    /// Advances the clock to `t0 + ms`, stepping through every timer on the way.
    fn run_until(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        self.pump();
        loop {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|&t| t > self.now)
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = t;
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = end;
        self.pump();
    }

    fn send(&mut self, peer: SocketAddr, data: &[u8]) -> bool {
        let mut buf = [0u8; 1500];
        match self.client.send_to(peer, data, &mut buf, self.now).unwrap() {
            Some(t) => {
                let bytes = buf[..t.size].to_vec();
                self.deliver_to_server(&bytes);
                self.pump();
                true
            }
            None => {
                self.pump();
                false
            }
        }
    }

    /// A peer sends `data` to the relayed address.
    fn peer_sends(&mut self, peer: SocketAddr, data: &[u8]) {
        let relayed = self.client.relayed().expect("allocated");
        let (sock, _) = *self
            .ports
            .opened
            .iter()
            .find(|(_, a)| *a == relayed)
            .expect("relay socket");
        let mut out = vec![0u8; 2048];
        match self
            .server
            .handle(self.now, sock, peer, data, &mut out, &mut self.ports)
        {
            Outcome::Send { to, len, .. } => {
                assert_eq!(to, self.client.local());
                self.deliver_to_client(&out[..len]);
            }
            o => panic!("relay did not forward the peer's datagram: {o:?}"),
        }
    }

    fn allocated(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Allocated {
                relayed, mapped, ..
            } => Some((*relayed, *mapped)),
            _ => None,
        })
    }
}

#[test]
fn allocate_after_401_with_sha256_as_the_server_offers() {
    let mut n = Net::new("secret", |_| {});
    n.run_until(0);
    let (relayed, mapped) = n.allocated().expect("allocated");
    assert_eq!(relayed, n.ports.opened[0].1);
    assert_eq!(mapped, CLIENT.parse().unwrap());
    assert_eq!(n.client.password_algorithm(), Some(PasswordAlg::Sha256));
    assert_eq!(n.server.allocations(), 1);
    // Unauthenticated first, then one authenticated Allocate.
    assert_eq!(n.client.stats().requests_sent, 2);
    let second = Message::parse(&n.sent[1]).unwrap();
    assert!(second.integrity_sha256_offset().is_some());
    assert!(second.get(attr::PASSWORD_ALGORITHM).is_some());
}

#[test]
fn wrong_password_fails_with_unauthorized() {
    let mut n = Net::new("wrong", |_| {});
    n.run_until(0);
    assert_eq!(
        n.events,
        [ClientEvent::Failed(ClientError::Unauthorized("Allocate"))]
    );
    assert!(n.client.is_finished());
    assert_eq!(n.server.allocations(), 0);
}

#[test]
fn lost_requests_are_retransmitted_with_doubling_rto() {
    let mut n = Net::new("secret", |_| {});
    n.drop_to_server = 2; // the first Allocate and its first retransmission (500 ms)
    n.run_until(0);
    assert!(n.allocated().is_none());
    n.run_until(1_499);
    assert!(n.allocated().is_none(), "the third send is due at 1.5 s");
    n.run_until(1_500);
    assert!(n.allocated().is_some());
    assert_eq!(n.client.stats().retransmits, 2);
    assert_eq!(n.sent.len(), 4, "3 unauthenticated sends, 1 authenticated");
}

#[test]
fn lost_allocate_success_is_recovered_after_the_437() {
    // The server allocates but its answer is lost; it does not recognise the
    // retransmission and answers 437. The client deletes the orphan and allocates again.
    let mut n = Net::new("secret", |_| {});
    n.drop_successes = 1;
    n.run_until(0);
    assert!(n.allocated().is_none());
    assert_eq!(n.server.allocations(), 1, "the orphan");
    n.run_until(500);
    let (relayed, _) = n.allocated().expect("allocated after the reset");
    assert_eq!(n.server.allocations(), 1);
    assert_eq!(n.ports.opened.len(), 2);
    assert_eq!(n.ports.closed, [n.ports.opened[0].0]);
    assert_eq!(relayed, n.ports.opened[1].1);
    let methods: Vec<_> = n
        .sent
        .iter()
        .map(|b| Message::parse(b).unwrap().method())
        .collect();
    assert_eq!(
        methods,
        [
            Method::ALLOCATE,
            Method::ALLOCATE,
            Method::ALLOCATE,
            Method::REFRESH,
            Method::ALLOCATE
        ]
    );
}

#[test]
fn silent_server_times_out_after_seven_sends() {
    let mut n = Net::new("secret", |_| {});
    n.blackhole = true;
    n.run_until(39_000);
    assert!(n.events.is_empty());
    n.run_until(39_500);
    assert_eq!(
        n.events,
        [ClientEvent::Failed(ClientError::Timeout("Allocate"))]
    );
    assert_eq!(n.sent.len(), 7);
    assert_eq!(n.client.poll_timeout(), None);
}

#[test]
fn permission_indications_then_channel_both_ways() {
    let mut n = Net::new("secret", |_| {});
    n.run_until(0);
    let peer: SocketAddr = PEER.parse().unwrap();
    // No permission yet: nothing is sent, a CreatePermission starts.
    assert!(!n.send(peer, b"early"));
    assert!(
        n.events
            .contains(&ClientEvent::PermissionCreated(peer.ip()))
    );
    assert!(n.client.has_permission(peer.ip()));
    // Send indication → the relay sends the payload to the peer.
    assert!(n.send(peer, b"one"));
    assert_eq!(n.sent.last().unwrap()[..2], [0x00, 0x16]);
    assert_eq!(n.to_peers, [(peer, b"one".to_vec())]);
    // Peer → relay → Data indication → delivered.
    n.peer_sends(peer, b"back one");
    assert_eq!(n.delivered, [(peer, b"back one".to_vec())]);
    // Channel: ChannelData both ways afterwards.
    let ch = n.client.bind_channel(peer, n.now).unwrap();
    n.pump();
    assert!(
        n.events
            .contains(&ClientEvent::ChannelBound { peer, channel: ch })
    );
    assert!(n.send(peer, b"two"));
    assert_eq!(n.sent.last().unwrap()[..2], ch.to_be_bytes());
    assert_eq!(n.to_peers[1], (peer, b"two".to_vec()));
    n.peer_sends(peer, b"back two");
    assert_eq!(n.delivered[1], (peer, b"back two".to_vec()));
    assert_eq!(n.client.stats().channel_data_sent, 1);
    assert_eq!(n.client.stats().indications_sent, 1);
    assert_eq!(n.server.stats().relayed_to_peer, 2);
}

#[test]
fn stale_nonce_is_retried_and_refreshes_keep_everything_alive() {
    // Nonces live 30 s, permissions 300 s, allocations 600 s: after an hour every
    // refresh met a stale nonce first and the allocation, permission and channel live.
    let mut n = Net::new("secret", |c| c.nonce_lifetime = 30);
    n.run_until(0);
    let peer: SocketAddr = PEER.parse().unwrap();
    n.client.create_permission(peer, n.now);
    n.run_until(100);
    let ch = n.client.bind_channel(peer, n.now).unwrap();
    n.run_until(1_000);
    assert!(
        n.events
            .contains(&ClientEvent::ChannelBound { peer, channel: ch })
    );
    n.run_until(3_600_000);
    assert!(n.client.is_allocated(), "{:?}", n.events);
    assert_eq!(n.server.allocations(), 1);
    let refreshes = n
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Refreshed { lifetime: 600 }))
        .count();
    assert!(refreshes >= 6, "{refreshes} refreshes in an hour");
    assert!(n.client.stats().stale_nonces > 6);
    // Permission and channel were refreshed too: data still flows both ways.
    assert!(n.send(peer, b"late"));
    assert_eq!(n.to_peers.last().unwrap(), &(peer, b"late".to_vec()));
    n.peer_sends(peer, b"late back");
    assert_eq!(n.delivered.last().unwrap(), &(peer, b"late back".to_vec()));
    assert!(
        !n.events
            .iter()
            .any(|e| matches!(e, ClientEvent::RequestFailed(_) | ClientEvent::Failed(_)))
    );
}

#[test]
fn refused_permission_is_a_request_failure_not_the_end() {
    let mut n = Net::new("secret", |_| {});
    n.run_until(0);
    // A documentation address: the relay's peer policy answers 403.
    let peer: SocketAddr = "203.0.113.9:7000".parse().unwrap();
    assert!(!n.send(peer, b"x"));
    assert!(
        n.events.iter().any(|e| matches!(
            e,
            ClientEvent::RequestFailed(ClientError::Refused { code: 403, .. })
        )),
        "{:?}",
        n.events
    );
    assert!(n.client.is_allocated());
    assert!(!n.client.has_permission(peer.ip()));
    // Refused once, not asked again: more data is dropped without new requests.
    let requests = n.client.stats().requests_sent;
    assert!(!n.send(peer, b"y"));
    n.run_until(600_000);
    assert_eq!(
        n.client.stats().requests_sent - requests,
        1,
        "only the Refresh at 540 s"
    );
    assert_eq!(n.client.stats().dropped_no_permission, 2);
}

#[test]
fn close_deletes_the_allocation() {
    let mut n = Net::new("secret", |_| {});
    n.run_until(0);
    assert_eq!(n.server.allocations(), 1);
    n.client.close(n.now);
    n.pump();
    assert_eq!(n.events.last(), Some(&ClientEvent::Closed));
    assert_eq!(n.server.allocations(), 0);
    assert_eq!(n.ports.closed.len(), 1);
    let last = Message::parse(n.sent.last().unwrap()).unwrap();
    assert_eq!(last.method(), Method::REFRESH);
    assert_eq!(last.lifetime(), Some(0));
    assert_eq!(n.client.poll_timeout(), None);
}

#[test]
fn datagrams_from_elsewhere_or_unknown_channels_are_not_delivered() {
    let mut n = Net::new("secret", |_| {});
    n.run_until(0);
    let mut cd = [0u8; 16];
    let len = ChannelData {
        channel: 0x4321,
        data: b"x",
    }
    .encode(&mut cd, false)
    .unwrap();
    let other: SocketAddr = "192.0.2.99:3478".parse().unwrap();
    assert_eq!(
        n.client.handle_packet(n.now, other, &cd[..len]),
        Handled::NotOurs
    );
    assert_eq!(
        n.client.handle_packet(n.now, n.server_addr, &cd[..len]),
        Handled::Consumed
    );
    assert_eq!(n.client.stats().dropped, 1);
    for junk in [&[][..], &[0xFF, 1, 2], &[0, 1, 0, 0]] {
        assert_eq!(
            n.client.handle_packet(n.now, n.server_addr, junk),
            Handled::NotOurs
        );
    }
}

#[test]
fn binding_client_learns_the_mapped_address_through_loss() {
    let t0 = Instant::now();
    let mut server = Server::new(ServerConfig::default());
    let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let local: SocketAddr = "10.0.0.2:4000".parse().unwrap();
    let mapped: SocketAddr = "198.51.100.20:61000".parse().unwrap();
    let mut b = BindingClient::new(server_addr, local, Retransmit::default(), 7, t0);
    let mut buf = [0u8; 64];
    let mut out = [0u8; 256];
    let mut now = t0;
    let mut sends = 0;
    while !b.is_done() {
        b.handle_timeout(now);
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            sends += 1;
            if sends < 3 {
                continue; // lost
            }
            // The NAT rewrites the source to `mapped`.
            if let Outcome::Reply(n) = server.handle(
                now,
                LISTEN,
                mapped,
                &buf[..t.size],
                &mut out,
                &mut crate::turn::server::NoPorts,
            ) {
                assert!(b.handle_packet(server_addr, &out[..n]));
            }
        }
        now = b.poll_timeout().unwrap_or(now);
    }
    assert_eq!(sends, 3);
    assert_eq!(b.poll_event(), Some(BindingEvent::Mapped(mapped)));
    assert_eq!(b.poll_event(), None);
}

#[test]
fn binding_client_times_out_without_answers() {
    let t0 = Instant::now();
    let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let rt = Retransmit {
        rto: Duration::from_millis(100),
        max_sends: 3,
        last_wait: 4,
        ..Retransmit::default()
    };
    let mut b = BindingClient::new(server_addr, "10.0.0.2:4000".parse().unwrap(), rt, 7, t0);
    let mut buf = [0u8; 64];
    let mut now = t0;
    let mut sends = Vec::new();
    while !b.is_done() {
        b.handle_timeout(now);
        while b.poll_transmit(now, &mut buf).is_some() {
            sends.push((now - t0).as_millis());
        }
        now = b.poll_timeout().unwrap_or(now);
    }
    assert_eq!(sends, [0, 100, 300]);
    assert_eq!((now - t0).as_millis(), 700);
    assert_eq!(
        b.poll_event(),
        Some(BindingEvent::Failed(ClientError::Timeout("Binding")))
    );
}

/// Every single-byte corruption of the server's real 401 and Allocate success: no panic,
/// and no corruption of the integrity-protected part is ever accepted. (Bytes after
/// MESSAGE-INTEGRITY-SHA256 are FINGERPRINT: a bad value is caught, a changed type makes
/// it an unknown attribute after the integrity, which RFC 8489 §14.6 says to ignore — the
/// protected content is intact then, and the result must be the genuine one.)
#[test]
fn corrupted_server_answers_never_panic_or_allocate() {
    // Record the genuine exchange once.
    let mut n = Net::new("secret", |_| {});
    let mut answers: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 1500];
    let mut out = vec![0u8; 2048];
    while let Some(t) = n.client.poll_transmit(n.now, &mut buf) {
        let client = n.client.local();
        let Outcome::Reply(len) = n.server.handle(
            n.now,
            LISTEN,
            client,
            &buf[..t.size],
            &mut out,
            &mut n.ports,
        ) else {
            panic!("server did not answer")
        };
        answers.push(out[..len].to_vec());
        n.deliver_to_client(&out[..len]);
    }
    assert_eq!(answers.len(), 2, "401 then success");
    assert!(n.client.is_allocated());

    let genuine_relayed = n.client.relayed();
    for (which, genuine) in answers.iter().enumerate() {
        let g = Message::parse(genuine).unwrap();
        let protected_end = g
            .integrity_sha256_offset()
            .map(|o| o + 36)
            .or(g.integrity_offset().map(|o| o + 24))
            .unwrap_or(genuine.len());
        // A fresh client in the state the genuine answer met (same seed, same
        // transaction ids, so the recorded answers match its requests).
        let replay = || {
            let mut m = Net::new("secret", |_| {});
            let mut b = [0u8; 1500];
            for _ in 0..which {
                m.client.poll_transmit(m.now, &mut b).unwrap();
                m.deliver_to_client(&answers[0]);
            }
            m.client.poll_transmit(m.now, &mut b).unwrap();
            m
        };
        // Uncorrupted, the replay does what the genuine exchange did.
        let mut m = replay();
        m.deliver_to_client(genuine);
        assert_eq!(m.client.is_allocated(), which == 1);
        for at in 0..genuine.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut m = replay();
                let mut bad = genuine.clone();
                bad[at] ^= flip;
                let _ = m.client.handle_packet(m.now, m.server_addr, &bad);
                if at < protected_end {
                    while let Some(e) = m.client.poll_event() {
                        assert!(
                            !matches!(e, ClientEvent::Allocated { .. }),
                            "answer {which} byte {at} ^ {flip:#x} accepted"
                        );
                    }
                    assert!(!m.client.is_allocated());
                } else if m.client.is_allocated() {
                    assert_eq!(m.client.relayed(), genuine_relayed);
                }
            }
        }
    }
}
