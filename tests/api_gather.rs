//! Server-reflexive and relayed candidates for API agents (dedicated sockets), gathered
//! and relayed by the shard's STUN/TURN clients, against our own STUN/TURN server running
//! in-process (an `icering serve` engine: static user, loopback peers allowed) on
//! loopback.
//!
//! On loopback nothing is translated, so the server-reflexive address always equals the
//! host candidate and is dropped as redundant (RFC 8445 §5.1.3). What shows the Binding
//! exchange really happened: gathering ends without a `GatherError` (the other outcome of
//! the Binding client is a timeout or an error response), the server counts the answer,
//! and an agent gathering srflx candidates only (no host candidate to be redundant with)
//! gets the srflx candidate the server reported.
//!
//! TURN over TLS (`turns:`) runs against coturn's TLS listener and against our own
//! (`[server] tls_listen`), with a CA and a server certificate made by the test.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use icering::config::IoBackendChoice;
use icering::ice::CandidateKind;
use icering::turn::server::ServerStats;
use icering::{
    Agent, AgentEvent, AgentOptions, ApiError, Candidate, CandidateTypes, Config, Conn,
    ConnectionState, Engine, NetworkType, ServerUrl,
};

/// The STUN/TURN server: one shard on 127.0.0.1, user alice:secret, relays to loopback.
fn server() -> Engine {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 1;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    Engine::start(&c).unwrap()
}

/// The engine hosting the agents (no server of its own), two shards.
fn agents() -> Engine {
    agents_on(IoBackendChoice::Auto)
}

fn agents_on(backend: IoBackendChoice) -> Engine {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 2;
    c.io.backend = backend;
    Engine::start(&c).unwrap()
}

fn base_opts() -> AgentOptions {
    AgentOptions::default()
        .loopback_only()
        .with_network_types(&[NetworkType::Udp4])
}

fn stun_url(server: SocketAddr) -> String {
    format!("stun:{server}")
}

fn turn_url(server: SocketAddr) -> String {
    format!("turn:{server}?transport=udp")
}

fn turn_tcp_url(server: SocketAddr) -> String {
    format!("turn:{server}?transport=tcp")
}

fn only(host: bool, srflx: bool, relay: bool) -> CandidateTypes {
    CandidateTypes { host, srflx, relay }
}

/// Polls the server's counters until `f` holds (they are published once per loop turn).
fn wait_server(engine: &Engine, what: &str, f: impl Fn(&ServerStats) -> bool) -> ServerStats {
    common::wait_until(what, || engine.server_stats(), f)
}

/// What one agent's gathering produced, up to `Candidate(None)`.
#[derive(Debug, Default)]
struct Gathered {
    candidates: Vec<Candidate>,
    errors: Vec<(String, String)>,
}

impl Gathered {
    fn of(&self, kind: CandidateKind) -> Vec<&Candidate> {
        self.candidates.iter().filter(|c| c.kind == kind).collect()
    }
}

/// Gathers on `agent`, draining its events until the end of gathering. Every candidate
/// also goes to `peer` (trickle), then the end of candidates.
async fn gather(agent: &mut Agent, peer: Option<&Agent>) -> Gathered {
    let mut events = agent.take_events().unwrap();
    agent.gather_candidates().unwrap();
    let mut g = Gathered::default();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("gathering ends")
            .expect("agent alive");
        match ev {
            AgentEvent::Candidate(Some(c)) => {
                if let Some(p) = peer {
                    p.add_remote_candidate((*c).clone()).unwrap();
                }
                g.candidates.push(*c);
            }
            AgentEvent::Candidate(None) => break,
            AgentEvent::GatherError { url, error } => g.errors.push((url, error)),
            other => panic!("before end of gathering: {other:?}"),
        }
    }
    if let Some(p) = peer {
        p.end_of_remote_candidates();
    }
    g
}

/// A relay-only agent (`relay_only`) and a host agent, candidates trickled to each other:
/// the first gathered exactly one relayed candidate, without errors, the second one host
/// candidate; returns both agents and both candidates.
async fn relay_only_and_host(
    engine: &Engine,
    relay_only: AgentOptions,
) -> (Agent, Agent, Candidate, Candidate) {
    let mut a = engine.agent(relay_only).unwrap();
    let mut b = engine.agent(base_opts()).unwrap();
    let ga = gather(&mut a, Some(&b)).await;
    let gb = gather(&mut b, Some(&a)).await;
    assert!(ga.errors.is_empty(), "{ga:?}");
    assert_eq!(ga.candidates.len(), 1, "{ga:?}");
    let relayed = ga.candidates[0].clone();
    assert_eq!(relayed.kind, CandidateKind::Relayed);
    assert_eq!(gb.of(CandidateKind::Host).len(), 1, "{gb:?}");
    (a, b, relayed, gb.candidates[0].clone())
}

async fn connect(a: &Agent, b: &Agent) -> (Conn, Conn) {
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    let (ca, cb) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    (ca.expect("dial"), cb.expect("accept"))
}

/// Sends `m` from `from` until `to` receives it. The first datagrams on a relayed pair
/// may precede the far side's permission (dropped, UDP semantics): resend on silence.
async fn deliver(from: &Conn, to: &mut Conn, m: &str) {
    let got = loop {
        from.send(Bytes::from(m.to_owned())).await.unwrap();
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(500), to.recv()).await {
            break got.unwrap();
        }
    };
    assert_eq!(&got[..], m.as_bytes());
}

/// `n` datagrams each way, each checked on arrival.
async fn exchange(ca: &mut Conn, cb: &mut Conn, n: usize) {
    for i in 0..n {
        deliver(ca, cb, &format!("ping {i}")).await;
        deliver(cb, ca, &format!("pong {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathers_relay_and_drops_the_redundant_srflx() {
    let srv = server();
    let at = srv.server_addrs()[0];
    let engine = agents();
    let opts = base_opts()
        .with_urls(&[&stun_url(at)])
        .with_turn(&turn_url(at), "alice", "secret");
    let mut a = engine.agent(opts).unwrap();
    let g = gather(&mut a, None).await;
    assert!(g.errors.is_empty(), "{g:?}");
    let hosts = g.of(CandidateKind::Host);
    let relays = g.of(CandidateKind::Relayed);
    assert_eq!(hosts.len(), 1, "{g:?}");
    // Loopback: the mapped address is the host candidate, so no srflx candidate.
    assert!(g.of(CandidateKind::ServerReflexive).is_empty(), "{g:?}");
    assert_eq!(relays.len(), 1, "{g:?}");
    let (host, relay) = (hosts[0], relays[0]);
    assert!(relay.addr.ip().is_loopback(), "{relay:?}");
    assert_ne!(relay.addr, host.addr);
    assert_ne!(relay.addr.port(), at.port());
    // raddr of a relayed candidate: the client as the server saw it (= host here).
    assert_eq!(relay.related, Some(host.addr));

    // The Binding answer and the Allocate success; one allocation lives.
    let s = wait_server(&srv, "answers", |s| s.answered >= 2 && s.allocations() == 1);
    assert_eq!(s.allocations_created, 1, "{s:?}");
    // One 401 (the unauthenticated first Allocate), no wrong credentials.
    assert_eq!(s.auth_failures, 0, "{s:?}");

    // Close deletes the allocation (Refresh with LIFETIME 0).
    a.close();
    wait_server(&srv, "allocation deleted", |s| s.allocations() == 0);
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srflx_only_agent_gets_the_mapped_address() {
    let srv = server();
    let at = srv.server_addrs()[0];
    let engine = agents();
    let opts = base_opts()
        .with_urls(&[&stun_url(at)])
        .with_candidate_types(only(false, true, false));
    let mut a = engine.agent(opts).unwrap();
    let g = gather(&mut a, None).await;
    assert!(g.errors.is_empty(), "{g:?}");
    assert_eq!(g.candidates.len(), 1, "{g:?}");
    let c = &g.candidates[0];
    assert_eq!(c.kind, CandidateKind::ServerReflexive);
    // No NAT on loopback: mapped = base, and the base is the raddr.
    assert!(c.addr.ip().is_loopback(), "{c:?}");
    assert_eq!(c.related, Some(c.base));
    assert_eq!(c.addr, c.base);
    wait_server(&srv, "binding answered", |s| s.answered >= 1);
    a.close();
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

/// Mux agents (RFC 8445 §5.1.1.2 on the shared port): each one's Binding request leaves
/// from the shard's mux socket with the agent's transaction-id prefix, and the answer is
/// routed back to that agent (across shards when the kernel hands it to another shard's
/// copy of the socket). Two agents gather at once, srflx only (on loopback the mapped
/// address equals the mux address, which a host candidate would make redundant); later
/// agents get it from the shard's cache without a request; one agent connects from its
/// srflx candidate to a dedicated agent and data flows both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_agents_get_srflx_on_the_shared_port_and_connect() {
    let srv = server();
    let at = srv.server_addrs()[0];
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 2;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let mux_at = engine.mux_addrs()[0];
    let opts = base_opts()
        .with_mux(true)
        .with_urls(&[&stun_url(at)])
        .with_candidate_types(only(false, true, false));
    let mut a = engine.agent(opts.clone()).unwrap();
    let mut a2 = engine.agent(opts.clone()).unwrap();
    let other = agents();
    let mut b = other.agent(base_opts()).unwrap();

    let (ga, ga2) = tokio::join!(gather(&mut a, Some(&b)), gather(&mut a2, None));
    for g in [&ga, &ga2] {
        assert!(g.errors.is_empty(), "{g:?}");
        assert_eq!(g.candidates.len(), 1, "{g:?}");
        let c = &g.candidates[0];
        assert_eq!(c.kind, CandidateKind::ServerReflexive, "{c:?}");
        assert_eq!(c.base, mux_at, "{c:?}");
        assert_eq!(c.addr, mux_at, "{c:?}");
        assert_eq!(c.related, Some(mux_at), "{c:?}");
    }
    wait_server(&srv, "both bindings answered", |s| s.answered >= 2);
    // Two more agents, one per shard (round robin), within the 30 s the shards reuse a
    // mux socket's mapped address: their srflx candidates come without a request.
    for _ in 0..2 {
        let mut late = engine.agent(opts.clone()).unwrap();
        let g = gather(&mut late, None).await;
        assert!(g.errors.is_empty(), "{g:?}");
        assert_eq!(g.candidates.len(), 1, "{g:?}");
        assert_eq!(g.candidates[0].kind, CandidateKind::ServerReflexive);
        assert_eq!(
            (g.candidates[0].addr, g.candidates[0].base),
            (mux_at, mux_at)
        );
        late.close();
    }
    gather(&mut b, Some(&a)).await;
    let (mut ca, mut cb) = connect(&a, &b).await;
    // The only local candidate is the srflx one, whose base is the mux socket.
    let (local, _) = ca.stats().await.unwrap().selected.expect("selected pair");
    assert_eq!(local, mux_at);
    exchange(&mut ca, &mut cb, 3).await;
    // Still the two answers of the first two agents (a request would have been answered
    // before its agent's gathering could end).
    let s = srv.server_stats();
    assert_eq!(s.answered, 2, "{s:?}");
    a2.close();
    engine.shutdown().unwrap();
    other.shutdown().unwrap();
    srv.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_agent_connects_through_the_relay() {
    relay_only_to_host(IoBackendChoice::Auto).await;
}

/// The test above runs on whatever `auto` picks (io_uring where the kernel allows); the
/// same flow with the agents on epoll + recvmmsg/sendmmsg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_agent_connects_on_the_portable_backend() {
    relay_only_to_host(IoBackendChoice::Portable).await;
}

async fn relay_only_to_host(backend: IoBackendChoice) {
    let srv = server();
    let at = srv.server_addrs()[0];
    let engine = agents_on(backend);
    let relay_only = base_opts()
        .with_turn(&turn_url(at), "alice", "secret")
        .with_candidate_types(only(false, false, true));
    let (a, b, relayed, host) = relay_only_and_host(&engine, relay_only).await;

    let (mut ca, mut cb) = connect(&a, &b).await;
    // The only pair: a's relayed address ↔ b's host, seen the same from both ends.
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    let (la, ra) = sa.selected.expect("a selected");
    let (lb, rb) = sb.selected.expect("b selected");
    assert_eq!(la, relayed.addr);
    assert_eq!(rb, relayed.addr);
    assert_eq!(ra, host.addr);
    assert_eq!(lb, host.base);

    exchange(&mut ca, &mut cb, 5).await;
    for s in [ca.stats().await.unwrap(), cb.stats().await.unwrap()] {
        assert!(s.packets_received >= 5, "{s:?}");
        assert!(matches!(
            s.state,
            ConnectionState::Connected | ConnectionState::Completed
        ));
    }
    // Everything went through the relay both ways (checks and data).
    wait_server(&srv, "relayed both ways", |s| {
        s.relayed_to_peer >= 5 && s.relayed_to_client >= 5
    });

    a.close();
    b.close();
    wait_server(&srv, "allocation deleted", |s| s.allocations() == 0);
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_only_agents_connect_relay_to_relay() {
    let srv = server();
    let at = srv.server_addrs()[0];
    let engine = agents();
    let relay_only = base_opts()
        .with_turn(&turn_url(at), "alice", "secret")
        .with_candidate_types(only(false, false, true));
    let mut a = engine.agent(relay_only.clone()).unwrap();
    let mut b = engine.agent(relay_only).unwrap();
    let ga = gather(&mut a, Some(&b)).await;
    let gb = gather(&mut b, Some(&a)).await;
    assert_eq!(ga.of(CandidateKind::Relayed).len(), 1, "{ga:?}");
    assert_eq!(gb.of(CandidateKind::Relayed).len(), 1, "{gb:?}");
    let (ra, rb) = (ga.candidates[0].addr, gb.candidates[0].addr);
    assert_eq!(srv.server_stats().allocations(), 2);

    let (mut ca, mut cb) = connect(&a, &b).await;
    assert_eq!(ca.stats().await.unwrap().selected, Some((ra, rb)));
    assert_eq!(cb.stats().await.unwrap().selected, Some((rb, ra)));
    exchange(&mut ca, &mut cb, 3).await;
    // Each datagram crosses the relay twice (client → relay a → relay b → client).
    wait_server(&srv, "relayed", |s| {
        s.relayed_to_peer >= 6 && s.relayed_to_client >= 6
    });
    drop((ca, cb));
    drop((a, b));
    wait_server(&srv, "allocations deleted", |s| s.allocations() == 0);
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_turn_password_is_reported_and_host_still_works() {
    let srv = server();
    let at = srv.server_addrs()[0];
    let engine = agents();
    let bad = base_opts().with_turn(&turn_url(at), "alice", "not-the-password");
    let mut a = engine.agent(bad).unwrap();
    let mut b = engine.agent(base_opts()).unwrap();
    let ga = gather(&mut a, Some(&b)).await;
    gather(&mut b, Some(&a)).await;
    assert!(ga.of(CandidateKind::Relayed).is_empty(), "{ga:?}");
    assert_eq!(ga.of(CandidateKind::Host).len(), 1, "{ga:?}");
    assert_eq!(ga.errors.len(), 1, "{ga:?}");
    let (url, error) = &ga.errors[0];
    assert_eq!(url, &turn_url(at));
    assert!(error.contains("401"), "{error}");
    let s = wait_server(&srv, "auth failure", |s| s.auth_failures >= 1);
    assert_eq!(s.allocations(), 0, "{s:?}");

    // Nothing else broke: the host pair connects and carries data.
    let (mut ca, mut cb) = connect(&a, &b).await;
    exchange(&mut ca, &mut cb, 2).await;
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_of_another_family_is_reported_and_gathering_ends() {
    let engine = agents();
    // IPv4 sockets only, an IPv6 server: nothing to ask it from (no datagram is sent).
    let opts = base_opts().with_urls(&["stun:[::1]:3478"]);
    let mut a = engine.agent(opts).unwrap();
    let g = gather(&mut a, None).await;
    assert_eq!(g.of(CandidateKind::Host).len(), 1, "{g:?}");
    assert_eq!(g.candidates.len(), 1, "{g:?}");
    assert_eq!(g.errors.len(), 1, "{g:?}");
    assert_eq!(g.errors[0].0, "stun:[::1]:3478");
    assert!(g.errors[0].1.contains("family"), "{g:?}");
    engine.shutdown().unwrap();
}

#[test]
fn unsupported_or_invalid_urls_are_refused() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let stun = AgentOptions::default().with_urls(&["stun:127.0.0.1:3478"]);
    // STUN on a mux agent is accepted (srflx on the shared port), TURN is not.
    assert!(engine.agent(stun.clone().with_mux(true)).is_ok());
    let turn = AgentOptions::default().with_turn("turn:127.0.0.1", "u", "p");
    assert!(matches!(
        engine.agent(turn.with_mux(true)),
        Err(ApiError::Unsupported(_))
    ));
    // TURN over TCP is accepted (on a dedicated agent), not on mux agents.
    let tcp = AgentOptions::default().with_turn("turn:127.0.0.1?transport=tcp", "u", "p");
    assert!(matches!(
        engine.agent(tcp.clone().with_mux(true)),
        Err(ApiError::Unsupported(_))
    ));
    assert!(engine.agent(tcp).is_ok());
    // TURN over TLS is accepted; STUN over TLS is not; PEM roots without a certificate
    // are refused when the agent is made.
    let tls = AgentOptions::default().with_turn("turns:127.0.0.1", "u", "p");
    assert!(
        engine
            .agent(tls.clone().with_tls_roots_pem(&common::Pki::new().ca))
            .is_ok()
    );
    assert!(matches!(
        engine.agent(tls.with_tls_roots_pem("not PEM")),
        Err(ApiError::Invalid(_))
    ));
    let stuns = AgentOptions::default().with_urls(&["stuns:127.0.0.1"]);
    assert!(matches!(engine.agent(stuns), Err(ApiError::Unsupported(_))));
    let no_user = AgentOptions::default().with_urls(&["turn:127.0.0.1"]);
    assert!(matches!(engine.agent(no_user), Err(ApiError::Invalid(_))));
    let bad = AgentOptions::default().with_urls(&["stun://127.0.0.1"]);
    assert!(matches!(engine.agent(bad), Err(ApiError::Invalid(_))));
    // The credential never shows in debug output.
    let dbg = format!("{:?}", ServerUrl::turn("turn:h", "u", "hunter2"));
    assert!(!dbg.contains("hunter2"), "{dbg}");
    // A valid STUN URL on a dedicated agent is accepted.
    assert!(engine.agent(stun).is_ok());
    engine.shutdown().unwrap();
}

/// TURN over TCP (RFC 8656 §3.1) to the server's TCP listener on its UDP port, from
/// agents on another engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_agent_connects_through_a_tcp_relay() {
    let srv = server();
    let engine = agents();
    tcp_relay_only_to_host(&srv, &engine).await;
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

/// The same with the agents hosted by the TURN server's own engine: its shard then
/// watches two stream sets (the server's listeners and the agents' TURN streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_beside_the_servers_own_tcp_listener() {
    tcp_relay_on_the_servers_engine(IoBackendChoice::Auto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_beside_the_servers_own_tcp_listener_on_the_portable_backend() {
    tcp_relay_on_the_servers_engine(IoBackendChoice::Portable).await;
}

async fn tcp_relay_on_the_servers_engine(backend: IoBackendChoice) {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 1;
    c.io.backend = backend;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    let srv = Engine::start(&c).unwrap();
    tcp_relay_only_to_host(&srv, &srv).await;
    srv.shutdown().unwrap();
}

/// An agent gathering host + relay (TURN over TCP to `srv`) shows the allocation was made
/// over TCP and ends with its stream; then a relay-only agent connects to a host agent,
/// both on `engine`, and carries data both ways.
async fn tcp_relay_only_to_host(srv: &Engine, engine: &Engine) {
    let at = srv.server_addrs()[0];
    // Host + relay: over TCP the server saw the client at its TCP connection's address,
    // not at the agent's UDP socket (over UDP the relayed raddr is the host candidate,
    // see `gathers_relay_and_drops_the_redundant_srflx`).
    let both = base_opts()
        .with_turn(&turn_tcp_url(at), "alice", "secret")
        .with_candidate_types(only(true, false, true));
    let mut c = engine.agent(both).unwrap();
    let gc = gather(&mut c, None).await;
    assert!(gc.errors.is_empty(), "{gc:?}");
    let (hosts, relays) = (gc.of(CandidateKind::Host), gc.of(CandidateKind::Relayed));
    assert_eq!((hosts.len(), relays.len()), (1, 1), "{gc:?}");
    let mapped = relays[0].related.expect("raddr");
    assert!(mapped.ip().is_loopback(), "{gc:?}");
    assert_ne!(mapped, hosts[0].addr, "allocated over UDP? {gc:?}");
    wait_server(srv, "one allocation", |s| s.allocations() == 1);
    // The allocation lives as long as the connection: closing the agent closes the
    // stream (no Refresh is sent over TCP), and the server deletes the allocation.
    c.close();
    wait_server(srv, "allocation deleted with the stream", |s| {
        s.allocations() == 0
    });

    let relay_only = base_opts()
        .with_turn(&turn_tcp_url(at), "alice", "secret")
        .with_candidate_types(only(false, false, true));
    let (a, b, relayed, _) = relay_only_and_host(engine, relay_only).await;

    let (mut ca, mut cb) = connect(&a, &b).await;
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    assert_eq!(sa.selected.expect("a selected").0, relayed.addr);
    assert_eq!(sb.selected.expect("b selected").1, relayed.addr);
    exchange(&mut ca, &mut cb, 5).await;
    wait_server(srv, "relayed both ways", |s| {
        s.relayed_to_peer >= 5 && s.relayed_to_client >= 5
    });
    a.close();
    b.close();
    wait_server(srv, "allocation deleted", |s| s.allocations() == 0);
}

/// A TURN-over-TCP server that refuses the connection: a `GatherError` for that URL, and
/// gathering still ends with the host candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tcp_relay_is_reported_and_gathering_ends() {
    // A port nobody listens on (bound then dropped).
    let at = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let engine = agents();
    let opts = base_opts().with_turn(&turn_tcp_url(at), "alice", "secret");
    let mut a = engine.agent(opts).unwrap();
    let g = gather(&mut a, None).await;
    assert_eq!(g.of(CandidateKind::Host).len(), 1, "{g:?}");
    assert!(g.of(CandidateKind::Relayed).is_empty(), "{g:?}");
    assert_eq!(g.errors.len(), 1, "{g:?}");
    assert_eq!(g.errors[0].0, turn_tcp_url(at));
    assert!(g.errors[0].1.contains("TCP"), "{g:?}");
    engine.shutdown().unwrap();
}

/// TURN over TLS (`turns:`, RFC 7065; RFC 8656 §3.1) to coturn's TLS listener: a
/// relay-only agent connects to a host agent through the relay with data both ways; a CA
/// the server's chain does not lead to, and a name the certificate does not hold, are
/// each a `GatherError` naming the certificate, while gathering still ends with the host
/// candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tls_through_coturn_and_certificates_checked() {
    let pki = common::Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coturn = common::coturn_tls("the TURN-over-TLS test", port, (46500, 46599), &pki);
    let Some(_coturn) = coturn else {
        return;
    };
    let url = format!("turns:127.0.0.1:{port}");
    let engine = agents();

    let relay_only = base_opts()
        .with_turn(&url, "alice", "secret")
        .with_tls_roots_pem(&pki.ca)
        .with_candidate_types(only(false, false, true));
    let (a, b, relayed, _) = relay_only_and_host(&engine, relay_only).await;
    // coturn relays on 127.0.0.1 from the range given it.
    assert!(
        (46500..=46599).contains(&relayed.addr.port()),
        "{relayed:?}"
    );
    let (mut ca, mut cb) = connect(&a, &b).await;
    let (sa, sb) = (ca.stats().await.unwrap(), cb.stats().await.unwrap());
    assert_eq!(sa.selected.expect("a selected").0, relayed.addr);
    assert_eq!(sb.selected.expect("b selected").1, relayed.addr);
    exchange(&mut ca, &mut cb, 5).await;
    a.close();
    b.close();

    let other_ca = common::Pki::new().ca;
    let wrong_name = format!("turns:localhost:{port}");
    for (url, roots, why) in [
        // Same CA name, other key: rustls reports BadSignature.
        (url.as_str(), other_ca.as_str(), "invalid peer certificate"),
        (wrong_name.as_str(), pki.ca.as_str(), "not valid for name"),
    ] {
        let opts = base_opts()
            .with_turn(url, "alice", "secret")
            .with_tls_roots_pem(roots)
            .with_candidate_types(only(true, false, true));
        let mut c = engine.agent(opts).unwrap();
        let g = gather(&mut c, None).await;
        assert_eq!(g.errors.len(), 1, "{g:?}");
        assert!(g.errors[0].0.starts_with(url), "{g:?}");
        assert!(g.errors[0].1.contains("certificate"), "{g:?}");
        assert!(g.errors[0].1.contains(why), "{g:?}");
        assert!(g.of(CandidateKind::Relayed).is_empty(), "{g:?}");
        assert_eq!(g.of(CandidateKind::Host).len(), 1, "{g:?}");
        c.close();
    }
    engine.shutdown().unwrap();
}

/// STUN/TURN over TLS on our own server (`[server] tls_listen`): a relay-only agent
/// connects through it with data both ways; a client that speaks plain STUN to the TLS
/// port is cut off and counted as malformed, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_over_tls_through_our_own_tls_listener() {
    use std::io::{Read, Write};
    let pki = common::Pki::new();
    let files = pki.files("tls-listen");
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.tls_cert = Some(files.cert.clone().into());
    c.server.tls_key = Some(files.key.clone().into());
    c.server.shards = 2;
    c.turn.users = vec!["alice:secret".into()];
    c.turn.allow_loopback_peers = true;
    let srv = Engine::start(&c).unwrap();
    drop(files);
    let at = srv.server_tls_addrs()[0];

    // Plain STUN on the TLS port: not a ClientHello, the stream is closed.
    let mut plain = std::net::TcpStream::connect(at).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = [0u8; 64];
    let n = common::binding_request([7; 12], &mut req);
    plain.write_all(&req[..n]).unwrap();
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    loop {
        match plain.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    // rustls' alert record (content type 21), sent before the close; never a STUN answer.
    assert!(got.first() == Some(&21), "{got:02x?}");
    wait_server(&srv, "the plain client counted", |s| {
        s.dropped_malformed >= 1
    });

    let engine = agents();
    let url = format!("turns:{at}");
    let relay_only = base_opts()
        .with_turn(&url, "alice", "secret")
        .with_tls_roots_pem(&pki.ca)
        .with_candidate_types(only(false, false, true));
    let (a, b, relayed, _) = relay_only_and_host(&engine, relay_only).await;
    let relayed = relayed.addr;
    let (mut ca, mut cb) = connect(&a, &b).await;
    assert_eq!(ca.stats().await.unwrap().selected.expect("a").0, relayed);
    exchange(&mut ca, &mut cb, 5).await;
    wait_server(&srv, "relayed both ways over TLS", |s| {
        s.allocations() == 1 && s.relayed_to_peer >= 5 && s.relayed_to_client >= 5
    });
    // Closing the agent closes the TLS stream: the allocation ends with it.
    a.close();
    b.close();
    wait_server(&srv, "allocation deleted", |s| s.allocations() == 0);
    engine.shutdown().unwrap();
    srv.shutdown().unwrap();
}

/// Closing an agent whose `turns:` relay is connected ends its TLS session properly: the
/// server reads close_notify (RFC 8446 §6.1) before the connection's end. The server is
/// a rustls endpoint in the test that completes the handshake and reads to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_turns_agent_sends_close_notify() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = common::Pki::new();
    let chain = CertificateDer::pem_slice_iter(pki.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    let (handshaken, handshake_done) = std::sync::mpsc::channel();
    // Whether close_notify came before the end of the stream.
    let server = std::thread::spawn(move || -> bool {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        handshaken.send(()).unwrap();
        loop {
            match conn.read_tls(&mut sock) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if conn.process_new_packets().unwrap().peer_has_closed() {
                return true;
            }
        }
    });

    let engine = agents();
    let mut a = engine
        .agent(
            base_opts()
                .with_turn(&format!("turns:{at}"), "alice", "secret")
                .with_tls_roots_pem(&pki.ca)
                .with_candidate_types(only(false, false, true)),
        )
        .unwrap();
    let _events = a.take_events().unwrap();
    a.gather_candidates().unwrap();
    tokio::task::spawn_blocking(move || handshake_done.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the agent's TLS handshake completes");
    a.close();
    let notified = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    assert!(notified, "the stream ended without close_notify");
    engine.shutdown().unwrap();
}
