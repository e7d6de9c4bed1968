//! The relayed data path of a hosted agent allocates nothing per datagram: an echo
//! session on a dedicated socket that gathers only a relayed candidate (TURN over UDP
//! through an in-process `icering serve`-style engine) faces a peer that is the sans-IO
//! `IceAgent` on a std UDP socket, which learns the relayed address peer-reflexively from
//! the session's first check. Every echo crosses the relay twice (peer → relay → client,
//! then client → relay → peer). A counting global allocator sees the same number of
//! allocations whether the session echoes 100 or 2,100 datagrams (the count covers the
//! whole process: the in-process relay server's threads too).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::ice::{CandidateKind, ConnectionState, Handled, IceAgent, IceConfig};
use icering::net::Received;
use icering::{AgentOptions, CandidateTypes, Config, DataMode, Engine, NetworkType};

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
fn relayed_echo_does_not_allocate_per_datagram() {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 1;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    let srv = Engine::start(&c).unwrap();
    let at = srv.server_addrs()[0];

    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    let engine = Engine::start(&c).unwrap();
    let session = engine
        .agent(
            AgentOptions::default()
                .loopback_only()
                .with_data(DataMode::Echo)
                .with_network_types(&[NetworkType::Udp4])
                .with_turn(&format!("turn:{at}"), "alice", "secret")
                .with_candidate_types(CandidateTypes {
                    host: false,
                    srflx: false,
                    relay: true,
                }),
        )
        .unwrap();
    assert!(session.gather_candidates().unwrap().is_empty());

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut agent = IceAgent::new(IceConfig {
        controlling: true,
        seed: 7,
        ..Default::default()
    })
    .unwrap();
    let host = icering::Candidate::host(sock.local_addr().unwrap());
    agent.add_local_candidate(host.clone()).unwrap();
    let (su, sp) = session.local_credentials();
    agent.set_remote_credentials(&su, &sp).unwrap();
    let (pu, pp) = agent.local_credentials();
    session.set_remote_credentials(pu, pp).unwrap();
    // The session knows the peer's host candidate (and installs a permission for it);
    // the peer learns the session's relayed address from its checks.
    session.add_remote_candidate(host).unwrap();
    session.start(false).unwrap();
    let mut peer = Peer {
        agent,
        sock,
        buf: vec![0u8; 1500],
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while peer.agent.state() != ConnectionState::Connected {
        assert!(Instant::now() < deadline, "peer never connected");
        peer.turn();
    }
    let (_, remote) = peer.agent.selected_pair().unwrap();
    let kinds = peer
        .agent
        .selected_candidates()
        .map(|(l, r)| (l.kind, r.kind));
    assert_eq!(
        kinds,
        Some((CandidateKind::Host, CandidateKind::PeerReflexive))
    );
    assert_ne!(remote, at, "the relayed address, not the server's");
    while peer.agent.poll_event().is_some() {}
    // Warm up (channel binding, first-use buffers), then compare 100 with 2,100 echoes.
    peer.echo(200);
    let a0 = ALLOCS.load(Relaxed);
    peer.echo(100);
    let small = ALLOCS.load(Relaxed) - a0;
    let a1 = ALLOCS.load(Relaxed);
    peer.echo(2100);
    let large = ALLOCS.load(Relaxed) - a1;
    println!("allocations: {small} for 100 relayed echoes, {large} for 2,100");
    let s = engine.stats().ice;
    assert!(s.data_out >= 2400, "{s:?}");
    let st = srv.server_stats();
    assert!(
        st.relayed_to_peer >= 2400 && st.relayed_to_client >= 2400,
        "{st:?}"
    );
    assert!(
        large <= small + 20,
        "allocations grew with datagrams: {small} for 100, {large} for 2,100"
    );
    drop(session);
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}
