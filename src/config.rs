//! Configuration: TOML with every key optional, an embedded default
//! (`configs/default.toml`), and errors that name the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// A configuration error: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or type errors (toml names the key and line).
    #[error("config: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Which io backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoBackendChoice {
    /// Probe io_uring; fall back to portable.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// recvmmsg/sendmmsg with epoll.
    Portable,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSection,
    /// `[io]`.
    pub io: IoSection,
    /// `[turn]`.
    pub turn: TurnSection,
    /// `[ice]`.
    pub ice: IceSection,
}

/// `[ice]`: ICE agents hosted on the shards (see `docs/agents.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceSection {
    /// Shared (mux) ICE sockets: each bound once per shard with SO_REUSEPORT. Agents
    /// created with `mux` take their host candidates from these. Port 0 is resolved once.
    pub listen: Vec<SocketAddr>,
    /// Port range for agents' dedicated sockets (both 0: any ephemeral port). An agent's
    /// `port_range` option overrides it.
    pub min_port: u16,
    /// Upper end of `min_port`'s range.
    pub max_port: u16,
    /// Whether sessions created by `icering serve` are ICE-lite.
    pub lite: bool,
    /// Received datagrams queued per app-owned connection before the next is dropped
    /// (1..=65536; the queue grows to its backlog, so a connection whose reader stalls
    /// holds at most this many).
    pub recv_queue: usize,
}

impl Default for IceSection {
    fn default() -> Self {
        IceSection {
            listen: Vec::new(),
            min_port: 0,
            max_port: 0,
            lite: true,
            recv_queue: 256,
        }
    }
}

/// How relay sockets are laid out (`[turn] relay_socket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RelaySocket {
    /// One UDP socket per allocation, bound to its relayed address: one file descriptor
    /// per allocation.
    #[default]
    PerAllocation,
    /// One UDP socket per relay port per shard, bound to the wildcard address of the
    /// family (it takes that port on every local address), shared by the allocations of
    /// that port on every relay IP: k relay IPs × N ports = k × N allocations in N file
    /// descriptors. Datagrams to local IPs that are no relay IPs are dropped and counted.
    SharedPort,
}

impl std::str::FromStr for RelaySocket {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-allocation" => Ok(Self::PerAllocation),
            "shared-port" => Ok(Self::SharedPort),
            _ => Err(format!(
                "`{s}` is not a relay socket layout (per-allocation or shared-port)"
            )),
        }
    }
}

/// `[turn]`: the TURN relay (RFC 8656). With no `users` and no `static_auth_secrets`
/// every TURN request is refused with 401.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSection {
    /// Run the relay on the listen ports (false: STUN Binding only).
    pub enabled: bool,
    /// REALM of the long-term credentials.
    pub realm: String,
    /// Addresses relay sockets bind on; allocations rotate over those of their family and
    /// fall over to the next when a port range is exhausted.
    pub relay_ips: Vec<IpAddr>,
    /// Lowest relay port.
    pub min_port: u16,
    /// Highest relay port.
    pub max_port: u16,
    /// One relay socket per allocation, or one per port shared by every relay IP.
    pub relay_socket: RelaySocket,
    /// Static users, `"name:password"`.
    pub users: Vec<String>,
    /// TURN REST shared secrets (coturn `static-auth-secret`); several for rotation.
    pub static_auth_secrets: Vec<String>,
    /// Allocation lifetime granted when the client asks for less (seconds).
    pub default_lifetime: u32,
    /// Longest allocation lifetime (seconds).
    pub max_lifetime: u32,
    /// Seconds a nonce is valid before 438.
    pub nonce_lifetime: u32,
    /// Allocations per user, all shards (0 = unlimited); over it: 486.
    pub user_quota: u32,
    /// Allocations in total (0 = unlimited); over it: 508.
    pub total_quota: u32,
    /// Relayed bytes per second per allocation (0 = unlimited); excess is dropped.
    pub bandwidth: u64,
    /// Failed authentications per source IP per minute before its requests are dropped
    /// (0 = unlimited).
    pub max_auth_failures: u32,
    /// Relay to loopback peers (off: 403). For tests on one machine.
    pub allow_loopback_peers: bool,
    /// Relay to private ranges (RFC 1918, CGNAT, ULA).
    pub allow_private_peers: bool,
    /// Peer CIDR blocks allowed even if a default rule refuses them.
    pub allowed_peers: Vec<String>,
    /// Peer CIDR blocks always refused.
    pub denied_peers: Vec<String>,
}

impl Default for TurnSection {
    fn default() -> Self {
        TurnSection {
            enabled: true,
            realm: "icering".into(),
            relay_ips: vec![IpAddr::from([127, 0, 0, 1])],
            min_port: 49152,
            max_port: 65535,
            relay_socket: RelaySocket::PerAllocation,
            users: Vec::new(),
            static_auth_secrets: Vec::new(),
            default_lifetime: 600,
            max_lifetime: 3600,
            nonce_lifetime: 600,
            user_quota: 0,
            total_quota: 0,
            bandwidth: 0,
            max_auth_failures: 20,
            allow_loopback_peers: false,
            allow_private_peers: false,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
        }
    }
}

impl TurnSection {
    /// `users` split into `(name, password)`.
    pub fn user_pairs(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.users
            .iter()
            .map(|u| match u.split_once(':') {
                Some((n, p)) if !n.is_empty() => Ok((n.to_string(), p.to_string())),
                _ => Err(ConfigError::Invalid {
                    key: "turn.users",
                    reason: format!("`{u}` is not `name:password`"),
                }),
            })
            .collect()
    }

    /// The peer policy.
    pub fn policy(&self) -> Result<crate::turn::server::PeerPolicy, ConfigError> {
        let parse = |key: &'static str, v: &[String]| {
            v.iter()
                .map(|c| {
                    c.parse()
                        .map_err(|reason| ConfigError::Invalid { key, reason })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(crate::turn::server::PeerPolicy {
            denied: parse("turn.denied_peers", &self.denied_peers)?,
            allowed: parse("turn.allowed_peers", &self.allowed_peers)?,
            allow_loopback: self.allow_loopback_peers,
            allow_private: self.allow_private_peers,
        })
    }
}

/// `[server]`: what to listen on and how many shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// UDP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Also accept STUN/TURN over TCP on the same addresses (RFC 8656 §3.1).
    pub tcp: bool,
    /// TCP addresses to accept STUN/TURN over TLS on (RFC 8656 §3.1, `turns:`; 5349 by
    /// custom, 443 to pass firewalls); needs `tls_cert` and `tls_key`.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM file of the TLS certificate chain (server certificate first).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM file of the TLS private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<std::path::PathBuf>,
    /// Seconds a TCP or TLS connection may go without a TURN allocation (coturn's
    /// `max-allocate-timeout`): checked this long after the accept and again every this
    /// long while it holds one; a connection found without one is closed. Bounds what
    /// idle connections and unfinished TLS handshakes hold of `max_tcp_connections`.
    pub max_allocate_timeout: u32,
    /// TCP and TLS connections each shard holds at once; more are accepted and closed at
    /// once (counted as `tcp_refused`). Mind the process's file descriptor limit and, for
    /// TLS, ~7 KB of session state per connection (docs/benchmarks.md).
    pub max_tcp_connections: usize,
    /// Shards; 0 = one per core of `cores`, or of the process's affinity mask.
    pub shards: usize,
    /// Pin each shard thread to one core (thread-per-core). `false`: the OS schedules
    /// them (several processes sharing cores, CPU quotas).
    pub pin: bool,
    /// Cores the shards are pinned to, in order: shard `i` on `cores[i % len]`. Empty:
    /// the cores of the process's affinity mask, ascending (two processes on one host
    /// with fewer shards than cores then both start at the same core: give each its own
    /// list).
    pub cores: Vec<usize>,
    /// SOFTWARE attribute value ("" to omit).
    pub software: String,
    /// HTTP session API of `icering serve` (docs/serve-api.md); absent = off. Sessions
    /// are hosted on the `[ice] listen` sockets.
    pub admin: Option<SocketAddr>,
    /// Prometheus endpoint (`GET /metrics`, every shard's counters); absent = off.
    pub metrics: Option<SocketAddr>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec!["127.0.0.1:3478".parse().expect("literal")],
            tcp: true,
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_allocate_timeout: 60,
            max_tcp_connections: 4096,
            shards: 0,
            pin: true,
            cores: Vec::new(),
            software: "icering".into(),
            admin: None,
            metrics: None,
        }
    }
}

/// `[io]`: backend and buffer sizing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoSection {
    /// auto | uring | portable.
    pub backend: IoBackendChoice,
    /// Datagrams per batch.
    pub batch: usize,
    /// Bytes per receive buffer.
    pub buf_size: usize,
    /// Receive buffers per shard (power of two).
    pub buf_count: usize,
    /// Coalesce equal-size replies to one destination into UDP GSO sends.
    pub gso: bool,
    /// Receive bursts of same-size datagrams as one buffer with UDP GRO.
    pub gro: bool,
}

impl Default for IoSection {
    fn default() -> Self {
        IoSection {
            backend: IoBackendChoice::Auto,
            batch: 64,
            buf_size: 2048,
            buf_count: 4096,
            gso: true,
            gro: true,
        }
    }
}

impl IoSection {
    /// A shard's io backend sized by this section: one send slot per receive buffer (at
    /// least one batch).
    pub fn backend_config(&self) -> crate::io::Config {
        crate::io::Config {
            batch: self.batch,
            buf_size: self.buf_size,
            buf_count: self.buf_count,
            send_slots: self.buf_count.max(self.batch),
            gso: self.gso,
            gro: self.gro,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The embedded default.
    pub fn embedded() -> Self {
        Self::from_toml(DEFAULT_TOML).expect("the embedded default config is valid")
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks ranges that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.server.listen.is_empty() && self.ice.listen.is_empty() {
            return invalid(
                "server.listen",
                "needs at least one address (or ICE sessions on `ice.listen`)",
            );
        }
        if !self.server.tls_listen.is_empty() {
            // Plain TCP and TLS listeners on one port would both bind (SO_REUSEPORT) and
            // the kernel would split the connections between them.
            let tcp: &[SocketAddr] = if self.server.tcp {
                &self.server.listen
            } else {
                &[]
            };
            let overlaps = |a: &SocketAddr, b: &SocketAddr| {
                a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            };
            for (i, a) in self.server.tls_listen.iter().enumerate() {
                let mut others = tcp.iter().chain(&self.server.tls_listen[i + 1..]);
                if a.port() != 0 && others.any(|b| overlaps(a, b)) {
                    return invalid(
                        "server.tls_listen",
                        &format!("{a} overlaps a TCP or TLS listen address on that port"),
                    );
                }
            }
            if self.server.tls_cert.is_none() {
                return invalid("server.tls_cert", "needed by server.tls_listen");
            }
            if self.server.tls_key.is_none() {
                return invalid("server.tls_key", "needed by server.tls_listen");
            }
        }
        if !(1..=1 << 20).contains(&self.server.max_tcp_connections) {
            return invalid(
                "server.max_tcp_connections",
                "must be 1..=1048576 per shard",
            );
        }
        if self.server.metrics.is_some() && self.server.metrics == self.server.admin {
            return invalid("server.metrics", "must differ from server.admin");
        }
        if self.server.max_allocate_timeout == 0 {
            return invalid("server.max_allocate_timeout", "must be at least 1 second");
        }
        if self.server.shards > 1024 {
            return invalid("server.shards", "at most 1024");
        }
        if self.server.cores.len() > 1024 {
            return invalid("server.cores", "at most 1024 (one shard each)");
        }
        if self.server.cores.iter().any(|&c| c >= 1024) {
            return invalid("server.cores", "core ids are below 1024 (CPU_SETSIZE)");
        }
        if !self.server.pin && !self.server.cores.is_empty() {
            return invalid("server.cores", "set, but `server.pin = false`");
        }
        if self.server.software.len() > 127 {
            return invalid("server.software", "at most 127 bytes (RFC 8489 §14.14)");
        }
        if !(1..=1024).contains(&self.io.batch) {
            return invalid("io.batch", "must be 1..=1024");
        }
        if !(576..=65536).contains(&self.io.buf_size) {
            return invalid("io.buf_size", "must be 576..=65536 bytes");
        }
        if !self.io.buf_count.is_power_of_two() || !(64..=32768).contains(&self.io.buf_count) {
            return invalid("io.buf_count", "must be a power of two in 64..=32768");
        }
        let i = &self.ice;
        if i.min_port > i.max_port {
            return invalid("ice.min_port", "must be <= ice.max_port");
        }
        if !(1..=65536).contains(&i.recv_queue) {
            return invalid("ice.recv_queue", "must be in 1..=65536");
        }
        let t = &self.turn;
        if t.enabled {
            if t.realm.is_empty() || t.realm.len() > 127 {
                return invalid("turn.realm", "must be 1..=127 bytes");
            }
            if t.relay_ips.is_empty() {
                return invalid("turn.relay_ips", "needs at least one address");
            }
            if t.relay_ips.iter().any(|ip| ip.is_unspecified()) {
                return invalid(
                    "turn.relay_ips",
                    "must be concrete addresses (0.0.0.0/:: cannot be a relayed address)",
                );
            }
            if t.min_port == 0 || t.min_port > t.max_port {
                return invalid("turn.min_port", "must be 1..=max_port");
            }
            let max = crate::shard::MAX_SHARED_IPS;
            if t.relay_socket == RelaySocket::SharedPort
                && [false, true]
                    .iter()
                    .any(|&v6| t.relay_ips.iter().filter(|ip| ip.is_ipv6() == v6).count() > max)
            {
                return Err(ConfigError::Invalid {
                    key: "turn.relay_ips",
                    reason: format!(
                        "at most {max} per address family with shared-port relay sockets"
                    ),
                });
            }
            if t.default_lifetime == 0 || t.default_lifetime > t.max_lifetime {
                return invalid("turn.default_lifetime", "must be 1..=max_lifetime");
            }
            if t.nonce_lifetime < 10 {
                return invalid("turn.nonce_lifetime", "must be at least 10 seconds");
            }
            t.user_pairs()?;
            t.policy()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_section_parses_and_is_checked() {
        let c = Config::from_toml(
            "[server]\nlisten = []\n[ice]\nlisten = [\"127.0.0.1:3479\"]\nmin_port = 40000\nmax_port = 40100\nlite = false\n",
        )
        .unwrap();
        assert_eq!(c.ice.listen, vec!["127.0.0.1:3479".parse().unwrap()]);
        assert_eq!(
            (c.ice.min_port, c.ice.max_port, c.ice.lite),
            (40000, 40100, false)
        );
        assert_eq!(Config::embedded().ice.recv_queue, 256);
        assert!(Config::embedded().ice.listen.is_empty());
        let e = Config::from_toml("[ice]\nmin_port = 5\nmax_port = 4\n").unwrap_err();
        assert!(e.to_string().contains("ice.min_port"), "{e}");
        let e = Config::from_toml("[server]\nlisten = []\n").unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        for q in [0, 65537] {
            let e = Config::from_toml(&format!("[ice]\nrecv_queue = {q}\n")).unwrap_err();
            assert!(e.to_string().contains("ice.recv_queue"), "{e}");
        }
    }

    #[test]
    fn tls_listen_needs_a_certificate_and_a_key() {
        let e = Config::from_toml("[server]\ntls_listen = [\"127.0.0.1:5349\"]\n").unwrap_err();
        assert!(e.to_string().contains("server.tls_cert"), "{e}");
        let e = Config::from_toml(
            "[server]\ntls_listen = [\"127.0.0.1:5349\"]\ntls_cert = \"c.pem\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("server.tls_key"), "{e}");
        let c = Config::from_toml(
            "[server]\ntls_listen = [\"127.0.0.1:5349\"]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.server.tls_listen.len(), 1);
        assert!(Config::embedded().server.tls_listen.is_empty());
        // The embedded default listens on 127.0.0.1:3478 over UDP and TCP.
        for clash in ["127.0.0.1:3478", "0.0.0.0:3478"] {
            let e = Config::from_toml(&format!(
                "[server]\ntls_listen = [\"{clash}\"]\ntls_cert = \"c\"\ntls_key = \"k\"\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("overlaps"), "{e}");
        }
        let c = Config::from_toml(
            "[server]\ntcp = false\ntls_listen = [\"127.0.0.1:3478\"]\ntls_cert = \"c\"\ntls_key = \"k\"\n",
        );
        assert!(c.is_ok(), "UDP and TLS may share a port number");
    }

    #[test]
    fn embedded_default_is_loopback_only() {
        let c = Config::embedded();
        assert!(c.server.listen.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(c.io.backend, IoBackendChoice::Auto);
        assert!(c.turn.enabled);
        assert!(c.turn.relay_ips.iter().all(|ip| ip.is_loopback()));
        assert!(c.turn.users.is_empty() && c.turn.static_auth_secrets.is_empty());
        assert!(!c.turn.allow_loopback_peers);
    }

    #[test]
    fn relay_socket_layout_parses() {
        assert_eq!(
            Config::embedded().turn.relay_socket,
            RelaySocket::PerAllocation
        );
        let c = Config::from_toml("[turn]\nrelay_socket = \"shared-port\"\n").unwrap();
        assert_eq!(c.turn.relay_socket, RelaySocket::SharedPort);
        assert_eq!("shared-port".parse(), Ok(RelaySocket::SharedPort));
        assert!("shared".parse::<RelaySocket>().is_err());
        let many: Vec<String> = (0..65).map(|i| format!("\"10.0.{i}.1\"")).collect();
        let toml = format!(
            "[turn]\nrelay_socket = \"shared-port\"\nrelay_ips = [{}]\n",
            many.join(",")
        );
        let e = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(e.contains("turn.relay_ips") && e.contains("64"), "{e}");
    }

    #[test]
    fn turn_errors_name_the_key() {
        for (toml, key) in [
            ("[turn]\nusers = [\"nopass\"]\n", "turn.users"),
            (
                "[turn]\ndenied_peers = [\"1.2.3.4/40\"]\n",
                "turn.denied_peers",
            ),
            (
                "[turn]\nmin_port = 5000\nmax_port = 4000\n",
                "turn.min_port",
            ),
            ("[turn]\nrelay_ips = [\"0.0.0.0\"]\n", "turn.relay_ips"),
            ("[turn]\nrelay_socket = \"shared\"\n", "relay_socket"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[io]\nbuf_count = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("io.buf_count") && e.contains("power of two"),
            "{e}"
        );
        let e = Config::from_toml("[server]\nlisen = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::from_toml("[server]\nmax_allocate_timeout = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.max_allocate_timeout"), "{e}");
        let e = Config::from_toml("[server]\nmax_tcp_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.max_tcp_connections"), "{e}");
        let c = Config::from_toml("[server]\nmax_allocate_timeout = 30\n").unwrap();
        assert_eq!(c.server.max_allocate_timeout, 30);
        let e = Config::from_toml("[io]\nbackend = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fast") || e.contains("backend"), "{e}");
        let e = Config::from_toml("[server]\nlisten = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") || e.contains("address"), "{e}");
        for (toml, why) in [
            ("[server]\ncores = [1024]\n", "below 1024"),
            ("[server]\npin = false\ncores = [1]\n", "pin = false"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains("server.cores") && e.contains(why), "{e}");
        }
        let c = Config::from_toml("[server]\ncores = [3, 1]\n").expect("valid");
        assert_eq!((c.server.pin, &c.server.cores[..]), (true, &[3, 1][..]));
    }
}
