//! The hosted-agent data path allocates nothing per datagram: an ICE-lite echo session on
//! the mux port (what `icering serve` sessions are) faces a peer that is the sans-IO
//! `IceAgent` driven over a std UDP socket in this test; a counting global allocator sees
//! the same number of allocations whether the session echoes 100 or 2,100 datagrams.
//! (One shard: a datagram handed to another shard is copied into one allocation.)
//!
//! The application data path (`DataMode::App`, `Conn::recv`) lends each datagram out of
//! the receive buffer: one small allocation per datagram (the `Bytes` owner header), no
//! more than the copy it replaces, which is measured side by side (past the lending cap
//! the shard copies).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::ice::{ConnectionState, Handled, IceAgent, IceConfig};
use icering::net::Received;
use icering::{Agent, AgentOptions, Config, DataMode, Engine, NetworkType};

/// The tests count allocations process-wide: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
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

/// The peer: one sans-IO agent on one std socket.
struct Peer {
    agent: IceAgent,
    sock: UdpSocket,
    buf: Vec<u8>,
}

impl Peer {
    /// Runs timers, sends what the agent wants, then feeds one received datagram (if
    /// any arrives within 5 ms). Returns what the agent made of it.
    fn turn(&mut self) -> Option<Handled> {
        let now = Instant::now();
        self.agent.handle_timeout(now);
        while let Some(t) = self.agent.poll_transmit(now, &mut self.buf) {
            self.sock
                .send_to(&self.buf[..t.size], t.destination)
                .unwrap();
        }
        let local = self.sock.local_addr().unwrap();
        let (n, from) = self.sock.recv_from(&mut self.buf).ok()?;
        let pkt = Received {
            source: from,
            destination: local,
            contents: &self.buf[..n],
        };
        Some(self.agent.handle_packet(Instant::now(), pkt))
    }

    /// Sends `n` datagrams and waits for each echo.
    fn echo(&mut self, n: usize) {
        let (_, remote) = self.agent.selected_pair().unwrap();
        let payload = [0x80u8, 1, 2, 3, 4, 5, 6, 7];
        for _ in 0..n {
            self.sock.send_to(&payload, remote).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                assert!(Instant::now() < deadline, "echo lost");
                if self.turn() == Some(Handled::Data) {
                    break;
                }
            }
        }
    }
}

fn engine() -> Engine {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    Engine::start(&c).unwrap()
}

fn session_options(data: DataMode) -> AgentOptions {
    AgentOptions::default()
        .with_mux(true)
        .with_lite(true)
        .with_data(data)
        .with_network_types(&[NetworkType::Udp4])
}

/// A sans-IO peer connected to `session` (which `start` lets run: for an app session it
/// accepts, returning the connection).
fn connect<T>(session: &Agent, start: impl FnOnce(String, String) -> T) -> (Peer, T) {
    let cands = session.gather_candidates().unwrap();

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut agent = IceAgent::new(IceConfig {
        controlling: true,
        seed: 7,
        ..Default::default()
    })
    .unwrap();
    agent
        .add_local_candidate(icering::Candidate::host(sock.local_addr().unwrap()))
        .unwrap();
    for c in cands {
        agent.add_remote_candidate(c).unwrap();
    }
    let (su, sp) = session.local_credentials();
    agent.set_remote_credentials(&su, &sp).unwrap();
    let (pu, pp) = agent.local_credentials();
    let started = start(pu.to_string(), pp.to_string());
    let mut peer = Peer {
        agent,
        sock,
        buf: vec![0u8; 1500],
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.agent.state() != ConnectionState::Connected {
        assert!(Instant::now() < deadline, "peer never connected");
        peer.turn();
    }
    while peer.agent.poll_event().is_some() {}
    (peer, started)
}

#[test]
fn echo_sessions_do_not_allocate_per_datagram() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let engine = engine();
    let session = engine.agent(session_options(DataMode::Echo)).unwrap();
    let (mut peer, ()) = connect(&session, |u, p| {
        session.set_remote_credentials(&u, &p).unwrap();
    });
    // Warm up (channels, first-use buffers), then compare 100 with 2,100 echoes.
    peer.echo(200);
    let a0 = ALLOCS.load(Relaxed);
    peer.echo(100);
    let small = ALLOCS.load(Relaxed) - a0;
    let a1 = ALLOCS.load(Relaxed);
    peer.echo(2100);
    let large = ALLOCS.load(Relaxed) - a1;
    println!("allocations: {small} for 100 echoes, {large} for 2,100");
    let s = engine.stats().ice;
    assert!(s.data_out >= 2400, "{s:?}");
    // A few allocations may come from consent checks or timers either way; none may scale
    // with the datagram count.
    assert!(
        large <= small + 20,
        "allocations grew with datagrams: {small} for 100, {large} for 2,100"
    );
    engine.shutdown().unwrap();
}

/// `Conn::recv` on an app session: lent datagrams cost one allocation each (the shared
/// owner header of `Bytes::from_owner`), no more than the copies the shard makes once the
/// application holds more than the lending cap; both are measured over 2,000 datagrams.
#[test]
fn app_recv_lending_allocates_no_more_than_the_copy() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let engine = engine();
    let session = std::sync::Arc::new(engine.agent(session_options(DataMode::App)).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let s2 = session.clone();
    let (peer, accepting) = connect(&session, move |u, p| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(s2.accept(&u, &p))
        })
    });
    let mut conn = accepting.join().unwrap().expect("accept");
    let (_, remote) = peer.agent.selected_pair().unwrap();
    let mut i = 0u32;
    // Sends one datagram and receives it through the connection.
    let mut one = |held: Option<&mut Vec<bytes::Bytes>>| {
        i += 1;
        let mut payload = [0x80u8; 8];
        payload[4..].copy_from_slice(&i.to_be_bytes());
        peer.sock.send_to(&payload, remote).unwrap();
        let got = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), conn.recv()).await })
            .expect("datagram arrives")
            .unwrap();
        assert_eq!(&got[..], &payload[..]);
        if let Some(h) = held {
            h.push(got);
        }
    };
    // Warm up, then 2,000 lent datagrams, each dropped at once.
    for _ in 0..200 {
        one(None);
    }
    let a0 = ALLOCS.load(Relaxed);
    for _ in 0..2000 {
        one(None);
    }
    let lent = ALLOCS.load(Relaxed) - a0;
    // Counters are published at the end of the shard's loop turn.
    let settled = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = engine.stats().ice;
            if s.data_in >= n || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let s = settled(2200);
    // Then hold every datagram: past the cap they are copied.
    let mut held = Vec::with_capacity(20_000);
    for _ in 0..5000 {
        one(Some(&mut held));
    }
    let a1 = ALLOCS.load(Relaxed);
    for _ in 0..2000 {
        one(Some(&mut held));
    }
    let copied = ALLOCS.load(Relaxed) - a1;
    let t = settled(9200);
    println!("allocations per 2,000 datagrams: {lent} lent, {copied} copied; {s:?} then {t:?}");
    // The first 2,200 were all lent, the last 2,000 all copied.
    assert!(s.data_lent >= 2200 && s.data_copied == 0, "{s:?}");
    assert!(t.data_copied - s.data_copied >= 2000, "{t:?}");
    assert!(
        lent <= copied + 20,
        "lending allocates more than copying: {lent} vs {copied}"
    );
    assert!(
        lent <= 2000 + 20,
        "more than one allocation per lent datagram: {lent}"
    );
    drop(held);
    engine.shutdown().unwrap();
}
