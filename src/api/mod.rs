//! The application API: many ICE agents (RFC 8445) hosted on the shards, driven through
//! tokio-friendly handles with pion/ice's flow.
//!
//! An [`Engine`] owns the shards. [`Engine::agent`] creates an [`Agent`] on one shard
//! (round robin); the handle talks to that shard over its control channel (never a lock,
//! never blocking the shard) and hears back through one shared link per agent (`link`):
//! an [`Events`] queue of candidate and state [`AgentEvent`]s, a [`StateWatch`] of the
//! connection state, and a bounded lock-free queue of received datagrams (full = counted
//! drop, like a UDP socket buffer) that allocates nothing before the first datagram.
//!
//! The flow is pion/ice's: create, take the event receiver, exchange credentials and
//! candidates through your signalling (any order, trickled), then [`Agent::dial`]
//! (controlling) or [`Agent::accept`] (controlled), which resolve to a [`Conn`] once
//! connected. Agents whose data the shard handles itself ([`DataMode::Echo`] /
//! [`DataMode::Sink`]) have no link at all and start with [`Agent::start`].
//!
//! Host candidates come from dedicated sockets (one per interface address, bound from a
//! port range, registered with the owning shard's io backend) or, with
//! [`AgentOptions::mux`], from the shard's shared `[ice] listen` sockets, which serve
//! thousands of agents on one port (see `docs/agents.md` for routing and handoff).
//! Agents on dedicated sockets also gather server-reflexive and relayed candidates from
//! the STUN/TURN servers in [`AgentOptions::urls`]; the shard drives those clients and
//! relays a relayed pair's checks and data transparently.
//!
//! # Example: two agents on one engine, connected over loopback
//!
//! ```
//! use icering::{AgentEvent, AgentOptions, Config, Engine};
//! use bytes::Bytes;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::embedded();
//! config.server.listen.clear(); // no STUN/TURN server, agents only
//! config.server.shards = 2;
//! let engine = Engine::start(&config)?;
//!
//! let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let opts = AgentOptions::default().loopback_only();
//!     let mut a = engine.agent(opts.clone())?;
//!     let mut b = engine.agent(opts)?;
//!
//!     // Signalling, in memory here: each side's candidates go to the other.
//!     let mut a_events = a.take_events().unwrap();
//!     let mut b_events = b.take_events().unwrap();
//!     a.gather_candidates()?;
//!     b.gather_candidates()?;
//!     let (a_ufrag, a_pwd) = a.local_credentials();
//!     let (b_ufrag, b_pwd) = b.local_credentials();
//!     for (events, peer) in [(&mut a_events, &b), (&mut b_events, &a)] {
//!         while let Some(AgentEvent::Candidate(Some(c))) = events.recv().await {
//!             peer.add_remote_candidate(*c)?;
//!         }
//!         peer.end_of_remote_candidates();
//!     }
//!
//!     // a dials (controlling), b accepts (controlled); both resolve once connected.
//!     let (ca, cb) = tokio::join!(a.dial(&b_ufrag, &b_pwd), b.accept(&a_ufrag, &a_pwd));
//!     let (ca, mut cb) = (ca?, cb?);
//!
//!     ca.send(Bytes::from_static(b"ping")).await?;
//!     assert_eq!(&cb.recv().await?[..], b"ping");
//!     let stats = ca.stats().await?;
//!     assert_eq!(stats.packets_sent, 1);
//!     assert!(stats.selected.is_some());
//!
//!     a.close();
//!     b.close();
//!     Ok::<_, icering::ApiError>(())
//! })?;
//! engine.shutdown()?;
//! # Ok(()) }
//! ```

mod agent;
mod engine;
mod link;
mod netmon;
mod options;

use std::net::SocketAddr;
use std::time::Duration;

pub use agent::{Agent, Conn, Restarted, SessionHandle};
pub(crate) use engine::secure_random;
pub use engine::{Engine, EngineStats};
pub(crate) use link::LinkTx;
pub use link::{Events, StateWatch};
pub use options::{
    AgentOptions, CandidateTypes, DataMode, InterfaceFilter, IpFilter, NetworkType, ServerUrl,
    TlsRoots,
};

pub use crate::ice::{Candidate, ConnectionState};
pub use crate::shard::IceStats;

/// Errors of the application API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The shards could not start.
    #[error(transparent)]
    Shard(#[from] crate::shard::ShardError),
    /// The engine was shut down.
    #[error("engine has shut down")]
    EngineStopped,
    /// The agent or connection was closed.
    #[error("agent is closed")]
    Closed,
    /// ICE failed: every pair failed, or the selected pair lost consent.
    #[error("ICE failed")]
    Failed,
    /// A caller-supplied value is invalid.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Valid, but not implemented yet.
    #[error("not yet supported: {0}")]
    Unsupported(&'static str),
    /// A dedicated socket could not be bound.
    #[error("cannot bind a UDP socket on {ip}: {source}")]
    Bind {
        /// The local IP.
        ip: std::net::IpAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// `dial`/`accept` was already called, or candidates were already gathered.
    #[error("already started")]
    AlreadyStarted,
    /// This needs an agent with [`DataMode::App`].
    #[error("only agents with DataMode::App have channels")]
    NotApp,
    /// From the ICE layer, e.g. a malformed candidate line
    /// ([`Candidate::from_sdp`](crate::ice::Candidate::from_sdp)).
    #[error("ice: {0}")]
    Ice(#[from] crate::ice::IceError),
}

/// What an agent tells the application (pion: `OnCandidate`, `OnConnectionStateChange`,
/// `OnSelectedCandidatePairChange`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A local candidate to signal; `None` = gathering is complete. Boxed so the event
    /// (and every slot of the event channel's blocks) stays small.
    Candidate(Option<Box<Candidate>>),
    /// The connection state changed.
    State(ConnectionState),
    /// The selected pair changed.
    SelectedPair {
        /// Local candidate.
        local: Box<Candidate>,
        /// Remote candidate.
        remote: Box<Candidate>,
    },
    /// A STUN/TURN server in [`AgentOptions::urls`] gave no candidate: unresolvable,
    /// refused (e.g. wrong TURN credentials: `401`), or no answer. Gathering goes on
    /// without it.
    GatherError {
        /// The server's URL.
        url: String,
        /// Why.
        error: String,
    },
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// Connection state now.
    pub state: ConnectionState,
    /// Application bytes sent on the selected pair.
    pub bytes_sent: u64,
    /// Application bytes received.
    pub bytes_received: u64,
    /// Application datagrams sent.
    pub packets_sent: u64,
    /// Application datagrams received.
    pub packets_received: u64,
    /// Last round-trip time measured on the selected pair (zero before the first).
    pub rtt: Duration,
    /// Selected pair as (local base, remote address).
    pub selected: Option<(SocketAddr, SocketAddr)>,
}

// Handles move between tasks and threads (an HTTP server holding the engine, a task per
// connection).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<Agent>();
    send_sync::<Conn>();
    send_sync::<Events>();
    send_sync::<StateWatch>();
};
