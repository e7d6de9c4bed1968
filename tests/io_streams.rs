//! `io::StreamSet` outgoing connections: a non-blocking connect to a std `TcpListener`,
//! bytes sent before the connect completes, data both ways, and a refused connect; and two
//! sets watched by one io backend (`Backend::watch_fd` called twice).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use icering::io::{
    Backend, BackendChoice, BackendKind, Config, StreamId, StreamSet, select_backend,
};

/// Polls `set` until `f` says done (or panics after 10 s), collecting what was read.
fn pump(
    set: &mut StreamSet,
    got: &mut Vec<(StreamId, SocketAddr, Vec<u8>)>,
    f: impl Fn(&StreamSet, &[(StreamId, SocketAddr, Vec<u8>)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(set, got) {
        assert!(Instant::now() < deadline, "gave up: {set:?}");
        set.poll(&mut |_, id, peer, bytes| got.push((id, peer, bytes.to_vec())));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn connect_sends_early_bytes_then_data_flows_both_ways() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let mut set = StreamSet::new(4, 1 << 20, 4096).unwrap();
    let id = set.connect(at).unwrap();
    assert_eq!(set.peer_addr(id), Some(at));
    let local = set.local_addr(id).expect("bound by connect");
    // Sent before anyone polled the set (the connect may still be pending).
    assert!(set.send(id, &[b"hello ", b"server"]));

    let (mut peer, from) = listener.accept().unwrap();
    assert_eq!(from, local);
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 12];
    // The set must run for a pending connect to complete and the backlog to go out.
    let reader = std::thread::spawn(move || {
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello server");
        peer.write_all(b"hello client").unwrap();
        peer
    });
    pump(&mut set, &mut got, |_, g| {
        g.iter().map(|(_, _, b)| b.len()).sum::<usize>() >= 12
    });
    let mut peer = reader.join().unwrap();
    let bytes: Vec<u8> = got.iter().flat_map(|(_, _, b)| b.clone()).collect();
    assert_eq!(&bytes, b"hello client");
    assert!(got.iter().all(|(i, p, _)| *i == id && *p == at));

    // A larger write after the connect, then the peer closes: reported closed.
    let big = vec![7u8; 300_000];
    assert!(set.send(id, &[&big]));
    let reader = std::thread::spawn(move || {
        let mut all = vec![0u8; 300_000];
        peer.read_exact(&mut all).unwrap();
        all
    });
    let mut closed = Vec::new();
    let mut sent_all = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent_all {
        set.poll(&mut |_, _, _, _| {});
        sent_all = reader.is_finished();
        assert!(Instant::now() < deadline, "backlog not written: {set:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(reader.join().unwrap(), big);
    let stats = set.stats();
    assert_eq!(stats.bytes_out, 12 + 300_000, "{stats:?}");
    assert_eq!(stats.bytes_in, 12, "{stats:?}");
    pump(&mut set, &mut got, |s, _| s.open() == 0);
    set.take_closed(&mut closed);
    assert_eq!(closed, vec![(id, at)]);
}

#[test]
fn refused_connect_is_an_error_or_a_closed_stream() {
    // A port nobody listens on (bound then dropped).
    let at = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut set = StreamSet::new(4, 1 << 16, 4096).unwrap();
    match set.connect(at) {
        // Loopback may refuse at once.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(id) => {
            // Bytes for a connect that then fails are dropped with the stream.
            assert!(set.send(id, &[b"lost"]));
            let mut got = Vec::new();
            pump(&mut set, &mut got, |s, _| s.open() == 0);
            assert!(got.is_empty());
            let mut closed = Vec::new();
            set.take_closed(&mut closed);
            assert_eq!(closed, vec![(id, at)]);
            assert!(!set.send(id, &[b"x"]));
        }
    }
    assert_eq!(set.open(), 0);
}

/// A closed stream's id is not given to a new stream before `take_closed` reported the
/// close: a report never names a live stream (the ICE shard once ended a new agent's TURN
/// relay on the stale close of an old one's).
#[test]
fn a_closed_id_waits_for_its_report_before_reuse() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let mut set = StreamSet::new(4, 1 << 20, 4096).unwrap();
    let old = set.connect(at).unwrap();
    set.close(old);
    let new = set.connect(at).unwrap();
    assert_ne!(new, old);
    let mut closed = Vec::new();
    set.take_closed(&mut closed);
    assert_eq!(closed, vec![(old, at)]);
    // Reported: the id may serve again.
    assert_eq!(set.connect(at).unwrap(), old);
    assert_eq!(set.open(), 2);
}

/// Accepted streams are listed once by `take_accepted`, with the listener that took them;
/// one that closed in the same poll is listed by both `take_accepted` and `take_closed`.
#[test]
fn accepted_streams_are_listed_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut set = StreamSet::new(4, 1 << 16, 4096).unwrap();
    let at = set.add_listener(listener).unwrap();
    let kept = std::net::TcpStream::connect(at).unwrap();
    let mut got = Vec::new();
    pump(&mut set, &mut got, |s, _| s.open() == 1);
    let mut accepted = Vec::new();
    set.take_accepted(&mut accepted);
    assert_eq!(accepted.len(), 1);
    let first = accepted[0];
    assert_eq!(set.peer_addr(first), Some(kept.local_addr().unwrap()));
    assert_eq!(set.listener_of(first), Some(0));
    set.take_accepted(&mut accepted);
    assert_eq!(accepted.len(), 1, "listed once");

    // Connected and gone before the set polls: accepted, then closed on its EOF.
    drop(std::net::TcpStream::connect(at).unwrap());
    pump(&mut set, &mut got, |s, _| s.stats().closed == 1);
    accepted.clear();
    set.take_accepted(&mut accepted);
    let mut closed = Vec::new();
    set.take_closed(&mut closed);
    assert_eq!(accepted.len(), 1);
    assert_ne!(accepted[0], first);
    assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), accepted);
    assert_eq!(set.open(), 1);
}

fn kinds() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Portable];
    if let Ok((k, _)) = select_backend(BackendChoice::Uring) {
        v.push(k);
    }
    v
}

/// Each of two watched sets ends the backend's wait on its own, again and again (the
/// uring polls are one-shot and re-armed; epoll entries are level-triggered).
#[test]
fn backend_watches_two_stream_sets() {
    let cfg = Config {
        batch: 8,
        buf_size: 2048,
        buf_count: 16,
        send_slots: 16,
        gso: false,
        gro: false,
    };
    for kind in kinds() {
        let mut b = Backend::new(kind, &cfg).unwrap();
        let mut sets = [
            StreamSet::new(4, 1 << 16, 4096).unwrap(),
            StreamSet::new(4, 1 << 16, 4096).unwrap(),
        ];
        let mut listeners = Vec::new();
        for set in &sets {
            b.watch_fd(set.fd()).unwrap();
            listeners.push(TcpListener::bind("127.0.0.1:0").unwrap());
        }
        let mut ids = Vec::new();
        let mut peers = Vec::new();
        for (set, l) in sets.iter_mut().zip(&listeners) {
            ids.push(set.connect(l.local_addr().unwrap()).unwrap());
            peers.push(l.accept().unwrap().0);
        }
        // Let the connects complete (their EPOLLOUT) so only data is pending below.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            b.poll(Some(Duration::from_millis(5)), &mut |_, _, _, _| {})
                .unwrap();
            b.take_watch_ready();
            for set in &mut sets {
                set.poll(&mut |_, _, _, _| {});
            }
            if !b.take_watch_ready() {
                break;
            }
        }
        for round in 0..3u8 {
            for which in [1usize, 0] {
                peers[which].write_all(&[round, which as u8]).unwrap();
                // Only a watched fd can end this wait (no UDP socket, no timer).
                let t0 = Instant::now();
                while !b.take_watch_ready() {
                    b.poll(Some(Duration::from_secs(10)), &mut |_, _, _, _| {})
                        .unwrap();
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "{kind:?}: no wakeup"
                    );
                }
                let mut got = Vec::new();
                for (i, set) in sets.iter_mut().enumerate() {
                    set.poll(&mut |_, id, _, bytes| got.push((i, id, bytes.to_vec())));
                }
                assert_eq!(
                    got,
                    vec![(which, ids[which], vec![round, which as u8])],
                    "{kind:?}"
                );
            }
        }
    }
}
