//! icering's side of the load: agents hosted on an [`Engine`]'s shards, driven through the
//! public tokio-friendly API (`Engine::agent`, `gather_candidates`, `dial`/`accept`).
//!
//! Setups run in `--concurrency` lanes on one current-thread tokio runtime (the shards do
//! the ICE work; the lanes only signal and await). Each lane takes the next index until
//! `n` are done, so at most `concurrency` setups are in flight.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use icering::ice::{Candidate, ConnectionState};
use icering::{Agent, AgentOptions, Config, Conn, Engine, NetworkType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Args, Counts, Load, Setup, Sockets, add_failure, histogram};

fn engine(args: &Args, mux: bool) -> Result<Engine, String> {
    let mut config = Config::embedded();
    config.server.listen.clear();
    config.server.shards = args.shards;
    config.server.cores = args.cores.clone();
    config.server.pin = !args.no_pin;
    config.turn.enabled = false;
    if mux {
        config.ice.listen = vec!["127.0.0.1:0".parse().expect("literal")];
    }

    Engine::start(&config).map_err(|e| format!("engine: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Agents on loopback (on `ip` only, if given), one dedicated socket each (from `ports` if
/// given) unless `mux`.
fn options(mux: bool, ports: Option<(u16, u16)>, ip: Option<IpAddr>) -> AgentOptions {
    let mut o = AgentOptions::default()
        .loopback_only()
        .with_network_types(&[NetworkType::Udp4])
        .with_mux(mux);
    if let Some(ip) = ip {
        o = o.with_ip_filter(move |a| a == ip);
    }
    match ports {
        Some((lo, hi)) => o.with_port_range(lo, hi),
        None => o,
    }
}

/// Candidate lines as they would cross a signalling channel.
fn lines(c: &[Candidate]) -> Vec<String> {
    c.iter()
        .map(|c| format!("candidate:{}", c.to_sdp()))
        .collect()
}

fn add_lines(agent: &Agent, lines: &[String]) -> Result<(), String> {
    for l in lines {
        let c = Candidate::from_sdp(l).map_err(|e| format!("candidate line: {e}"))?;
        agent
            .add_remote_candidate(c)
            .map_err(|e| format!("add candidate: {e}"))?;
    }
    agent.end_of_remote_candidates();
    Ok(())
}

fn is_up(s: ConnectionState) -> bool {
    matches!(s, ConnectionState::Connected | ConnectionState::Completed)
}

/// What a lane keeps between its setups: where the current setup is (named in timeout
/// failures) and anything to reset after a timeout cut a setup short.
pub(crate) trait Lane {
    fn stage(&self) -> &'static str;
    fn set_stage(&mut self, s: &'static str);
    /// A setup was abandoned mid-way (timeout): drop half-used state (e.g. a keep-alive
    /// HTTP connection with an answer still in flight).
    fn reset(&mut self) {}
}

/// Lane state of the pairs load: only the stage.
pub(crate) struct Stage(&'static str);

impl Lane for Stage {
    fn stage(&self) -> &'static str {
        self.0
    }
    fn set_stage(&mut self, s: &'static str) {
        self.0 = s;
    }
}

/// Runs `n` setups of `one` in `lanes` lanes; `one(lane_state)` returns the kept value.
/// Each lane is its own local task, so a wake-up polls only the lane it concerns (a
/// join over all lanes would poll every lane's future on each wake-up: O(lanes) work per
/// event, which at 1024 lanes was ~10 % of the load process's CPU).
fn lanes<T, L, F, Fut>(
    rt: &tokio::runtime::Runtime,
    n: usize,
    lanes: usize,
    timeout: Duration,
    counts: &Counts,
    lane_state: impl Fn() -> L,
    one: F,
) -> (Setup, Vec<T>)
where
    T: 'static,
    L: Lane + 'static,
    F: Fn(Arc<tokio::sync::Mutex<L>>) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + 'static,
{
    use std::cell::RefCell;
    use std::rc::Rc;
    struct Shared<T> {
        next: usize,
        setup: Setup,
        kept: Vec<T>,
        failed: u64,
    }
    let shared = Rc::new(RefCell::new(Shared {
        next: 0,
        setup: Setup {
            latency_us: histogram(),
            failures: Default::default(),
            connected: 0,
        },
        kept: Vec::with_capacity(n),
        failed: 0,
    }));
    let local = tokio::task::LocalSet::new();
    for _ in 0..lanes.clamp(1, n.max(1)) {
        let (one, shared, state) = (one.clone(), shared.clone(), lane_state());
        local.spawn_local(async move {
            let state = Arc::new(tokio::sync::Mutex::new(state));
            loop {
                {
                    let mut g = shared.borrow_mut();
                    if g.next >= n {
                        break;
                    }
                    g.next += 1;
                }
                let t0 = Instant::now();
                let r = match tokio::time::timeout(timeout, one(state.clone())).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The setup's future is dropped, so the lock is free again.
                        let mut s = state.lock().await;
                        s.reset();
                        Err(format!("timeout ({})", s.stage()))
                    }
                };
                let took = t0.elapsed();
                let mut g = shared.borrow_mut();
                match r {
                    Ok(v) => {
                        g.kept.push(v);
                        g.setup.connected += 1;
                        let _ = g.setup.latency_us.record(took.as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        add_failure(&mut g.setup.failures, e);
                        g.failed += 1;
                    }
                }
            }
        });
    }
    // Progress for the parent: published from here, once per millisecond, not per setup.
    rt.block_on(local.run_until(async {
        let mut published = (0, 0);
        loop {
            let (done, ok, failed) = {
                let g = shared.borrow();
                let ok = g.setup.connected;
                (ok + g.failed >= n as u64, ok, g.failed)
            };
            counts.ok.fetch_add(ok - published.0, Relaxed);
            counts.failed.fetch_add(failed - published.1, Relaxed);
            published = (ok, failed);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }));
    drop(local);
    let shared = Rc::into_inner(shared)
        .expect("every lane task ended")
        .into_inner();
    (shared.setup, shared.kept)
}

// ------------------------------------------------------------------------ pairs

/// A connected pair and its two connections.
type Pair = (Agent, Agent, Conn, Conn);

/// icering pairs: the controlling agent on a dedicated socket, the controlled one on the
/// shard's shared port (`mux-dedicated`) or its own socket.
pub struct Pairs {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    mux: bool,
    ports: Option<(u16, u16)>,
    ip: Option<IpAddr>,
    concurrency: usize,
    timeout: Duration,
    pairs: Vec<Pair>,
}

impl Pairs {
    pub fn new(args: &Args) -> Result<Self, String> {
        let mux = args.sockets == Sockets::MuxDedicated;
        Ok(Pairs {
            rt: runtime()?,
            engine: engine(args, mux)?,
            mux,
            ports: args.ports,
            ip: args.client_ips.first().copied(),
            concurrency: args.concurrency,
            timeout: Duration::from_secs_f64(args.timeout),
            pairs: Vec::new(),
        })
    }
}

async fn one_pair(
    engine: Engine,
    mux: bool,
    ports: Option<(u16, u16)>,
    ip: Option<IpAddr>,
    lane: Arc<tokio::sync::Mutex<Stage>>,
) -> Result<Pair, String> {
    let mut lane = lane.lock().await;
    lane.set_stage("agent");
    let mut a = engine
        .agent(options(false, ports, ip))
        .map_err(|e| format!("agent: {e}"))?;
    // A mux agent's candidate is the engine's mux address (127.0.0.1), not `ip`.
    let mut b = engine
        .agent(options(mux, ports, if mux { None } else { ip }))
        .map_err(|e| format!("agent: {e}"))?;
    lane.set_stage("gather");
    let ca = lines(&a.gather_candidates().map_err(|e| format!("gather: {e}"))?);
    let cb = lines(&b.gather_candidates().map_err(|e| format!("gather: {e}"))?);
    add_lines(&b, &ca)?;
    add_lines(&a, &cb)?;
    let (ua, pa) = a.local_credentials();
    let (ub, pb) = b.local_credentials();
    lane.set_stage("dial/accept");
    let (da, db) = tokio::join!(a.dial(&ub, &pb), b.accept(&ua, &pa));
    let da = da.map_err(|e| format!("dial: {e}"))?;
    let db = db.map_err(|e| format!("accept: {e}"))?;
    // Signalling used the gathered candidates and the state is read from the `Conn`s:
    // stop listening to events (as the webrtc-ice side's callbacks consume theirs). A
    // dropped receiver frees what was queued, so nothing sits unread in either agent.
    drop((a.take_events(), b.take_events()));
    Ok((a, b, da, db))
}

impl Load for Pairs {
    fn connect(&mut self, n: usize, counts: &Counts) -> Setup {
        let (engine, mux, ports, ip) = (self.engine.clone(), self.mux, self.ports, self.ip);
        let (setup, kept) = lanes(
            &self.rt,
            n,
            self.concurrency,
            self.timeout,
            counts,
            || Stage("start"),
            move |lane| one_pair(engine.clone(), mux, ports, ip, lane),
        );
        self.pairs = kept;
        setup
    }

    fn alive(&mut self) -> u64 {
        self.pairs
            .iter()
            .filter(|(_, _, a, b)| is_up(a.state()) && is_up(b.state()))
            .count() as u64
    }

    fn agents_per_connection(&self) -> u64 {
        2
    }

    fn close(&mut self) {
        for (a, b, _, _) in self.pairs.drain(..) {
            a.close();
            b.close();
        }
        // The engine's shards stop when the worker process exits (see `worker`).
    }
}

// ------------------------------------------------------------------------ serve

/// A minimal HTTP/1.1 client over one keep-alive connection (JSON in and out).
struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    stage: &'static str,
}

impl Lane for Http {
    fn stage(&self) -> &'static str {
        self.stage
    }
    fn set_stage(&mut self, s: &'static str) {
        self.stage = s;
    }
    fn reset(&mut self) {
        self.conn = None;
    }
}

impl Http {
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Option<serde_json::Value>), String> {
        // One retry on a fresh connection if the kept one was closed by the server.
        for attempt in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| format!("http connect: {e}"))?;
                let _ = s.set_nodelay(true);
                self.conn = Some(BufReader::new(s));
            }
            match self.exchange(method, path, body).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conn = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Option<serde_json::Value>), String> {
        let c = self.conn.as_mut().expect("connected");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        c.get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("http write: {e}"))?;
        let mut line = String::new();
        c.read_line(&mut line)
            .await
            .map_err(|e| format!("http read: {e}"))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("http: bad status line `{}`", line.trim()))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            line.clear();
            c.read_line(&mut line)
                .await
                .map_err(|e| format!("http read: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| "http: bad content-length")?;
                } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                    close = true;
                }
            }
        }
        let mut buf = vec![0u8; len];
        c.read_exact(&mut buf)
            .await
            .map_err(|e| format!("http read: {e}"))?;
        if close {
            self.conn = None;
        }
        let json = if buf.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&buf).map_err(|e| format!("http: JSON: {e}"))?)
        };
        Ok((status, json))
    }
}

fn expect_status(
    what: &str,
    got: (u16, Option<serde_json::Value>),
    want: u16,
) -> Result<Option<serde_json::Value>, String> {
    if got.0 == want {
        Ok(got.1)
    } else {
        let err = got
            .1
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_string();
        Err(format!("{what}: HTTP {} {err}", got.0))
    }
}

/// One client agent against one `icering serve` session, kept with its session id.
type Client = (Agent, Conn, String);

/// icering agents (full, controlling, a dedicated socket each) against sessions of an
/// `icering serve` (lite or full per its config), created over its HTTP API. A setup
/// counts once a datagram sent on the connection came back (the session echoes).
pub struct Serve {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    admin: SocketAddr,
    one_exchange: bool,
    ports: Option<(u16, u16)>,
    ip: Option<IpAddr>,
    concurrency: usize,
    timeout: Duration,
    clients: Vec<Client>,
}

impl Serve {
    pub fn new(args: &Args) -> Result<Self, String> {
        Ok(Serve {
            rt: runtime()?,
            engine: engine(args, false)?,
            admin: args.admin,
            one_exchange: args.one_exchange,
            ports: args.ports,
            ip: args.client_ips.first().copied(),
            concurrency: args.concurrency,
            timeout: Duration::from_secs_f64(args.timeout),
            clients: Vec::new(),
        })
    }
}

async fn one_session(
    engine: Engine,
    ports: Option<(u16, u16)>,
    ip: Option<IpAddr>,
    one_exchange: bool,
    http: Arc<tokio::sync::Mutex<Http>>,
) -> Result<Client, String> {
    let mut http = http.lock().await;
    // One exchange: the client's offer goes with the create (the agent first).
    // A full client agent on a dedicated socket, gathered: its candidate lines.
    let client = |http: &mut Http| -> Result<(Agent, Vec<String>), String> {
        http.set_stage("agent");
        let agent = engine
            .agent(options(false, ports, ip))
            .map_err(|e| format!("agent: {e}"))?;
        let gathered = agent
            .gather_candidates()
            .map_err(|e| format!("gather: {e}"))?;
        Ok((agent, lines(&gathered)))
    };
    let early = if one_exchange {
        Some(client(&mut http)?)
    } else {
        None
    };
    http.set_stage("create");
    let create = match &early {
        Some((agent, mine)) => {
            let (u, p) = agent.local_credentials();
            serde_json::json!({"data": "echo", "remote": {"ufrag": u, "pwd": p,
                "candidates": mine, "end_of_candidates": true}})
        }
        None => serde_json::json!({"data": "echo"}),
    };
    let s = expect_status(
        "create",
        http.call("POST", "/sessions", Some(&create)).await?,
        201,
    )?
    .ok_or("create: no body")?;
    let field = |k: &str| -> Result<String, String> {
        s.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("create: no `{k}`"))
    };
    let (id, ufrag, pwd) = (field("id")?, field("ufrag")?, field("pwd")?);
    let remote: Vec<String> = s
        .get("candidates")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let agent = match early {
        Some((agent, _)) => agent,
        None => {
            let (agent, mine) = client(&mut http)?;
            let (u, p) = agent.local_credentials();
            http.set_stage("credentials");
            let path = format!("/sessions/{id}/remote-credentials");
            let body = serde_json::json!({"ufrag": u, "pwd": p});
            expect_status(
                "credentials",
                http.call("POST", &path, Some(&body)).await?,
                204,
            )?;
            http.set_stage("candidates");
            let path = format!("/sessions/{id}/remote-candidates");
            let body = serde_json::json!({"candidates": mine, "end_of_candidates": true});
            expect_status(
                "candidates",
                http.call("POST", &path, Some(&body)).await?,
                204,
            )?;
            agent
        }
    };
    add_lines(&agent, &remote)?;
    http.set_stage("dial");
    let mut conn = agent
        .dial(&ufrag, &pwd)
        .await
        .map_err(|e| format!("dial: {e}"))?;
    http.set_stage("echo");
    // UDP: a probe (or its echo) may be lost, e.g. to a full socket buffer on a loaded
    // server; probe again every second until one comes back (the lane's timeout bounds it).
    loop {
        conn.send(Bytes::from_static(b"icering-loadtest"))
            .await
            .map_err(|e| format!("send: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(1), conn.recv()).await {
            Ok(back) => {
                let back = back.map_err(|e| format!("echo: {e}"))?;
                if &back[..] != b"icering-loadtest" {
                    return Err("echo: wrong bytes".into());
                }
                return Ok((agent, conn, id));
            }
            Err(_) => continue,
        }
    }
}

impl Load for Serve {
    fn connect(&mut self, n: usize, counts: &Counts) -> Setup {
        let engine = self.engine.clone();
        let (admin, ports, ip, one) = (self.admin, self.ports, self.ip, self.one_exchange);
        let (setup, kept) = lanes(
            &self.rt,
            n,
            self.concurrency,
            self.timeout,
            counts,
            || Http {
                addr: admin,
                conn: None,
                stage: "start",
            },
            move |http| one_session(engine.clone(), ports, ip, one, http),
        );
        self.clients = kept;
        setup
    }

    fn alive(&mut self) -> u64 {
        self.clients
            .iter()
            .filter(|(_, c, _)| is_up(c.state()))
            .count() as u64
    }

    fn agents_per_connection(&self) -> u64 {
        1
    }

    fn close(&mut self) {
        let clients = std::mem::take(&mut self.clients);
        let admin = self.admin;
        self.rt.block_on(async {
            let mut http = Http {
                addr: admin,
                conn: None,
                stage: "close",
            };
            for (agent, _, id) in clients {
                agent.close();
                let _ = http.call("DELETE", &format!("/sessions/{id}"), None).await;
            }
        });
        // The engine's shards stop when the worker process exits (see `worker`).
    }
}
