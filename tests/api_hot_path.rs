//! The hosted-agent data path allocates nothing per datagram: an ICE-lite echo session on
//! the mux port (what `icering serve` sessions are) faces a peer that is the sans-IO
//! `IceAgent` driven over a std UDP socket in this test; a counting global allocator sees
//! the same number of allocations whether the session echoes 100 or 2,100 datagrams.
//! (One shard: a datagram handed to another shard is copied into one allocation.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::ice::{ConnectionState, Handled, IceAgent, IceConfig};
use icering::net::Received;
use icering::{AgentOptions, Config, DataMode, Engine, NetworkType};

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

#[test]
fn echo_sessions_do_not_allocate_per_datagram() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let session = engine
        .agent(
            AgentOptions::default()
                .with_mux(true)
                .with_lite(true)
                .with_data(DataMode::Echo)
                .with_network_types(&[NetworkType::Udp4]),
        )
        .unwrap();
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
    session.set_remote_credentials(pu, pp).unwrap();
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
