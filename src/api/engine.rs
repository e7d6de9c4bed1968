//! [`Engine`]: the shards, started with ICE hosting, and agent creation.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::agent::{Agent, Handle};
use super::link::Link;
use super::{AgentOptions, ApiError, DataMode, IceStats};
use crate::config::{Config, IceSection};
use crate::ice::rng::ICE_CHARS;
use crate::ice::{IceConfig, IceUrl, Scheme};
use crate::io::Waker;
use crate::net::Protocol;
use crate::shard::gather::{InterfaceAddr, interface_addrs};
use crate::shard::{Control, IceCmd, MAX_ICE_SHARDS, NewAgent, Runtime, TlsTarget, UrlSpec};

pub(crate) struct Inner {
    runtime: Mutex<Option<Runtime>>,
    pub(crate) links: Vec<(Sender<Control>, Waker)>,
    pub(crate) mux_addrs: Vec<SocketAddr>,
    server_addrs: Vec<SocketAddr>,
    server_tls_addrs: Vec<SocketAddr>,
    backend_reason: String,
    pub(crate) ice: IceSection,
    next_key: AtomicU64,
    next_shard: AtomicUsize,
    /// The interface addresses, read at most once per [`IFACES_TTL`]: `getifaddrs` is a
    /// netlink dump (~6 % of a connection's CPU when read per agent), and addresses that
    /// come and go are still seen within that time.
    ifaces: Mutex<Option<(std::time::Instant, Arc<[InterfaceAddr]>)>>,
    /// Continual gathering's watch list (and thread).
    pub(crate) netmon: super::netmon::NetMon,
}

/// How long a read of the interface addresses is reused.
const IFACES_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Inner {
    /// The interface addresses, cached for [`IFACES_TTL`].
    pub(crate) fn interface_addrs(&self) -> std::io::Result<Arc<[InterfaceAddr]>> {
        let now = std::time::Instant::now();
        let mut cache = self.ifaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, list)) = cache.as_ref()
            && now.duration_since(*at) < IFACES_TTL
        {
            return Ok(list.clone());
        }
        let list: Arc<[InterfaceAddr]> = interface_addrs()?.into();
        *cache = Some((now, list.clone()));
        Ok(list)
    }
}

/// The running engine: shards hosting ICE agents (and, if `[server] listen` is not
/// empty, the STUN/TURN server). Cheap to clone; the shards stop at
/// [`shutdown`](Self::shutdown) or when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.inner.links.len())
            .field("mux_addrs", &self.inner.mux_addrs)
            .finish()
    }
}

/// Engine-wide counters, summed over shards as of each shard's last loop turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Shards running.
    pub shards: usize,
    /// ICE counters: agents, connected, handoffs, drops by reason.
    pub ice: IceStats,
}

/// Fills `buf` with unpredictable bytes (credentials, tie-breaker and PRNG seeds,
/// transaction-id seeds): `rand`'s thread-local ChaCha12 CSPRNG, seeded and periodically
/// reseeded from the OS. One getrandom(2) per agent cost ~2.5 % of a connection's CPU in
/// the setup load; this draws from the OS once per 64 KiB of output instead.
pub(crate) fn secure_random(buf: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(buf);
}

/// Length of the ufrags the engine makes: the shard's character and 7 random ones (the mux
/// demux packs a ufrag into a `u64`).
pub(crate) const UFRAG_LEN: usize = 8;
/// Length of the passwords the engine makes (RFC 8445 §5.3: at least 22 ice-chars).
pub(crate) const PWD_LEN: usize = 24;

/// New local credentials of an agent on `shard` (RFC 8445 §5.3): a ufrag whose first
/// character names the shard (the mux demux routes Binding requests by it) and a pwd,
/// from the CSPRNG.
pub(crate) fn fresh_credentials(shard: usize) -> (String, String) {
    let mut rnd = [0u8; UFRAG_LEN - 1 + PWD_LEN];
    secure_random(&mut rnd);
    let (u, p) = rnd.split_at(UFRAG_LEN - 1);
    (ice_string(Some(ICE_CHARS[shard]), u), ice_string(None, p))
}

fn ice_string(first: Option<u8>, random: &[u8]) -> String {
    first
        .into_iter()
        .chain(random.iter().map(|b| ICE_CHARS[usize::from(b & 63)]))
        .map(char::from)
        .collect()
}

/// Parses and checks [`AgentOptions::urls`], with the TLS configuration of `turns:` ones
/// (the platform's store is read once per process).
fn parse_urls(opts: &AgentOptions) -> Result<Vec<UrlSpec>, ApiError> {
    if opts.urls.is_empty() {
        return Ok(Vec::new());
    }
    opts.urls
        .iter()
        .map(|u| {
            let url = IceUrl::parse(&u.url)
                .map_err(|e| ApiError::Invalid(format!("{:?}: {e}", u.url)))?;
            if url.scheme == Scheme::Stuns {
                return Err(ApiError::Unsupported("stuns: (STUN over TLS) URLs"));
            }
            if url.transport != Protocol::Udp && !url.scheme.is_turn() {
                return Err(ApiError::Unsupported("STUN over TCP from the shards"));
            }
            if url.scheme.is_turn() && opts.mux {
                // An allocation belongs to one 5-tuple, which every agent on the mux
                // socket shares (RFC 8656 §2.2): relays need a dedicated socket.
                return Err(ApiError::Unsupported(
                    "TURN URLs on mux agents (they gather host and srflx candidates)",
                ));
            }
            if url.scheme.is_turn() && u.username.is_empty() {
                return Err(ApiError::Invalid(format!(
                    "{url}: a TURN URL needs a username and credential"
                )));
            }
            let tls = if url.scheme.is_secure() {
                let config = opts.tls_roots.client_config().map_err(ApiError::Invalid)?;
                let target = TlsTarget::new(config, &url.host)
                    .map_err(|e| ApiError::Invalid(format!("{url}: {e}")))?;
                Some(target)
            } else {
                None
            };
            Ok(UrlSpec {
                url,
                username: u.username.clone(),
                password: u.credential.clone(),
                tls,
            })
        })
        .collect()
}

impl Engine {
    /// Starts the shards (`[server] shards`, io backend, `[ice] listen` mux sockets bound
    /// once per shard with SO_REUSEPORT). `[server] listen` may be empty.
    pub fn start(config: &Config) -> Result<Engine, ApiError> {
        let runtime = Runtime::start(config)?;
        let links = runtime.links();
        let mux_addrs = runtime.ice_addrs().to_vec();
        let server_addrs = runtime.local_addrs().to_vec();
        let server_tls_addrs = runtime.tls_addrs().to_vec();
        let backend_reason = runtime.backend_reason().to_owned();
        Ok(Engine {
            inner: Arc::new(Inner {
                runtime: Mutex::new(Some(runtime)),
                links,
                mux_addrs,
                server_addrs,
                server_tls_addrs,
                backend_reason,
                ice: config.ice.clone(),
                next_key: AtomicU64::new(1),
                next_shard: AtomicUsize::new(0),
                ifaces: Mutex::new(None),
                netmon: Default::default(),
            }),
        })
    }

    /// The mux socket addresses (`[ice] listen`, port 0 resolved).
    pub fn mux_addrs(&self) -> &[SocketAddr] {
        &self.inner.mux_addrs
    }

    /// The STUN/TURN server addresses (`[server] listen`, port 0 resolved).
    pub fn server_addrs(&self) -> &[SocketAddr] {
        &self.inner.server_addrs
    }

    /// Re-reads the TLS certificate and key ([`Runtime::reload_tls`]).
    pub fn reload_tls(&self) -> Result<(), ApiError> {
        let rt = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        match rt.as_ref() {
            Some(rt) => Ok(rt.reload_tls()?),
            None => Err(ApiError::Closed),
        }
    }

    /// The STUN/TURN-over-TLS addresses (`[server] tls_listen`, port 0 resolved).
    pub fn server_tls_addrs(&self) -> &[SocketAddr] {
        &self.inner.server_tls_addrs
    }

    /// Which io backend runs and why (for a start-up log line).
    pub fn backend_reason(&self) -> &str {
        &self.inner.backend_reason
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.links.len()
    }

    /// Options for a session of `icering serve`: on the mux sockets if `[ice] listen` has
    /// any, ICE-lite per `[ice] lite`, data handled by the shard (`data`: echo or sink).
    pub fn session_options(&self, data: DataMode) -> AgentOptions {
        AgentOptions {
            mux: !self.inner.mux_addrs.is_empty(),
            lite: self.inner.ice.lite,
            include_loopback: true,
            data,
            ..AgentOptions::default()
        }
    }

    /// STUN/TURN server counters summed over shards.
    pub fn server_stats(&self) -> crate::turn::server::ServerStats {
        let rt = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        rt.as_ref().map(|r| r.stats()).unwrap_or_default()
    }

    /// Creates an agent on the next shard (round robin over at most 64 shards: the first
    /// character of the generated ufrag names the shard). Credentials are generated from
    /// a CSPRNG seeded from the OS (`secure_random`). Nothing is sent until candidates and a role exist.
    pub fn agent(&self, opts: AgentOptions) -> Result<Agent, ApiError> {
        let servers = parse_urls(&opts)?;
        if opts.mux && opts.continual_gathering {
            return Err(ApiError::Unsupported(
                "continual gathering on mux agents (their sockets are the engine's)",
            ));
        }
        if opts.mux && self.inner.mux_addrs.is_empty() {
            return Err(ApiError::Invalid(
                "mux agents need `[ice] listen` addresses".into(),
            ));
        }
        let n = self.inner.links.len().min(MAX_ICE_SHARDS);
        let shard = self.inner.next_shard.fetch_add(1, Relaxed) % n;
        let key = self.inner.next_key.fetch_add(1, Relaxed);
        let (ufrag, pwd) = fresh_credentials(shard);
        let mut s = [0u8; 8];
        secure_random(&mut s);
        let seed = u64::from_le_bytes(s);
        let (link, app) = if opts.data == DataMode::App {
            let (tx, link) = Link::new(self.inner.ice.recv_queue);
            (Some(tx), Some(link))
        } else {
            (None, None)
        };
        let (tx, waker) = self.inner.links[shard].clone();
        let handle = Arc::new(Handle {
            key,
            tx,
            waker,
            shard: shard as u8,
        });
        let config = IceConfig {
            lite: opts.lite,
            seed,
            ta: opts.check_interval,
            keepalive_interval: opts.keepalive_interval,
            disconnected_timeout: opts.disconnected_timeout,
            failed_timeout: opts.failed_timeout,
            ..IceConfig::default()
        };
        let mode = opts.data;
        // The handle copies the credentials; the agent's config then takes the strings.
        let agent = Agent::new(
            self.inner.clone(),
            handle.clone(),
            (&ufrag, &pwd),
            opts,
            servers,
            app,
        );
        handle.send(IceCmd::Create(Box::new(NewAgent {
            key,
            config: IceConfig {
                local_ufrag: Some(ufrag),
                local_pwd: Some(pwd),
                ..config
            },
            mode,
            link,
        })))?;
        Ok(agent)
    }

    /// The address ranges of the shards' io receive buffers: a `Bytes` from
    /// [`Conn::recv`](super::Conn::recv) that lies in one was lent, not copied. For tests.
    #[doc(hidden)]
    pub fn recv_regions(&self) -> Vec<std::ops::Range<usize>> {
        let rt = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        rt.as_ref().map_or_else(Vec::new, |r| {
            r.shard_counters().iter().map(|c| c.recv_region()).collect()
        })
    }

    /// Each shard's live counters (what `/metrics` shows); empty once stopped.
    pub fn shard_counters(&self) -> Vec<std::sync::Arc<crate::shard::ShardCounters>> {
        let rt = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        rt.as_ref().map_or_else(Vec::new, |r| r.shard_counters())
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> EngineStats {
        let rt = self.inner.runtime.lock().unwrap_or_else(|e| e.into_inner());
        match rt.as_ref() {
            Some(rt) => EngineStats {
                shards: rt.shards(),
                ice: rt.ice_stats(),
            },
            None => EngineStats {
                shards: 0,
                ice: IceStats::default(),
            },
        }
    }

    /// Stops the shards (agents are dropped; handles then get
    /// [`ApiError::EngineStopped`] or [`ApiError::Closed`]).
    pub fn shutdown(self) -> Result<(), ApiError> {
        let rt = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match rt {
            Some(rt) => Ok(rt.shutdown()?),
            None => Ok(()),
        }
    }
}
