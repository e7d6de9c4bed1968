//! State per TURN allocation: a counting global allocator around the sans-IO server (no
//! sockets, a fake `RelayPorts`) while 10,000 authenticated allocations are created, each
//! with one permission and one channel. The live heap delta divided by the count is the
//! footprint per allocation, growth slack of the shared tables included.
//!
//! Run with `cargo test --release --test turn_footprint -- --nocapture` to see the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Instant;

use icering::stun::{
    Class, IntegrityKey, Message, MessageType, MessageWriter, Method, attr, long_term_key_md5,
};
use icering::turn::server::{
    OpenError, Outcome, PortWish, RelayPorts, Server, ServerConfig, Sock, TurnConfig,
};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator, only counting live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Hands out fake socket ids, at most `limit` per relay address; binds nothing.
struct FakePorts {
    opened: u32,
    limit: u32,
    per_ip: Vec<(IpAddr, u32)>,
}

impl RelayPorts for FakePorts {
    fn open(&mut self, ip: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        let i = match self.per_ip.iter().position(|(a, _)| *a == ip) {
            Some(i) => i,
            None => {
                self.per_ip.push((ip, 0));
                self.per_ip.len() - 1
            }
        };
        if self.per_ip[i].1 == self.limit {
            return Err(OpenError::Exhausted);
        }
        self.per_ip[i].1 += 1;
        self.opened += 1;
        let n = self.opened;
        Ok((
            Sock(1000 + n),
            SocketAddr::new(ip, 1024 + (n % 60000) as u16),
        ))
    }
    fn close(&mut self, _: Sock) {}
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

const LISTEN: Sock = Sock(0);

struct Client {
    server: Server,
    ports: FakePorts,
    key: IntegrityKey,
    now: Instant,
    out: Vec<u8>,
}

impl Client {
    fn new(limit: u32, relay_ips: &[&str]) -> Self {
        let now = Instant::now();
        let mut cfg = TurnConfig::new(now, 1_700_000_000, [9; 32]);
        cfg.relay_ips = relay_ips.iter().map(|ip| ip.parse().unwrap()).collect();
        cfg.users = vec![("alice".into(), "pw".into())];
        cfg.policy.allow_private = true;
        Client {
            server: Server::new(ServerConfig {
                software: String::new(),
                turn: Some(cfg),
            }),
            ports: FakePorts {
                opened: 0,
                limit,
                per_ip: Vec::new(),
            },
            key: IntegrityKey::new(&long_term_key_md5("alice", "icering", "pw")),
            now,
            out: vec![0; 2048],
        }
    }

    /// Sends one request from `from`; returns (error code, NONCE of the answer).
    fn request(
        &mut self,
        from: SocketAddr,
        method: Method,
        nonce: Option<&str>,
        attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), icering::stun::StunError>,
    ) -> (Option<u16>, Option<String>) {
        let mut buf = [0u8; 512];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), &[3; 12])
                .unwrap();
        attrs(&mut w).unwrap();
        if let Some(n) = nonce {
            w.add_raw(attr::USERNAME, b"alice").unwrap();
            w.add_raw(attr::REALM, b"icering").unwrap();
            w.add_raw(attr::NONCE, n.as_bytes()).unwrap();
            w.add_message_integrity(&self.key).unwrap();
        }
        let n = w.finish();
        let o = self.server.handle(
            self.now,
            LISTEN,
            from,
            &buf[..n],
            &mut self.out,
            &mut self.ports,
        );
        let Outcome::Reply(len) = o else {
            panic!("{method:?} from {from}: {o:?}");
        };
        let m = Message::parse(&self.out[..len]).unwrap();
        (
            m.error_code().map(|e| e.code),
            m.nonce().map(str::to_string),
        )
    }

    fn allocate(&mut self, from: SocketAddr, nonce: Option<&str>) -> (Option<u16>, Option<String>) {
        self.request(from, Method::ALLOCATE, nonce, &|w| {
            w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        })
    }

    /// An authenticated allocation from `from` with one permission and one channel.
    fn full_allocation(&mut self, from: SocketAddr) {
        let (code, nonce) = self.allocate(from, None);
        assert_eq!(code, Some(401));
        let nonce = nonce.unwrap();
        assert_eq!(self.allocate(from, Some(&nonce)).0, None);
        let (c, _) = self.request(from, Method::CREATE_PERMISSION, Some(&nonce), &|w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, "10.0.0.1:7000".parse().unwrap())
        });
        assert_eq!(c, None);
        let (c, _) = self.request(from, Method::CHANNEL_BIND, Some(&nonce), &|w| {
            w.add_raw(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, "10.0.0.2:7000".parse().unwrap())
        });
        assert_eq!(c, None);
    }
}

fn client_addr(i: u32) -> SocketAddr {
    // 192.0.2.0/24 × ports: distinct 5-tuples.
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i / 50_000) as u8 + 1)),
        10_000 + (i % 50_000) as u16,
    )
}

#[test]
fn ten_thousand_allocations_fit_in_a_kibibyte_each() {
    const N: u32 = 10_000;
    let mut c = Client::new(u32::MAX, &["127.0.0.1"]);
    // Warm up: lazy first-use allocations.
    c.full_allocation(client_addr(N));
    let before = LIVE.load(Relaxed);
    for i in 0..N {
        c.full_allocation(client_addr(i));
    }
    let after = LIVE.load(Relaxed);
    assert_eq!(c.server.allocations(), N as usize + 1);
    let per = (after - before) as f64 / f64::from(N);
    println!(
        "turn footprint: {N} allocations (1 permission + 1 channel each): {} heap bytes, \
         {per:.0} B/allocation; size_of::<Allocation>() = {} B",
        after - before,
        Server::allocation_struct_size()
    );
    assert!(per <= 1024.0, "{per:.0} bytes per allocation");
}

/// Two relay addresses with two ports each: allocations rotate over both addresses, and
/// the fifth Allocate, with every range exhausted, gets 508 and is counted.
#[test]
fn exhausted_port_ranges_answer_508_after_every_relay_address() {
    let mut c = Client::new(2, &["127.0.0.2", "::1", "127.0.0.3"]);
    for i in 0..4 {
        c.full_allocation(client_addr(i));
    }
    let per_ip: Vec<_> = c
        .ports
        .per_ip
        .iter()
        .map(|&(ip, n)| (ip.to_string(), n))
        .collect();
    assert_eq!(
        per_ip,
        [("127.0.0.2".to_string(), 2), ("127.0.0.3".to_string(), 2)]
    );
    let from = client_addr(4);
    let (_, nonce) = c.allocate(from, None);
    assert_eq!(c.allocate(from, nonce.as_deref()).0, Some(508));
    assert_eq!(c.server.allocations(), 4);
    assert_eq!(c.server.stats().relay_open_failures, 1);
}
