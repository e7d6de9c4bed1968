//! STUN and TURN over TCP (RFC 8656 §3.1, §12.5; RFC 8489 §6.2.2) against the relay
//! in-process: framing across reads, ChannelData padding, the allocation ending with its
//! connection, and a broken stream closing only itself.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::turn::{Relayed, TurnClient, peer, peer_recv};
use icering::config::{Config, IoBackendChoice};
use icering::io::{self, BackendChoice};
use icering::shard::Runtime;
use icering::stun::{Class, Message, MessageType, MessageWriter, Method};

fn backends() -> Vec<IoBackendChoice> {
    let mut v = vec![IoBackendChoice::Portable];
    match io::select_backend(BackendChoice::Uring) {
        Ok(_) => v.push(IoBackendChoice::Uring),
        Err(e) => eprintln!("skipping the uring backend here: {e}"),
    }
    v
}

fn start(backend: IoBackendChoice, shards: usize) -> (Runtime, SocketAddr) {
    start_with(backend, shards, |_| {})
}

fn start_with(
    backend: IoBackendChoice,
    shards: usize,
    tweak: impl FnOnce(&mut Config),
) -> (Runtime, SocketAddr) {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = shards;
    c.io.backend = backend;
    c.turn.users = vec!["alice:secret".into(), "bob:hunter2".into()];
    c.turn.allow_loopback_peers = true;
    c.turn.min_port = 44000;
    c.turn.max_port = 44999;
    tweak(&mut c);
    let rt = Runtime::start(&c).expect("runtime starts");
    let addr = rt.local_addrs()[0];
    (rt, addr)
}

/// Waits (up to 5 s) until `cond` holds on the runtime's counters.
fn eventually(
    rt: &Runtime,
    what: &str,
    cond: impl Fn(&icering::turn::server::ServerStats) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = rt.stats();
        if cond(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relay_flow_over_tcp_with_each_backend() {
    for backend in backends() {
        let (rt, server) = start(backend, 2);
        let mut c = TurnClient::new_tcp(server, "alice", "secret");
        let relay = c.allocate_ok(); // checks XOR-MAPPED-ADDRESS = the TCP client address
        let p = peer();
        let paddr = p.local_addr().unwrap();
        assert!(c.create_permission(paddr).is_success());

        c.send_indication(paddr, b"odd-sized");
        let (from, data) = peer_recv(&p).expect("peer receives the Send indication");
        assert_eq!((from, data.as_slice()), (relay, &b"odd-sized"[..]));
        p.send_to(b"back", relay).unwrap();
        assert_eq!(
            c.recv_relayed(),
            Some(Relayed::Data(paddr, b"back".to_vec()))
        );

        assert!(c.channel_bind(0x4001, paddr).is_success());
        // ChannelData of every length modulo 4, both ways: padded on the stream.
        for len in [1usize, 2, 3, 4, 5, 7, 100, 1001] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            c.send_channel_data(0x4001, &payload);
            let (_, d) = peer_recv(&p).expect("peer receives ChannelData payload");
            assert_eq!(d, payload, "client → peer, {len} bytes");
            p.send_to(&payload, relay).unwrap();
            assert_eq!(
                c.recv_relayed(),
                Some(Relayed::Channel(0x4001, payload.clone())),
                "peer → client, {len} bytes"
            );
        }
        for i in 0..200u32 {
            c.send_channel_data(0x4001, &i.to_be_bytes()[1..]);
        }
        for i in 0..200u32 {
            let (_, d) = peer_recv(&p).expect("all 200 arrive");
            assert_eq!(d, &i.to_be_bytes()[1..]);
        }

        // The allocation lives as long as its connection.
        eventually(&rt, "one allocation", |s| s.allocations_created == 1);
        drop(c);
        eventually(&rt, "allocation ends with the connection", |s| {
            s.allocations_ended == 1
        });
        p.send_to(b"after close", relay).unwrap();
        rt.shutdown().unwrap();
    }
}

#[test]
fn binding_over_tcp_split_byte_by_byte() {
    let (rt, server) = start(IoBackendChoice::Auto, 1);
    let mut c = TurnClient::new_tcp(server, "alice", "secret");
    let mut buf = [0u8; 256];
    let tid = [9u8; 12];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        &tid,
    )
    .unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    // Two requests, the bytes trickling in one at a time.
    for _ in 0..2 {
        for b in &buf[..n] {
            c.stream().write_all(std::slice::from_ref(b)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let answer = c.recv_raw().expect("a Binding response over TCP");
        let m = Message::parse(&answer).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.transaction_id(), &tid);
        assert_eq!(m.xor_mapped_address().unwrap().unwrap(), c.local());
    }
    rt.shutdown().unwrap();
}

#[test]
fn garbage_on_a_stream_closes_only_that_stream() {
    let (rt, server) = start(IoBackendChoice::Auto, 1);
    let mut good_tcp = TurnClient::new_tcp(server, "alice", "secret");
    let relay = good_tcp.allocate_ok();
    let mut good_udp = TurnClient::new(server, "bob", "hunter2");
    let udp_relay = good_udp.allocate_ok();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    assert!(good_tcp.channel_bind(0x4002, paddr).is_success());
    assert!(good_udp.channel_bind(0x4003, paddr).is_success());

    for junk in [
        &[0xFFu8; 64][..],                                 // not STUN, not ChannelData
        &[0xC0, 0x00, 0x00, 0x04, 1, 2, 3, 4],             // first bits 11: neither
        &[0x00, 0x01, 0x00, 0x03, 0x21, 0x12, 0xA4, 0x42], // unaligned STUN length
        &[
            0x00, 0x01, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ], // bad cookie
    ] {
        let mut bad = TcpStream::connect(server).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        bad.write_all(junk).unwrap();
        // The server closes it: the read sees EOF (or a reset), not a timeout.
        let mut b = [0u8; 16];
        match std::io::Read::read(&mut bad, &mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("stream with {junk:02x?} not closed: {other:?}"),
        }
    }
    // A connection that opens and closes at once, and one that stops mid-frame.
    drop(TcpStream::connect(server).unwrap());
    TcpStream::connect(server)
        .unwrap()
        .write_all(&[0x00, 0x01, 0x00])
        .unwrap();

    for (c, relay, ch) in [
        (&mut good_tcp, relay, 0x4002u16),
        (&mut good_udp, udp_relay, 0x4003),
    ] {
        c.send_channel_data(ch, b"still relayed");
        let (from, d) = peer_recv(&p).expect("the good allocations keep relaying");
        assert_eq!((from, d.as_slice()), (relay, &b"still relayed"[..]));
        p.send_to(b"and back", relay).unwrap();
        assert_eq!(
            c.recv_relayed(),
            Some(Relayed::Channel(ch, b"and back".to_vec()))
        );
    }
    eventually(&rt, "four malformed streams counted", |s| {
        s.dropped_malformed >= 4
    });
    rt.shutdown().unwrap();
}

/// `[server] max_allocate_timeout` (coturn's `max-allocate-timeout`): a connection that
/// holds no allocation when checked is closed (idle, STUN Binding only, or its allocation
/// deleted); one that holds an allocation stays open across checks.
#[test]
fn connections_without_an_allocation_are_closed_at_their_check() {
    let (rt, server) = start_with(IoBackendChoice::Auto, 2, |c| {
        c.server.max_allocate_timeout = 1;
    });
    let idle = TcpStream::connect(server).unwrap();
    let mut binding_only = TurnClient::new_tcp(server, "alice", "secret");
    let mut buf = [0u8; 64];
    let n = common::binding_request([3; 12], &mut buf);
    binding_only.stream().write_all(&buf[..n]).unwrap();
    assert!(
        binding_only.recv_raw().is_some(),
        "Binding answered over TCP"
    );
    let mut allocated = TurnClient::new_tcp(server, "bob", "hunter2");
    allocated.allocate_ok();

    let limit = Duration::from_secs(10);
    common::read_until_closed(&idle, limit).expect("the idle connection is closed");
    common::read_until_closed(binding_only.stream(), limit)
        .expect("the Binding-only connection is closed");
    // The allocated one was checked with them; two more checks pass while it waits.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        allocated.refresh(600).is_success(),
        "the connection with an allocation stays open"
    );
    let count = |rt: &Runtime| -> u64 {
        rt.shard_counters()
            .iter()
            .map(|c| {
                c.tcp_no_allocation_closed
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };
    assert_eq!(count(&rt), 2);

    // Its allocation deleted, it is closed at its next check.
    assert!(allocated.refresh(0).is_success());
    common::read_until_closed(allocated.stream(), limit)
        .expect("closed once its allocation is gone");
    let deadline = Instant::now() + limit;
    while count(&rt) < 3 {
        assert!(Instant::now() < deadline, "the third close is counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.shutdown().unwrap();
}

/// A client that stops reading while its peer keeps sending: the relay's writes to it
/// pile up past the stream's 256 KiB backlog and the stream is closed. Its allocation ends
/// then, on an otherwise idle shard, not at some later read of the stream set.
#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_allocation_ends() {
    let (rt, server) = start(IoBackendChoice::Auto, 1);
    let mut c = TurnClient::new_tcp(server, "alice", "secret");
    let relay = c.allocate_ok();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    assert!(c.channel_bind(0x4001, paddr).is_success());
    // The client reads nothing from here on; the peer sends until the relay gives up
    // (the kernel's socket buffers take several MB first).
    let chunk = [7u8; 1200];
    let mut sent = 0usize;
    while rt.stats().allocations_ended == 0 {
        assert!(sent < 200_000_000, "never cut off: {:?}", rt.stats());
        for _ in 0..100 {
            let _ = p.send_to(&chunk, relay);
            sent += chunk.len();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let overflows: u64 = rt
        .shard_counters()
        .iter()
        .map(|c| {
            c.tcp_backlog_overflows
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(overflows, 1);
    rt.shutdown().unwrap();
}

/// `[server] max_tcp_connections`: a shard at its limit closes a new connection at once
/// and counts it; the connections it holds keep working, and a place freed is taken again.
#[test]
fn connections_past_the_limit_are_refused_and_counted() {
    let (rt, server) = start_with(IoBackendChoice::Auto, 1, |c| {
        c.server.max_tcp_connections = 2;
    });
    let mut a = TurnClient::new_tcp(server, "alice", "secret");
    a.allocate_ok();
    let mut b = TurnClient::new_tcp(server, "bob", "hunter2");
    b.allocate_ok();
    let third = TcpStream::connect(server).unwrap();
    common::read_until_closed(&third, Duration::from_secs(10)).expect("refused: closed");
    let refused = |rt: &Runtime| -> u64 {
        rt.shard_counters()
            .iter()
            .map(|c| c.tcp_refused.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(&rt) < 1 {
        assert!(Instant::now() < deadline, "the refusal is counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(a.refresh(600).is_success() && b.refresh(600).is_success());
    // One leaves: its place is free for a new client.
    drop(a);
    eventually(&rt, "the first allocation ends", |s| {
        s.allocations_ended == 1
    });
    let mut c = TurnClient::new_tcp(server, "alice", "secret");
    c.allocate_ok();
    assert_eq!(refused(&rt), 1);
    rt.shutdown().unwrap();
}
