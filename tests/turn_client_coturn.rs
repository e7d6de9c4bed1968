//! icering's sans-IO TURN client (`icering::turn::client`) against coturn's `turnserver` on
//! loopback, over UDP and over TCP (stream framing), driven by std sockets here: allocate
//! (401 → authenticated), permission, data via Send indication then via a channel,
//! data from a real peer socket both ways, refresh (coturn's lifetime capped at 5 s and
//! its nonces made stale after 3 s, so refreshes meet 438), and deallocation.
//!
//! Skipped, saying so, when coturn is not installed; under `CI` that is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use icering::net::Protocol;
use icering::turn::client::stream::StreamDecoder;
use icering::turn::client::{Client, ClientConfig, ClientEvent, Handled};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const RELAY_PORTS: (u16, u16) = (46400, 46499);

fn coturn(port: u16) -> Option<common::Killed> {
    common::coturn(
        "the coturn client interop",
        port,
        RELAY_PORTS,
        &[
            &format!("--listening-port={port}"),
            "--max-allocate-lifetime=5",
            "--stale-nonce=3",
            "--no-tls",
            "--no-dtls",
        ],
    )
}

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream, StreamDecoder),
}

/// The client on a std socket, with what it reported.
struct Driver {
    client: Client,
    link: Link,
    events: Vec<ClientEvent>,
    data: Vec<(SocketAddr, Vec<u8>)>,
    /// First byte of every datagram/frame sent to the server.
    sent_kinds: Vec<u8>,
}

impl Driver {
    fn new(server: SocketAddr, transport: Protocol) -> Driver {
        let (link, local) = match transport {
            Protocol::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                let l = s.local_addr().unwrap();
                (Link::Udp(s), l)
            }
            Protocol::Tcp => {
                let s = TcpStream::connect(server).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                s.set_nodelay(true).unwrap();
                let l = s.local_addr().unwrap();
                (Link::Tcp(s, StreamDecoder::default()), l)
            }
        };
        let mut cfg = ClientConfig::new(server, local, "alice", "secret");
        cfg.transport = transport;
        cfg.lifetime = Some(600);
        cfg.seed = u64::from(std::process::id());
        Driver {
            client: Client::new(cfg, Instant::now()),
            link,
            events: Vec::new(),
            data: Vec::new(),
            sent_kinds: Vec::new(),
        }
    }

    fn transmit(&mut self, bytes: &[u8]) {
        self.sent_kinds.push(bytes[0]);
        let server = self.client.server();
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(bytes, server).unwrap();
            }
            Link::Tcp(s, _) => s.write_all(bytes).unwrap(),
        }
    }

    fn handle(&mut self, frame: &[u8]) {
        let server = self.client.server();
        match self.client.handle_packet(Instant::now(), server, frame) {
            Handled::Data { peer, data } => self.data.push((peer, data.to_vec())),
            Handled::Consumed => {}
            Handled::NotOurs => panic!("client refused a message from coturn: {frame:02x?}"),
        }
    }

    /// One round: timers, sends, one read.
    fn step(&mut self) {
        let now = Instant::now();
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        let mut buf = [0u8; 1500];
        while let Some(t) = self.client.poll_transmit(now, &mut buf) {
            self.transmit(&buf[..t.size]);
        }
        let mut rbuf = [0u8; 2048];
        match &mut self.link {
            Link::Udp(s) => {
                if let Ok((n, from)) = s.recv_from(&mut rbuf) {
                    assert_eq!(from, self.client.server());
                    let frame = rbuf[..n].to_vec();
                    self.handle(&frame);
                }
            }
            Link::Tcp(s, dec) => {
                if let Ok(n) = s.read(&mut rbuf) {
                    assert!(n > 0, "coturn closed the TCP connection");
                    dec.push(&rbuf[..n]);
                }
                let mut frames = Vec::new();
                while let Some(f) = dec.next_frame() {
                    frames.push(f.expect("coturn's stream is framed").to_vec());
                }
                for f in frames {
                    self.handle(&f);
                }
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.events.push(e);
        }
    }

    /// Steps until `done` holds (10 s limit).
    fn until(&mut self, what: &str, done: impl Fn(&Driver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events {:?}; stats {:?}",
                self.events,
                self.client.stats()
            );
            self.step();
        }
    }

    fn send(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut buf = [0u8; 1500];
        let t = self
            .client
            .send_to(peer, data, &mut buf, Instant::now())
            .unwrap()
            .expect("permission installed");
        self.transmit(&buf[..t.size]);
    }
}

/// What the peer socket receives next (from the relayed address).
fn peer_recv(peer: &UdpSocket) -> (SocketAddr, Vec<u8>) {
    let mut b = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut b).expect("peer receives relayed data");
    (from, b[..n].to_vec())
}

fn scenario(transport: Protocol) {
    let port = free_port();
    let Some(_coturn) = coturn(port) else {
        return;
    };
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut d = Driver::new(server, transport);
    d.until("Allocate", |d| d.client.is_allocated());
    let relayed = d.client.relayed().unwrap();
    assert!(
        (RELAY_PORTS.0..=RELAY_PORTS.1).contains(&relayed.port()),
        "{relayed}"
    );
    assert_eq!(d.client.mapped(), Some(d.client.local()));
    eprintln!(
        "coturn over {transport:?}: relayed {relayed}, password algorithm {:?}",
        d.client.password_algorithm()
    );
    assert!(matches!(
        d.events[0],
        ClientEvent::Allocated { lifetime: 5, .. }
    ));

    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    d.client.create_permission(peer_addr, Instant::now());
    d.until("CreatePermission", |d| {
        d.client.has_permission(peer_addr.ip())
    });

    // Send indication (0x0016) → peer.
    d.send(peer_addr, b"via indication");
    assert_eq!(*d.sent_kinds.last().unwrap(), 0x00);
    assert_eq!(peer_recv(&peer), (relayed, b"via indication".to_vec()));
    // Peer → Data indication → client.
    peer.send_to(b"reply one", relayed).unwrap();
    d.until("Data indication", |d| !d.data.is_empty());
    assert_eq!(d.data[0], (peer_addr, b"reply one".to_vec()));

    // Channel: ChannelData both ways (padded over TCP: 5 bytes of data, 8 on the wire).
    let ch = d.client.bind_channel(peer_addr, Instant::now()).unwrap();
    d.until("ChannelBind", |d| d.client.channel(peer_addr).is_some());
    d.send(peer_addr, b"chan!");
    assert_eq!(*d.sent_kinds.last().unwrap(), (ch >> 8) as u8);
    assert_eq!(peer_recv(&peer), (relayed, b"chan!".to_vec()));
    peer.send_to(b"reply two", relayed).unwrap();
    d.until("ChannelData", |d| d.data.len() >= 2);
    assert_eq!(d.data[1], (peer_addr, b"reply two".to_vec()));

    // Refresh: the 5 s lifetime is refreshed after 4 s, with a nonce coturn holds stale
    // after 3 s; the allocation outlives its first lifetime.
    d.until("Refresh", |d| {
        d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::Refreshed { .. }))
    });
    eprintln!("after refresh: {:?}", d.client.stats());
    let settle = Instant::now() + Duration::from_secs(2);
    d.until("two more seconds", |_| Instant::now() >= settle);
    assert!(d.client.is_allocated(), "{:?}", d.events);
    assert!(d.client.stats().stale_nonces >= 1, "{:?}", d.client.stats());
    peer.send_to(b"after refresh", relayed).unwrap();
    d.until("data after the refresh", |d| d.data.len() >= 3);
    assert_eq!(d.data[2], (peer_addr, b"after refresh".to_vec()));

    // Deallocate: Refresh with lifetime 0, answered.
    d.client.close(Instant::now());
    d.until("Closed", |d| d.events.last() == Some(&ClientEvent::Closed));
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::Failed(_) | ClientEvent::RequestFailed(_)))
    );
}

#[test]
fn coturn_over_udp() {
    scenario(Protocol::Udp);
}

#[test]
fn coturn_over_tcp() {
    scenario(Protocol::Tcp);
}
