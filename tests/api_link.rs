//! The link of an application-owned agent (`DataMode::App`): the one shared allocation that
//! carries its connection state, events and received data (src/api/link.rs). Two real
//! agents on one engine over loopback: the receive queue allocates nothing until the first
//! datagram and then only what the backlog needs, overflow is a counted drop, dropping a
//! `Conn` with queued datagrams gives their lent io buffers back (and stops the queuing),
//! and every state watcher sees Connected, then Closed and the end.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use icering::{
    Agent, AgentEvent, AgentOptions, ApiError, Config, Conn, ConnectionState, Engine, IceStats,
};

/// One shard, a mux port, a receive queue of `recv_queue` datagrams.
fn engine(recv_queue: usize) -> Engine {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.ice.recv_queue = recv_queue;
    Engine::start(&c).unwrap()
}

/// Two agents, `a` on the mux port and `b` on a dedicated socket, each with the other's
/// candidates (gathered, signalled, end-of-candidates); no role chosen yet.
async fn signalled(engine: &Engine) -> (Agent, Agent) {
    let opts = AgentOptions::default().loopback_only();
    let mut a = engine.agent(opts.clone().with_mux(true)).unwrap();
    let mut b = engine.agent(opts).unwrap();
    let mut ea = a.take_events().unwrap();
    let mut eb = b.take_events().unwrap();
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();
    for (events, peer) in [(&mut ea, &b), (&mut eb, &a)] {
        while let Some(AgentEvent::Candidate(Some(c))) = events.recv().await {
            peer.add_remote_candidate(*c).unwrap();
        }
        peer.end_of_remote_candidates();
    }
    (a, b)
}

/// `a` on the mux port dials, `b` on a dedicated socket accepts.
async fn connect(engine: &Engine) -> (Agent, Agent, Conn, Conn) {
    let (a, b) = signalled(engine).await;
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    (a, b, ca.expect("dial"), cb.expect("accept"))
}

async fn recv(c: &mut Conn) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("datagram arrives")
        .unwrap()
}

/// Waits until `f` holds for the engine's counters (the bound only keeps a broken build
/// from hanging).
fn wait_for(engine: &Engine, what: &str, f: impl Fn(&IceStats) -> bool) -> IceStats {
    common::wait_until(what, || engine.stats().ice, f)
}

/// Waits until `conn`'s agent has received `n` datagrams (queued or dropped).
async fn received(conn: &Conn, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = conn.stats().await.unwrap();
        if s.packets_received >= n {
            assert_eq!(s.packets_received, n);
            return;
        }
        assert!(Instant::now() < deadline, "gave up: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_queue_allocates_on_the_first_datagram_and_counts_overflow() {
    let engine = engine(16);
    let (_a, _b, ca, mut cb) = connect(&engine).await;
    // Connected, no datagram yet: no queue storage.
    assert_eq!((ca.recv_queue_slots(), cb.recv_queue_slots()), (0, 0));
    ca.send(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(&recv(&mut cb).await[..], b"first");
    assert_eq!(cb.recv_queue_slots(), 8, "one first segment of 8 slots");
    assert_eq!(ca.recv_queue_slots(), 0, "nothing came the other way");

    // 40 datagrams, none read: 16 queued (the bound), 24 dropped and counted.
    let before = engine.stats().ice.drop_app_full;
    for i in 0..40 {
        ca.send(Bytes::from(format!("d{i}"))).await.unwrap();
    }
    received(&cb, 41).await;
    let s = wait_for(&engine, "drops counted", |s| s.drop_app_full > before);
    assert_eq!(s.drop_app_full - before, 24, "{s:?}");
    // The queue grew to the backlog (8 then 16 slots), never past the bound.
    assert!(cb.recv_queue_slots() <= 8 + 16, "{}", cb.recv_queue_slots());
    for i in 0..16 {
        assert_eq!(&recv(&mut cb).await[..], format!("d{i}").as_bytes());
    }
    // Drained: the first segment is gone, the grown one stays for the next backlog.
    ca.send(Bytes::from_static(b"end")).await.unwrap();
    assert_eq!(&recv(&mut cb).await[..], b"end", "the rest were dropped");
    assert_eq!(cb.recv_queue_slots(), 16);
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_conn_with_queued_data_returns_lent_buffers() {
    let engine = engine(64);
    let (_a, b, ca, cb) = connect(&engine).await;
    let before = engine.stats().ice;
    for i in 0..10 {
        ca.send(Bytes::from(format!("held {i}"))).await.unwrap();
    }
    received(&cb, 10).await;
    let s = wait_for(&engine, "datagrams queued", |s| {
        s.data_lent + s.data_copied >= before.data_lent + before.data_copied + 10
    });
    assert!(s.data_lent > before.data_lent, "nothing lent: {s:?}");
    assert!(s.lent_buffers > 0, "{s:?}");
    // The agent stays (`b` is alive); its Conn goes with 10 datagrams unread.
    drop(cb);
    wait_for(&engine, "buffers back", |s| s.lent_buffers == 0);
    // The shard no longer queues for the gone receiver: counted drops.
    let before = engine.stats().ice.drop_app_full;
    ca.send(Bytes::from_static(b"unheard")).await.unwrap();
    wait_for(&engine, "drop counted", |s| s.drop_app_full == before + 1);
    assert!(matches!(
        b.dial("abcd", "abcdefghijklmnopqrstuvwxyz").await,
        Err(ApiError::AlreadyStarted)
    ));
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_watcher_sees_connected_then_closed_then_the_end() {
    let engine = engine(64);
    let opts = AgentOptions::default().loopback_only();
    let probe = engine.agent(opts).unwrap();
    let mut w = probe.state().expect("App agents have a state");
    assert_eq!(w.get(), ConnectionState::New);
    // Dropping the last handle closes the agent: the watcher sees Closed, then the end.
    drop(probe);
    let mut seen = Vec::new();
    while let Ok(s) = w.changed().await {
        seen.push(s);
    }
    assert_eq!(seen.last(), Some(&ConnectionState::Closed), "{seen:?}");

    let (a, b, ca, mut cb) = connect(&engine).await;
    // Watchers made after connecting start from Connected.
    let watchers: Vec<_> = (0..3)
        .map(|_| {
            let mut w = a.state().unwrap();
            // Read here, not in the task: the task may first run after the close below.
            let first = w.get();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let end = loop {
                    match w.changed().await {
                        Ok(s) => seen.push(s),
                        Err(e) => break e,
                    }
                };
                (first, seen, end, w.get())
            })
        })
        .collect();
    assert!(matches!(
        ca.state(),
        ConnectionState::Connected | ConnectionState::Completed
    ));
    a.close();
    for w in watchers {
        let (first, seen, end, last) = w.await.unwrap();
        assert!(
            matches!(
                first,
                ConnectionState::Connected | ConnectionState::Completed
            ),
            "{first:?}"
        );
        assert_eq!(seen.last(), Some(&ConnectionState::Closed), "{seen:?}");
        assert!(matches!(end, ApiError::Closed), "{end:?}");
        assert_eq!(last, ConnectionState::Closed);
    }
    assert_eq!(ca.state(), ConnectionState::Closed);
    assert!(matches!(
        ca.send(Bytes::from_static(b"x")).await,
        Err(ApiError::Closed)
    ));
    // `b` is still up; its peer is gone, but its Conn reads on until it is closed too.
    drop((a, ca));
    let b_state = b.state().unwrap();
    b.close();
    assert!(matches!(cb.recv().await, Err(ApiError::Closed)));
    assert_eq!(b_state.get(), ConnectionState::Closed);
    engine.shutdown().unwrap();
}

/// A `dial`/`accept` cancelled before it connected (its future dropped by a timeout) gives
/// the data receiver back: a second call connects and receives. Datagrams for an agent no
/// `Conn` reads yet (started with `start`, never dialled) are dropped and counted instead
/// of being queued where nothing would read them (they would pin lent io buffers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_accept_can_be_retried_and_unread_agents_queue_nothing() {
    let engine = engine(64);
    let (a, b) = signalled(&engine).await;
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    // `a` has not dialled: `b` cannot connect, and its accept is cut short.
    let cut = tokio::time::timeout(Duration::from_millis(20), b.accept(&ua, &pa)).await;
    assert!(cut.is_err(), "accept cannot finish before the peer dials");
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    let (ca, mut cb) = (ca.expect("dial"), cb.expect("accept after a cancelled one"));
    ca.send(Bytes::from_static(b"after the retry"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut cb).await[..], b"after the retry");

    // A second pair whose controlled agent only `start`s: connected, but no `Conn`.
    let (c, d) = signalled(&engine).await;
    let (uc, pc) = c.local_credentials();
    let (ud, pd) = d.local_credentials();
    d.set_remote_credentials(&uc, &pc).unwrap();
    d.start(false).unwrap();
    let cc = c.dial(&ud, &pd).await.expect("dial the started agent");
    let mut watch = d.state().unwrap();
    while !matches!(
        watch.get(),
        ConnectionState::Connected | ConnectionState::Completed
    ) {
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("d connects")
            .unwrap();
    }
    let before = engine.stats().ice.drop_app_full;
    for i in 0..5 {
        cc.send(Bytes::from(format!("unread {i}"))).await.unwrap();
    }
    let s = wait_for(&engine, "unread data dropped", |s| {
        s.drop_app_full >= before + 5
    });
    assert_eq!(s.drop_app_full - before, 5, "{s:?}");
    wait_for(&engine, "no buffer lent", |s| s.lent_buffers == 0);
    drop((cb, ca, cc));
    engine.shutdown().unwrap();
}
