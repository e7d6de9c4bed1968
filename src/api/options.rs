//! Per-agent options, named after pion/ice's `AgentConfig` where they mean the same.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Address families to gather host candidates on (pion's `NetworkTypes`, UDP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkType {
    /// UDP over IPv4.
    Udp4,
    /// UDP over IPv6.
    Udp6,
}

/// Where an agent's received application data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataMode {
    /// To the application through [`Conn::recv`](super::Conn::recv) (and events,
    /// state watch): the only mode with per-agent channels.
    #[default]
    App,
    /// The shard sends every datagram straight back on the selected pair (no channel,
    /// no copy beyond the one into the send slot).
    Echo,
    /// The shard counts and drops it.
    Sink,
}

/// Which local candidate types an agent gets (pion: `CandidateTypes`; `icering ping
/// --candidate-types`). Default all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateTypes {
    /// Host candidate of the socket.
    pub host: bool,
    /// Server-reflexive candidates from `--stun` URLs.
    pub srflx: bool,
    /// Relayed candidates from `--turn` URLs.
    pub relay: bool,
}

impl Default for CandidateTypes {
    fn default() -> Self {
        CandidateTypes {
            host: true,
            srflx: true,
            relay: true,
        }
    }
}

impl std::str::FromStr for CandidateTypes {
    type Err = String;
    /// A comma-separated list of `host`, `srflx`, `relay`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut t = CandidateTypes {
            host: false,
            srflx: false,
            relay: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "host" => t.host = true,
                "srflx" => t.srflx = true,
                "relay" => t.relay = true,
                other => {
                    return Err(format!(
                        "unknown candidate type {other:?} (expected host, srflx, relay)"
                    ));
                }
            }
        }
        Ok(t)
    }
}

/// Who vouches for the certificates of `turns:` servers (TURN over TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The platform's trust store (as Go's TLS in pion), read once per process on the
    /// first `turns:` URL.
    #[default]
    Platform,
    /// Only the CA certificates in this PEM text (a private CA, a self-signed server).
    Pem(String),
}

impl TlsRoots {
    /// The rustls client configuration these roots make.
    pub(crate) fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        match self {
            TlsRoots::Platform => crate::shard::platform_config(),
            TlsRoots::Pem(pem) => crate::shard::pem_config(pem),
        }
    }
}

/// A STUN or TURN server (pion: a `stun.URI` in `Urls`, with `Username`/`Password`).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `stun:host[:port]` or `turn:host[:port][?transport=udp|tcp]` (RFC 7064/7065).
    pub url: String,
    /// TURN long-term credential user name (unused for STUN).
    pub username: String,
    /// TURN password (unused for STUN).
    pub credential: String,
}

impl ServerUrl {
    /// A URL without credentials (STUN).
    pub fn new(url: &str) -> Self {
        ServerUrl {
            url: url.into(),
            username: String::new(),
            credential: String::new(),
        }
    }

    /// A TURN URL with its long-term credentials.
    pub fn turn(url: &str, username: &str, credential: &str) -> Self {
        ServerUrl {
            url: url.into(),
            username: username.into(),
            credential: credential.into(),
        }
    }
}

impl fmt::Debug for ServerUrl {
    /// The credential is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerUrl")
            .field("url", &self.url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A predicate over interface names (pion's `InterfaceFilter`).
pub type InterfaceFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// A predicate over local IPs (pion's `IPFilter`).
pub type IpFilter = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Options of one agent. `AgentOptions::default()` is a full agent on dedicated sockets
/// with pion/ice's timeouts; the `with_*` methods set single fields.
#[derive(Clone)]
pub struct AgentOptions {
    /// ICE-lite (RFC 8445 §2.5): answers checks, never sends them; always controlled.
    pub lite: bool,
    /// Host candidates on the shard's shared `[ice] listen` sockets instead of dedicated
    /// ones.
    pub mux: bool,
    /// Families to gather on. Default both.
    pub network_types: Vec<NetworkType>,
    /// Dedicated sockets bind a port from this inclusive range (default: `[ice]
    /// min_port..=max_port`, or any ephemeral port when that is 0..=0).
    pub port_range: Option<(u16, u16)>,
    /// Only interfaces whose name passes (dedicated sockets, and mux sockets bound to an
    /// unspecified address).
    pub interface_filter: Option<InterfaceFilter>,
    /// Only local IPs that pass.
    pub ip_filter: Option<IpFilter>,
    /// Include loopback addresses when enumerating interfaces (pion: `IncludeLoopback`).
    /// Default off.
    pub include_loopback: bool,
    /// NAT 1:1 (pion: `NAT1To1IPs` with host candidates): host candidates show this IP
    /// (first of the same family) instead of the interface's; the base stays local.
    pub nat_1to1_ips: Vec<IpAddr>,
    /// STUN/TURN servers for server-reflexive and relayed candidates. Mux agents take
    /// STUN URLs (srflx on the shared port); [`Engine::agent`](super::Engine::agent)
    /// refuses TURN URLs with `mux`. TURN over UDP, TCP (`?transport=tcp`) or TLS
    /// (`turns:`, verified against [`tls_roots`](Self::tls_roots)); `stuns:` is refused.
    pub urls: Vec<ServerUrl>,
    /// Trust anchors for `turns:` servers. Default: the platform's store.
    pub tls_roots: TlsRoots,
    /// Candidate types to gather (e.g. relay only, to force the relay).
    pub candidate_types: CandidateTypes,
    /// Pacing interval Ta between checks (RFC 8445 §14.2). Default 50 ms.
    pub check_interval: Duration,
    /// Keepalive / consent interval on the selected pair. Default 2 s.
    pub keepalive_interval: Duration,
    /// Disconnected after this long without traffic. Default 5 s.
    pub disconnected_timeout: Duration,
    /// Failed after this long without traffic. Default 25 s.
    pub failed_timeout: Duration,
    /// Where received data goes.
    pub data: DataMode,
    /// Continual gathering (pion: `ContinualGatheringPolicy::GatherContinually`; for hosts
    /// whose interfaces come and go): after `gather_candidates` the engine keeps watching
    /// the interface addresses every [`network_monitor_interval`](Self::network_monitor_interval).
    /// A new address that passes the filters gets a dedicated socket and a host candidate
    /// (emitted as `AgentEvent::Candidate` to trickle); a vanished one's candidates are
    /// removed (`IceAgent::remove_local_candidates`), and a selected pair on it moves to
    /// another valid pair by renomination. The end of gathering (`Candidate(None)`) is
    /// never signalled. Dedicated-socket agents only (refused with `mux`).
    pub continual_gathering: bool,
    /// How often continual gathering reads the interface addresses. Default 2 s (pion's
    /// `NetworkMonitorInterval`); the engine reads them at most once a second.
    pub network_monitor_interval: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        let ice = crate::ice::IceConfig::default();
        AgentOptions {
            lite: false,
            mux: false,
            network_types: vec![NetworkType::Udp4, NetworkType::Udp6],
            port_range: None,
            interface_filter: None,
            ip_filter: None,
            include_loopback: false,
            nat_1to1_ips: Vec::new(),
            urls: Vec::new(),
            tls_roots: TlsRoots::Platform,
            candidate_types: CandidateTypes::default(),
            check_interval: ice.ta,
            keepalive_interval: ice.keepalive_interval,
            disconnected_timeout: ice.disconnected_timeout,
            failed_timeout: ice.failed_timeout,
            data: DataMode::App,
            continual_gathering: false,
            network_monitor_interval: Duration::from_secs(2),
        }
    }
}

impl AgentOptions {
    /// Sets [`mux`](Self::mux).
    pub fn with_mux(mut self, mux: bool) -> Self {
        self.mux = mux;
        self
    }
    /// Sets [`lite`](Self::lite).
    pub fn with_lite(mut self, lite: bool) -> Self {
        self.lite = lite;
        self
    }
    /// Sets [`continual_gathering`](Self::continual_gathering).
    pub fn with_continual_gathering(mut self, on: bool) -> Self {
        self.continual_gathering = on;
        self
    }
    /// Sets [`network_monitor_interval`](Self::network_monitor_interval).
    pub fn with_network_monitor_interval(mut self, every: Duration) -> Self {
        self.network_monitor_interval = every;
        self
    }
    /// Sets [`data`](Self::data).
    pub fn with_data(mut self, data: DataMode) -> Self {
        self.data = data;
        self
    }
    /// Sets [`network_types`](Self::network_types).
    pub fn with_network_types(mut self, t: &[NetworkType]) -> Self {
        self.network_types = t.to_vec();
        self
    }
    /// Sets [`port_range`](Self::port_range).
    pub fn with_port_range(mut self, lo: u16, hi: u16) -> Self {
        self.port_range = Some((lo, hi));
        self
    }
    /// Sets [`interface_filter`](Self::interface_filter).
    pub fn with_interface_filter(
        mut self,
        f: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.interface_filter = Some(Arc::new(f));
        self
    }
    /// Sets [`ip_filter`](Self::ip_filter).
    pub fn with_ip_filter(mut self, f: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        self.ip_filter = Some(Arc::new(f));
        self
    }
    /// Loopback addresses only (and included): for tests and same-host use.
    pub fn loopback_only(mut self) -> Self {
        self.include_loopback = true;
        self.ip_filter = Some(Arc::new(|ip: IpAddr| ip.is_loopback()));
        self
    }
    /// Sets [`nat_1to1_ips`](Self::nat_1to1_ips).
    pub fn with_nat_1to1_ips(mut self, ips: &[IpAddr]) -> Self {
        self.nat_1to1_ips = ips.to_vec();
        self
    }
    /// Adds STUN (or credential-less TURN) URLs to [`urls`](Self::urls).
    pub fn with_urls(mut self, urls: &[&str]) -> Self {
        self.urls.extend(urls.iter().map(|s| ServerUrl::new(s)));
        self
    }
    /// Adds a TURN URL with its credentials to [`urls`](Self::urls).
    pub fn with_turn(mut self, url: &str, username: &str, credential: &str) -> Self {
        self.urls.push(ServerUrl::turn(url, username, credential));
        self
    }
    /// Trusts only the CA certificates in `pem` for `turns:` servers
    /// ([`tls_roots`](Self::tls_roots)).
    pub fn with_tls_roots_pem(mut self, pem: &str) -> Self {
        self.tls_roots = TlsRoots::Pem(pem.into());
        self
    }
    /// Sets [`candidate_types`](Self::candidate_types).
    pub fn with_candidate_types(mut self, t: CandidateTypes) -> Self {
        self.candidate_types = t;
        self
    }

    pub(crate) fn allows(&self, name: Option<&str>, ip: IpAddr) -> bool {
        let family = if ip.is_ipv4() {
            NetworkType::Udp4
        } else {
            NetworkType::Udp6
        };
        self.network_types.contains(&family)
            && name.is_none_or(|n| self.interface_filter.as_ref().is_none_or(|f| f(n)))
            && self.ip_filter.as_ref().is_none_or(|f| f(ip))
    }
}

impl fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentOptions")
            .field("lite", &self.lite)
            .field("mux", &self.mux)
            .field("network_types", &self.network_types)
            .field("port_range", &self.port_range)
            .field("interface_filter", &self.interface_filter.is_some())
            .field("ip_filter", &self.ip_filter.is_some())
            .field("include_loopback", &self.include_loopback)
            .field("nat_1to1_ips", &self.nat_1to1_ips)
            .field("urls", &self.urls)
            .field("candidate_types", &self.candidate_types)
            .field("check_interval", &self.check_interval)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("disconnected_timeout", &self.disconnected_timeout)
            .field("failed_timeout", &self.failed_timeout)
            .field("data", &self.data)
            .field("continual_gathering", &self.continual_gathering)
            .field("network_monitor_interval", &self.network_monitor_interval)
            .finish()
    }
}
