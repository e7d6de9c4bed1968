//! Continual gathering on real interfaces (the mobile-gateway case): an agent's address
//! is replaced under a connected pair, and the connection follows it.
//!
//! Each test moves itself (its thread, and so the engine's shard and monitor threads it
//! starts, and the `ip` commands it runs) into a new network namespace with
//! `unshare(CLONE_NEWNET)`. There, `lo` gets 10.0.0.1 (the mover) and 10.1.0.1 (its
//! peer). After the pair connects and data flows, 10.0.0.2 is added and 10.0.0.1 deleted:
//! the mover's engine must see both (within its monitor interval), trickle a host
//! candidate for 10.0.0.2, remove the old one, and both sides must carry data again on
//! 10.0.0.2 — by renomination, whichever side moved.
//!
//! A third test gives the mover a TURN server (an icering engine on 127.0.0.1): a new
//! address must get its own allocation and relayed candidate, as the first one did.
//!
//! Needs root and `ip`; without them each test prints "skipped: <reason>" and passes,
//! except under `CI=true`, where it fails.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use icering::ice::CandidateKind;
use icering::{AgentEvent, AgentOptions, Candidate, Config, Conn, Engine, NetworkType};

fn only(net: [u8; 2]) -> AgentOptions {
    let mut o = AgentOptions::default()
        .with_network_types(&[NetworkType::Udp4])
        .with_ip_filter(move |ip| matches!(ip, IpAddr::V4(v) if v.octets()[..2] == net));
    // A quiet pair is Disconnected (and replaced) after 1 s instead of 5 s.
    o.disconnected_timeout = Duration::from_secs(1);
    o
}

/// Sends `m` from `from` until `to` receives it (the path may be moving).
async fn deliver(from: &Conn, to: &mut Conn, m: &str, within: Duration) {
    let end = Instant::now() + within;
    loop {
        assert!(Instant::now() < end, "{m:?} never arrived");
        let _ = from.send(Bytes::from(m.to_owned())).await;
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(200), to.recv()).await
            && &got[..] == m.as_bytes()
        {
            return;
        }
    }
}

async fn moves(mover_controlling: bool) {
    common::ip("link set lo up");
    common::ip("addr add 10.0.0.1/32 dev lo");
    common::ip("addr add 10.1.0.1/32 dev lo");
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    let engine = Engine::start(&c).unwrap();
    let mover_opts = only([10, 0])
        .with_continual_gathering(true)
        .with_network_monitor_interval(Duration::from_millis(100));
    let mut m = engine.agent(mover_opts).unwrap();
    let mut p = engine.agent(only([10, 1])).unwrap();
    let mut m_events = m.take_events().unwrap();
    let mut p_events = p.take_events().unwrap();
    m.gather_candidates().unwrap();
    p.gather_candidates().unwrap();

    // The peer's gathering ends; the mover's never does (continual): its candidates are
    // trickled for the whole test, as they come.
    while let Some(AgentEvent::Candidate(Some(c))) = p_events.recv().await {
        m.add_remote_candidate(*c).unwrap();
    }
    let (m_ufrag, m_pwd) = m.local_credentials();
    let (p_ufrag, p_pwd) = p.local_credentials();
    let p_handle = std::sync::Arc::new(p);
    let trickle = {
        let p = p_handle.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(e) = m_events.recv().await {
                match e {
                    AgentEvent::Candidate(Some(c)) => {
                        seen.push(c.addr);
                        p.add_remote_candidate(*c).unwrap();
                    }
                    AgentEvent::Candidate(None) => panic!("continual gathering ended"),
                    _ => {}
                }
            }
            seen
        })
    };
    let (mut cm, mut cp) = if mover_controlling {
        let (a, b) = tokio::join!(m.dial(&p_ufrag, &p_pwd), p_handle.accept(&m_ufrag, &m_pwd));
        (a.unwrap(), b.unwrap())
    } else {
        let (b, a) = tokio::join!(p_handle.dial(&m_ufrag, &m_pwd), m.accept(&p_ufrag, &p_pwd));
        (a.unwrap(), b.unwrap())
    };
    let old = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let new = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(cm.stats().await.unwrap().selected.unwrap().0.ip(), old);
    deliver(&cm, &mut cp, "before", Duration::from_secs(5)).await;
    deliver(&cp, &mut cm, "before back", Duration::from_secs(5)).await;

    // The interface's address changes.
    common::ip("addr add 10.0.0.2/32 dev lo");
    common::ip("addr del 10.0.0.1/32 dev lo");
    deliver(&cm, &mut cp, "after", Duration::from_secs(20)).await;
    deliver(&cp, &mut cm, "after back", Duration::from_secs(20)).await;
    let local: SocketAddr = cm.stats().await.unwrap().selected.unwrap().0;
    assert_eq!(local.ip(), new);
    let remote = cp.stats().await.unwrap().selected.unwrap().1;
    assert_eq!(remote, local, "the peer sends to the mover's new address");

    m.close();
    p_handle.close();
    let seen = trickle.await.unwrap();
    assert!(seen.iter().any(|a| a.ip() == old), "{seen:?}");
    assert!(seen.iter().any(|a| a.ip() == new), "{seen:?}");
    engine.shutdown().unwrap();
}

#[test]
fn controlling_agent_follows_its_new_address() {
    if !common::own_netns("controlling_agent_follows_its_new_address", &[]) {
        return;
    }
    // The runtime's threads start after `unshare`, in this thread's namespace.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(moves(true));
}

#[test]
fn controlled_agent_follows_its_new_address() {
    if !common::own_netns("controlled_agent_follows_its_new_address", &[]) {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(moves(false));
}

/// Waits for the next local candidate that satisfies `f`, trickled by `events`.
async fn candidate_where(
    events: &mut icering::Events,
    what: &str,
    f: impl Fn(&Candidate) -> bool,
) -> Candidate {
    let wait = async {
        loop {
            match events.recv().await {
                Some(AgentEvent::Candidate(Some(c))) if f(&c) => return *c,
                Some(AgentEvent::Candidate(None)) => panic!("continual gathering ended"),
                Some(AgentEvent::GatherError { url, error }) => panic!("{url}: {error}"),
                Some(_) => {}
                None => panic!("events closed before {what}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 20 s"))
}

/// The relayed candidate allocated from local address `ip` (its related address is the
/// server-reflexive one the TURN server saw: on loopback, the local address itself).
fn relayed_from(ip: IpAddr) -> impl Fn(&Candidate) -> bool {
    move |c| c.kind == CandidateKind::Relayed && c.related.is_some_and(|r| r.ip() == ip)
}

async fn new_address_relays(srv: &Engine, turn: SocketAddr) {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    let engine = Engine::start(&c).unwrap();
    let opts = only([10, 0])
        .with_continual_gathering(true)
        .with_network_monitor_interval(Duration::from_millis(100))
        .with_turn(&format!("turn:{turn}?transport=udp"), "alice", "secret");
    let mut m = engine.agent(opts).unwrap();
    let mut events = m.take_events().unwrap();
    m.gather_candidates().unwrap();
    let old = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let new = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let first = candidate_where(&mut events, "relay via 10.0.0.1", relayed_from(old)).await;

    common::ip("addr add 10.0.0.2/32 dev lo");
    let host = |c: &Candidate| c.kind == CandidateKind::Host && c.addr.ip() == new;
    candidate_where(&mut events, "host 10.0.0.2", host).await;
    let second = candidate_where(&mut events, "relay via 10.0.0.2", relayed_from(new)).await;
    assert_ne!(
        first.addr, second.addr,
        "two allocations, two relayed addresses"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.server_stats().allocations() < 2 {
        assert!(
            Instant::now() < deadline,
            "server: {:?}",
            srv.server_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.server_stats().allocations_created, 2);
    m.close();
    engine.shutdown().unwrap();
}

#[test]
fn a_new_address_gets_its_own_relay() {
    if !common::own_netns("a_new_address_gets_its_own_relay", &[]) {
        return;
    }
    common::ip("link set lo up");
    common::ip("addr add 10.0.0.1/32 dev lo");
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 1;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    let srv = Engine::start(&c).unwrap();
    let turn = srv.server_addrs()[0];
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(new_address_relays(&srv, turn));
    srv.shutdown().unwrap();
}
