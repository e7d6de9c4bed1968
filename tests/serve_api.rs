//! `icering serve --admin`: the HTTP session API against a real client agent.
//!
//! Starts the `icering` binary with a shared ICE port and the session API, creates
//! sessions over HTTP (ICE-lite echo, and a full echo session), connects to each with a
//! full controlling agent through the library API (its own engine, its own socket),
//! exchanges a datagram (echoed by the session's shard), reads the session's state, sends
//! malformed requests (4xx with a JSON error, the server keeps serving), and deletes the
//! session.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use icering::ice::Candidate;
use icering::{AgentOptions, Config, Engine, NetworkType};
use serde_json::Value;

struct Server {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `icering serve` with the session API on an ephemeral port; reads the bound
/// address from its log.
fn start_server() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_icering"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-turn",
            "--shards",
            "2",
            "--ice-listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn icering serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("session API on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("icering serve logs its session API address");
    Server {
        child,
        admin: addr.parse().expect("admin address"),
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A full client agent on loopback (controlling, through `dial`), gathered: its host
/// candidates.
fn client(engine: &Engine) -> (icering::Agent, Vec<Candidate>) {
    let agent = engine
        .agent(
            AgentOptions::default()
                .loopback_only()
                .with_network_types(&[NetworkType::Udp4]),
        )
        .expect("client agent");
    let mine = agent.gather_candidates().expect("gather");
    assert!(!mine.is_empty());
    (agent, mine)
}

/// `GET /sessions/{id}` until `done` accepts it or 10 s passed: the last answer.
fn session_state(admin: SocketAddr, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, b) = common::http(admin, "GET", &format!("/sessions/{id}"), "", "");
        assert_eq!(st, 200, "{b}");
        let v = json(&b);
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_json_error(admin: SocketAddr, method: &str, path: &str, body: &str, status: u16) {
    let (got, b) = common::http(admin, method, path, "application/json", body);
    assert_eq!(got, status, "{method} {path} {body:?} → {b}");
    assert!(json(&b)["error"].is_string(), "error body: {b}");
}

#[test]
fn sessions_over_http_connect_echo_report_and_close() {
    let server = start_server();
    let admin = server.admin;

    // Malformed requests: 4xx with a JSON error, never a crash.
    assert_json_error(admin, "POST", "/sessions", "{\"data\": 7}", 400);
    assert_json_error(admin, "GET", "/sessions/doesnotexist", "", 404);
    assert_json_error(admin, "GET", "/nowhere", "", 404);
    assert_json_error(admin, "PUT", "/sessions", "", 405);
    assert_json_error(
        admin,
        "POST",
        "/sessions/doesnotexist/remote-candidates",
        "candidate:1 1 udp 1 127.0.0.1 9 typ host",
        404,
    );

    // The client side: a full agent (controlling, through `dial`) on its own engine.
    let mut config = Config::embedded();
    config.server.listen.clear();
    config.server.shards = 1;
    let engine = Engine::start(&config).expect("client engine");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    for (create, lite) in [("{}", true), (r#"{"lite": false, "data": "echo"}"#, false)] {
        let (status, body) = common::http(admin, "POST", "/sessions", "application/json", create);
        assert_eq!(status, 201, "{body}");
        let s = json(&body);
        assert_eq!(s["lite"], lite);
        assert_eq!(s["data"], "echo");
        let id = s["id"].as_str().expect("id").to_string();
        let (ufrag, pwd) = (s["ufrag"].as_str().unwrap(), s["pwd"].as_str().unwrap());
        let server_cands: Vec<Candidate> = s["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .map(|c| Candidate::from_sdp(c.as_str().unwrap()).expect("candidate line"))
            .collect();
        assert!(!server_cands.is_empty());
        assert!(server_cands.iter().all(|c| c.addr.ip().is_loopback()));

        // Bad bodies on an existing session: 400, the session stays usable.
        let path = format!("/sessions/{id}/remote-candidates");
        assert_json_error(admin, "POST", &path, "candidate:not a candidate", 400);
        assert_json_error(
            admin,
            "POST",
            &format!("/sessions/{id}/remote-credentials"),
            "{\"ufrag\": 1}",
            400,
        );

        let (agent, mine) = client(&engine);
        let (my_ufrag, my_pwd) = agent.local_credentials();
        // Credentials form-encoded, as pion's ping-pong posts them.
        let form = format!(
            "ufrag={}&pwd={}",
            my_ufrag.replace('+', "%2B").replace('/', "%2F"),
            my_pwd.replace('+', "%2B").replace('/', "%2F")
        );
        let (st, b) = common::http(
            admin,
            "POST",
            &format!("/sessions/{id}/remote-credentials"),
            "application/x-www-form-urlencoded",
            &form,
        );
        assert_eq!(st, 204, "{b}");
        // Candidates as plain lines: a browser's mDNS host name first (ignored and
        // reported, the rest still taken), then ours, the first without the `candidate:`
        // prefix (pion's marshal format), the rest with it, then end-of-candidates.
        let mdns = "candidate:1 1 udp 2113937151 3f4a9c1e-7d2b-4e8f-9a61-0c5d2e7b8f90.local 54321 typ host";
        let mut text = format!("{mdns}\n");
        for (i, c) in mine.iter().enumerate() {
            if i > 0 {
                text.push_str("candidate:");
            }
            text.push_str(&c.to_sdp());
            text.push('\n');
        }
        text.push_str("a=end-of-candidates\n");
        let (st, b) = common::http(admin, "POST", &path, "text/plain", &text);
        assert_eq!(st, 200, "{b}");
        assert_eq!(json(&b)["ignored"], serde_json::json!([mdns]), "{b}");

        for c in server_cands {
            agent.add_remote_candidate(c).unwrap();
        }
        agent.end_of_remote_candidates();
        let payload = format!("hello session {id}");
        let mut conn = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), agent.dial(ufrag, pwd))
                .await
                .expect("dial in time")
                .expect("connected")
        });
        let echo = |conn: &mut icering::Conn, payload: &str| {
            rt.block_on(async {
                conn.send(Bytes::from(payload.to_string())).await.unwrap();
                tokio::time::timeout(Duration::from_secs(10), conn.recv())
                    .await
                    .expect("echo in time")
                    .expect("echo")
            })
        };
        assert_eq!(&echo(&mut conn, &payload)[..], payload.as_bytes());

        // The session's view: connected, the pair we used, our bytes counted both ways.
        let state = session_state(admin, &id, |v| {
            v["bytes_sent"].as_u64() >= Some(payload.len() as u64)
        });
        assert!(
            matches!(state["state"].as_str(), Some("connected" | "completed")),
            "{state}"
        );
        assert_eq!(state["bytes_received"].as_u64(), Some(payload.len() as u64));
        assert_eq!(state["bytes_sent"].as_u64(), Some(payload.len() as u64));
        let remote = state["selected_pair"]["remote"].as_str().expect("pair");
        let remote: SocketAddr = remote.parse().unwrap();
        assert!(mine.iter().any(|c| c.addr == remote), "{state}");

        // ICE restart of both sides (RFC 8445 §9): the session's new credentials and its
        // candidates from `restart`, the client's posted as before; a new selection over
        // the same `Conn`, and the echo still works.
        let (st, b) = common::http(admin, "POST", &format!("/sessions/{id}/restart"), "", "");
        assert_eq!(st, 200, "{b}");
        let r = json(&b);
        let (ufrag2, pwd2) = (r["ufrag"].as_str().unwrap(), r["pwd"].as_str().unwrap());
        assert_ne!((ufrag2, pwd2), (ufrag, pwd), "{b}");
        assert_eq!(
            ufrag2.as_bytes()[0],
            ufrag.as_bytes()[0],
            "the shard's character"
        );
        assert_eq!(r["candidates"], s["candidates"], "{b}");
        let mine2 = rt.block_on(agent.restart()).expect("client restart");
        let body = serde_json::json!({"ufrag": mine2.ufrag, "pwd": mine2.pwd}).to_string();
        let cred_path = format!("/sessions/{id}/remote-credentials");
        let (st, b) = common::http(admin, "POST", &cred_path, "application/json", &body);
        assert_eq!(st, 204, "{b}");
        let lines: Vec<String> = mine2.candidates.iter().map(|c| c.to_sdp()).collect();
        let body = serde_json::json!({"candidates": lines, "end_of_candidates": true});
        let (st, b) = common::http(admin, "POST", &path, "application/json", &body.to_string());
        assert_eq!(st, 204, "{b}");
        agent.set_remote_credentials(ufrag2, pwd2).unwrap();
        for c in r["candidates"].as_array().unwrap() {
            let c = Candidate::from_sdp(c.as_str().unwrap()).unwrap();
            agent.add_remote_candidate(c).unwrap();
        }
        agent.end_of_remote_candidates();
        rt.block_on(common::until_up(&agent));
        let again = format!("after restart {id}");
        assert_eq!(&echo(&mut conn, &again)[..], again.as_bytes());
        // The session itself is connected again: only a nomination checked with the new
        // credentials moves it out of Checking (the old path carried the echo meanwhile).
        let state = session_state(admin, &id, |v| {
            matches!(v["state"].as_str(), Some("connected" | "completed"))
        });
        assert!(
            matches!(state["state"].as_str(), Some("connected" | "completed")),
            "{state}"
        );
        assert!(state["selected_pair"]["remote"].is_string(), "{state}");

        let (st, _) = common::http(admin, "DELETE", &format!("/sessions/{id}"), "", "");
        assert_eq!(st, 204);
        assert_json_error(admin, "GET", &format!("/sessions/{id}"), "", 404);
        assert_json_error(admin, "DELETE", &format!("/sessions/{id}"), "", 404);
        agent.close();
    }
    let (st, b) = common::http(admin, "GET", "/sessions", "", "");
    assert_eq!((st, json(&b)["sessions"].as_u64()), (200, Some(0)));

    // One exchange (as WHIP): the client's offer in the create, the answer in its reply.
    let (agent, mine) = client(&engine);
    let (my_ufrag, my_pwd) = agent.local_credentials();
    let mdns =
        "candidate:1 1 udp 2113937151 3f4a9c1e-7d2b-4e8f-9a61-0c5d2e7b8f90.local 54321 typ host";
    let mut lines = vec![mdns.to_string()];
    lines.extend(mine.iter().map(|c| c.to_sdp()));
    // A bad line is a 400 and no session.
    let bad = serde_json::json!({"remote": {"ufrag": my_ufrag, "pwd": my_pwd,
        "candidates": ["candidate:1 1 udp"]}});
    assert_json_error(admin, "POST", "/sessions", &bad.to_string(), 400);
    let (_, b) = common::http(admin, "GET", "/sessions", "", "");
    assert_eq!(json(&b)["sessions"].as_u64(), Some(0), "{b}");
    let offer = serde_json::json!({"data": "echo", "remote": {"ufrag": my_ufrag, "pwd": my_pwd,
        "candidates": lines, "end_of_candidates": true}});
    let (status, body) = common::http(
        admin,
        "POST",
        "/sessions",
        "application/json",
        &offer.to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let s = json(&body);
    assert_eq!(s["ignored"], serde_json::json!([mdns]), "{body}");
    let id = s["id"].as_str().unwrap().to_string();
    for c in s["candidates"].as_array().unwrap() {
        agent
            .add_remote_candidate(Candidate::from_sdp(c.as_str().unwrap()).unwrap())
            .unwrap();
    }
    agent.end_of_remote_candidates();
    let (ufrag, pwd) = (s["ufrag"].as_str().unwrap(), s["pwd"].as_str().unwrap());
    let echoed = rt.block_on(async {
        let mut conn = tokio::time::timeout(Duration::from_secs(20), agent.dial(ufrag, pwd))
            .await
            .expect("dial in time")
            .expect("connected");
        conn.send(Bytes::from_static(b"one exchange"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("echo in time")
            .expect("echo")
    });
    assert_eq!(&echoed[..], b"one exchange");
    let (st, b) = common::http(admin, "GET", &format!("/sessions/{id}"), "", "");
    assert_eq!(st, 200, "{b}");
    let remote: SocketAddr = json(&b)["selected_pair"]["remote"]
        .as_str()
        .expect("a pair")
        .parse()
        .unwrap();
    assert!(mine.iter().any(|c| c.addr == remote), "{b}");
    let (st, _) = common::http(admin, "DELETE", &format!("/sessions/{id}"), "", "");
    assert_eq!(st, 204);
    agent.close();
    engine.shutdown().unwrap();
}
