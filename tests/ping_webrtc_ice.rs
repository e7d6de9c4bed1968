//! `icering ping` against webrtc-rs's ICE agent (`webrtc-ice`, a port of pion/ice) in both
//! roles, through pion's ping-pong HTTP signalling, on loopback only.
//!
//! The webrtc-ice side follows pion's example: it posts its credentials at once, gathers
//! (and trickles each candidate as it is gathered) only once the peer's credentials have
//! arrived, posts form-encoded bodies and never signals end-of-candidates. Its signalling
//! server is written here (not `icering::ping::signal`'s): like pion's it reads only
//! `application/x-www-form-urlencoded` bodies and adds a posted candidate to the agent
//! before answering; it also counts a candidate that arrives before this side has posted
//! its credentials (pion's example would panic on it).
//!
//! webrtc-ice gathers host candidates only, UDP over IPv4 only, on interface `lo` and IP
//! 127.0.0.1 only, with mDNS disabled: nothing leaves the machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icering::ping::signal::{Remote, form_decode};
use tokio::sync::mpsc::{self, UnboundedSender};
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState;
use webrtc_util::Conn;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// icering's credentials, as posted to our signalling server.
struct Auth {
    ufrag: String,
    pwd: String,
}

/// What our signalling server shares with the test.
struct Server {
    agent: Arc<Agent>,
    rt: tokio::runtime::Handle,
    auth_tx: UnboundedSender<Auth>,
    /// Set just before we post our credentials.
    auth_posted: AtomicBool,
    /// Candidate lines icering posted, in order.
    candidates: Mutex<Vec<String>>,
    // Protocol violations (pion's example would panic on or ignore such a post).
    candidate_before_auth: AtomicUsize,
    not_form_encoded: AtomicUsize,
    malformed: AtomicUsize,
}

impl Server {
    /// Adds a posted candidate to the agent and waits until the agent holds it, so the
    /// `200` tells icering its candidate was conveyed. `false` if webrtc-ice rejects it.
    fn add_candidate(&self, line: &str) -> bool {
        let raw = line.strip_prefix("candidate:").unwrap_or(line);
        let Ok(c) = unmarshal_candidate(raw) else {
            return false;
        };
        let (ip, port) = (c.address(), c.port());
        let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
        {
            let _rt = self.rt.enter();
            if self.agent.add_remote_candidate(&c).is_err() {
                return false;
            }
        }
        // webrtc-ice adds it in a spawned task: wait for it (bounded).
        self.rt.block_on(async {
            for _ in 0..2000 {
                let known = self.agent.get_remote_candidates_stats().await;
                if known.iter().any(|s| {
                    s.ip == ip && s.port == port && s.candidate_type == CandidateType::Host
                }) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        })
    }
}

/// One request per connection, `Content-Length` body, answered `200` or `4xx`.
fn serve_one(stream: TcpStream, srv: &Server) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let (mut len, mut form_type) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = value.parse().unwrap_or(0);
        } else if name.eq_ignore_ascii_case("content-type") {
            form_type = value
                .split(';')
                .next()
                .is_some_and(|v| v.trim() == "application/x-www-form-urlencoded");
        }
    }
    let mut body = vec![0; len.min(64 * 1024)];
    r.read_exact(&mut body)?;
    let form = form_decode(&body).unwrap_or_default();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let status = if method != "POST" {
        405
    } else if !form_type {
        srv.not_form_encoded.fetch_add(1, Ordering::SeqCst);
        400
    } else {
        match (path.as_str(), get("ufrag"), get("pwd"), get("candidate")) {
            ("/remoteAuth", Some(ufrag), Some(pwd), _) => {
                let _ = srv.auth_tx.send(Auth { ufrag, pwd });
                200
            }
            ("/remoteCandidate", _, _, Some(c)) => {
                if !srv.auth_posted.load(Ordering::SeqCst) {
                    srv.candidate_before_auth.fetch_add(1, Ordering::SeqCst);
                }
                println!("webrtc-ice remote candidate: {c}");
                let ok = srv.add_candidate(&c);
                srv.candidates.lock().unwrap().push(c);
                if ok {
                    200
                } else {
                    srv.malformed.fetch_add(1, Ordering::SeqCst);
                    400
                }
            }
            ("/remoteAuth" | "/remoteCandidate", ..) => {
                srv.malformed.fetch_add(1, Ordering::SeqCst);
                400
            }
            _ => 404,
        }
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    w.flush()
}

/// Posts a form with `icering::ping::signal`'s client, retrying while the connection is
/// refused (pion's example posts once; the retry only covers icering's start-up).
async fn post(remote: &Remote, path: &'static str, fields: Vec<(&'static str, String)>) {
    let remote = remote.clone();
    tokio::task::spawn_blocking(move || {
        let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match remote.post_form(path, &f) {
                Ok(200) => return,
                Ok(s) => panic!("icering answered {s} to POST {path}"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("POST {path}: {e}"),
            }
        }
    })
    .await
    .unwrap();
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The UDP address of icering's single host candidate, from its first stdout line.
fn icering_udp_addr(stdout: &str) -> SocketAddr {
    let rest = stdout
        .split("agent on udp ")
        .nth(1)
        .expect("icering prints its UDP address");
    rest.split(';').next().unwrap().parse().unwrap()
}

/// One session: `count` messages each way, one every `interval` on both sides.
async fn run(icering_controlling: bool, count: usize, interval: Duration) {
    let slack = interval * count as u32;
    let (p_icering, p_ours) = (free_port(), free_port());
    let listener = TcpListener::bind(("127.0.0.1", p_ours)).unwrap();

    // webrtc-ice: host candidates on 127.0.0.1 / `lo` over UDP/IPv4 only, no mDNS, no
    // STUN/TURN URLs.
    let agent = Arc::new(
        Agent::new(AgentConfig {
            network_types: vec![NetworkType::Udp4],
            candidate_types: vec![CandidateType::Host],
            multicast_dns_mode: MulticastDnsMode::Disabled,
            include_loopback: true,
            interface_filter: Arc::new(Some(Box::new(|name: &str| name == "lo"))),
            ip_filter: Arc::new(Some(Box::new(|ip: IpAddr| ip == LOOPBACK))),
            is_controlling: !icering_controlling,
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let (state_tx, mut state_rx) = mpsc::unbounded_channel::<ConnectionState>();
    agent.on_connection_state_change(Box::new(move |s| {
        println!("webrtc-ice state: {s}");
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));

    let (auth_tx, mut auth_rx) = mpsc::unbounded_channel::<Auth>();
    let srv = Arc::new(Server {
        agent: agent.clone(),
        rt: tokio::runtime::Handle::current(),
        auth_tx,
        auth_posted: AtomicBool::new(false),
        candidates: Mutex::new(Vec::new()),
        candidate_before_auth: AtomicUsize::new(0),
        not_form_encoded: AtomicUsize::new(0),
        malformed: AtomicUsize::new(0),
    });
    {
        let srv = srv.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let _ = serve_one(s, &srv);
                if srv.auth_tx.is_closed() {
                    return;
                }
            }
        });
    }

    let icering = Command::new(env!("CARGO_BIN_EXE_icering"))
        .arg("ping")
        .arg(if icering_controlling {
            "--controlling"
        } else {
            "--controlled"
        })
        .args([
            "--signal-listen",
            &format!("127.0.0.1:{p_icering}"),
            "--signal-remote",
            &format!("http://127.0.0.1:{p_ours}"),
            "--count",
            &count.to_string(),
            "--interval",
            &interval.as_secs_f64().to_string(),
            "--timeout",
            &(25 + slack.as_secs()).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let icering = tokio::task::spawn_blocking(move || icering.wait_with_output());

    let remote = Remote::parse(&format!("http://127.0.0.1:{p_icering}")).unwrap();
    // Trickle: each gathered candidate is posted as it comes, in order.
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel::<String>();
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            if let Some(c) = c {
                let _ = cand_tx.send(c.marshal());
            }
            Box::pin(async {})
        },
    ));
    let posted = Arc::new(Mutex::new(Vec::<String>::new()));
    let poster = {
        let (remote, posted) = (remote.clone(), posted.clone());
        tokio::spawn(async move {
            while let Some(line) = cand_rx.recv().await {
                println!("webrtc-ice local candidate: {line}");
                post(
                    &remote,
                    "/remoteCandidate",
                    vec![("candidate", line.clone())],
                )
                .await;
                posted.lock().unwrap().push(line);
            }
        })
    };

    // Credentials at once.
    let (ufrag, pwd) = agent.get_local_user_credentials().await;
    srv.auth_posted.store(true, Ordering::SeqCst);
    post(&remote, "/remoteAuth", vec![("ufrag", ufrag), ("pwd", pwd)]).await;

    // Gathering (and so trickling) starts once icering's credentials are here.
    let Auth {
        ufrag: r_ufrag,
        pwd: r_pwd,
    } = tokio::time::timeout(Duration::from_secs(20), auth_rx.recv())
        .await
        .expect("icering posts its credentials")
        .expect("signalling server running");
    println!("icering credentials: ufrag {r_ufrag}");
    agent.gather_candidates().unwrap();

    let (_cancel_tx, cancel_rx) = mpsc::channel(1);
    let connect = async {
        if icering_controlling {
            agent
                .accept(cancel_rx, r_ufrag, r_pwd)
                .await
                .map(|c| c as Arc<dyn Conn + Send + Sync>)
        } else {
            agent
                .dial(cancel_rx, r_ufrag, r_pwd)
                .await
                .map(|c| c as Arc<dyn Conn + Send + Sync>)
        }
    };
    let conn = match tokio::time::timeout(Duration::from_secs(20), connect).await {
        Ok(Ok(c)) => c,
        other => {
            let o = icering.await.unwrap().unwrap();
            panic!(
                "webrtc-ice did not connect: {:?}\nicering:\n{}",
                other.map(|r| r.err()),
                text(&o)
            );
        }
    };
    println!("webrtc-ice connected");

    // Data both ways: `count` messages each way, then keep receiving until icering exits.
    let (word, peer_word) = if icering_controlling {
        ("pong", "ping")
    } else {
        ("ping", "pong")
    };
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let receiver = {
        let (conn, received) = (conn.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok(n) = conn.recv(&mut buf).await {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                println!("webrtc-ice received: {msg}");
                received.lock().unwrap().push(msg);
            }
        })
    };
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(20) + slack;
    while sent < count || received.lock().unwrap().len() < count {
        assert!(
            Instant::now() < deadline,
            "data exchange timed out: sent {sent}, received {:?}",
            received.lock().unwrap()
        );
        if sent < count {
            sent += 1;
            conn.send(format!("{word} {sent}").as_bytes())
                .await
                .expect("webrtc-ice sends");
        }
        tokio::time::sleep(interval).await;
    }

    let o = tokio::time::timeout(Duration::from_secs(30) + slack, icering)
        .await
        .expect("icering exits")
        .unwrap()
        .unwrap();
    let ti = text(&o);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "icering:\n{ti}");

    // The selected pair, as webrtc-ice sees it: loopback host <-> icering's host candidate
    // (not a peer-reflexive one learnt from a check that overtook the candidate).
    let pair = agent
        .get_selected_candidate_pair()
        .expect("webrtc-ice has a selected pair");
    let icering_addr = icering_udp_addr(&stdout);
    assert_eq!(pair.local.candidate_type(), CandidateType::Host, "{ti}");
    assert_eq!(pair.remote.candidate_type(), CandidateType::Host, "{ti}");
    assert_eq!(pair.local.addr().ip(), LOOPBACK, "{ti}");
    assert_eq!(pair.remote.addr(), icering_addr, "{ti}");
    let ours = pair.local.addr();
    // icering selected the same pair from its side. The remote kind is what icering knew
    // at selection: `host`, or `prflx` when webrtc-ice's first check overtook its candidate
    // on the signalling path (the agent upgrades it when the candidate arrives).
    assert!(
        [
            format!("selected pair: {icering_addr} (host) -> {ours} (host)\n"),
            format!("selected pair: {icering_addr} (host) -> {ours} (prflx)\n"),
        ]
        .iter()
        .any(|line| stdout.contains(line.as_str())),
        "webrtc-ice selected {ours} <-> {icering_addr}\n{ti}"
    );
    // Each side got the other's `count` messages.
    let got = received.lock().unwrap().clone();
    for i in 1..=count {
        assert!(got.contains(&format!("{peer_word} {i}")), "{got:?}\n{ti}");
        assert!(
            stdout.contains(&format!("received: {word} {i}\n")),
            "{got:?}\n{ti}"
        );
    }
    assert!(
        got.iter().all(|m| m.starts_with(peer_word)),
        "{got:?}\n{ti}"
    );

    // Signalling followed pion's rules both ways.
    assert_eq!(srv.candidate_before_auth.load(Ordering::SeqCst), 0, "{ti}");
    assert_eq!(srv.not_form_encoded.load(Ordering::SeqCst), 0, "{ti}");
    assert_eq!(srv.malformed.load(Ordering::SeqCst), 0, "{ti}");
    let lines = srv.candidates.lock().unwrap().clone();
    assert_eq!(
        lines.len(),
        1,
        "icering trickles its one host candidate: {lines:?}"
    );
    for c in agent.get_local_candidates().await.unwrap() {
        assert_eq!(
            c.addr().ip(),
            LOOPBACK,
            "webrtc-ice gathered {}",
            c.marshal()
        );
    }
    let mut states = Vec::new();
    while let Ok(s) = state_rx.try_recv() {
        states.push(s);
    }
    assert!(states.contains(&ConnectionState::Connected), "{states:?}");
    for bad in [ConnectionState::Disconnected, ConnectionState::Failed] {
        assert!(
            !states.contains(&bad),
            "webrtc-ice went {bad}: {states:?}\n{ti}"
        );
    }
    assert!(!stdout.contains("ice state: Disconnected"), "{ti}");

    // icering took every candidate webrtc-ice trickled (address and port as posted).
    let posted = posted.lock().unwrap().clone();
    assert!(!posted.is_empty(), "webrtc-ice posted no candidate");
    for line in &posted {
        let f: Vec<&str> = line.split_whitespace().collect();
        let tail = format!(" {} {} typ host", f[4], f[5]);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("remote candidate: ") && l.contains(&tail)),
            "icering did not take {line:?}\n{ti}"
        );
    }

    receiver.abort();
    poster.abort();
    agent.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icering_controlling_webrtc_ice_controlled() {
    run(true, 3, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_ice_controlling_icering_controlled() {
    run(false, 3, Duration::from_millis(200)).await;
}

/// 6 s between messages, longer than both sides' 5 s disconnected timeout: only the
/// keepalives / consent checks each side sends (and answers) keep the pair alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_carry_idle_gaps_icering_controlling() {
    run(true, 2, Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_carry_idle_gaps_webrtc_ice_controlling() {
    run(false, 2, Duration::from_secs(6)).await;
}
