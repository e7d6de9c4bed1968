//! `icering ping`: pion/ice's `examples/ping-pong` on the sans-IO [`IceAgent`].
//!
//! One UDP socket, one agent, HTTP signalling compatible with pion's example (see
//! [`signal`]). Once connected, the controlling side sends `ping N` and the controlled side
//! `pong N` every `interval`; each prints what it receives. With `count`, the run ends
//! successfully once `count` messages were sent and received (after a short linger so the
//! peer gets ours too).
//!
//! Signalling order, as pion's example needs it: credentials are posted at once (retried
//! until the peer's server answers); local candidates are posted only after the peer's
//! credentials have arrived (pion panics on a candidate before credentials). Incoming
//! credentials and candidates are accepted in any order, but remote candidates reach the
//! agent (and so are paired and checked) only once every local candidate has been posted:
//! RFC 8838 §10 forbids pairing a local candidate before it was trickled, and a check that
//! outruns our candidate makes the peer learn our host address as peer-reflexive (see
//! `Trickle`).

pub mod gather;
pub mod signal;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use crate::ice::{Candidate, ConnectionState, Handled, IceAgent, IceConfig, IceEvent};
use crate::net::Received;
pub use gather::{CandidateTypes, Servers, TlsRoots};
use gather::{Gatherer, Relayed};
use signal::{Remote, Signal};

/// Settings of one `icering ping` run.
#[derive(Debug, Clone)]
pub struct PingConfig {
    /// Controlling (sends `ping`) or controlled (sends `pong`).
    pub controlling: bool,
    /// UDP address of the single host candidate.
    pub bind: SocketAddr,
    /// Where this side's signalling server listens.
    pub signal_listen: SocketAddr,
    /// Base URL of the peer's signalling server.
    pub signal_remote: String,
    /// Time between application messages.
    pub interval: Duration,
    /// Stop successfully after this many messages each way (`None`: run until timeout).
    pub count: Option<u64>,
    /// Give up after this long.
    pub timeout: Duration,
    /// STUN/TURN servers for server-reflexive and relayed candidates.
    pub servers: Servers,
    /// Which local candidate types the agent gets.
    pub candidate_types: CandidateTypes,
}

impl PingConfig {
    /// pion's port convention: controlling serves 9000 and posts to 9001, controlled the
    /// reverse.
    pub fn default_signalling(controlling: bool) -> (SocketAddr, String) {
        let (local, remote) = if controlling {
            (9000, 9001)
        } else {
            (9001, 9000)
        };
        (
            SocketAddr::from(([127, 0, 0, 1], local)),
            format!("http://127.0.0.1:{remote}"),
        )
    }
}

/// What the poster thread should send.
enum Post {
    Candidate(String),
}

/// Trickle ordering of the ping runtime (pion's example rules and RFC 8838 §10).
///
/// * Local candidates are posted only after the peer's credentials arrived (pion's example
///   panics on a candidate that comes before them).
/// * Remote candidates are handed to the agent only once the peer's credentials arrived and
///   every local candidate known so far has been posted (the peer's server answered, or the
///   poster gave up on it): the agent pairs and checks as soon as it has a remote
///   candidate, and RFC 8838 §10 says a local candidate MUST NOT be paired before it was
///   trickled. Without this the first check overtakes our own candidate on the signalling
///   path and the peer learns our host address as peer-reflexive (webrtc-ice then keeps
///   the pair typed prflx, tests/ping_webrtc_ice.rs).
#[derive(Debug, Default)]
struct Trickle {
    have_remote_creds: bool,
    /// Local candidate lines waiting for the peer's credentials.
    unsent_local: Vec<String>,
    /// Local candidates handed to the poster and not yet answered.
    in_flight: usize,
    /// Remote candidates not yet given to the agent.
    held_remote: Vec<Candidate>,
}

impl Trickle {
    /// Remote candidates may be paired: credentials known, all local candidates conveyed.
    fn may_pair(&self) -> bool {
        self.have_remote_creds && self.unsent_local.is_empty() && self.in_flight == 0
    }

    /// A new local candidate: `Some(line)` to post now.
    fn local(&mut self, line: String) -> Option<String> {
        if self.have_remote_creds {
            self.in_flight += 1;
            Some(line)
        } else {
            self.unsent_local.push(line);
            None
        }
    }

    /// The peer's credentials arrived: the local candidates to post now, and the remote
    /// candidates to add now.
    fn remote_credentials(&mut self) -> (Vec<String>, Vec<Candidate>) {
        if self.have_remote_creds {
            return (Vec::new(), Vec::new());
        }
        self.have_remote_creds = true;
        let post = std::mem::take(&mut self.unsent_local);
        self.in_flight += post.len();
        (post, self.release())
    }

    /// A remote candidate arrived: `Some` to add it to the agent now.
    fn remote(&mut self, c: Candidate) -> Option<Candidate> {
        if self.may_pair() {
            Some(c)
        } else {
            self.held_remote.push(c);
            None
        }
    }

    /// The poster is done with one local candidate: the remote candidates to add now.
    fn posted(&mut self) -> Vec<Candidate> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.release()
    }

    fn release(&mut self) -> Vec<Candidate> {
        if self.may_pair() {
            std::mem::take(&mut self.held_remote)
        } else {
            Vec::new()
        }
    }
}

fn say(msg: std::fmt::Arguments<'_>) {
    println!("{msg}");
}

/// Runs a ping-pong session to completion. `Ok` once `count` messages went each way.
pub fn run(cfg: &PingConfig) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    if cfg.bind.ip().is_unspecified() {
        return Err("--bind needs a specific IP address (it becomes the host candidate)".into());
    }
    let socket =
        UdpSocket::bind(cfg.bind).map_err(|e| format!("cannot bind UDP {}: {e}", cfg.bind))?;
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
    let remote = Remote::parse(&cfg.signal_remote)?;
    let listener = TcpListener::bind(cfg.signal_listen)
        .map_err(|e| format!("cannot listen for signalling on {}: {e}", cfg.signal_listen))?;
    let (sig_tx, sig_rx) = mpsc::channel::<Signal>();
    signal::spawn_server(listener, sig_tx);
    say(format_args!(
        "{} agent on udp {local_addr}; signalling on http://{} -> {}",
        if cfg.controlling {
            "controlling"
        } else {
            "controlled"
        },
        cfg.signal_listen,
        cfg.signal_remote
    ));

    let seed = u64::from(std::process::id())
        ^ (start.elapsed().as_nanos() as u64)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut agent = IceAgent::new(IceConfig {
        controlling: cfg.controlling,
        seed,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let (ufrag, pwd) = {
        let (u, p) = agent.local_credentials();
        (u.to_owned(), p.to_owned())
    };

    // Poster thread: credentials first (retried until the peer's server answers), then
    // candidates in order.
    let (post_tx, post_rx) = mpsc::channel::<Post>();
    let (post_err_tx, post_err_rx) = mpsc::channel::<String>();
    let (posted_tx, posted_rx) = mpsc::channel::<()>();
    {
        let remote = remote.clone();
        std::thread::Builder::new()
            .name("ping-post".into())
            .spawn(move || {
                poster(
                    remote,
                    ufrag,
                    pwd,
                    deadline,
                    post_rx,
                    post_err_tx,
                    posted_tx,
                )
            })
            .map_err(|e| e.to_string())?;
    }

    if cfg.candidate_types.host {
        agent
            .add_local_candidate(Candidate::host(local_addr))
            .map_err(|e| e.to_string())?;
    }
    let mut gatherer = Gatherer::start(
        &socket,
        &cfg.servers,
        cfg.candidate_types,
        local_addr,
        seed,
        Instant::now(),
    );
    agent.handle_timeout(Instant::now());

    let mut trickle = Trickle::default();
    let mut state = agent.state();
    let mut sent: u64 = 0;
    let mut next_send: Option<Instant> = None;
    let mut done_at: Option<Instant> = None;
    let linger = (cfg.interval * 2).max(Duration::from_millis(500));
    let (word, peer_word) = if cfg.controlling {
        ("ping", "pong")
    } else {
        ("pong", "ping")
    };
    let mut out = [0u8; 1500];
    let mut buf = [0u8; 2048];
    let mut wrap = [0u8; 2048];
    let mut relayed: Vec<Relayed> = Vec::new();
    let mut app = App {
        received: 0,
        peer_word,
    };
    let mut datagrams_in = 0u64;

    loop {
        let now = Instant::now();
        if now >= deadline {
            // The check list and the datagram count tell a lossy path from a broken one.
            let pairs: Vec<String> = agent
                .pairs()
                .map(|(l, r, st)| format!("{l} -> {r} {st:?}"))
                .collect();
            return Err(format!(
                "timed out after {:?} (state {state:?}, sent {sent}, received {}; \
                 {datagrams_in} datagrams received; pairs: {})",
                cfg.timeout,
                app.received,
                pairs.join(", ")
            ));
        }
        if let Some(t) = done_at
            && now >= t
        {
            say(format_args!("done: sent {sent}, received {}", app.received));
            // Dropping the gatherer deletes the TURN allocations.
            return Ok(());
        }
        if let Ok(e) = post_err_rx.try_recv() {
            return Err(e);
        }

        // Events first: a local candidate the agent already has (the host one, from
        // before the loop) reaches `trickle` before the peer's signals are handled, so the
        // peer's candidates wait until it is posted and no check can overtake it.
        while let Some(ev) = agent.poll_event() {
            match ev {
                IceEvent::LocalCandidate(c) => {
                    let line = c.to_sdp();
                    say(format_args!("local candidate: {line}"));
                    if let Some(line) = trickle.local(line) {
                        let _ = post_tx.send(Post::Candidate(line));
                    }
                }
                IceEvent::GatheringComplete => say(format_args!("gathering complete")),
                IceEvent::ConnectionState(s) => {
                    state = s;
                    say(format_args!("ice state: {s:?}"));
                    match s {
                        ConnectionState::Failed => {
                            return Err(format!(
                                "ICE failed (sent {sent}, received {})",
                                app.received
                            ));
                        }
                        ConnectionState::Closed => return Err("ICE agent closed".into()),
                        _ => {}
                    }
                }
                IceEvent::SelectedPair { local, remote } => {
                    let kinds = agent
                        .selected_candidates()
                        .map(|(l, r)| (l.kind.as_str(), r.kind.as_str()));
                    let (lk, rk) = kinds.unwrap_or(("?", "?"));
                    say(format_args!(
                        "selected pair: {local} ({lk}) -> {remote} ({rk})"
                    ));
                    if gatherer.is_relayed(local) {
                        gatherer.selected(local, remote, Instant::now());
                    }
                }
                IceEvent::RoleChanged { controlling } => {
                    say(format_args!("role changed: controlling={controlling}"));
                }
            }
        }

        // Signals from the peer.
        loop {
            match sig_rx.try_recv() {
                Ok(Signal::RemoteAuth { ufrag, pwd }) => {
                    say(format_args!("remote credentials: ufrag {ufrag}"));
                    agent
                        .set_remote_credentials(&ufrag, &pwd)
                        .map_err(|e| format!("bad remote credentials: {e}"))?;
                    let (post, add) = trickle.remote_credentials();
                    for line in post {
                        let _ = post_tx.send(Post::Candidate(line));
                    }
                    for c in add {
                        add_remote(&mut agent, &mut gatherer, c);
                    }
                }
                Ok(Signal::RemoteCandidate(c)) => {
                    say(format_args!("remote candidate: {}", c.to_sdp()));
                    if let Some(c) = trickle.remote(c) {
                        add_remote(&mut agent, &mut gatherer, c);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Err("signalling server stopped".into());
                }
            }
            agent.handle_timeout(Instant::now());
        }

        // Local candidates the poster is done with: held remote candidates may now pair.
        while posted_rx.try_recv().is_ok() {
            for c in trickle.posted() {
                add_remote(&mut agent, &mut gatherer, c);
            }
            agent.handle_timeout(Instant::now());
        }

        // Gathering: srflx and relay candidates as they appear, then the end.
        let now = Instant::now();
        let mut found = Vec::new();
        let complete = gatherer.drive(&socket, now, &mut wrap, &mut |c| found.push(c));
        for c in found {
            if let Err(e) = agent.add_local_candidate(c) {
                say(format_args!("local candidate refused: {e}"));
            }
        }
        if complete {
            agent.end_of_local_candidates();
        }
        // Data relayed over TCP.
        gatherer.poll_tcp(now, &mut relayed);
        for r in relayed.drain(..) {
            app.deliver(&mut agent, now, r.peer, r.relayed, &r.data);
        }

        // Timers and outgoing STUN (checks from a relayed candidate go through TURN).
        if agent.poll_timeout().is_some_and(|t| t <= now) {
            agent.handle_timeout(now);
        }
        flush(&mut agent, &mut gatherer, &socket, now, &mut out, &mut wrap);

        // Application data.
        let connected = matches!(
            state,
            ConnectionState::Connected | ConnectionState::Completed
        );
        if connected && let Some((local_sel, remote_addr)) = agent.selected_pair() {
            let now = Instant::now();
            let due = *next_send.get_or_insert(now);
            if now >= due {
                sent += 1;
                let msg = format!("{word} {sent}");
                if gatherer.send_relayed(
                    &socket,
                    local_sel,
                    remote_addr,
                    msg.as_bytes(),
                    &mut wrap,
                    now,
                ) {
                    say(format_args!("sent: {msg}"));
                } else {
                    match socket.send_to(msg.as_bytes(), remote_addr) {
                        Ok(_) => say(format_args!("sent: {msg}")),
                        Err(e) => say(format_args!("send error: {e}")),
                    }
                }
                next_send = Some(due + cfg.interval);
            }
        }
        if let Some(n) = cfg.count
            && done_at.is_none()
            && sent >= n
            && app.received >= n
        {
            done_at = Some(Instant::now() + linger);
        }

        // Wait for a datagram until the next thing to do (capped so signals are seen).
        let now = Instant::now();
        // TURN over TCP frames arrive on a channel: poll it often.
        let cap = if gatherer.has_tcp() { 2 } else { 20 };
        let mut wake = now + Duration::from_millis(cap);
        if let Some(t) = agent.poll_timeout() {
            wake = wake.min(t);
        }
        if let Some(t) = gatherer.poll_timeout() {
            wake = wake.min(t);
        }
        if connected && let Some(t) = next_send {
            wake = wake.min(t);
        }
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                datagrams_in += 1;
                let now = Instant::now();
                if !gatherer.handle_udp(now, source, &buf[..n], &mut relayed) {
                    app.deliver(&mut agent, now, source, local_addr, &buf[..n]);
                }
                for r in relayed.drain(..) {
                    app.deliver(&mut agent, now, r.peer, r.relayed, &r.data);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors surfacing on the socket (e.g. connection refused): ignore.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(format!("UDP receive: {e}")),
        }
    }
}

/// Application messages received.
struct App {
    received: u64,
    peer_word: &'static str,
}

impl App {
    /// Feeds a datagram to the agent (`source` → `destination`, a relayed address when it
    /// came through TURN) and prints it if it is application data.
    fn deliver(
        &mut self,
        agent: &mut IceAgent,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let handled = agent.handle_packet(
            now,
            Received {
                source,
                destination,
                contents: data,
            },
        );
        if handled == Handled::Data {
            self.received += 1;
            let text = String::from_utf8_lossy(data);
            say(format_args!("received: {text}"));
            if !text.starts_with(self.peer_word) {
                say(format_args!("(unexpected message from {source})"));
            }
        }
    }
}

fn add_remote(agent: &mut IceAgent, gatherer: &mut Gatherer, c: Candidate) {
    gatherer.add_remote(c.addr, Instant::now());
    if let Err(e) = agent.add_remote_candidate(c) {
        say(format_args!("remote candidate ignored: {e}"));
    }
}

fn flush(
    agent: &mut IceAgent,
    gatherer: &mut Gatherer,
    socket: &UdpSocket,
    now: Instant,
    out: &mut [u8],
    wrap: &mut [u8],
) {
    while let Some(t) = agent.poll_transmit(now, out) {
        if gatherer.send_relayed(socket, t.source, t.destination, &out[..t.size], wrap, now) {
            continue;
        }
        if let Err(e) = socket.send_to(&out[..t.size], t.destination) {
            say(format_args!("send to {} failed: {e}", t.destination));
        }
    }
}

/// Posts our credentials (retried until the peer's server answers), then each candidate it
/// is given, in order; reports each candidate it is done with on `posted`.
fn poster(
    remote: Remote,
    ufrag: String,
    pwd: String,
    deadline: Instant,
    jobs: Receiver<Post>,
    errors: mpsc::Sender<String>,
    posted: mpsc::Sender<()>,
) {
    let mut announced = false;
    loop {
        match remote.post_form("/remoteAuth", &[("ufrag", &ufrag), ("pwd", &pwd)]) {
            Ok(200) => break,
            Ok(status) => {
                let _ = errors.send(format!("peer refused our credentials: HTTP {status}"));
                return;
            }
            Err(e) => {
                if !announced {
                    say(format_args!(
                        "waiting for the peer's signalling server ({e}); retrying"
                    ));
                    announced = true;
                }
                if Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    say(format_args!("posted credentials"));
    loop {
        let Post::Candidate(line) = match jobs.recv_timeout(Duration::from_millis(500)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // The peer's server is up (it sent us its credentials); retry briefly anyway.
        let mut tries = 0;
        loop {
            match remote.post_form("/remoteCandidate", &[("candidate", &line)]) {
                Ok(200) => break,
                Ok(status) => {
                    say(format_args!("peer refused candidate: HTTP {status}"));
                    break;
                }
                Err(e) if tries < 20 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    say(format_args!("cannot post candidate: {e}"));
                    break;
                }
            }
        }
        // Conveyed, refused or given up on: either way, stop holding remote candidates.
        let _ = posted.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(port: u16) -> Candidate {
        Candidate::host(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn local_candidates_wait_for_the_peer_credentials() {
        let mut t = Trickle::default();
        assert_eq!(t.local("a".into()), None);
        assert_eq!(t.local("b".into()), None);
        let (post, add) = t.remote_credentials();
        assert_eq!(post, ["a", "b"]);
        assert!(add.is_empty());
        // Later local candidates go out at once; credentials twice change nothing.
        assert_eq!(t.local("c".into()).as_deref(), Some("c"));
        assert_eq!(t.remote_credentials(), (Vec::new(), Vec::new()));
    }

    /// The webrtc-ice interop finding: a remote candidate that arrives while our own
    /// candidate is still on its way to the peer must not be paired (RFC 8838 §10), or our
    /// first check reaches the peer before our candidate does.
    #[test]
    fn remote_candidates_pair_only_after_every_local_candidate_was_posted() {
        let mut t = Trickle::default();
        assert_eq!(t.local("ours".into()), None);
        // Before the credentials: held.
        assert_eq!(t.remote(cand(1)), None);
        let (post, add) = t.remote_credentials();
        assert_eq!(post, ["ours"]);
        assert!(add.is_empty(), "paired before our candidate was posted");
        // Our candidate is still being posted: held.
        assert_eq!(t.remote(cand(2)), None);
        assert_eq!(t.posted(), [cand(1), cand(2)]);
        // Everything conveyed: straight through.
        assert_eq!(t.remote(cand(3)), Some(cand(3)));
        // A new local candidate in flight holds remote ones again until it is posted.
        assert_eq!(t.local("later".into()).as_deref(), Some("later"));
        assert_eq!(t.remote(cand(4)), None);
        assert_eq!(t.posted(), [cand(4)]);
    }

    #[test]
    fn without_local_candidates_remote_ones_pair_once_credentials_arrive() {
        let mut t = Trickle::default();
        assert_eq!(t.remote(cand(1)), None);
        let (post, add) = t.remote_credentials();
        assert!(post.is_empty());
        assert_eq!(add, [cand(1)]);
        // A stray acknowledgement never underflows.
        assert!(t.posted().is_empty());
        assert_eq!(t.remote(cand(2)), Some(cand(2)));
    }
}
