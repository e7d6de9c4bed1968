//! The TURN client's data path allocates nothing: with a counting global allocator (per
//! thread, so the harness's threads do not interfere),
//! 2,000 round trips through our sans-IO server (client → `send_to` → relay → peer, peer →
//! relay → `handle_packet` → client), as Send/Data indications and then as ChannelData,
//! cost zero allocations once the allocation, permission and channel exist.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use icering::turn::client::{Client, ClientConfig, Handled};
use icering::turn::server::{
    OpenError, Outcome, PortWish, RelayPorts, Server, ServerConfig, Sock, TurnConfig,
};

struct Counting;

thread_local! {
    /// Allocations made by this thread (the test harness's own threads do not count).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LISTEN: Sock = Sock(0);
const RELAY: Sock = Sock(1);

struct OnePort;
impl RelayPorts for OnePort {
    fn open(&mut self, ip: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        Ok((RELAY, SocketAddr::new(ip, 50000)))
    }
    fn close(&mut self, _: Sock) {}
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

/// Runs the client's requests through the server until nothing is due.
fn settle(client: &mut Client, server: &mut Server, now: Instant) {
    let mut buf = [0u8; 1500];
    let mut out = [0u8; 1500];
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        if let Outcome::Reply(n) = server.handle(
            now,
            LISTEN,
            t.source,
            &buf[..t.size],
            &mut out,
            &mut OnePort,
        ) {
            client.handle_packet(now, t.destination, &out[..n]);
        }
    }
    while client.poll_event().is_some() {}
}

/// `n` round trips of a 32-byte payload; returns how many came back to the client intact.
fn round_trips(
    client: &mut Client,
    server: &mut Server,
    now: Instant,
    peer: SocketAddr,
    n: u32,
) -> u32 {
    let server_addr = client.server();
    let payload = b"0123456789abcdef0123456789abcdef";
    let (mut buf, mut out, mut back) = ([0u8; 1500], [0u8; 1500], [0u8; 1500]);
    let mut ok = 0;
    for _ in 0..n {
        let t = client
            .send_to(peer, payload, &mut buf, now)
            .unwrap()
            .unwrap();
        let Outcome::Send { to, len, .. } = server.handle(
            now,
            LISTEN,
            t.source,
            &buf[..t.size],
            &mut out,
            &mut OnePort,
        ) else {
            panic!("not relayed")
        };
        assert_eq!((to, &out[..len]), (peer, &payload[..]));
        // The peer echoes it to the relayed address.
        let Outcome::Send { len, .. } =
            server.handle(now, RELAY, peer, &out[..len], &mut back, &mut OnePort)
        else {
            panic!("not relayed back")
        };
        if let Handled::Data { peer: p, data } =
            client.handle_packet(now, server_addr, &back[..len])
            && p == peer
            && data == payload
        {
            ok += 1;
        }
    }
    ok
}

#[test]
fn data_path_does_not_allocate() {
    let now = Instant::now();
    let mut cfg = TurnConfig::new(now, 1_700_000_000, [1; 32]);
    cfg.users = vec![("alice".into(), "secret".into())];
    cfg.relay_ips = vec!["192.0.2.1".parse().unwrap()];
    cfg.policy.allow_private = true;
    let mut server = Server::new(ServerConfig {
        software: String::new(),
        turn: Some(cfg),
    });
    let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let local: SocketAddr = "198.51.100.7:5000".parse().unwrap();
    let peer: SocketAddr = "10.1.2.3:7000".parse().unwrap();
    let mut client = Client::new(
        ClientConfig::new(server_addr, local, "alice", "secret"),
        now,
    );
    settle(&mut client, &mut server, now);
    assert!(client.is_allocated());
    client.create_permission(peer, now);
    settle(&mut client, &mut server, now);
    assert!(client.has_permission(peer.ip()));

    // Indications: warm up, then count.
    assert_eq!(round_trips(&mut client, &mut server, now, peer, 100), 100);
    let before = allocs();
    assert_eq!(round_trips(&mut client, &mut server, now, peer, 2000), 2000);
    let indications = allocs() - before;

    // The counter does count: binding a channel (control plane) allocates.
    let before = allocs();
    client.bind_channel(peer, now).unwrap();
    settle(&mut client, &mut server, now);
    assert!(client.channel(peer).is_some());
    assert!(allocs() > before);
    assert_eq!(round_trips(&mut client, &mut server, now, peer, 100), 100);
    let before = allocs();
    assert_eq!(round_trips(&mut client, &mut server, now, peer, 2000), 2000);
    let channel = allocs() - before;
    assert_eq!(client.stats().channel_data_sent, 2100);

    assert_eq!(
        (indications, channel),
        (0, 0),
        "allocations in 2,000 round trips (indications, channel)"
    );
}
