//! Zero-copy receive through the application API: the `Bytes` that `Conn::recv` returns
//! points into the shard's io receive buffers (io_uring's provided-buffer ring, or the
//! portable backend's `recvmmsg` buffers), for data on a dedicated socket and on the mux
//! port; an application that holds on to more received datagrams than the shard lends
//! does not stop its agent receiving (the rest are copied, counted), and dropping them
//! gives the buffers back. With each backend, two real agents over loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use icering::config::IoBackendChoice;
use icering::io::{BackendChoice, select_backend};
use icering::{Agent, AgentEvent, AgentOptions, Config, Conn, Engine};

fn backends() -> Vec<IoBackendChoice> {
    let mut v = vec![IoBackendChoice::Portable];
    match select_backend(BackendChoice::Uring) {
        Ok(_) => v.push(IoBackendChoice::Uring),
        Err(e) => eprintln!("skipping uring: {e}"),
    }
    v
}

/// One shard (no handoffs: every datagram is read by the owner shard), a mux port.
fn config(backend: IoBackendChoice) -> Config {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.io.backend = backend;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c
}

/// Gathers on both, trickles every candidate to the other side, dials `a`, accepts `b`.
async fn connect(a: &mut Agent, b: &mut Agent) -> (Conn, Conn) {
    let mut ea = a.take_events().unwrap();
    let mut eb = b.take_events().unwrap();
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();
    for (events, peer) in [(&mut ea, &*b), (&mut eb, &*a)] {
        loop {
            match events.recv().await.expect("agent alive") {
                AgentEvent::Candidate(Some(c)) => peer.add_remote_candidate(*c).unwrap(),
                AgentEvent::Candidate(None) => break,
                other => panic!("before end of gathering: {other:?}"),
            }
        }
        peer.end_of_remote_candidates();
    }
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    (ca.expect("dial"), cb.expect("accept"))
}

async fn recv(c: &mut Conn) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("datagram arrives")
        .unwrap()
}

fn lent(engine: &Engine, b: &Bytes) -> bool {
    let p = b.as_ptr() as usize;
    engine.recv_regions().iter().any(|r| r.contains(&p))
}

/// Data received through `Conn::recv` is a view into the io receive buffers, both ways:
/// `a` sits on the mux port, `b` on a dedicated socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_points_into_the_io_receive_buffers() {
    for backend in backends() {
        let engine = Engine::start(&config(backend)).unwrap();
        let opts = AgentOptions::default().loopback_only();
        let mut a = engine.agent(opts.clone().with_mux(true)).unwrap();
        let mut b = engine.agent(opts).unwrap();
        let (mut ca, mut cb) = connect(&mut a, &mut b).await;
        assert_eq!(
            ca.stats().await.unwrap().selected.unwrap().0,
            engine.mux_addrs()[0]
        );
        for i in 0..20 {
            let m = format!("ping {i}");
            ca.send(Bytes::from(m.clone())).await.unwrap();
            let got = recv(&mut cb).await;
            assert_eq!(&got[..], m.as_bytes());
            assert!(lent(&engine, &got), "{backend:?}: ping {i} was copied");
            let m = format!("pong {i}");
            cb.send(Bytes::from(m.clone())).await.unwrap();
            let got = recv(&mut ca).await;
            assert_eq!(&got[..], m.as_bytes());
            assert!(lent(&engine, &got), "{backend:?}: pong {i} was copied");
        }
        common::wait_for("counters", || engine.stats().ice.data_lent >= 40);
        let s = engine.stats().ice;
        assert_eq!(s.data_copied, 0, "{backend:?}: {s:?}");
        // Everything received was dropped: every buffer is back.
        common::wait_for("buffers back", || engine.stats().ice.lent_buffers == 0);
        engine.shutdown().unwrap();
    }
}

/// An application that keeps every datagram it received: the shard lends up to its cap,
/// then copies (counted), and the agent keeps receiving; the held datagrams stay intact
/// while later ones cycle through the other buffers; dropping them returns every buffer
/// (the gauge goes back to 0), after which data is lent again; a lent datagram can be read
/// after the engine has shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_data_past_the_cap_copies_and_dropping_returns_buffers() {
    for backend in backends() {
        let mut c = config(backend);
        // Small rings: io_uring lends at most 32 of 64 buffers, portable 8.
        c.io.batch = 8;
        c.io.buf_count = 64;
        let engine = Engine::start(&c).unwrap();
        let opts = AgentOptions::default().loopback_only();
        let mut a = engine.agent(opts.clone()).unwrap();
        let mut b = engine.agent(opts).unwrap();
        let (ca, mut cb) = connect(&mut a, &mut b).await;
        const N: usize = 200;
        let mut held = Vec::with_capacity(N);
        for i in 0..N {
            let m = format!("data {i}");
            ca.send(Bytes::from(m.clone())).await.unwrap();
            let got = recv(&mut cb).await;
            assert_eq!(&got[..], m.as_bytes(), "{backend:?}");
            held.push(got);
        }
        let lent_now = held.iter().filter(|b| lent(&engine, b)).count() as u64;
        common::wait_for("counters", || {
            let s = engine.stats().ice;
            s.data_lent + s.data_copied >= N as u64
        });
        let s = engine.stats().ice;
        eprintln!("{backend:?}: {s:?}");
        assert_eq!(s.data_lent, lent_now, "{backend:?}: {s:?}");
        assert!(s.data_lent > 0 && s.data_copied > 0, "{backend:?}: {s:?}");
        assert_eq!(s.data_lent + s.data_copied, N as u64, "{backend:?}: {s:?}");
        // One buffer per datagram sent one at a time, none returned while held.
        assert_eq!(s.lent_buffers, s.data_lent, "{backend:?}: {s:?}");
        // The held ones were not overwritten by the datagrams after them.
        for (i, b) in held.iter().enumerate() {
            assert_eq!(&b[..], format!("data {i}").as_bytes(), "{backend:?}");
        }
        drop(held);
        common::wait_for("buffers back", || engine.stats().ice.lent_buffers == 0);
        // Lent again.
        ca.send(Bytes::from_static(b"again")).await.unwrap();
        let got = recv(&mut cb).await;
        assert_eq!(&got[..], b"again");
        assert!(lent(&engine, &got), "{backend:?}: copied after the drop");
        // A lent datagram outlives the engine (the receive memory is shared, not freed).
        drop((a, b, ca, cb));
        engine.shutdown().unwrap();
        assert_eq!(&got[..], b"again", "{backend:?}");
    }
}
