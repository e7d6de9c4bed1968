//! `icering-loadtest ice`: ICE connection setup under load.
//!
//! * `pairs`: N agent pairs over loopback in worker processes, each pair signalled in
//!   memory (credentials, candidate lines) and connected (controlling `dial`, controlled
//!   `accept`). Sides: the controlled side on one shared port (`mux-dedicated`, default)
//!   or every agent on its own socket (`dedicated`).
//! * `serve`: N full controlling agents (a socket each) against sessions of an
//!   `icering serve` (lite or full, per its config), created over its HTTP API.
//!
//! Reports connections/s over the setup phase, setup latency percentiles (HDR), failures by
//! reason, RSS per connected agent (VmRSS after − before), then a hold phase (`--hold S`):
//! the connections stay up with keepalives/consent running while CPU% and RSS are sampled.
//! `--baseline webrtc-ice` runs the same pairs load on webrtc-rs's `webrtc-ice` crate in
//! the same run and prints both side by side with ratios.
//!
//! Processes: a process may hold at most 20,000 descriptors here (hard limit), and every
//! dedicated agent needs a socket, so the load is split over `--procs K` worker processes
//! (this binary re-executed with `--worker`). Each worker reports over a line protocol on
//! stdout (`ready`, `progress OK FAILED`, `connected JSON`, `held JSON`) and waits for
//! `go` / `hold` / `close` on stdin, so all workers connect together and hold together.

mod icering_side;
mod proto;
mod webrtc_side;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::process_cpu;

/// Which load.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Mode {
    /// N agent pairs in the worker processes.
    Pairs,
    /// N agents against sessions of an `icering serve` (see --admin).
    Serve,
}

/// Which ICE implementation a worker runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Imp {
    /// icering's agents on its shards, through the public API.
    Icering,
    /// webrtc-rs's `webrtc-ice` crate (tokio).
    WebrtcIce,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Icering => "icering",
            Imp::WebrtcIce => "webrtc-ice",
        }
    }
}

/// How the agents of a pair get their sockets.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Sockets {
    /// Controlled side on one shared (muxed) port per worker, controlling side one socket
    /// per agent.
    MuxDedicated,
    /// One socket per agent on both sides.
    Dedicated,
}

/// Arguments of `icering-loadtest ice`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `pairs` or `serve`.
    #[arg(value_enum)]
    mode: Mode,
    /// Connections to set up: agent pairs (pairs) or agents (serve), over all workers.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Worker processes (each holds ≤ 20,000 descriptors, one per dedicated agent).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Connection setups in flight per worker.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds one setup may take before it counts as failed (timeout).
    #[arg(long, default_value_t = 15.0)]
    timeout: f64,
    /// Seconds to keep the connections up after setup (keepalives/consent running), with
    /// CPU and RSS sampled.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Socket layout of the pairs.
    #[arg(long, value_enum, default_value = "mux-dedicated")]
    sockets: Sockets,
    /// Shards per icering worker (0 = one per core).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Cores for the icering workers' shards (`server.cores`), dealt out in turn: worker k's
    /// shards start at the (k × shards)-th. Default: this process's affinity mask, so two
    /// one-shard workers on two cores get one core each instead of both pinning core 0.
    #[arg(long, value_name = "CORE,..", value_delimiter = ',')]
    cores: Vec<usize>,
    /// Leave the icering workers' shard threads unpinned (`server.pin = false`).
    #[arg(long, conflicts_with = "cores")]
    no_pin: bool,
    /// The same pairs load on another implementation, in the same run, side by side.
    #[arg(long, value_enum)]
    baseline: Option<Imp>,
    /// Setups in flight per worker for the baseline (default: `--concurrency`), so each
    /// implementation can run at its own best setting in one invocation.
    #[arg(long)]
    baseline_concurrency: Option<usize>,
    /// serve mode: the `icering serve` admin (HTTP) address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    admin: SocketAddr,
    /// serve mode: one HTTP exchange per session (the client's offer in `POST /sessions`,
    /// as WHIP does) instead of three (create, credentials, candidates).
    #[arg(long)]
    one_exchange: bool,
    /// serve mode: PID of the `icering serve` process, for its RSS and CPU per agent.
    #[arg(long)]
    server_pid: Option<u32>,
    /// icering: UDP ports for the dedicated sockets, `LO:HI`, split evenly over the
    /// workers (default: ephemeral ports). All workers share 127.0.0.1, whose ephemeral
    /// range (net.ipv4.ip_local_port_range, 32768–60999 here) holds ~28k sockets; a range
    /// such as `1024:60999` lifts that ceiling.
    #[arg(long, value_name = "LO:HI", value_parser = parse_ports)]
    ports: Option<(u16, u16)>,
    /// icering: local IPs for the client agents' dedicated sockets, comma-separated
    /// (default: every loopback address, in practice 127.0.0.1). Worker k binds only
    /// `IP[k % len]`, and `--ports` is split over the workers sharing an IP, so each IP
    /// holds its own ~64k ports: add loopback aliases (`ip addr add 127.0.0.2/8 dev lo`,
    /// in a private network namespace) to go past one IP's ports.
    #[arg(long, value_name = "IP,..", value_delimiter = ',')]
    client_ips: Vec<IpAddr>,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Internal: run as a worker process of this implementation.
    #[arg(long, hide = true, value_enum)]
    worker: Option<Imp>,
}

/// Worker `k` of `procs`: its client IP (`ips[k % len]`) and its share of `ports`, split
/// evenly over the workers that share that IP (each IP has its own port space).
fn worker_ip_ports(
    ips: &[IpAddr],
    ports: Option<(u16, u16)>,
    procs: usize,
    k: usize,
) -> (Option<IpAddr>, Option<(u16, u16)>) {
    let m = ips.len().max(1);
    let ip = ips.get(k % m).copied();
    // Workers k, k + m, k + 2m, ... share this IP: this one is the (k / m)-th of them.
    let sharing = (procs + m - 1 - k % m) / m;
    let j = k / m;
    let ports = ports.map(|(lo, hi)| {
        let span = (u32::from(hi) - u32::from(lo) + 1) / sharing.max(1) as u32;
        let a = u32::from(lo) + span * j as u32;
        (a as u16, (a + span.max(1) - 1).min(u32::from(hi)) as u16)
    });
    (ip, ports)
}

/// The cores of worker `k`'s `shards` shards (0 = one per core): the next ones of `cores`
/// (default: this process's affinity mask) after those of workers `0..k`, wrapping.
fn worker_cores(cores: &[usize], shards: usize, k: usize) -> Vec<usize> {
    let all = if cores.is_empty() {
        icering::io::allowed_cores()
    } else {
        cores.to_vec()
    };
    let per = if shards == 0 { all.len() } else { shards };
    (0..per).map(|j| all[(k * per + j) % all.len()]).collect()
}

fn join(cores: &[usize]) -> String {
    cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once(':').ok_or("expected LO:HI")?;
    let lo: u16 = lo.parse().map_err(|_| "LO is not a port")?;
    let hi: u16 = hi.parse().map_err(|_| "HI is not a port")?;
    if lo == 0 || lo > hi {
        return Err("need 0 < LO <= HI".into());
    }
    Ok((lo, hi))
}

/// Progress counters a driver bumps as setups finish.
#[derive(Default)]
pub(crate) struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// What a driver returns from the setup phase.
pub(crate) struct Setup {
    pub latency_us: Histogram<u64>,
    pub failures: BTreeMap<String, u64>,
    pub connected: u64,
}

/// A driver: one implementation's load inside one worker process.
pub(crate) trait Load {
    /// Sets up `n` connections, `concurrency` at a time.
    fn connect(&mut self, n: usize, counts: &Counts) -> Setup;
    /// Connections still connected (checked after the hold).
    fn alive(&mut self) -> u64;
    /// Agents in this process per connection (2 for pairs, 1 for serve).
    fn agents_per_connection(&self) -> u64;
    /// Closes everything.
    fn close(&mut self);
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub(crate) fn add_failure(f: &mut BTreeMap<String, u64>, reason: impl Into<String>) {
    *f.entry(reason.into()).or_default() += 1;
}

/// VmRSS of a process in bytes (/proc/PID/status).
pub(crate) fn rss_bytes(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

// ------------------------------------------------------------------------ worker side

/// A worker process: build the driver, then follow the parent's phases on stdin/stdout.
fn worker(args: &Args, imp: Imp) -> Result<(), String> {
    let mut load: Box<dyn Load> = match (imp, args.mode) {
        (Imp::Icering, Mode::Pairs) => Box::new(icering_side::Pairs::new(args)?),
        (Imp::Icering, Mode::Serve) => Box::new(icering_side::Serve::new(args)?),
        (Imp::WebrtcIce, Mode::Pairs) => Box::new(webrtc_side::Pairs::new(args)?),
        (Imp::WebrtcIce, Mode::Serve) => {
            return Err("serve mode runs icering agents only".into());
        }
    };
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut expect = |word: &str| -> Result<(), String> {
        match lines.next() {
            Some(Ok(l)) if l == word => Ok(()),
            other => Err(format!("worker: expected `{word}`, got {other:?}")),
        }
    };
    let say = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say("ready");
    expect("go")?;

    let counts = Arc::new(Counts::default());
    let rss0 = rss_bytes(None);
    let cpu0 = process_cpu(std::process::id())?;
    let t0 = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    // The setup ends when `connect` returns, not when the progress thread has woken from
    // its sleep and been joined (that added up to 200 ms to every run's wall time).
    let (setup, elapsed) = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                say(&format!(
                    "progress {} {}",
                    counts.ok.load(Relaxed),
                    counts.failed.load(Relaxed)
                ));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let r = load.connect(args.n, &counts);
        let elapsed = t0.elapsed();
        done.store(true, Relaxed);
        (r, elapsed)
    });
    let cpu1 = process_cpu(std::process::id())?;
    let rss1 = rss_bytes(None);
    let report = proto::Connected {
        connected: setup.connected,
        agents: setup.connected * load.agents_per_connection(),
        failures: setup.failures,
        elapsed_s: elapsed.as_secs_f64(),
        cpu_s: cpu1.saturating_sub(cpu0).as_secs_f64(),
        rss_before: rss0,
        rss_connected: rss1,
        latency_us: proto::encode(&setup.latency_us),
    };
    say(&format!(
        "connected {}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    ));

    expect("hold")?;
    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    let cpu0 = process_cpu(std::process::id())?;
    let t0 = Instant::now();
    let mut rss_max = rss_bytes(None);
    while t0.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(250).min(hold));
        rss_max = rss_max.max(rss_bytes(None));
    }
    let held = t0.elapsed();
    let cpu = process_cpu(std::process::id())?.saturating_sub(cpu0);
    let alive = load.alive();
    let report = proto::Held {
        held_s: held.as_secs_f64(),
        cpu_s: cpu.as_secs_f64(),
        rss_max,
        rss_end: rss_bytes(None),
        alive,
    };
    say(&format!(
        "held {}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    ));
    expect("close")?;
    load.close();
    // Exit without joining runtimes and shard threads: the agents are closed, the
    // measurement is over, and a slow shard shutdown must not hold the whole run.
    std::process::exit(0);
}

// ------------------------------------------------------------------------ parent side

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(
        args: &Args,
        imp: Imp,
        n: usize,
        ports: Option<(u16, u16)>,
        ip: Option<IpAddr>,
        cores: &[usize],
    ) -> Result<Worker, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("ice")
            .arg(match args.mode {
                Mode::Pairs => "pairs",
                Mode::Serve => "serve",
            })
            .args(["--n", &n.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(["--timeout", &args.timeout.to_string()])
            .args(["--hold", &args.hold.to_string()])
            .args([
                "--sockets",
                match args.sockets {
                    Sockets::MuxDedicated => "mux-dedicated",
                    Sockets::Dedicated => "dedicated",
                },
            ])
            .args(["--shards", &args.shards.to_string()])
            .args((!cores.is_empty()).then(|| format!("--cores={}", join(cores))))
            .args(args.no_pin.then_some("--no-pin"))
            .args(["--admin", &args.admin.to_string()])
            .args(args.one_exchange.then_some("--one-exchange"))
            .args(["--worker", imp.name()])
            .args(ports.map(|(lo, hi)| format!("--ports={lo}:{hi}")))
            .args(ip.map(|ip| format!("--client-ips={ip}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn worker: {e}"))?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines: rx,
        })
    }

    fn send(&mut self, word: &str) -> Result<(), String> {
        writeln!(self.stdin, "{word}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("worker gone: {e}"))
    }

    /// Next line that is not a progress line; progress lines update `progress`.
    fn next(
        &mut self,
        progress: &mut (u64, u64),
        wait: Duration,
    ) -> Result<Option<String>, String> {
        match self.lines.recv_timeout(wait) {
            Ok(l) => {
                if let Some(rest) = l.strip_prefix("progress ") {
                    let mut it = rest.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
                    *progress = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                    Ok(None)
                } else {
                    Ok(Some(l))
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(_) => Err("worker exited early (see its stderr)".into()),
        }
    }
}

/// The merged result of one implementation's run.
#[derive(Serialize)]
pub struct ImpReport {
    pub implementation: String,
    pub mode: String,
    pub sockets: String,
    pub procs: usize,
    pub requested: usize,
    pub connected: u64,
    pub agents: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub setup_s: f64,
    pub connections_per_s: f64,
    pub setup_cpu_s: f64,
    pub cpu_us_per_connection: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub rss_per_agent_b: f64,
    pub hold_s: f64,
    pub hold_cpu_pct: f64,
    pub hold_rss_per_agent_b: f64,
    pub alive_after_hold: u64,
    pub server_rss_per_agent_b: Option<f64>,
    pub server_cpu_us_per_connection: Option<f64>,
    pub server_hold_cpu_pct: Option<f64>,
}

fn run_imp(args: &Args, imp: Imp) -> Result<ImpReport, String> {
    let procs = args.procs.max(1);
    let mut workers = Vec::with_capacity(procs);
    for k in 0..procs {
        let n = args.n / procs + usize::from(k < args.n % procs);
        let (ip, ports) = worker_ip_ports(&args.client_ips, args.ports, procs, k);
        let cores = if args.no_pin {
            Vec::new()
        } else {
            worker_cores(&args.cores, args.shards, k)
        };
        workers.push(Worker::spawn(args, imp, n, ports, ip, &cores)?);
    }
    let mut progress = vec![(0u64, 0u64); procs];
    let long = Duration::from_secs(120);
    for (w, p) in workers.iter_mut().zip(&mut progress) {
        let deadline = Instant::now() + long;
        loop {
            match w.next(p, Duration::from_millis(100))? {
                Some(l) if l == "ready" => break,
                Some(l) => return Err(format!("worker said `{l}` before ready")),
                None if Instant::now() > deadline => return Err("worker not ready".into()),
                None => {}
            }
        }
    }
    let server_rss0 = args.server_pid.map(|p| rss_bytes(Some(p)));
    let server_setup_cpu0 = args.server_pid.map(process_cpu).transpose()?;
    let bar = progress_bar(args, imp);
    for w in &mut workers {
        w.send("go")?;
    }
    let mut connected: Vec<Option<proto::Connected>> = (0..procs).map(|_| None).collect();
    while connected.iter().any(Option::is_none) {
        for (i, w) in workers.iter_mut().enumerate() {
            if connected[i].is_some() {
                continue;
            }
            if let Some(l) = w.next(&mut progress[i], Duration::from_millis(20))? {
                let json = l
                    .strip_prefix("connected ")
                    .ok_or_else(|| format!("worker said `{l}`"))?;
                connected[i] = Some(serde_json::from_str(json).map_err(|e| e.to_string())?);
            }
        }
        if let Some(b) = &bar {
            let ok: u64 = progress.iter().map(|p| p.0).sum();
            let failed: u64 = progress.iter().map(|p| p.1).sum();
            b.set_position(ok + failed);
            b.set_message(format!("{ok} connected, {failed} failed"));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let server_rss1 = args.server_pid.map(|p| rss_bytes(Some(p)));
    let server_cpu0 = args.server_pid.map(process_cpu).transpose()?;
    let server_setup_cpu = match (server_setup_cpu0, server_cpu0) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    for w in &mut workers {
        w.send("hold")?;
    }
    let mut held: Vec<proto::Held> = Vec::with_capacity(procs);
    let wait = Duration::from_secs_f64(args.hold.max(0.0)) + long;
    for (w, p) in workers.iter_mut().zip(&mut progress) {
        let deadline = Instant::now() + wait;
        loop {
            match w.next(p, Duration::from_millis(100))? {
                Some(l) => {
                    let json = l
                        .strip_prefix("held ")
                        .ok_or_else(|| format!("worker said `{l}`"))?;
                    held.push(serde_json::from_str(json).map_err(|e| e.to_string())?);
                    break;
                }
                None if Instant::now() > deadline => return Err("worker hold timed out".into()),
                None => {}
            }
        }
    }
    let server_hold = match (args.server_pid, server_cpu0) {
        (Some(pid), Some(c0)) => Some(process_cpu(pid)?.saturating_sub(c0)),
        _ => None,
    };
    for w in &mut workers {
        let _ = w.send("close");
    }
    for mut w in workers {
        let _ = w.child.wait();
    }

    let c: Vec<proto::Connected> = connected.into_iter().flatten().collect();
    let mut hist = histogram();
    let mut failures = BTreeMap::new();
    for r in &c {
        proto::decode_into(&r.latency_us, &mut hist);
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let conns: u64 = c.iter().map(|r| r.connected).sum();
    let agents: u64 = c.iter().map(|r| r.agents).sum();
    let setup_s = c.iter().map(|r| r.elapsed_s).fold(0.0, f64::max).max(1e-9);
    let setup_cpu: f64 = c.iter().map(|r| r.cpu_s).sum();
    let rss_growth: f64 = c
        .iter()
        .map(|r| r.rss_connected as f64 - r.rss_before as f64)
        .sum();
    // `--hold 0` measures nothing (its few microseconds of "hold" would divide by ~0).
    let hold_s = if args.hold > 0.0 {
        held.iter().map(|h| h.held_s).fold(0.0, f64::max)
    } else {
        0.0
    };
    let hold_cpu: f64 = held.iter().map(|h| h.cpu_s).sum();
    let hold_growth: f64 = c
        .iter()
        .zip(&held)
        .map(|(r, h)| h.rss_max as f64 - r.rss_before as f64)
        .sum();
    let per_agent = |bytes: f64| {
        if agents == 0 {
            0.0
        } else {
            bytes / agents as f64
        }
    };
    let q = |p: f64| {
        if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(p) as f64 / 1000.0
        }
    };
    // Server-side agents (serve mode): one per connection.
    let server_rss_per_agent = match (server_rss0, server_rss1) {
        (Some(a), Some(b)) if conns > 0 => Some((b as f64 - a as f64) / conns as f64),
        _ => None,
    };
    Ok(ImpReport {
        implementation: imp.name().into(),
        mode: format!("{:?}", args.mode).to_lowercase(),
        sockets: match (args.mode, args.sockets) {
            (Mode::Serve, _) => "dedicated → serve port".into(),
            (_, Sockets::MuxDedicated) => "mux-dedicated".into(),
            (_, Sockets::Dedicated) => "dedicated".into(),
        },
        procs,
        requested: args.n,
        connected: conns,
        agents,
        failed: failures.values().sum(),
        failures,
        setup_s,
        connections_per_s: conns as f64 / setup_s,
        setup_cpu_s: setup_cpu,
        cpu_us_per_connection: if conns == 0 {
            0.0
        } else {
            setup_cpu * 1e6 / conns as f64
        },
        latency_ms_p50: q(0.50),
        latency_ms_p90: q(0.90),
        latency_ms_p99: q(0.99),
        latency_ms_max: if hist.is_empty() {
            0.0
        } else {
            hist.max() as f64 / 1000.0
        },
        rss_per_agent_b: per_agent(rss_growth),
        hold_s,
        hold_cpu_pct: if hold_s > 0.0 {
            100.0 * hold_cpu / hold_s
        } else {
            0.0
        },
        hold_rss_per_agent_b: per_agent(hold_growth),
        alive_after_hold: held.iter().map(|h| h.alive).sum(),
        server_rss_per_agent_b: server_rss_per_agent,
        server_cpu_us_per_connection: server_setup_cpu
            .filter(|_| conns > 0)
            .map(|c| c.as_secs_f64() * 1e6 / conns as f64),
        server_hold_cpu_pct: server_hold
            .filter(|_| hold_s > 0.0)
            .map(|c| 100.0 * c.as_secs_f64() / hold_s),
    })
}

fn progress_bar(args: &Args, imp: Imp) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(args.n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{} {{bar:40}} {{pos}}/{{len}} {{elapsed_precise}} {{msg}}",
            imp.name()
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn print_human(r: &ImpReport) {
    println!(
        "{} ({} {}, {} procs)",
        r.implementation, r.mode, r.sockets, r.procs
    );
    println!(
        "  connected       {}/{} in {:.2} s = {:.0} connections/s  ({:.0} us CPU per connection)",
        r.connected, r.requested, r.setup_s, r.connections_per_s, r.cpu_us_per_connection
    );
    println!(
        "  setup ms        p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_max
    );
    if r.failures.is_empty() {
        println!("  failures        none");
    } else {
        for (k, v) in &r.failures {
            println!("  failed          {v} × {k}");
        }
    }
    println!(
        "  RSS per agent   {:.0} B ({} agents in the load processes)",
        r.rss_per_agent_b, r.agents
    );
    if let Some(b) = r.server_rss_per_agent_b {
        println!("  server RSS      {b:.0} B per session");
    }
    if let Some(c) = r.server_cpu_us_per_connection {
        println!("  server CPU      {c:.0} us per connection (setup phase, HTTP included)");
    }
    if r.hold_s > 0.0 {
        println!(
            "  hold            {:.1} s: CPU {:.1}% (load processes), RSS {:.0} B per agent, {} of {} still connected",
            r.hold_s, r.hold_cpu_pct, r.hold_rss_per_agent_b, r.alive_after_hold, r.connected
        );
        if let Some(c) = r.server_hold_cpu_pct {
            println!("  server hold CPU {c:.1}%");
        }
    }
}

/// Runs the load (or, with `--worker`, one worker of it).
pub fn run(args: Args) -> Result<(), String> {
    if let Some(imp) = args.worker {
        return worker(&args, imp);
    }
    if args.n == 0 || args.concurrency == 0 {
        return Err("--n and --concurrency must be at least 1".into());
    }
    if args.baseline.is_some() && args.mode == Mode::Serve {
        return Err("--baseline compares the pairs load".into());
    }
    let mut reports = vec![run_imp(&args, Imp::Icering)?];
    if let Some(b) = args.baseline {
        let mut base = args.clone();
        base.concurrency = args.baseline_concurrency.unwrap_or(args.concurrency).max(1);
        reports.push(run_imp(&base, b)?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&reports).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    for r in &reports {
        print_human(r);
    }
    if let [a, b] = &reports[..] {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        println!(
            "ratios {} / {}: connections/s ×{:.1}, CPU per connection ×{:.2}, RSS per agent ×{:.2}, hold CPU ×{:.2}",
            a.implementation,
            b.implementation,
            ratio(a.connections_per_s, b.connections_per_s),
            ratio(a.cpu_us_per_connection, b.cpu_us_per_connection),
            ratio(a.rss_per_agent_b, b.rss_per_agent_b),
            ratio(a.hold_cpu_pct, b.hold_cpu_pct),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_cores_in_turn() {
        assert_eq!(worker_cores(&[0, 1], 1, 0), [0]);
        assert_eq!(worker_cores(&[0, 1], 1, 1), [1]);
        assert_eq!(worker_cores(&[0, 1], 1, 2), [0]);
        assert_eq!(worker_cores(&[4, 5, 6], 2, 1), [6, 4]);
        assert_eq!(worker_cores(&[2, 3], 0, 1), [2, 3]);
    }

    #[test]
    fn workers_split_ports_per_client_ip() {
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let got: Vec<_> = (0..5)
            .map(|k| worker_ip_ports(&ips, Some((1000, 1899)), 5, k))
            .collect();
        let (a, b) = (Some(ips[0]), Some(ips[1]));
        // 127.0.0.1 has workers 0, 2, 4 (300 ports each); 127.0.0.2 has 1, 3 (450 each).
        assert_eq!(
            got,
            vec![
                (a, Some((1000, 1299))),
                (b, Some((1000, 1449))),
                (a, Some((1300, 1599))),
                (b, Some((1450, 1899))),
                (a, Some((1600, 1899))),
            ]
        );
        // Without IPs: one shared space, as before.
        let none: Vec<_> = (0..2)
            .map(|k| worker_ip_ports(&[], Some((1000, 1999)), 2, k))
            .collect();
        assert_eq!(
            none,
            vec![(None, Some((1000, 1499))), (None, Some((1500, 1999)))]
        );
    }
}
