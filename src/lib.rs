//! # icering
//!
//! Very many ICE agents (RFC 8445) and a TURN relay (RFC 8656) on thread-per-core
//! io_uring shards.
//!
//! ## Layers
//!
//! ```text
//!  binaries        src/main.rs (icering serve|ping)   loadtest/ (icering-loadtest)
//!                        │                                 │ public API only
//!  application     serve/  ── `icering serve --admin`: HTTP session API over `api`
//!                  api/    ── Engine / Agent / Conn: tokio-friendly handles (channels, a link per App agent)
//!                        │ commands over each shard's control channel ▼
//!  runtime         shard/  ── one pinned thread per core: demux, timers, cross-shard channel
//!                  shard/ice ─ agent table, mux demux, handoff, one timing wheel per shard,
//!                             STUN/TURN clients of dedicated-socket agents (UDP, TCP, TLS)
//!                  shard/tls ─ rustls sessions: `turns:` clients, the server's TLS listeners
//!                  ping/   ── one ICE agent over one std socket + HTTP signalling,
//!                             srflx/relay gathering with turn/client
//!                        │ drives ▼                    │ owns ▼
//!  sans-IO         ice/  turn/server  turn/client        io/  ── uring | portable backends
//!  protocol              │ uses ▼                              (sockets only, no protocol)
//!  wire codec      stun/  ── zero-copy message view, writer, integrity, ChannelData, demux
//!  vocabulary      net    ── Transmit, transport addresses
//!                  wheel  ── hierarchical timing wheel (deadlines of many objects)
//! ```
//!
//! Dependencies point down only. `stun`, `ice` and `turn` never open a socket, spawn a
//! thread or read a clock: `now` is passed in and output is polled. `io` knows no protocol.
//! `shard` is the only place where sockets, protocol state and time meet.
//!
//! | module | may use |
//! |--------|---------|
//! | [`net`], [`wheel`] | std only |
//! | [`stun`] | `net` |
//! | `ice`, `turn` | `stun`, `net`, `wheel` |
//! | [`io`] | `net` (never `stun`/`ice`/`turn`) |
//! | `shard` | everything above |
//! | [`api`] | `shard` (through its control channel), `ice` types, tokio `sync` channels |
//! | [`serve`] | `api`, `ice` types, an HTTP server (hyper on a current-thread tokio runtime) |
//! | `ping` | `ice`, `turn::client`, `stun`, `net`, std sockets (a runtime for one agent) |
//!
//! ## The drive loop (sans-IO, in the style of quinn-proto and str0m)
//!
//! 1. `poll_timeout()` — when the protocol object next wants to run;
//! 2. `handle_timeout(now)` — once that instant has passed;
//! 3. `poll_transmit(now, buf)` — drain datagrams into caller-owned buffers;
//! 4. `handle_packet(now, from, to, bytes)` — feed every datagram received;
//! 5. `poll_event()` — drain application-visible events.
//!
//! A shard runs this loop for thousands of objects at once: it reaps a batch of
//! completions, parses each datagram in place, dispatches it, flushes the send batch in one
//! submission, and sleeps until the next completion or timer deadline.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

pub mod api;
pub mod config;
pub mod ice;
pub mod io;
pub mod net;
pub mod ping;
pub mod serve;
pub mod shard;
pub mod stun;
pub mod turn;
pub mod wheel;

pub use api::{
    Agent, AgentEvent, AgentOptions, ApiError, Candidate, CandidateTypes, Conn, ConnStats,
    ConnectionState, DataMode, Engine, EngineStats, Events, IceStats, NetworkType, Restarted,
    ServerUrl, SessionHandle, StateWatch, TlsRoots,
};
pub use config::Config;
