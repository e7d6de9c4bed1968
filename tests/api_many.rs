//! Thousands of agents on one engine: 1,500 ICE-lite agents that sink their data (what
//! `icering serve` sessions are) and 1,500 full controlling agents, all on the same
//! two-shard engine's mux port, every one connected; then 500 + 500 application-owned
//! agents (with their link). A counting allocator gives the live heap per connected agent
//! (engine-side state plus the handle), the method of tests/turn_footprint.rs.
//!
//! `cargo test --release --test api_many -- --nocapture` prints the figures (the tests take
//! turns: the counter is process-wide).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::{AgentOptions, Config, DataMode, Engine, NetworkType};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);
/// The counter is process-wide: the tests take turns (a plain `cargo test` runs them at
/// once).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - layout.size() as i64, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Connects `pairs` lite `mode` sessions with `pairs` full controlling agents of the same
/// mode on one engine; returns the live heap per agent once all are connected (for `App`
/// agents, also once their events were read).
fn connect_many(engine: &Engine, pairs: usize, mode: DataMode, shards: usize) -> (f64, f64) {
    let base = LIVE.load(Relaxed);
    let v4 = [NetworkType::Udp4];
    let server = AgentOptions::default()
        .with_mux(true)
        .with_lite(true)
        .with_data(mode)
        .with_network_types(&v4);
    let client = AgentOptions::default()
        .with_mux(true)
        .with_data(mode)
        .with_network_types(&v4);
    let before = engine.stats().ice;
    let mut agents = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        let s = engine.agent(server.clone()).unwrap();
        let cl = engine.agent(client.clone()).unwrap();
        let sc = s.gather_candidates().unwrap();
        let cc = cl.gather_candidates().unwrap();
        assert_eq!((sc.len(), cc.len()), (1, 1));
        let (su, sp) = s.local_credentials();
        let (cu, cp) = cl.local_credentials();
        s.set_remote_credentials(&cu, &cp).unwrap();
        cl.set_remote_credentials(&su, &sp).unwrap();
        for x in cc {
            s.add_remote_candidate(x).unwrap();
        }
        for x in sc {
            cl.add_remote_candidate(x).unwrap();
        }
        cl.start(true).unwrap();
        agents.push(s);
        agents.push(cl);
    }
    let n = 2 * pairs as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let s = engine.stats().ice;
        if s.connected == n {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gave up: {} of {n} connected: {s:?}",
            s.connected
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stats.agents, n);
    assert_eq!(stats.created - before.created, n);
    assert_eq!(
        stats.drop_unknown_ufrag + stats.drop_stale_transaction,
        0,
        "{stats:?}"
    );
    // All clients send from one 5-tuple: the kernel gives all of it to one shard, and the
    // agents on the other shard are reached by handoff.
    if shards > 1 {
        assert!(stats.handoffs_in > before.handoffs_in, "{stats:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let per_agent = (LIVE.load(Relaxed) - base) as f64 / n as f64;
    println!("{stats:?}");
    println!(
        "{n} {mode:?} agents connected on one engine; live heap per agent (engine + handle): {per_agent:.0} B"
    );
    let mut read = per_agent;
    if mode == DataMode::App {
        // An application reads its agents' events (candidates to signal, states): the
        // same agents once every event was read, the receivers kept (still listening).
        let mut events: Vec<_> = agents
            .iter_mut()
            .map(|a| a.take_events().unwrap())
            .collect();
        for e in &mut events {
            while e.try_recv().is_some() {}
        }
        read = (LIVE.load(Relaxed) - base) as f64 / n as f64;
        println!("the same {n} {mode:?} agents with their events read: {read:.0} B per agent");
        drop(events);
    }

    drop(agents);
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.stats().ice.agents != 0 {
        assert!(Instant::now() < deadline, "agents not freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    (per_agent, read)
}

#[test]
fn thousands_of_agents_connect_on_one_engine() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 2;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // Serve-style sessions: no link.
    let (sink, _) = connect_many(&engine, 1500, DataMode::Sink, 2);
    // Application-owned agents: plus their link (state, events, data queue).
    let (_, app) = connect_many(&engine, 500, DataMode::App, 2);
    // The link is one ~200 B allocation and its data queue holds nothing before the first
    // datagram (three channels took ~2.6 KB); the margin covers the shared hash tables,
    // amortised over 3,000 agents in one run and 1,000 in the other.
    assert!(
        app < sink + 500.0,
        "an App agent costs {app:.0} B, a Sink agent {sink:.0} B"
    );
    engine.shutdown().unwrap();
}

/// Far more agents due in one turn than the shard has send slots (64): those left without
/// a slot retry on the next turn instead of being served again in the same one, so the
/// shard neither spins nor stalls and every agent connects.
#[test]
fn more_due_agents_than_send_slots_all_connect() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.io.buf_count = 64;
    c.io.batch = 16;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    connect_many(&engine, 600, DataMode::Sink, 1);
    engine.shutdown().unwrap();
}
