//! The mux port under hostile or stray traffic, and the life cycle of a slot: unknown
//! ufrags, stale transaction ids, non-ICE STUN, garbage and unrouted data are counted
//! drops and nothing else is lost; close frees the slot and the dedicated socket;
//! unsupported options are refused.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use icering::stun::{Class, IntegrityKey, MessageType, MessageWriter, Method, attr};
use icering::{
    Agent, AgentEvent, AgentOptions, ApiError, Candidate, Config, Conn, ConnectionState, Engine,
    Events, IceStats, NetworkType,
};

fn engine(shards: usize) -> Engine {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = shards;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    Engine::start(&c).unwrap()
}

fn wait_for(engine: &Engine, what: &str, f: impl Fn(&IceStats) -> bool) -> IceStats {
    common::wait_until(what, || engine.stats().ice, f)
}

async fn connect(a: &mut Agent, b: &mut Agent) -> (Conn, Conn) {
    let mut ea = a.take_events().unwrap();
    let mut eb = b.take_events().unwrap();
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();
    for (ev, peer) in [(&mut ea, &*b), (&mut eb, &*a)] {
        while let Some(AgentEvent::Candidate(Some(c))) = ev.recv().await {
            peer.add_remote_candidate(*c).unwrap();
        }
    }
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    (ca.unwrap(), cb.unwrap())
}

async fn round_trips(ca: &Conn, cb: &mut Conn, n: usize) {
    for i in 0..n {
        ca.send(Bytes::from(vec![0x80, i as u8])).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), cb.recv())
            .await
            .expect("datagram arrives")
            .unwrap();
        assert_eq!(&got[..], &[0x80, i as u8]);
    }
}

/// A Binding request signed with some key, USERNAME `user`, FINGERPRINT.
fn binding_request(user: &str, tid: [u8; 12]) -> Vec<u8> {
    let mut buf = vec![0u8; 200];
    let t = MessageType::new(Method::BINDING, Class::Request);
    let mut w = MessageWriter::new(&mut buf, t, &tid).unwrap();
    w.add_raw(attr::USERNAME, user.as_bytes()).unwrap();
    w.add_message_integrity(&IntegrityKey::new(b"0123456789012345678901"))
        .unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn message(method: Method, class: Class, tid: [u8; 12]) -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let w = MessageWriter::new(&mut buf, MessageType::new(method, class), &tid).unwrap();
    let n = w.finish();
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_datagrams_are_counted_drops_and_nothing_else_is_lost() {
    let engine = engine(2);
    let mux = engine.mux_addrs()[0];
    let opts = AgentOptions::default().loopback_only();
    let mut a = engine.agent(opts.clone().with_mux(true)).unwrap();
    let mut b = engine.agent(opts).unwrap();
    let (ca, mut cb) = connect(&mut a, &mut b).await;
    round_trips(&ca, &mut cb, 10).await;
    let before = wait_for(&engine, "connected", |s| s.connected == 2);

    let stray = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |d: &[u8]| stray.send_to(d, mux).unwrap();
    // Unknown ufrags: one naming shard 0 ('A'), one naming no shard ('z' = 51 of 2).
    send(&binding_request("AAAAAAAA:peer", [1; 12]));
    send(&binding_request("zzzzzzzz:peer", [2; 12]));
    send(&binding_request("no-colon", [3; 12]));
    // A response whose transaction id names shard 0, slot 9999 (no such agent).
    let mut tid = [7u8; 12];
    tid[..6].copy_from_slice(&[0, 0, 0, 0, 0x27, 0x0F]);
    send(&message(Method::BINDING, Class::Success, tid));
    // STUN that is not ICE (an Allocate request) and a truncated STUN header.
    send(&message(Method::ALLOCATE, Class::Request, [4; 12]));
    send(&[0x00, 0x01, 0x00]);
    // Data-looking datagrams from a 5-tuple no agent selected.
    send(&[0x80, 1, 2, 3]);
    send(b"hello");
    send(&[]);

    let s = wait_for(&engine, "drops", |s| {
        s.drop_unknown_ufrag >= before.drop_unknown_ufrag + 3
            && s.drop_stale_transaction > before.drop_stale_transaction
            && s.drop_malformed >= before.drop_malformed + 2
            && s.drop_no_route >= before.drop_no_route + 3
    });
    assert_eq!(s.drop_unknown_ufrag, before.drop_unknown_ufrag + 3, "{s:?}");
    assert_eq!(s.drop_stale_transaction, before.drop_stale_transaction + 1);
    assert_eq!(s.drop_malformed, before.drop_malformed + 2);
    assert_eq!(s.drop_no_route, before.drop_no_route + 3);
    // The stray socket got no answer to anything.
    stray.set_nonblocking(true).unwrap();
    assert!(stray.recv_from(&mut [0u8; 1500]).is_err());

    // The connection is untouched: still connected, every datagram still delivered.
    round_trips(&ca, &mut cb, 10).await;
    let s = engine.stats().ice;
    assert_eq!(s.connected, 2, "{s:?}");
    assert_eq!(s.drop_app_full + s.drop_send, 0, "{s:?}");
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frees_the_slot_and_the_socket() {
    let engine = engine(1);
    let opts = AgentOptions::default()
        .loopback_only()
        .with_network_types(&[NetworkType::Udp4]);
    let a = engine.agent(opts.clone()).unwrap();
    let cands = a.gather_candidates().unwrap();
    assert_eq!(cands.len(), 1);
    let port_addr: SocketAddr = cands[0].addr;
    let state = a.state().unwrap();
    wait_for(&engine, "agent hosted", |s| s.agents == 1);
    // The dedicated port is taken while the agent lives.
    assert!(UdpSocket::bind(port_addr).is_err());
    a.close();
    let s = wait_for(&engine, "agent freed", |s| s.agents == 0);
    assert_eq!((s.created, s.closed), (1, 1));
    assert_eq!(state.get(), ConnectionState::Closed);
    assert!(matches!(a.stats().await, Err(ApiError::Closed)));
    // The socket is closed: the port can be bound again.
    drop(UdpSocket::bind(port_addr).expect("port free after close"));

    // The freed slot is reused, and dropping the last handle closes the agent too.
    let b = engine.agent(opts).unwrap();
    wait_for(&engine, "second agent", |s| s.agents == 1 && s.created == 2);
    drop(b);
    wait_for(&engine, "second agent freed", |s| {
        s.agents == 0 && s.closed == 2
    });
    engine.shutdown().unwrap();
}

#[test]
fn unsupported_options_are_refused() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    let engine = Engine::start(&c).unwrap();
    // STUN over TLS (`stuns:`) is not supported from the shards (TURN over TCP and TLS
    // are: api_gather).
    let urls = AgentOptions::default().with_urls(&["stuns:127.0.0.1"]);
    assert!(matches!(engine.agent(urls), Err(ApiError::Unsupported(_))));
    // No `[ice] listen`: a mux agent has nowhere to live.
    let mux = AgentOptions::default().with_mux(true);
    assert!(matches!(engine.agent(mux), Err(ApiError::Invalid(_))));
    let a = engine.agent(AgentOptions::default()).unwrap();
    assert!(matches!(
        a.set_remote_credentials("ab", "short"),
        Err(ApiError::Invalid(_))
    ));
    assert_eq!(engine.stats().ice.drop_unknown_ufrag, 0);
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathering_honours_the_options() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    // A mux socket on the unspecified address: one candidate per (filtered) interface.
    c.ice.listen = vec!["0.0.0.0:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let port = engine.mux_addrs()[0].port();
    let lo = AgentOptions::default().loopback_only();

    let mux = engine.agent(lo.clone().with_mux(true)).unwrap();
    let got = mux.gather_candidates().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].addr, SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(matches!(
        mux.gather_candidates(),
        Err(ApiError::AlreadyStarted)
    ));

    // NAT 1:1: the candidate shows the public address, the base stays local.
    let public: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let nat = engine
        .agent(
            lo.clone()
                .with_network_types(&[NetworkType::Udp4])
                .with_nat_1to1_ips(&[public]),
        )
        .unwrap();
    let got = nat.gather_candidates().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].addr.ip(), public);
    assert_eq!(got[0].base.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_eq!(got[0].addr.port(), got[0].base.port());

    // Network types and interface filter.
    let v6 = engine
        .agent(lo.clone().with_network_types(&[NetworkType::Udp6]))
        .unwrap();
    let got = v6.gather_candidates().unwrap();
    assert!(got.iter().all(|c| c.addr.is_ipv6()), "{got:?}");
    let mut none = engine
        .agent(
            lo.clone()
                .with_interface_filter(|name| name == "no-such-if0"),
        )
        .unwrap();
    let mut events = none.take_events().unwrap();
    assert!(none.gather_candidates().unwrap().is_empty());
    // Still a clean end of gathering.
    assert_eq!(events.recv().await, Some(AgentEvent::Candidate(None)));

    // A dedicated port range is honoured.
    let ranged = engine
        .agent(
            lo.with_network_types(&[NetworkType::Udp4])
                .with_port_range(41000, 41099),
        )
        .unwrap();
    let got = ranged.gather_candidates().unwrap();
    assert!((41000..=41099).contains(&got[0].addr.port()), "{got:?}");
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_on_the_unspecified_address_connects() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 2;
    c.ice.listen = vec!["0.0.0.0:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let lo = AgentOptions::default().loopback_only();
    let mut a = engine.agent(lo.clone().with_mux(true)).unwrap();
    let mut b = engine.agent(lo).unwrap();
    let (ca, mut cb) = connect(&mut a, &mut b).await;
    round_trips(&ca, &mut cb, 5).await;
    let (local, _) = ca.stats().await.unwrap().selected.unwrap();
    assert_eq!(local.port(), engine.mux_addrs()[0].port());
    engine.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_receive_queue_drops_and_counts_like_udp() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.recv_queue = 4;
    let engine = Engine::start(&c).unwrap();
    let opts = AgentOptions::default()
        .loopback_only()
        .with_network_types(&[NetworkType::Udp4]);
    let mut a = engine.agent(opts.clone()).unwrap();
    let mut b = engine.agent(opts).unwrap();
    let (ca, mut cb) = connect(&mut a, &mut b).await;
    // b's application reads nothing while 50 datagrams arrive: 4 fit, 46 are dropped.
    for i in 0..50u8 {
        ca.send(Bytes::from(vec![0x80, i])).await.unwrap();
    }
    let s = wait_for(&engine, "46 drops", |s| s.drop_app_full == 46);
    assert_eq!(s.data_in, 50, "{s:?}");
    for i in 0..4u8 {
        assert_eq!(&cb.recv().await.unwrap()[..], &[0x80, i]);
    }
    // Room again: the next datagram is delivered, right after the first four.
    ca.send(Bytes::from(vec![0x80, 99])).await.unwrap();
    assert_eq!(&cb.recv().await.unwrap()[..], &[0x80, 99]);
    assert_eq!(cb.stats().await.unwrap().packets_received, 51);
    engine.shutdown().unwrap();
}

/// Forwards `from`'s candidates to `to` until its end of gathering (other events are
/// skipped) and returns them.
async fn signal(from: &mut Events, to: &Agent) -> Vec<Candidate> {
    let mut sent = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), from.recv())
            .await
            .expect("an event")
            .expect("the agent is alive");
        match ev {
            AgentEvent::Candidate(Some(c)) => {
                to.add_remote_candidate((*c).clone()).unwrap();
                sent.push(*c);
            }
            AgentEvent::Candidate(None) => break,
            _ => {}
        }
    }
    to.end_of_remote_candidates();
    sent
}

/// ICE restart through the API (RFC 8445 §9), on a dedicated agent against a mux one:
/// new credentials whose ufrag still names the shard, the candidates announced again,
/// data on the old path meanwhile, a new selection over the same `Conn`s once both
/// sides have the other's new credentials, and a mux port that no longer knows the old
/// ufrag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_renews_credentials_and_reconnects_over_the_same_conns() {
    let engine = engine(1);
    let mux = engine.mux_addrs()[0];
    let opts = |mux| {
        AgentOptions::default()
            .loopback_only()
            .with_network_types(&[NetworkType::Udp4])
            .with_mux(mux)
    };
    let mut a = engine.agent(opts(false)).unwrap();
    let mut b = engine.agent(opts(true)).unwrap();
    let (mut ea, mut eb) = (a.take_events().unwrap(), b.take_events().unwrap());
    a.gather_candidates().unwrap();
    b.gather_candidates().unwrap();
    let first_a = signal(&mut ea, &b).await;
    let first_b = signal(&mut eb, &a).await;
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    let (mut ca, mut cb) = (ca.unwrap(), cb.unwrap());
    round_trips(&ca, &mut cb, 2).await;
    round_trips(&cb, &mut ca, 2).await;

    let ra = a.restart().await.unwrap();
    let rb = b.restart().await.unwrap();
    for (r, old, agent) in [(&ra, &ua, &a), (&rb, &ub, &b)] {
        assert_ne!(&r.ufrag, old);
        assert_eq!(
            r.ufrag.as_bytes()[0],
            old.as_bytes()[0],
            "the shard's character"
        );
        assert_eq!(agent.local_credentials(), (r.ufrag.clone(), r.pwd.clone()));
        assert_eq!(agent.state().unwrap().get(), ConnectionState::Checking);
    }
    assert_ne!((&ra.pwd, &rb.pwd), (&pa, &pb));
    assert_eq!((&ra.candidates, &rb.candidates), (&first_a, &first_b));
    // The old path carries data until a new pair is selected.
    round_trips(&ca, &mut cb, 2).await;
    round_trips(&cb, &mut ca, 2).await;

    // The mux port forgot the old ufrag: a check for it is an unknown ufrag now.
    let before = engine.stats().ice;
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .send_to(&binding_request(&format!("{ub}:x"), [7; 12]), mux)
        .unwrap();
    wait_for(&engine, "the old ufrag dropped", |s| {
        s.drop_unknown_ufrag > before.drop_unknown_ufrag
    });

    // Re-signal: the candidates come again as events, then the new credentials.
    assert_eq!(signal(&mut eb, &a).await, rb.candidates);
    assert_eq!(signal(&mut ea, &b).await, ra.candidates);
    a.set_remote_credentials(&rb.ufrag, &rb.pwd).unwrap();
    b.set_remote_credentials(&ra.ufrag, &ra.pwd).unwrap();
    common::until_up(&a).await;
    common::until_up(&b).await;
    let s = a.stats().await.unwrap();
    assert!(s.selected.is_some() && s.rtt > Duration::ZERO, "{s:?}");
    round_trips(&ca, &mut cb, 3).await;
    round_trips(&cb, &mut ca, 3).await;
    assert_eq!(
        engine.stats().ice.drop_unknown_ufrag,
        before.drop_unknown_ufrag + 1,
        "the new ufrag is known"
    );

    // A restart whose caller stops waiting once the command is out (its future polled
    // once, then dropped): the handle shows the credentials the shard now uses.
    let (u2, _) = b.local_credentials();
    {
        let mut once = std::pin::pin!(b.restart());
        let _ = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(once.as_mut(), cx))
        })
        .await;
    }
    let (u3, _) = b.local_credentials();
    assert_ne!(u3, u2);
    // The agent answers a check for it (a 401: signed with another key); the demux would
    // have dropped a check for an unknown ufrag without a word.
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    probe
        .send_to(&binding_request(&format!("{u3}:x"), [8; 12]), mux)
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = probe.recv_from(&mut buf).expect("the agent answers");
    assert_eq!(from, mux);
    let m = icering::stun::Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.transaction_id(), &[8; 12]);
}
