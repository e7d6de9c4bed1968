//! `icering`: the server binary.
//!
//! `icering serve` runs the shards with the embedded default config (STUN and the TURN
//! relay on 127.0.0.1:3478) unless `--config` names another; flags override single keys
//! (the TURN ones are named as coturn names them).
//! `icering ping --controlling|--controlled` is pion/ice's ping-pong example (docs/ping.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use icering::Engine;
use icering::config::{Config, IoBackendChoice, RelaySocket};
use icering::ice::IceUrl;
use icering::ping::{CandidateTypes, PingConfig, Servers, TlsRoots};
use icering::serve::AdminServer;
use icering::serve::metrics::MetricsServer;
use icering::shard::Runtime;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "icering",
    version,
    about = "ICE agents and a STUN/TURN relay on thread-per-core io_uring shards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the STUN server and TURN relay on the shards (embedded default config:
    /// 127.0.0.1:3478/udp).
    Serve(ServeArgs),
    /// pion/ice's ping-pong example: one ICE agent, HTTP signalling, ping/pong messages.
    Ping(PingArgs),
}

#[derive(Parser, Debug)]
struct PingArgs {
    /// Be the controlling agent (sends "ping"; serves signalling on 9000, posts to 9001).
    #[arg(
        long,
        conflicts_with = "controlled",
        required_unless_present = "controlled"
    )]
    controlling: bool,
    /// Be the controlled agent (sends "pong"; serves signalling on 9001, posts to 9000).
    #[arg(long)]
    controlled: bool,
    /// UDP address of the host candidate.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Signalling server address (default 127.0.0.1:9000 controlling, :9001 controlled).
    #[arg(long, value_name = "ADDR")]
    signal_listen: Option<SocketAddr>,
    /// Peer's signalling URL (default http://127.0.0.1:9001 controlling, :9000 controlled).
    #[arg(long, value_name = "URL")]
    signal_remote: Option<String>,
    /// Seconds between messages.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Exit 0 once this many messages were sent and received.
    #[arg(long)]
    count: Option<u64>,
    /// Give up (exit 1) after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// STUN server URL (`stun:host[:port]`) for a server-reflexive candidate (repeatable).
    #[arg(long, value_name = "URL")]
    stun: Vec<String>,
    /// TURN server URL (`turn:host[:port][?transport=udp|tcp]`, or `turns:host[:port]`
    /// over TLS) for a relayed candidate (repeatable; needs --turn-user and --turn-pass).
    #[arg(long, value_name = "URL")]
    turn: Vec<String>,
    /// TURN long-term credential user name.
    #[arg(long, value_name = "NAME")]
    turn_user: Option<String>,
    /// TURN long-term credential password.
    #[arg(long, value_name = "PASS")]
    turn_pass: Option<String>,
    /// PEM file of the CA certificates `turns:` servers are checked against (default: the
    /// platform's trust store).
    #[arg(long, value_name = "FILE")]
    turn_ca: Option<std::path::PathBuf>,
    /// Local candidate types to gather, comma-separated: host,srflx,relay.
    #[arg(long, value_name = "TYPES", default_value = "host,srflx,relay")]
    candidate_types: String,
}

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{what} must be a positive number of seconds"))
}

fn ping(args: PingArgs) -> Result<(), String> {
    let parse = |flag: &str, u: &String| IceUrl::parse(u).map_err(|e| format!("--{flag} {u}: {e}"));
    let stun = args
        .stun
        .iter()
        .map(|u| parse("stun", u))
        .collect::<Result<Vec<_>, _>>()?;
    let turn = args
        .turn
        .iter()
        .map(|u| parse("turn", u))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(u) = turn.iter().find(|u| !u.scheme.is_turn()) {
        return Err(format!("--turn {u}: not a turn: or turns: URL"));
    }
    let (user, pass) = match (&args.turn_user, &args.turn_pass) {
        (Some(u), Some(p)) => (u.clone(), p.clone()),
        (None, None) if turn.is_empty() => (String::new(), String::new()),
        _ => return Err("--turn needs both --turn-user and --turn-pass".into()),
    };
    let tls_roots = match &args.turn_ca {
        Some(path) => TlsRoots::Pem(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--turn-ca {}: {e}", path.display()))?,
        ),
        None => TlsRoots::Platform,
    };
    let candidate_types: CandidateTypes = args
        .candidate_types
        .parse()
        .map_err(|e| format!("--candidate-types: {e}"))?;
    let controlling = args.controlling;
    let (listen, remote) = PingConfig::default_signalling(controlling);
    let cfg = PingConfig {
        controlling,
        bind: args.bind,
        signal_listen: args.signal_listen.unwrap_or(listen),
        signal_remote: args.signal_remote.unwrap_or(remote),
        interval: seconds("interval", args.interval)?,
        count: args.count,
        timeout: seconds("timeout", args.timeout)?,
        servers: Servers {
            stun,
            turn,
            user,
            pass,
            tls_roots,
        },
        candidate_types,
    };
    icering::ping::run(&cfg)
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum IoArg {
    Auto,
    Uring,
    Portable,
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// TOML config file replacing the embedded default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address to listen on (repeatable; IPv4 or IPv6); replaces `server.listen`.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Number of shards (0 = one per core of `--cores`, or of the affinity mask).
    #[arg(long)]
    shards: Option<usize>,
    /// Cores to pin the shards to, in order (`server.cores`), e.g. `--cores 2,3`.
    #[arg(long, value_name = "CORE,..", value_delimiter = ',')]
    cores: Vec<usize>,
    /// Do not pin the shard threads to cores (`server.pin = false`).
    #[arg(long, conflicts_with = "cores")]
    no_pin: bool,
    /// io backend.
    #[arg(long = "io", value_enum)]
    io: Option<IoArg>,
    /// TURN realm (`turn.realm`).
    #[arg(long)]
    realm: Option<String>,
    /// TURN user `NAME:PASS` (repeatable; added to `turn.users`).
    #[arg(long = "user", value_name = "NAME:PASS")]
    user: Vec<String>,
    /// TURN REST shared secret (repeatable; added to `turn.static_auth_secrets`).
    #[arg(long = "static-auth-secret", value_name = "SECRET")]
    static_auth_secret: Vec<String>,
    /// Relay address (repeatable; replaces `turn.relay_ips`).
    #[arg(long = "relay-ip", value_name = "IP")]
    relay_ip: Vec<IpAddr>,
    /// Lowest relay port (`turn.min_port`).
    #[arg(long)]
    min_port: Option<u16>,
    /// Highest relay port (`turn.max_port`).
    #[arg(long)]
    max_port: Option<u16>,
    /// Relay socket layout (`turn.relay_socket`): `per-allocation` (one socket each) or
    /// `shared-port` (one wildcard socket per port, shared by every relay IP; opt-in: it
    /// takes the port on every local address).
    #[arg(long, value_name = "LAYOUT")]
    relay_socket: Option<RelaySocket>,
    /// Allow relaying to loopback peers (`turn.allow_loopback_peers`; tests only).
    #[arg(long)]
    allow_loopback_peers: bool,
    /// Turn the TURN relay off (STUN Binding only).
    #[arg(long)]
    no_turn: bool,
    /// HTTP session API address (`server.admin`; docs/serve-api.md). Needs an ICE port.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Prometheus endpoint address, `GET /metrics` (`server.metrics`; coturn:
    /// --prometheus).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Shared UDP port for ICE sessions (repeatable; replaces `ice.listen`).
    #[arg(long = "ice-listen", value_name = "ADDR")]
    ice_listen: Vec<SocketAddr>,
    /// Listen on UDP only, no STUN/TURN over TCP (`server.tcp = false`; coturn: --no-tcp).
    #[arg(long)]
    no_tcp: bool,
    /// TCP address for STUN/TURN over TLS (repeatable; replaces `server.tls_listen`; needs
    /// --cert and --pkey).
    #[arg(long = "tls-listen", value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for --tls-listen (`server.tls_cert`; coturn: --cert).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key for --tls-listen (`server.tls_key`; coturn: --pkey).
    #[arg(long, value_name = "FILE")]
    pkey: Option<PathBuf>,
    /// Seconds a TCP/TLS connection may hold no TURN allocation before it is closed
    /// (`server.max_allocate_timeout`; coturn: --max-allocate-timeout).
    #[arg(long, value_name = "SECS")]
    max_allocate_timeout: Option<u32>,
    /// TCP/TLS connections per shard (`server.max_tcp_connections`).
    #[arg(long, value_name = "N")]
    max_tcp_connections: Option<usize>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Log the live TURN allocations, relay sockets and relayed datagrams every SECS
    /// seconds (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    stats_interval: u64,
}

fn load_config(args: &ServeArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::embedded(),
    };
    if !args.listen.is_empty() {
        config.server.listen = args.listen.clone();
    }
    if let Some(n) = args.shards {
        config.server.shards = n;
    }
    if !args.cores.is_empty() {
        (config.server.pin, config.server.cores) = (true, args.cores.clone());
    }
    if args.no_pin {
        (config.server.pin, config.server.cores) = (false, Vec::new());
    }
    if args.admin.is_some() {
        config.server.admin = args.admin;
    }
    if args.metrics.is_some() {
        config.server.metrics = args.metrics;
    }
    if !args.ice_listen.is_empty() {
        config.ice.listen = args.ice_listen.clone();
    }
    if let Some(io) = args.io {
        config.io.backend = match io {
            IoArg::Auto => IoBackendChoice::Auto,
            IoArg::Uring => IoBackendChoice::Uring,
            IoArg::Portable => IoBackendChoice::Portable,
        };
    }
    let t = &mut config.turn;
    if let Some(r) = &args.realm {
        t.realm = r.clone();
    }
    t.users.extend(args.user.iter().cloned());
    t.static_auth_secrets
        .extend(args.static_auth_secret.iter().cloned());
    if !args.relay_ip.is_empty() {
        t.relay_ips = args.relay_ip.clone();
    }
    if let Some(p) = args.min_port {
        t.min_port = p;
    }
    if let Some(p) = args.max_port {
        t.max_port = p;
    }
    if let Some(r) = args.relay_socket {
        t.relay_socket = r;
    }
    if args.allow_loopback_peers {
        t.allow_loopback_peers = true;
    }
    if args.no_turn {
        t.enabled = false;
    }
    if args.no_tcp {
        config.server.tcp = false;
    }
    if !args.tls_listen.is_empty() {
        config.server.tls_listen = args.tls_listen.clone();
    }
    if args.cert.is_some() {
        config.server.tls_cert = args.cert.clone();
    }
    if args.pkey.is_some() {
        config.server.tls_key = args.pkey.clone();
    }
    if let Some(secs) = args.max_allocate_timeout {
        config.server.max_allocate_timeout = secs;
    }
    if let Some(n) = args.max_tcp_connections {
        config.server.max_tcp_connections = n;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: with per-allocation relay sockets every
/// TURN allocation holds one, so the usual soft limit of 1024 would cap a node at ~1,000
/// allocations; with shared-port sockets one descriptor carries one allocation per relay
/// IP of its family. Logs the limit in force and how many allocations it allows; beyond
/// it Allocate gets 508 (counted as `relay_open_failures`).
fn raise_nofile_limit(t: &icering::config::TurnSection) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                "setrlimit(RLIMIT_NOFILE, {}): {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    let fds = lim.rlim_cur.saturating_sub(64);
    let ports = u64::from(t.max_port - t.min_port) + 1;
    let (fit, how) = match t.relay_socket {
        RelaySocket::PerAllocation => (fds, "one relay socket each".to_string()),
        RelaySocket::SharedPort => {
            // The larger family's relay IPs share each port socket.
            let v4 = t.relay_ips.iter().filter(|ip| ip.is_ipv4()).count() as u64;
            let v6 = t.relay_ips.len() as u64 - v4;
            let ips = v4.max(v6).max(1);
            (
                fds.min(ports) * ips,
                format!(
                    "shared-port: {} descriptors x {ips} relay IPs, {ports} ports",
                    fds.min(ports)
                ),
            )
        }
    };
    if fit < 100_000 {
        tracing::warn!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            was = before,
            "open file limit: at most ~{fit} TURN allocations ({how}); {} for more; beyond \
             it Allocate gets 508",
            match t.relay_socket {
                RelaySocket::PerAllocation => {
                    "raise the hard limit (ulimit -Hn, LimitNOFILE=) or use --relay-socket \
                     shared-port with several --relay-ip"
                }
                RelaySocket::SharedPort if ports < fds => {
                    "widen the port range (--min-port/--max-port) or add relay IPs"
                }
                RelaySocket::SharedPort => {
                    "raise the hard limit (ulimit -Hn, LimitNOFILE=) or add relay IPs"
                }
            }
        );
    } else {
        tracing::info!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            was = before,
            "open file limit: up to ~{fit} TURN allocations ({how})"
        );
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = load_config(&args)?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    // Block the signals before the shards start so only the signal thread sees them:
    // SIGINT/SIGTERM stop; with a TLS listener SIGHUP and SIGUSR2 (coturn's) re-read its
    // certificate (without one they keep their default: end the process).
    let mut caught = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    if !config.server.tls_listen.is_empty() {
        caught.extend([signal_hook::consts::SIGHUP, signal_hook::consts::SIGUSR2]);
    } else if config.server.tls_cert.is_some() || config.server.tls_key.is_some() {
        tracing::warn!("server.tls_cert/tls_key are set but server.tls_listen is empty: no TLS");
    }
    let mut signals = signal_hook::iterator::Signals::new(caught)
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if config.turn.enabled {
        raise_nofile_limit(&config.turn);
    }
    let metrics = match config.server.metrics {
        Some(addr) => Some(MetricsServer::bind(addr).map_err(|e| format!("--metrics: {e}"))?),
        None => None,
    };
    if let Some(admin) = config.server.admin {
        return serve_sessions(&config, admin, &mut signals, metrics);
    }
    let runtime = Runtime::start(&config).map_err(|e| e.to_string())?;
    tracing::info!("{}", runtime.backend_reason());
    let what = if config.turn.enabled {
        "STUN/TURN"
    } else {
        "STUN"
    };
    let transports = if config.server.tcp { "udp+tcp" } else { "udp" };
    for addr in runtime.local_addrs() {
        tracing::info!(
            shards = runtime.shards(),
            "listening on {addr}/{transports} ({what})"
        );
    }
    log_tls_listens(runtime.tls_addrs(), runtime.shards(), what);
    let _metrics = start_metrics(metrics, runtime.shard_counters())?;
    if config.turn.enabled {
        let t = &config.turn;
        tracing::info!(
            realm = %t.realm,
            relay_ips = ?t.relay_ips,
            ports = %format!("{}-{}", t.min_port, t.max_port),
            users = t.users.len(),
            rest_secrets = t.static_auth_secrets.len(),
            allow_loopback_peers = t.allow_loopback_peers,
            relay_socket = ?t.relay_socket,
            "TURN relay on"
        );
        if t.users.is_empty() && t.static_auth_secrets.is_empty() {
            tracing::warn!("TURN: no users and no static auth secret: every TURN request gets 401");
        }
    }
    let reload = || runtime.reload_tls().map_err(|e| e.to_string());
    let sig = if args.stats_interval == 0 {
        signals.forever().find(|&s| stops(s, &reload))
    } else {
        log_stats_until_signal(
            &runtime,
            Duration::from_secs(args.stats_interval),
            &mut signals,
            &reload,
        )
    };
    if let Some(sig) = sig {
        tracing::info!(signal = sig, "shutting down");
    }
    let stats = runtime.stats();
    runtime.shutdown().map_err(|e| e.to_string())?;
    tracing::info!(
        received = stats.received,
        answered = stats.answered,
        errors_sent = stats.errors_sent,
        dropped = stats.dropped(),
        allocations = stats.allocations_created,
        relayed_to_peer = stats.relayed_to_peer,
        relayed_to_client = stats.relayed_to_client,
        "stopped"
    );
    let nonzero: Vec<String> = stats
        .fields()
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    tracing::debug!("counters: {}", nonzero.join(" "));
    Ok(())
}

/// The start-up lines of the TLS listeners (tests read the addresses from them).
fn log_tls_listens(addrs: &[SocketAddr], shards: usize, what: &str) {
    for addr in addrs {
        tracing::info!(shards, "listening on {addr}/tls ({what} over TLS)");
    }
}

/// Whether `sig` stops the server; SIGHUP and SIGUSR2 re-read the TLS certificate and
/// key instead (a renewed certificate, for the handshakes that start after it), logging
/// the outcome.
fn stops(sig: i32, reload: &dyn Fn() -> Result<(), String>) -> bool {
    if sig != signal_hook::consts::SIGHUP && sig != signal_hook::consts::SIGUSR2 {
        return true;
    }
    match reload() {
        Ok(()) => tracing::info!(signal = sig, "TLS certificate and key reloaded"),
        Err(e) => tracing::warn!(
            signal = sig,
            "TLS reload failed, the old certificate stays: {e}"
        ),
    }
    false
}

/// Logs the relay's live counters every `every` until a stopping signal arrives; returns
/// it.
fn log_stats_until_signal(
    runtime: &Runtime,
    every: Duration,
    signals: &mut signal_hook::iterator::Signals,
    reload: &dyn Fn() -> Result<(), String>,
) -> Option<i32> {
    let mut next = std::time::Instant::now() + every;
    loop {
        if let Some(sig) = signals.pending().find(|&s| stops(s, reload)) {
            return Some(sig);
        }
        let now = std::time::Instant::now();
        if now >= next {
            next = now + every;
            let s = runtime.stats();
            let counters = runtime.shard_counters();
            let sum = |f: fn(&icering::shard::ShardCounters) -> &std::sync::atomic::AtomicU64| {
                counters
                    .iter()
                    .map(|c| f(c).load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>()
            };
            let port_sockets = sum(|c| &c.relay_port_sockets);
            tracing::info!(
                allocations = s.allocations(),
                created = s.allocations_created,
                relay_open_failures = s.relay_open_failures,
                relay_port_sockets = port_sockets,
                relayed_to_peer = s.relayed_to_peer,
                relayed_to_client = s.relayed_to_client,
                dropped = s.dropped(),
                dropped_not_relayed = s.dropped_not_relayed,
                tcp_open = sum(|c| &c.tcp_open),
                tcp_refused = sum(|c| &c.tcp_refused),
                tcp_no_allocation_closed = sum(|c| &c.tcp_no_allocation_closed),
                "stats"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `icering serve` with the HTTP session API: the engine (STUN/TURN on `[server] listen`
/// as usual, plus the shared ICE sockets of `[ice] listen`) and the admin server.
fn serve_sessions(
    config: &Config,
    admin: SocketAddr,
    signals: &mut signal_hook::iterator::Signals,
    metrics: Option<std::net::TcpListener>,
) -> Result<(), String> {
    if config.ice.listen.is_empty() {
        return Err(format!(
            "--admin {admin}: sessions need a shared ICE port: set `[ice] listen` or \
             --ice-listen ADDR"
        ));
    }
    let engine = Engine::start(config).map_err(|e| e.to_string())?;
    tracing::info!("{}", engine.backend_reason());
    let what = if config.turn.enabled {
        "STUN/TURN"
    } else {
        "STUN"
    };
    for addr in engine.server_addrs() {
        tracing::info!(shards = engine.shards(), "listening on {addr}/udp ({what})");
    }
    log_tls_listens(engine.server_tls_addrs(), engine.shards(), what);
    for addr in engine.mux_addrs() {
        tracing::info!(
            lite = config.ice.lite,
            "ICE sessions on {addr}/udp (shared by every session)"
        );
    }
    let server = AdminServer::start(admin, engine.clone(), config.ice.lite)
        .map_err(|e| format!("--admin: {e}"))?;
    tracing::info!("session API on http://{}", server.local_addr());
    let _metrics = start_metrics(metrics, engine.shard_counters())?;
    let reload = || engine.reload_tls().map_err(|e| e.to_string());
    if let Some(sig) = signals.forever().find(|&s| stops(s, &reload)) {
        tracing::info!(signal = sig, "shutting down");
    }
    let open = server.sessions();
    server.shutdown();
    let ice = engine.stats().ice;
    let stun = engine.server_stats();
    engine.shutdown().map_err(|e| e.to_string())?;
    tracing::info!(
        sessions_open = open,
        sessions_created = ice.created,
        data_in = ice.data_in,
        data_out = ice.data_out,
        stun_received = stun.received,
        stun_answered = stun.answered,
        "stopped"
    );
    Ok(())
}

/// The Prometheus endpoint on its bound listener, if any; logs where it listens.
fn start_metrics(
    listener: Option<std::net::TcpListener>,
    shards: Vec<std::sync::Arc<icering::shard::ShardCounters>>,
) -> Result<Option<MetricsServer>, String> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let m = MetricsServer::start(listener, shards).map_err(|e| e.to_string())?;
    tracing::info!("metrics on http://{}/metrics", m.local_addr());
    Ok(Some(m))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Ping(args) => ping(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("icering: {e}");
            ExitCode::FAILURE
        }
    }
}
