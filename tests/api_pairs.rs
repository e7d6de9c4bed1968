//! Two agents through the public API over loopback, in every socket mode, with two shards
//! per engine so datagrams cross shards: dedicated↔dedicated, mux↔dedicated, mux↔mux
//! across two engines. Each pair exchanges data both ways through `Conn`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use icering::{Agent, AgentEvent, AgentOptions, Config, Conn, ConnectionState, Engine};

fn config(shards: usize, mux: bool) -> Config {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = shards;
    if mux {
        c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    }
    c
}

fn opts(mux: bool) -> AgentOptions {
    AgentOptions::default().loopback_only().with_mux(mux)
}

/// Gathers on both, trickles every candidate to the other side, then dials `a` and
/// accepts on `b`.
async fn connect(a: &mut Agent, b: &mut Agent) -> (Conn, Conn) {
    let mut ea = a.take_events().unwrap();
    let mut eb = b.take_events().unwrap();
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();
    for (events, peer) in [(&mut ea, &*b), (&mut eb, &*a)] {
        loop {
            match events.recv().await.expect("agent alive") {
                AgentEvent::Candidate(Some(c)) => {
                    assert!(c.addr.ip().is_loopback(), "{c:?}");
                    peer.add_remote_candidate(*c).unwrap();
                }
                AgentEvent::Candidate(None) => break,
                other => panic!("before end of gathering: {other:?}"),
            }
        }
        peer.end_of_remote_candidates();
    }
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    let (ca, cb) = (ca.expect("dial"), cb.expect("accept"));
    // Both sides report a selected pair, and it is the same 5-tuple seen from each end.
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    let (la, ra) = sa.selected.expect("a selected");
    let (lb, rb) = sb.selected.expect("b selected");
    assert_eq!((la, ra), (rb, lb));
    (ca, cb)
}

/// `n` datagrams each way, every one accounted for on the receiving side in order.
async fn exchange(ca: &mut Conn, cb: &mut Conn, n: usize) {
    for i in 0..n {
        let m = format!("ping {i}");
        ca.send(Bytes::from(m.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), cb.recv())
            .await
            .expect("ping arrives")
            .unwrap();
        assert_eq!(&got[..], m.as_bytes());
        let m = format!("pong {i}");
        cb.send(Bytes::from(m.clone())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ca.recv())
            .await
            .expect("pong arrives")
            .unwrap();
        assert_eq!(&got[..], m.as_bytes());
    }
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    assert_eq!((sa.packets_sent, sa.packets_received), (n as u64, n as u64));
    assert_eq!((sb.packets_sent, sb.packets_received), (n as u64, n as u64));
    assert!(matches!(
        sa.state,
        ConnectionState::Connected | ConnectionState::Completed
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_to_dedicated_two_shards() {
    let engine = Engine::start(&config(2, false)).unwrap();
    let mut a = engine.agent(opts(false)).unwrap();
    let mut b = engine.agent(opts(false)).unwrap();
    let (mut ca, mut cb) = connect(&mut a, &mut b).await;
    exchange(&mut ca, &mut cb, 20).await;
    let s = engine.stats();
    assert_eq!(s.shards, 2);
    assert_eq!(s.ice.created, 2);
    // Dedicated sockets belong to their agent's shard: nothing is ever handed off.
    assert_eq!(s.ice.handoffs_out, 0);
    drop((a, b, ca, cb));
    common::wait_for("both agents closed", || engine.stats().ice.agents == 0);
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_to_dedicated_crosses_shards() {
    // 16 mux agents round-robin over two shards; each peer's port hashes (SO_REUSEPORT)
    // to one shard, so about half the agents get their datagrams via the other shard.
    let engine = Engine::start(&config(2, true)).unwrap();
    let mux = engine.mux_addrs()[0];
    let mut conns = Vec::new();
    let mut agents = Vec::new();
    for _ in 0..16 {
        let mut a = engine.agent(opts(true)).unwrap();
        let mut b = engine.agent(opts(false)).unwrap();
        let (ca, cb) = connect(&mut a, &mut b).await;
        assert_eq!(ca.stats().await.unwrap().selected.unwrap().0, mux);
        conns.push((ca, cb));
        agents.push((a, b));
    }
    for (ca, cb) in &mut conns {
        exchange(ca, cb, 5).await;
    }
    common::wait_for("connected gauge", || engine.stats().ice.connected == 32);
    let s = engine.stats().ice;
    eprintln!("{s:?}");
    assert!(s.handoffs_out > 0 && s.handoffs_in > 0, "{s:?}");
    assert_eq!(s.drop_no_route, 0, "{s:?}");
    assert_eq!(s.drop_unknown_ufrag, 0, "{s:?}");
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_to_mux_across_two_engines() {
    let e1 = Engine::start(&config(2, true)).unwrap();
    let e2 = Engine::start(&config(2, true)).unwrap();
    let mut a = e1.agent(opts(true)).unwrap();
    let mut b = e2.agent(opts(true)).unwrap();
    let (mut ca, mut cb) = connect(&mut a, &mut b).await;
    let (local, remote) = ca.stats().await.unwrap().selected.unwrap();
    assert_eq!((local, remote), (e1.mux_addrs()[0], e2.mux_addrs()[0]));
    exchange(&mut ca, &mut cb, 20).await;
    e1.shutdown().unwrap();
    e2.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_to_mux_handoff_is_forced() {
    // Every datagram from e2 to e1 has the same 5-tuple (e2's mux → e1's mux), so the
    // kernel delivers all of them to one e1 shard; e1's two agents sit on different
    // shards (round robin), so one agent's checks must be handed over, and its
    // responses route back by transaction id. (Data between two agents sharing one
    // 5-tuple is ambiguous, as with pion's UDPMux: only connectivity is checked here.)
    let e1 = Engine::start(&config(2, true)).unwrap();
    let e2 = Engine::start(&config(2, true)).unwrap();
    let mut keep = Vec::new();
    for _ in 0..2 {
        let mut a = e1.agent(opts(true)).unwrap();
        let mut b = e2.agent(opts(true)).unwrap();
        let conns = connect(&mut a, &mut b).await;
        keep.push((a, b, conns));
    }
    common::wait_for("handoff counted", || {
        let (s1, s2) = (e1.stats().ice, e2.stats().ice);
        s1.handoffs_in > 0 && s2.handoffs_in > 0 && s1.connected == 2 && s2.connected == 2
    });
    e1.shutdown().unwrap();
    e2.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_echo_session_on_the_mux() {
    // What an `icering serve` session is: ICE-lite, on the mux port, data echoed by the
    // shard itself (no channels). The client is a full agent on a dedicated socket.
    let engine = Engine::start(&config(2, true)).unwrap();
    let session = engine
        .agent(
            opts(true)
                .with_lite(true)
                .with_data(icering::DataMode::Echo),
        )
        .unwrap();
    let mut client = engine.agent(opts(false)).unwrap();
    let mut events = client.take_events().unwrap();
    for c in session.gather_candidates().unwrap() {
        client.add_remote_candidate(c).unwrap();
    }
    client.end_of_remote_candidates();
    client.gather_candidates().unwrap();
    while let Some(AgentEvent::Candidate(Some(c))) = events.recv().await {
        session.add_remote_candidate(*c).unwrap();
    }
    let (cu, cp) = client.local_credentials();
    session.set_remote_credentials(&cu, &cp).unwrap();
    let (su, sp) = session.local_credentials();
    let mut conn = client.dial(&su, &sp).await.unwrap();
    for i in 0..10u8 {
        conn.send(Bytes::from(vec![0x80, i, 42])).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("echo arrives")
            .unwrap();
        assert_eq!(&got[..], &[0x80, i, 42]);
    }
    let s = session.stats().await.unwrap();
    assert_eq!((s.packets_received, s.packets_sent), (10, 10));
    assert_eq!(s.bytes_sent, 30);
    assert_eq!(s.selected.unwrap().0, engine.mux_addrs()[0]);
    // No channels for echo sessions.
    assert!(session.state().is_none());
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_on_the_portable_backend() {
    // The tests above run on whatever `auto` picks (io_uring where the kernel allows);
    // the same flows on epoll + recvmmsg/sendmmsg.
    let mut c = config(2, true);
    c.io.backend = icering::config::IoBackendChoice::Portable;
    let engine = Engine::start(&c).unwrap();
    for mux in [false, true] {
        let mut a = engine.agent(opts(mux)).unwrap();
        let mut b = engine.agent(opts(false)).unwrap();
        let (mut ca, mut cb) = connect(&mut a, &mut b).await;
        exchange(&mut ca, &mut cb, 10).await;
    }
    engine.shutdown().unwrap();
}
