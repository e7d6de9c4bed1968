//! The runtime: one pinned thread per shard, each owning its io backend, its sockets and
//! its sans-IO protocol objects. The only module that touches sockets, threads and time.
//!
//! [`Runtime::start`] binds every listen address once per shard with SO_REUSEPORT, so the
//! kernel spreads 5-tuples over shards, then starts the shards. Each shard runs
//! `worker`'s loop: reap a batch of datagrams → parse in place → dispatch to the sans-IO
//! handler, which writes its answer straight into a send slot → flush the batch in one
//! submission → sleep until the next datagram, control message or timer deadline. Control
//! messages arrive on a crossbeam channel, with the backend's eventfd waker to interrupt
//! the sleep. Counters are published to shared atomics once per loop turn, not per packet.

mod counters;
pub(crate) mod ice;
mod shared_ports;
pub mod timers;
mod tls;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::config::{Config, IoBackendChoice, RelaySocket, ServerSection};
use crate::io::{self, BackendChoice, BackendKind, IoError, Waker};
use crate::turn::server::{ServerConfig, ServerStats, TurnConfig};

pub use counters::ShardCounters;
pub use ice::gather;
pub(crate) use ice::{IceCmd, NewAgent, ServerSpec, UrlSpec};
pub use ice::{IceCounters, IceStats, MAX_ICE_SHARDS};
pub use shared_ports::MAX_SHARED_IPS;
pub(crate) use tls::{TlsLink, TlsTarget, pem_config, platform_config};

/// Errors starting or running the runtime.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The io layer refused (bind failure, io_uring unavailable when required, ...).
    #[error(transparent)]
    Io(#[from] IoError),
    /// A shard thread could not be spawned or died.
    #[error("shard {0}: {1}")]
    Thread(usize, String),
    /// The TLS certificate or key (`[server] tls_cert`, `tls_key`) could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Messages from the control side to a shard.
#[derive(Debug)]
pub(crate) enum Control {
    /// Stop receiving, answer what has arrived, flush, exit.
    Shutdown,
    /// Hosted ICE agents: commands from handles, handoffs and routes from other shards.
    Ice(IceCmd),
    /// A new TLS certificate and key for the handshakes that start from now on.
    Tls(Arc<rustls::ServerConfig>),
}

struct Shard {
    control: Sender<Control>,
    waker: Waker,
    counters: Arc<ShardCounters>,
    thread: Option<JoinHandle<Result<(), ShardError>>>,
}

/// A running set of shards.
pub struct Runtime {
    shards: Vec<Shard>,
    local_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    /// `[server] tls_cert` and `tls_key`, re-read by [`Runtime::reload_tls`].
    tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ice_addrs: Vec<SocketAddr>,
    backend: BackendKind,
    backend_reason: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("shards", &self.shards.len())
            .field("local_addrs", &self.local_addrs)
            .field("backend", &self.backend)
            .finish()
    }
}

/// How many shards: `server.shards`, or with 0 one per core of `server.cores`, else one
/// per `allowed` core.
fn shard_count(server: &ServerSection, allowed: &[usize]) -> usize {
    match (server.shards, server.cores.len()) {
        (0, 0) => allowed.len(),
        (0, listed) => listed,
        (n, _) => n,
    }
}

/// The core each of `n` shards is pinned to: `server.cores` in turn, else the process's
/// `allowed` cores in turn (only when there is a choice: more than one shard or core);
/// none with `server.pin = false`.
fn shard_cores(server: &ServerSection, n: usize, allowed: &[usize]) -> Vec<Option<usize>> {
    let cores = if !server.pin {
        &[][..]
    } else if !server.cores.is_empty() {
        &server.cores[..]
    } else if n > 1 || allowed.len() > 1 {
        allowed
    } else {
        &[][..]
    };
    (0..n)
        .map(|i| (!cores.is_empty()).then(|| cores[i % cores.len()]))
        .collect()
}

impl Runtime {
    /// Selects the io backend, binds the listen addresses on every shard and starts the
    /// shard threads. Returns once every shard is ready to receive.
    pub fn start(config: &Config) -> Result<Self, ShardError> {
        let choice = match config.io.backend {
            IoBackendChoice::Auto => BackendChoice::Auto,
            IoBackendChoice::Uring => BackendChoice::Uring,
            IoBackendChoice::Portable => BackendChoice::Portable,
        };
        let (backend, backend_reason) = io::select_backend(choice)?;
        let allowed = io::allowed_cores();
        let n = shard_count(&config.server, &allowed);
        let pinned = shard_cores(&config.server, n, &allowed);
        if pinned.iter().any(Option::is_some) {
            let cores: Vec<usize> = pinned.iter().flatten().copied().collect();
            let from = if config.server.cores.is_empty() {
                "the affinity mask"
            } else {
                "server.cores"
            };
            tracing::info!(
                shards = n,
                ?cores,
                "shard threads pinned to cores of {from}"
            );
        }

        // Bind every address once per shard. Port 0 is resolved by the first bind so all
        // shards share one port.
        let mut local_addrs = Vec::with_capacity(config.server.listen.len());
        let mut sockets: Vec<Vec<std::net::UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut tcp: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        for &addr in &config.server.listen {
            let (resolved, udp, listeners) = bind_group(addr, n, config.server.tcp)?;
            local_addrs.push(resolved);
            for (per_shard, s) in sockets.iter_mut().zip(udp) {
                per_shard.push(s);
            }
            for (per_shard, l) in tcp.iter_mut().zip(listeners) {
                per_shard.push(l);
            }
        }
        // STUN/TURN over TLS (`[server] tls_listen`): TCP listeners only.
        // (`Config::validate` checks this too; library callers may not run it.)
        let (tls, tls_files) = match (&config.server.tls_cert, &config.server.tls_key) {
            _ if config.server.tls_listen.is_empty() => (None, None),
            (Some(cert), Some(key)) => {
                let c = tls::server_config(cert, key).map_err(ShardError::Tls)?;
                (Some(c), Some((cert.clone(), key.clone())))
            }
            _ => {
                return Err(ShardError::Tls(
                    "server.tls_listen needs server.tls_cert and server.tls_key".into(),
                ));
            }
        };
        let mut tls_addrs = Vec::with_capacity(config.server.tls_listen.len());
        let mut tls_listeners: Vec<Vec<std::net::TcpListener>> =
            (0..n).map(|_| Vec::new()).collect();
        for &addr in &config.server.tls_listen {
            let first = io::bind_tcp_listener(addr, true)?;
            let resolved = first.local_addr().map_err(IoError::Io)?;
            tls_addrs.push(resolved);
            tls_listeners[0].push(first);
            for per_shard in tls_listeners.iter_mut().skip(1) {
                per_shard.push(io::bind_tcp_listener(resolved, true)?);
            }
        }
        // The same for the ICE mux sockets (`[ice] listen`).
        let mut ice_addrs = Vec::with_capacity(config.ice.listen.len());
        let mut ice_sockets: Vec<Vec<std::net::UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        for &addr in &config.ice.listen {
            let (resolved, udp, _) = bind_group(addr, n, false)?;
            ice_addrs.push(resolved);
            for (per_shard, s) in ice_sockets.iter_mut().zip(udp) {
                per_shard.push(s);
            }
        }

        let io_config = config.io.backend_config();
        if config.turn.enabled && config.turn.relay_socket == RelaySocket::SharedPort {
            check_local(&config.turn.relay_ips)?;
        }
        let server_config = ServerConfig {
            software: config.server.software.clone(),
            turn: turn_config(config).map_err(|e| ShardError::Thread(0, e))?,
        };
        let ports = (config.turn.min_port, config.turn.max_port);
        let parked = worker::Parked::default();

        let mut shards = Vec::with_capacity(n);
        let mut ready = Vec::with_capacity(n);
        let shard_sockets = sockets
            .into_iter()
            .zip(ice_sockets)
            .zip(tcp)
            .zip(tls_listeners);
        for (index, (((socks, ice_socks), tcp), tls_listeners)) in shard_sockets.enumerate() {
            let (control_tx, control_rx) = crossbeam_channel::unbounded();
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let counters = Arc::new(ShardCounters::default());
            let params = worker::Params {
                index,
                core: pinned[index],
                backend,
                io: io_config,
                server: server_config.clone(),
                ports,
                shared_ports: (config.turn.relay_socket == RelaySocket::SharedPort)
                    .then(|| (config.turn.relay_ips.clone(), shard_ports(ports, index, n))),
                sockets: socks,
                ice_sockets: ice_socks,
                tcp,
                tls_listeners,
                tls: tls.clone(),
                max_streams: config.server.max_tcp_connections,
                max_allocate: std::time::Duration::from_secs(
                    config.server.max_allocate_timeout.into(),
                ),
                parked: parked.clone(),
                control: control_rx,
                counters: counters.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || worker::run(params, ready_tx))
                .map_err(|e| ShardError::Thread(index, e.to_string()))?;
            shards.push((control_tx, counters, thread));
            ready.push(ready_rx);
        }

        let mut started = Vec::with_capacity(n);
        let mut first_err = None;
        for ((control, counters, thread), ready_rx) in shards.into_iter().zip(ready) {
            match ready_rx.recv() {
                Ok(Ok(waker)) => started.push(Shard {
                    control,
                    waker,
                    counters,
                    thread: Some(thread),
                }),
                Ok(Err(e)) => {
                    let _ = thread.join();
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    let msg = match thread.join() {
                        Ok(Err(e)) => e.to_string(),
                        _ => "exited before it was ready".to_string(),
                    };
                    first_err.get_or_insert(ShardError::Thread(started.len(), msg));
                }
            }
        }
        let mut runtime = Runtime {
            shards: started,
            local_addrs,
            tls_addrs,
            tls_files,
            ice_addrs,
            backend,
            backend_reason,
        };
        if let Some(e) = first_err {
            let _ = runtime.shutdown_inner();
            return Err(e);
        }
        // Every shard learns every shard's control channel (cross-shard ICE handoff).
        let peers: Arc<[(Sender<Control>, Waker)]> = runtime.links().into();
        for s in &runtime.shards {
            let _ = s.control.send(Control::Ice(IceCmd::Peers(peers.clone())));
            s.waker.wake();
        }
        Ok(runtime)
    }

    /// The ICE mux addresses actually bound (`[ice] listen`, port 0 resolved).
    pub fn ice_addrs(&self) -> &[SocketAddr] {
        &self.ice_addrs
    }

    /// ICE counters summed over shards (as of each shard's last loop turn).
    pub fn ice_stats(&self) -> IceStats {
        let mut total = IceStats::default();
        for s in &self.shards {
            total.add(&s.counters.ice.load());
        }
        total
    }

    /// Control channel and waker of every shard (index = shard).
    pub(crate) fn links(&self) -> Vec<(Sender<Control>, Waker)> {
        self.shards
            .iter()
            .map(|s| (s.control.clone(), s.waker.clone()))
            .collect()
    }

    /// The addresses actually bound (port 0 resolved), in `server.listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The STUN/TURN-over-TLS listen addresses (`[server] tls_listen`, port 0 resolved).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Reads `[server] tls_cert` and `tls_key` again (a renewed certificate) and gives
    /// every shard the new configuration: connections whose handshake starts from now on
    /// use it, open ones keep theirs. On an error (a missing file, a key that does not match) nothing
    /// changes.
    pub fn reload_tls(&self) -> Result<(), ShardError> {
        let Some((cert, key)) = &self.tls_files else {
            return Err(ShardError::Tls("no server.tls_listen to reload".into()));
        };
        let config = tls::server_config(cert, key).map_err(ShardError::Tls)?;
        for (control, waker) in self.links() {
            if control.send(Control::Tls(config.clone())).is_ok() {
                waker.wake();
            }
        }
        Ok(())
    }

    /// The io backend in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Why that backend was chosen (for the start-up log line).
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Server counters summed over shards (as of each shard's last loop turn).
    pub fn stats(&self) -> ServerStats {
        let mut total = ServerStats::default();
        for s in &self.shards {
            total.add(&s.counters.server());
        }
        total
    }

    /// Counters of each shard.
    pub fn shard_counters(&self) -> Vec<Arc<ShardCounters>> {
        self.shards.iter().map(|s| s.counters.clone()).collect()
    }

    fn shutdown_inner(&mut self) -> Result<(), ShardError> {
        for s in &self.shards {
            let _ = s.control.send(Control::Shutdown);
            s.waker.wake();
        }
        let mut result = Ok(());
        for (i, s) in self.shards.iter_mut().enumerate() {
            if let Some(t) = s.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = Err(e),
                    Err(_) => result = Err(ShardError::Thread(i, "panicked".into())),
                }
            }
        }
        result
    }

    /// Graceful stop: every shard answers what it already received, flushes and exits.
    pub fn shutdown(mut self) -> Result<(), ShardError> {
        self.shutdown_inner()
    }
}

/// One SO_REUSEPORT socket per shard on `addr` (port 0: one port chosen for all), plus a
/// TCP listener per shard on the same port when `tcp`. With port 0 the UDP port may be
/// taken for TCP; then another port is tried (a few times).
#[allow(clippy::type_complexity)]
fn bind_group(
    addr: SocketAddr,
    shards: usize,
    tcp: bool,
) -> Result<
    (
        SocketAddr,
        Vec<std::net::UdpSocket>,
        Vec<std::net::TcpListener>,
    ),
    IoError,
> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = io::bind_udp(addr, true)?;
        let resolved = first.local_addr().map_err(IoError::Io)?;
        let mut udp = vec![first];
        for _ in 1..shards {
            udp.push(io::bind_udp(resolved, true)?);
        }
        let mut listeners = Vec::new();
        if tcp {
            for _ in 0..shards {
                match io::bind_tcp_listener(resolved, true) {
                    Ok(l) => listeners.push(l),
                    Err(IoError::Bind { source, .. })
                        if addr.port() == 0
                            && attempt < 8
                            && source.kind() == std::io::ErrorKind::AddrInUse =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if listeners.len() < shards {
                continue; // the UDP port is someone's TCP port: another one
            }
        }
        return Ok((resolved, udp, listeners));
    }
}

/// Shared-port sockets bind the wildcard address, so a relay IP that is not a local address
/// would only fail later, when the kernel refuses it as a source: refuse it at start.
fn check_local(relay_ips: &[std::net::IpAddr]) -> Result<(), IoError> {
    for &ip in relay_ips {
        let addr = SocketAddr::new(ip, 0);
        std::net::UdpSocket::bind(addr).map_err(|source| IoError::Bind { addr, source })?;
    }
    Ok(())
}

/// Shard `index`'s slice of the relay port range in shared-port mode: the range split
/// evenly over the `n` shards, so one shard never scans ports another holds (a wildcard
/// port socket belongs to one shard). A range narrower than the shards: all share it.
fn shard_ports((lo, hi): (u16, u16), index: usize, n: usize) -> (u16, u16) {
    let span = u32::from(hi - lo) + 1;
    let n = n.max(1) as u32;
    if span < n {
        return (lo, hi);
    }
    let i = index as u32 % n;
    let a = u32::from(lo) + span * i / n;
    let b = u32::from(lo) + span * (i + 1) / n - 1;
    (a as u16, b as u16)
}

/// The relay settings shared by every shard: one nonce secret (read from the OS once), one
/// clock epoch and one quota table, so a nonce or a quota means the same on every shard.
fn turn_config(config: &Config) -> Result<Option<TurnConfig>, String> {
    let t = &config.turn;
    if !t.enabled {
        return Ok(None);
    }
    let mut secret = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("cannot read /dev/urandom for the nonce secret: {e}"))?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut c = TurnConfig::new(std::time::Instant::now(), unix, secret);
    c.realm = t.realm.clone();
    c.relay_ips = t.relay_ips.clone();
    c.users = t.user_pairs().map_err(|e| e.to_string())?;
    c.auth_secrets = t.static_auth_secrets.clone();
    c.default_lifetime = t.default_lifetime;
    c.max_lifetime = t.max_lifetime;
    c.nonce_lifetime = t.nonce_lifetime;
    c.user_quota = t.user_quota;
    c.total_quota = t.total_quota;
    c.bandwidth = t.bandwidth;
    c.max_auth_failures = t.max_auth_failures;
    c.policy = t.policy().map_err(|e| e.to_string())?;
    Ok(Some(c))
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.shutdown_inner();
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ServerSection;

    fn section(shards: usize, pin: bool, listed: &[usize]) -> ServerSection {
        ServerSection {
            shards,
            pin,
            cores: listed.to_vec(),
            ..ServerSection::default()
        }
    }

    #[test]
    fn shards_pin_to_listed_or_allowed_cores_in_turn() {
        let cores = |pin, listed: &[usize], n, allowed: &[usize]| {
            super::shard_cores(&section(0, pin, listed), n, allowed)
        };
        // The affinity mask, not 0..n: a process started under `taskset -c 2,3`.
        assert_eq!(cores(true, &[], 3, &[2, 3]), [Some(2), Some(3), Some(2)]);
        assert_eq!(cores(true, &[1], 2, &[0, 1]), [Some(1), Some(1)]);
        assert_eq!(cores(false, &[], 2, &[0, 1]), [None, None]);
        // One shard on a one-core process: nothing to choose.
        assert_eq!(cores(true, &[], 1, &[5]), [None]);
        assert_eq!(cores(true, &[], 1, &[0, 1]), [Some(0)]);
        let count = |shards, listed: &[usize], allowed: &[usize]| {
            super::shard_count(&section(shards, true, listed), allowed)
        };
        assert_eq!(count(0, &[], &[2, 3, 4]), 3);
        assert_eq!(count(0, &[7, 9], &[0, 1, 2, 3]), 2);
        assert_eq!(count(5, &[1], &[0, 1]), 5);
    }

    #[test]
    fn shard_port_slices_cover_the_range_without_overlap() {
        for (lo, hi, n) in [
            (10000u16, 29999u16, 2usize),
            (49152, 65535, 3),
            (5, 9, 7),
            (1, 65535, 64),
        ] {
            let slices: Vec<_> = (0..n).map(|i| super::shard_ports((lo, hi), i, n)).collect();
            if u32::from(hi - lo) + 1 < n as u32 {
                assert!(slices.iter().all(|&s| s == (lo, hi)));
                continue;
            }
            assert_eq!(slices[0].0, lo);
            assert_eq!(slices[n - 1].1, hi);
            for w in slices.windows(2) {
                assert_eq!(u32::from(w[0].1) + 1, u32::from(w[1].0), "{slices:?}");
            }
        }
    }
}
