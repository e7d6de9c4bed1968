//! Sans-IO ICE agent (RFC 8445) with trickle (RFC 8838), consent freshness (RFC 7675),
//! ICE-lite and renomination.
//!
//! The agent never opens a socket, spawns a thread or reads a clock. The runtime drives
//! it (see the [crate docs](crate) for the loop shared with TURN):
//!
//! 1. [`IceAgent::poll_timeout`] — when the agent next wants to run;
//! 2. [`IceAgent::handle_timeout`] — once that instant has passed (and once at start);
//! 3. [`IceAgent::poll_transmit`] — drain STUN datagrams into caller-owned buffers;
//! 4. [`IceAgent::handle_packet`] — feed every datagram received on a candidate's base;
//!    non-STUN ones come back as [`Handled::Data`] when they arrived on a validated pair;
//! 5. [`IceAgent::poll_event`] — candidates to signal, state and selected-pair changes.
//!
//! Application data goes from/to [`IceAgent::selected_pair`]; the agent frames nothing.
//! Gathering is the runtime's job: it adds host, server-reflexive and relayed candidates
//! with [`IceAgent::add_local_candidate`] as they appear.
//!
//! | module | RFC |
//! |--------|-----|
//! | `candidate` | kinds, foundation §5.1.1.3, priority §5.1.2 |
//! | `sdp` | candidate lines, RFC 8839 §5.1, pion/ice compatible |
//! | `pair` | pair priority §6.1.2.3, states §6.1.2.6 |
//! | `checklist` | pairing/pruning §6.1.2.4, freezing §6.1.2.6, triggered checks §7.3.1.4 |
//! | `stun` | Binding requests/responses §7.1–§7.3 |
//! | `agent` | roles §6.1.1/§7.3.1.1, nomination §8, restart §9, keepalive §11 |
//! | [`url`] | `stun:`/`stuns:` (RFC 7064) and `turn:`/`turns:` (RFC 7065) URIs |
//!
//! # Example: two agents connecting in memory
//!
//! ```
//! use std::time::{Duration, Instant};
//! use icering::ice::{Candidate, IceAgent, IceConfig, ConnectionState};
//! use icering::net::Received;
//!
//! let mut a = IceAgent::new(IceConfig { controlling: true, seed: 1, ..Default::default() }).unwrap();
//! let mut b = IceAgent::new(IceConfig { seed: 2, ..Default::default() }).unwrap();
//! a.add_local_candidate(Candidate::host("10.0.0.1:5000".parse().unwrap())).unwrap();
//! b.add_local_candidate(Candidate::host("10.0.0.2:6000".parse().unwrap())).unwrap();
//! // Signalling: credentials and candidates in both directions.
//! let (u, p) = a.local_credentials();
//! b.set_remote_credentials(&u.to_owned(), &p.to_owned()).unwrap();
//! let (u, p) = b.local_credentials();
//! a.set_remote_credentials(&u.to_owned(), &p.to_owned()).unwrap();
//! for c in a.local_candidates().to_vec() { b.add_remote_candidate(c).unwrap(); }
//! for c in b.local_candidates().to_vec() { a.add_remote_candidate(c).unwrap(); }
//!
//! fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent) {
//!     let mut buf = [0u8; 1500];
//!     x.handle_timeout(now);
//!     while let Some(t) = x.poll_transmit(now, &mut buf) {
//!         let pkt = Received { source: t.source, destination: t.destination,
//!                              contents: &buf[..t.size] };
//!         y.handle_packet(now, pkt);
//!     }
//! }
//! let mut now = Instant::now();
//! for _ in 0..200 {
//!     pump(now, &mut a, &mut b);
//!     pump(now, &mut b, &mut a);
//!     now += Duration::from_millis(10);
//! }
//! assert_eq!(a.state(), ConnectionState::Connected);
//! assert_eq!(a.selected_pair(), Some(("10.0.0.1:5000".parse().unwrap(), "10.0.0.2:6000".parse().unwrap())));
//! assert_eq!(b.selected_pair(), Some(("10.0.0.2:6000".parse().unwrap(), "10.0.0.1:5000".parse().unwrap())));
//! ```

mod agent;
mod candidate;
mod checklist;
mod config;
mod error;
mod pair;
pub(crate) mod rng;
mod sdp;
mod stun;
pub mod url;

use std::net::SocketAddr;

pub use agent::{IceAgent, PAC_WAIT};
pub use candidate::{
    Candidate, CandidateKind, Extensions, Foundation, TcpType, compute_foundation,
    local_preference, priority,
};
pub use config::IceConfig;
pub use error::IceError;
pub use pair::{PairState, pair_priority};
pub use sdp::SdpDisplay;
pub use url::{IceUrl, Scheme, UrlError};

/// Connection state, as pion/ice and the W3C `RTCIceTransportState` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Nothing happened yet.
    New,
    /// Checks are running.
    Checking,
    /// A pair is selected and alive.
    Connected,
    /// Checks finished (both sides ended candidates) and a pair is selected.
    Completed,
    /// Nothing received on the selected pair for `disconnected_timeout`.
    Disconnected,
    /// All pairs failed, or the selected pair lost liveness or consent.
    Failed,
    /// [`IceAgent::close`] was called.
    Closed,
}

/// What the agent wants the application to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceEvent {
    /// A local candidate to signal to the peer (trickle).
    LocalCandidate(Candidate),
    /// No more local candidates (after [`IceAgent::end_of_local_candidates`]).
    GatheringComplete,
    /// The connection state changed.
    ConnectionState(ConnectionState),
    /// The selected pair changed: send data from `local` to `remote`.
    SelectedPair {
        /// Local base address to send from.
        local: SocketAddr,
        /// Remote address to send to.
        remote: SocketAddr,
    },
    /// The role changed after a role conflict (§7.3.1.1) or because the peer is lite.
    RoleChanged {
        /// Whether the agent is now controlling.
        controlling: bool,
    },
}

/// What [`IceAgent::handle_packet`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A STUN message for the agent, consumed.
    Stun,
    /// Not STUN, and it arrived on a validated 5-tuple: deliver it to the application.
    Data,
    /// Not for this agent, malformed, or data from an unvalidated source: drop it.
    Dropped,
}
