//! Where the bytes of an `icering serve` session go: the session API (`AdminServer`) on a
//! one-shard engine in this process, sessions created over HTTP exactly as a client of
//! `icering serve` creates them (create, remote credentials, remote candidates), each
//! faced by a sans-IO `IceAgent` on its own std UDP socket driven by this test's thread,
//! until every session is connected.
//!
//! A counting global allocator counts only the server's threads (the admin threads and
//! the shard): allocations made on this test's thread (the peers, the HTTP client) are not
//! counted. Live heap per session = (live after N + M sessions − live after N) / M, so
//! one-time costs (threads, buffers, first table allocations) stay out; live allocations
//! are also counted by size, which tells which structures they are. Then the peers hold
//! the sessions with keepalives (the heap must not grow), go quiet until every session is
//! Disconnected, and resume (every session must come back to Connected).
//!
//! `cargo test --release --test serve_footprint -- --nocapture` prints the figures.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::ice::{Candidate, ConnectionState, IceAgent, IceConfig};
use icering::net::Received;
use icering::serve::AdminServer;
use icering::{Config, Engine};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);
/// Live allocations by size (the last bucket holds every size above it).
const BUCKETS: usize = 4097;
static SIZES: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];

thread_local! {
    /// Set on the test's own thread: its allocations are the peers', not the server's.
    static PEER_SIDE: Cell<bool> = const { Cell::new(false) };
    /// Set while a backtrace is taken (its own allocations are not traced).
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

/// `SERVE_FOOTPRINT_TRACE=944,208`: the 100th server-side allocation of each of these
/// sizes after the warm-up prints where it was made (to attribute the sizes).
static WANT: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static TRACE_ON: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

fn trace(size: usize) {
    if !TRACE_ON.load(Relaxed)
        || WANT[size.min(BUCKETS - 1)].fetch_sub(1, Relaxed) != 1
        || TRACING.try_with(|t| t.replace(true)).unwrap_or(true)
    {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(": icering::") || l.contains(": tiny_http::"))
        .take(6)
        .collect();
    TRACES.lock().unwrap().push((size, frames.join("\n      ")));
    TRACING.with(|t| t.set(false));
}

fn counted() -> bool {
    // `try_with`: a thread being torn down counts as the server's.
    !PEER_SIDE.try_with(Cell::get).unwrap_or(false)
}

fn count(size: usize, n: i64) {
    LIVE.fetch_add(n * size as i64, Relaxed);
    SIZES[size.min(BUCKETS - 1)].fetch_add(n, Relaxed);
}

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            count(layout.size(), 1);
            trace(layout.size());
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            count(layout.size(), -1);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if counted() {
            count(layout.size(), -1);
            count(new, 1);
            trace(new);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A peer: one sans-IO controlling agent on one non-blocking std socket.
struct Peer {
    agent: IceAgent,
    sock: UdpSocket,
}

impl Peer {
    /// Creates a session over HTTP and a peer for it, signalled both ways.
    fn new(admin: SocketAddr, seed: u64) -> Peer {
        let (st, body) = common::http(
            admin,
            "POST",
            "/sessions",
            "application/json",
            r#"{"data":"echo"}"#,
        );
        assert_eq!(st, 201, "{body}");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        let id = s["id"].as_str().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut agent = IceAgent::new(IceConfig {
            controlling: true,
            seed,
            ..Default::default()
        })
        .unwrap();
        let local = Candidate::host(sock.local_addr().unwrap());
        agent.add_local_candidate(local.clone()).unwrap();
        for c in s["candidates"].as_array().unwrap() {
            let c = Candidate::from_sdp(c.as_str().unwrap()).unwrap();
            agent.add_remote_candidate(c).unwrap();
        }
        agent.end_of_remote_candidates();
        agent
            .set_remote_credentials(s["ufrag"].as_str().unwrap(), s["pwd"].as_str().unwrap())
            .unwrap();
        let (u, p) = agent.local_credentials();
        let creds = serde_json::json!({"ufrag": u, "pwd": p}).to_string();
        let path = format!("/sessions/{id}/remote-credentials");
        assert_eq!(
            common::http(admin, "POST", &path, "application/json", &creds).0,
            204
        );
        let cands = serde_json::json!({
            "candidates": [format!("candidate:{}", local.to_sdp())],
            "end_of_candidates": true,
        })
        .to_string();
        let path = format!("/sessions/{id}/remote-candidates");
        assert_eq!(
            common::http(admin, "POST", &path, "application/json", &cands).0,
            204
        );
        Peer { agent, sock }
    }

    /// Timers, transmits, then every datagram waiting on the socket.
    fn turn(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        self.agent.handle_timeout(now);
        while let Some(t) = self.agent.poll_transmit(now, buf) {
            let _ = self.sock.send_to(&buf[..t.size], t.destination);
        }
        let local = self.sock.local_addr().unwrap();
        while let Ok((n, from)) = self.sock.recv_from(buf) {
            let pkt = Received {
                source: from,
                destination: local,
                contents: &buf[..n],
            };
            self.agent.handle_packet(Instant::now(), pkt);
        }
    }
}

/// Adds `n` sessions with their peers and drives every peer until the engine counts
/// `total` connected sessions.
fn add_sessions(engine: &Engine, admin: SocketAddr, peers: &mut Vec<Peer>, n: usize) {
    let total = (peers.len() + n) as u64;
    let mut buf = vec![0u8; 1500];
    for _ in 0..n {
        let seed = peers.len() as u64 + 1;
        peers.push(Peer::new(admin, seed));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for p in peers.iter_mut() {
            p.turn(&mut buf);
        }
        let s = engine.stats().ice;
        let peers_up = peers
            .iter()
            .filter(|p| p.agent.state() == ConnectionState::Connected)
            .count() as u64;
        if s.connected == total && peers_up == total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} sessions and {peers_up} peers connected: {s:?}",
            s.connected
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn snapshot() -> (i64, Vec<i64>) {
    // Let the shard and admin threads finish what they were doing.
    std::thread::sleep(Duration::from_millis(300));
    (
        LIVE.load(Relaxed),
        SIZES.iter().map(|s| s.load(Relaxed)).collect(),
    )
}

#[test]
fn heap_per_connected_serve_session() {
    PEER_SIDE.with(|p| p.set(true));
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.turn.enabled = false;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), engine.clone(), true).unwrap();
    let addr = admin.local_addr();

    let (warm, more) = (500, 2000);
    let mut peers = Vec::new();
    add_sessions(&engine, addr, &mut peers, warm);
    let (live0, sizes0) = snapshot();
    if let Ok(list) = std::env::var("SERVE_FOOTPRINT_TRACE") {
        for s in list
            .split(',')
            .filter_map(|s| s.trim().parse::<usize>().ok())
        {
            WANT[s.min(BUCKETS - 1)].store(100, Relaxed);
        }
        TRACE_ON.store(true, Relaxed);
    }
    add_sessions(&engine, addr, &mut peers, more);
    let (live1, sizes1) = snapshot();
    assert_eq!(admin.sessions(), warm + more);

    let per_session = (live1 - live0) as f64 / more as f64;
    println!(
        "{more} more connected serve sessions (lite, echo, one shard, after {warm}): \
         live heap per session {per_session:.0} B"
    );
    let mut by_size: Vec<(usize, f64)> = sizes0
        .iter()
        .zip(&sizes1)
        .enumerate()
        .map(|(size, (a, b))| (size, (b - a) as f64 / more as f64))
        .filter(|(_, per)| per.abs() >= 0.05)
        .collect();
    by_size.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    println!("live allocations per session by size (size B × count = B):");
    for (size, per) in by_size {
        let more_than = if size == BUCKETS - 1 { "≥" } else { "" };
        println!(
            "  {more_than}{size:>5} × {per:>5.2} = {:>6.0}",
            size as f64 * per
        );
    }
    // Hold: the peers keep sending keepalives/consent checks (every 2 s) for 7 s; the
    // server's live heap must not grow with them.
    let mut buf = vec![0u8; 1500];
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        for p in peers.iter_mut() {
            p.turn(&mut buf);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (live2, sizes2) = snapshot();
    let held = engine.stats().ice;
    let growth = (live2 - live1) as f64 / (warm + more) as f64;
    println!("after a 7 s hold: {growth:+.1} B per session ({held:?})");
    assert_eq!(held.connected, (warm + more) as u64, "{held:?}");
    assert!(
        growth.abs() < 64.0,
        "the heap grew while holding: {growth:+.1} B per session"
    );

    // Flapping, as on an overloaded server whose socket drops checks: the peers go quiet
    // for 6 s (sessions go Disconnected after 5 s), then resume (back to Connected).
    std::thread::sleep(Duration::from_secs(6));
    let quiet = engine.stats().ice;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for p in peers.iter_mut() {
            p.turn(&mut buf);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (live3, sizes3) = snapshot();
    let back = engine.stats().ice;
    let flap = (live3 - live2) as f64 / (warm + more) as f64;
    println!(
        "after 6 s quiet ({} connected) and 5 s back ({} connected): {flap:+.1} B per session",
        quiet.connected, back.connected
    );
    // Every session went Disconnected without checks and came back with them.
    assert_eq!(quiet.connected, 0, "{quiet:?}");
    assert_eq!(back.connected, (warm + more) as u64, "{back:?}");
    // The number of live allocations is unchanged here: what grows (~30 B per session) is
    // the capacity of a few shard-wide buffers (the timing wheel's entry slab and its
    // queue of due keys, which got every session's new deadline at once; a buffer that
    // grows moves to a larger size class), not a per-session allocation.
    let small = |sizes: &[i64]| sizes[..BUCKETS - 1].iter().sum::<i64>();
    assert_eq!(small(&sizes2), small(&sizes3));
    for (size, frames) in TRACES.lock().unwrap().iter() {
        println!("  {size} B allocated at:\n      {frames}");
    }
    // Every session holds at least its sans-IO agent (~1.7 KB): a figure far below that
    // means the sessions were not counted at all.
    assert!(per_session > 1000.0, "{per_session}");

    admin.shutdown();
    engine.shutdown().unwrap();
}
