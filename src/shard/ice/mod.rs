//! ICE agents hosted on a shard: the agent table, mux demultiplexing, cross-shard handoff,
//! one timing wheel for all agents, and the data path to the application (see
//! `docs/agents.md`).
//!
//! | module | what |
//! |--------|------|
//! | `table` | slab of agents with a free list; key → slot and ufrag → slot maps |
//! | `demux` | who owns a datagram on a mux socket (RFC 7983 first byte, ufrag, transaction id, 5-tuple) |
//! | `gather` | interface addresses for host candidates (RFC 8445 §5.1.1.1) |
//! | `servers` | STUN/TURN clients of an agent: srflx and relayed candidates, relaying |
//!
//! Everything here runs on the shard thread. The application side (`crate::api`) talks to
//! it only through [`IceCmd`]s on the shard's control channel.

pub(crate) mod demux;
pub mod gather;
mod servers;
mod table;

pub(crate) use servers::{ServerSpec, UrlSpec};

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Sender;
use hashbrown::HashMap;
use tokio::sync::oneshot;

use super::timers::Timers;
use super::{Control, ShardCounters};
use crate::api::{AgentEvent, CandidateTypes, ConnStats, DataMode, LinkTx, Restarted};
use crate::ice::{Candidate, ConnectionState, Handled, IceAgent, IceConfig, IceEvent};
use crate::io::{Backend, IoStats, Lend, SendQueue, SocketId, StreamId, StreamSet, Waker};
use crate::net::{Protocol, Received};
use demux::{DropReason, Owner, Verdict};
use servers::{FromServer, Servers, Wrapped};
use table::{Hosted, Table};

/// At most this many shards host agents: the first ufrag character names the owner shard.
pub const MAX_ICE_SHARDS: usize = 64;

/// How long an agent starved of send slots waits before it tries again.
const STARVED_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// A new agent for the shard to host.
#[derive(Debug)]
pub(crate) struct NewAgent {
    pub key: u64,
    pub config: IceConfig,
    pub mode: DataMode,
    /// The shard's end of an app-owned agent's link (events, state, received data).
    pub link: Option<LinkTx>,
}

/// Requests from the application handles and from the other shards.
#[derive(Debug)]
pub(crate) enum IceCmd {
    /// Host a new agent.
    Create(Box<NewAgent>),
    /// Host candidates: dedicated sockets to register (bound by the handle) and the
    /// candidates on them or on the mux sockets; STUN/TURN servers to ask from the
    /// dedicated sockets; then (once every server is done) end of gathering.
    Gather {
        key: u64,
        /// Each with its bound address (read once, by the handle that bound it).
        sockets: Vec<(UdpSocket, SocketAddr)>,
        candidates: Vec<Candidate>,
        servers: Vec<ServerSpec>,
        types: CandidateTypes,
        /// Seed of the clients' transaction ids (unpredictable, `secure_random`: a Binding answer is not
        /// authenticated, so its id must not be guessable).
        seed: u64,
        /// Continual gathering: more `Gather`s may follow, so gathering never ends.
        continual: bool,
    },
    /// Continual gathering: the interface address `base` is gone; its candidates are
    /// removed and its dedicated socket closed.
    RemoveLocal {
        key: u64,
        base: SocketAddr,
    },
    RemoteCredentials {
        key: u64,
        ufrag: String,
        pwd: String,
    },
    RemoteCandidate {
        key: u64,
        candidate: Box<Candidate>,
    },
    EndOfRemoteCandidates {
        key: u64,
    },
    /// ICE restart with these new local credentials (the ufrag names this shard).
    Restart {
        key: u64,
        ufrag: String,
        pwd: String,
        reply: oneshot::Sender<Restarted>,
    },
    /// Choose the role and let checks start (dial: controlling, accept: controlled).
    Start {
        key: u64,
        controlling: bool,
    },
    /// Application data to the selected pair.
    Send {
        key: u64,
        data: Bytes,
    },
    Stats {
        key: u64,
        reply: oneshot::Sender<ConnStats>,
    },
    Close {
        key: u64,
    },
    /// A datagram that arrived on another shard's copy of mux socket `mux`.
    Handoff {
        mux: u16,
        from: SocketAddr,
        data: Box<[u8]>,
    },
    /// 5-tuple (mux socket, remote) belongs to `shard`'s agent in `slot`.
    Route {
        mux: u16,
        remote: SocketAddr,
        shard: u16,
        slot: u32,
    },
    /// Forget a route (only if it still names `shard`).
    Unroute {
        mux: u16,
        remote: SocketAddr,
        shard: u16,
    },
    /// The control channels of every shard (index = shard), sent once after start.
    Peers(Peers),
}

/// Every shard's control channel and waker (index = shard).
pub(crate) type Peers = Arc<[(Sender<Control>, Waker)]>;

/// What one socket of the shard is to ICE (indexed by `SocketId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SockRole {
    None,
    Mux(u16),
    Agent(u32),
}

macro_rules! ice_stats {
    ($($(#[doc = $doc:literal])* $f:ident),* $(,)?) => {
        /// ICE counters of one shard (monotonic, except the gauges `agents`, `connected`
        /// and `lent_buffers`).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct IceStats { $($(#[doc = $doc])* pub $f: u64,)* }

        /// [`IceStats`] published by a shard once per loop turn.
        #[derive(Debug, Default)]
        pub struct IceCounters { $($f: AtomicU64,)* }

        impl IceCounters {
            pub(crate) fn publish(&self, s: &IceStats) { $(self.$f.store(s.$f, Relaxed);)* }
            /// The counters as last published.
            pub fn load(&self) -> IceStats { IceStats { $($f: self.$f.load(Relaxed),)* } }
        }

        impl IceStats {
            /// Adds another shard's counters.
            pub fn add(&mut self, o: &IceStats) { $(self.$f += o.$f;)* }

            /// Every counter by name with its doc comment, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($f), concat!($($doc),*), self.$f)),*]
            }
        }
    };
}

ice_stats!(
    /// Agents hosted now.
    agents,
    /// Agents now Connected or Completed.
    connected,
    /// Agents ever created.
    created,
    /// Agents closed and freed.
    closed,
    /// Datagrams copied to their owner shard.
    handoffs_out,
    /// Datagrams received from other shards.
    handoffs_in,
    /// Binding requests whose USERNAME names no agent.
    drop_unknown_ufrag,
    /// STUN responses whose transaction id names no live agent.
    drop_stale_transaction,
    /// Non-STUN datagrams on a mux socket from a 5-tuple with no route.
    drop_no_route,
    /// Datagrams that are neither valid STUN nor routable (too short, bad header).
    drop_malformed,
    /// Datagrams the owning agent refused (unvalidated source, bad integrity, closed).
    drop_agent,
    /// Received data dropped because the application's queue was full (`[ice]
    /// recv_queue`), or no `Conn` reads it (before `dial`/`accept`, or after the `Conn`
    /// is gone).
    drop_app_full,
    /// Handoffs dropped: no such shard, or the datagram came back a second time.
    drop_handoff,
    /// Application sends dropped: no selected pair yet, or no free send slot.
    drop_send,
    /// Data datagrams delivered (app, echo or sink).
    data_in,
    /// Data datagrams sent (app or echo).
    data_out,
    /// App datagrams handed to the application as a view into the io receive buffer
    /// (no copy).
    data_lent,
    /// App datagrams copied for the application: lending refused (the shard's cap of lent
    /// receive buffers was reached), or the data was not in a receive buffer (handed off
    /// by another shard, held for its route, or relayed over TCP).
    data_copied,
    /// Receive buffers lent to applications now (`Bytes` not yet all dropped), as of the
    /// shard's last loop turn.
    lent_buffers,
);

/// The ICE side of one shard.
#[derive(Debug)]
pub(crate) struct IceHost {
    shard: u16,
    /// Mux sockets of this shard, in `[ice] listen` order (same order on every shard).
    mux: Vec<(SocketId, SocketAddr)>,
    roles: Vec<SockRole>,
    table: Table,
    /// (mux index, remote) → (owner shard, slot).
    routes: HashMap<(u16, SocketAddr), (u16, u32)>,
    timers: Timers<u32>,
    peers: Option<Peers>,
    /// Shards to wake at the end of this turn (bit per shard).
    wake: u64,
    stats: IceStats,
    /// Where `stats` is published (`ShardCounters::ice`).
    counters: Arc<ShardCounters>,
    /// An agent's transmit from a relayed address, copied out of its send slot so the
    /// TURN client can wrap it into the same slot (allocated once).
    scratch: Box<[u8]>,
    /// TURN-over-TCP streams of the agents' relays (created with the first one, then
    /// watched by the backend beside the TURN server's own set).
    streams: Option<StreamSet>,
    /// Stream → slot of the agent whose relay owns it.
    stream_slots: HashMap<StreamId, u32>,
    /// Closed streams (reused buffer).
    closed: Vec<(StreamId, SocketAddr)>,
    /// Datagrams that arrived on a mux socket before what routes them: data before the
    /// route of its 5-tuple (the owner's broadcast races the peer's first datagram after
    /// it saw the pair selected), or a check before its agent's `Create` (both wait in
    /// the same turn, the datagram in the io batch, the command in the control channel).
    /// Kept briefly and retried after the next control messages (bounded, one copy each).
    unrouted: Vec<Unrouted>,
    /// (mux socket, STUN server) → (mapped address, when learned): every agent on a mux
    /// socket has the same server-reflexive address for a server, so one Binding answer
    /// serves the shard's later agents for [`MUX_MAPPED_TTL`].
    mux_mapped: HashMap<(SocketId, SocketAddr), (SocketAddr, Instant)>,
}

/// How long a mux socket's mapped address is reused without asking the server again
/// (well inside the 2-minute UDP mapping lifetime NATs must keep, RFC 4787 REQ-5).
const MUX_MAPPED_TTL: Duration = Duration::from_secs(30);

/// A datagram waiting for its route; see [`IceHost::retry_unrouted`].
#[derive(Debug)]
struct Unrouted {
    /// What it waits for.
    reason: DropReason,
    mux: u16,
    from: SocketAddr,
    data: Box<[u8]>,
    until: Instant,
}

/// Datagrams held per shard while their route is unknown, and for how long.
const MAX_UNROUTED: usize = 256;
const UNROUTED_WAIT: Duration = Duration::from_millis(500);
/// How often held datagrams are retried (the loop wakes for it).
const UNROUTED_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// TURN-over-TCP streams per shard and unsent bytes per stream.
const MAX_TURN_STREAMS: usize = 4096;
const MAX_TURN_BACKLOG: usize = 256 * 1024;

/// Largest agent transmit (a connectivity check) relayed through TURN.
const MAX_RELAYED_CHECK: usize = 1500;

impl IceHost {
    pub(crate) fn new(
        shard: usize,
        mux: Vec<(SocketId, SocketAddr)>,
        c: Arc<ShardCounters>,
    ) -> Self {
        let mut host = IceHost {
            shard: shard as u16,
            mux: Vec::new(),
            roles: Vec::new(),
            table: Table::default(),
            routes: HashMap::new(),
            timers: Timers::default(),
            peers: None,
            wake: 0,
            stats: IceStats::default(),
            counters: c,
            scratch: vec![0; MAX_RELAYED_CHECK].into_boxed_slice(),
            streams: None,
            unrouted: Vec::new(),
            stream_slots: HashMap::new(),
            closed: Vec::new(),
            mux_mapped: HashMap::new(),
        };
        for (i, (id, addr)) in mux.into_iter().enumerate() {
            host.set_role(id, SockRole::Mux(i as u16));
            host.mux.push((id, addr));
        }
        host
    }

    fn set_role(&mut self, id: SocketId, role: SockRole) {
        let i = id.0 as usize;
        if self.roles.len() <= i {
            self.roles.resize(i + 1, SockRole::None);
        }
        self.roles[i] = role;
    }

    /// Whether a datagram on `sock` is ICE's (one array index, no hashing).
    #[inline]
    pub(crate) fn owns(&self, sock: SocketId) -> bool {
        self.roles
            .get(sock.0 as usize)
            .is_some_and(|r| *r != SockRole::None)
    }

    /// The earliest agent deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let held = self
            .unrouted
            .first()
            .map(|_| Instant::now() + UNROUTED_RETRY);
        match (self.timers.next_deadline(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Right after the control messages: delivers (or hands off) held datagrams whose
    /// agent or route has arrived. A check whose agent is still unknown has none (the
    /// control channel is in order, and its `Create` was queued before the check could be
    /// sent): dropped, counted as an unknown ufrag. Data whose route is still unknown
    /// waits up to [`UNROUTED_WAIT`] (route broadcasts from other shards lag), then is
    /// counted as "no route".
    pub(crate) fn retry_unrouted(&mut self, now: Instant, sendq: &mut SendQueue) {
        if self.unrouted.is_empty() {
            return;
        }
        let me = self.demux_shards();
        let held = std::mem::take(&mut self.unrouted);
        for u in held {
            // One demultiplexing per held datagram: its verdict is routed as is.
            match demux::owner(&u.data, u.mux, u.from, me, &self.table, &self.routes) {
                Verdict::Owner(o) => self.route(now, sendq, u.mux, u.from, &u.data, o, true, None),
                // Data whose route has not arrived yet waits, up to its deadline.
                Verdict::Drop(DropReason::NoRoute) if u.reason == DropReason::NoRoute => {
                    if now < u.until {
                        self.unrouted.push(u);
                    } else {
                        u.reason.count(&mut self.stats);
                    }
                }
                Verdict::Drop(r) => r.count(&mut self.stats),
            }
        }
    }

    /// (this shard, number of shards) as the demultiplexer sees them.
    fn demux_shards(&self) -> (u16, u16) {
        let shards = self
            .peers
            .as_ref()
            .map_or(1, |p| p.len().min(MAX_ICE_SHARDS)) as u16;
        (self.shard, shards)
    }

    /// A datagram on one of ICE's sockets (inside the receive callback). Application
    /// data in it is lent to the application through `lend` (no copy) when it can be.
    pub(crate) fn on_datagram(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        sock: SocketId,
        from: SocketAddr,
        data: &[u8],
        lend: &mut Lend,
    ) {
        match self.roles.get(sock.0 as usize).copied() {
            Some(SockRole::Mux(m)) => self.on_mux(now, sendq, m, from, data, true, Some(lend)),
            Some(SockRole::Agent(slot)) => {
                self.deliver(now, sendq, slot, sock, from, data, Some(lend))
            }
            _ => {}
        }
    }

    /// `lend`: `data` lies in the io receive buffer being delivered.
    #[allow(clippy::too_many_arguments)]
    fn on_mux(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        m: u16,
        from: SocketAddr,
        data: &[u8],
        may_handoff: bool,
        lend: Option<&mut Lend>,
    ) {
        let me = self.demux_shards();
        let owner = match demux::owner(data, m, from, me, &self.table, &self.routes) {
            Verdict::Owner(o) => o,
            Verdict::Drop(reason @ (DropReason::NoRoute | DropReason::PendingUfrag))
                if may_handoff =>
            {
                if self.unrouted.len() < MAX_UNROUTED {
                    self.unrouted.push(Unrouted {
                        reason,
                        mux: m,
                        from,
                        data: data.into(),
                        until: now + UNROUTED_WAIT,
                    });
                } else {
                    reason.count(&mut self.stats);
                }
                return;
            }
            Verdict::Drop(reason) => {
                reason.count(&mut self.stats);
                return;
            }
        };
        self.route(now, sendq, m, from, data, owner, may_handoff, lend);
    }

    /// Delivers a mux datagram to its owner: an agent here, or (`may_handoff`) the shard
    /// that hosts it.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        m: u16,
        from: SocketAddr,
        data: &[u8],
        owner: Owner,
        may_handoff: bool,
        lend: Option<&mut Lend>,
    ) {
        match owner {
            Owner::Local(slot) => {
                let sock = self.mux[usize::from(m)].0;
                self.deliver(now, sendq, slot, sock, from, data, lend);
            }
            Owner::Shard(s) => {
                let peer = self.peers.as_ref().and_then(|p| p.get(usize::from(s)));
                match peer {
                    Some((tx, _)) if may_handoff => {
                        let cmd = IceCmd::Handoff {
                            mux: m,
                            from,
                            data: data.into(),
                        };
                        if tx.send(Control::Ice(cmd)).is_ok() {
                            self.stats.handoffs_out += 1;
                            self.wake |= 1 << (s % 64);
                        } else {
                            self.stats.drop_handoff += 1;
                        }
                    }
                    _ => self.stats.drop_handoff += 1,
                }
            }
        }
    }

    /// Feeds a datagram to the agent in `slot` and drives it. On a dedicated socket, a
    /// datagram from one of the agent's STUN/TURN servers goes to that client first;
    /// relayed data is fed to the agent as arriving from the peer on the relayed address.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        slot: u32,
        sock: SocketId,
        from: SocketAddr,
        data: &[u8],
        lend: Option<&mut Lend>,
    ) {
        let Some(h) = self.table.get_mut(slot) else {
            self.stats.drop_stale_transaction += 1;
            return;
        };
        let relayed = h
            .servers
            .as_mut()
            .map(|s| s.on_datagram(now, sock, from, data));
        let (source, local, data) = match relayed {
            Some(FromServer::Consumed) => {
                self.drive(now, sendq, slot);
                return;
            }
            Some(FromServer::Data {
                relayed,
                peer,
                data,
            }) => (peer, relayed, data),
            _ => {
                let Some(local) = h.local_for(sock, from) else {
                    self.stats.drop_agent += 1;
                    return;
                };
                (from, local, data)
            }
        };
        self.feed(now, sendq, slot, Some(sock), source, local, data, lend);
        self.drive(now, sendq, slot);
    }

    /// Feeds a packet from `source` to `local` (received on `sock`, or relayed over TCP)
    /// to the agent in `slot` and hands its data to the application (or echoes it). With
    /// `lend`, `data` lies in the io receive buffer being delivered and is only read from
    /// here on, so the application gets it without a copy.
    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        slot: u32,
        sock: Option<SocketId>,
        source: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        lend: Option<&mut Lend>,
    ) {
        let Some(h) = self.table.get_mut(slot) else {
            return;
        };
        let pkt = Received {
            source,
            destination: local,
            contents: data,
        };
        match h.agent.handle_packet(now, pkt) {
            Handled::Stun => {}
            Handled::Dropped => self.stats.drop_agent += 1,
            Handled::Data => {
                self.stats.data_in += 1;
                h.bytes_in += data.len() as u64;
                h.packets_in += 1;
                match h.mode {
                    DataMode::Sink => {}
                    DataMode::Echo => {
                        if send_app(h, sendq, now, sock, local, source, data) {
                            self.stats.data_out += 1;
                        } else {
                            self.stats.drop_send += 1;
                        }
                    }
                    DataMode::App => {
                        // Room in the application's queue first: nothing is lent (or
                        // copied) for a datagram that would be dropped.
                        let Some(link) = h.link.as_mut().filter(|l| l.has_room()) else {
                            self.stats.drop_app_full += 1;
                            return;
                        };
                        let lent = lend.and_then(|l| l.lend(data));
                        let bytes = match lent {
                            Some(b) => {
                                self.stats.data_lent += 1;
                                b
                            }
                            // Past the lending cap, or not in a receive buffer: the one copy.
                            None => {
                                self.stats.data_copied += 1;
                                Bytes::copy_from_slice(data)
                            }
                        };
                        // Room was checked and only this thread queues: a refusal
                        // here means the receiver went in between (the buffer goes back).
                        if link.push(bytes).is_err() {
                            self.stats.drop_app_full += 1;
                        }
                    }
                }
            }
        }
    }

    /// Drains the agent's transmits into send slots and its events to the application,
    /// then (re)schedules its one timer entry.
    fn drive(&mut self, now: Instant, sendq: &mut SendQueue, slot: u32) {
        let me = self.shard;
        let Some(h) = self.table.get_mut(slot) else {
            return;
        };
        // Server answers first: new candidates and the end of gathering reach the agent.
        if let Some(sv) = h.servers.as_mut() {
            sv.events(&mut h.agent, h.link.as_ref());
            for (sock, server, mapped) in sv.take_learned() {
                self.mux_mapped.insert((sock, server), (mapped, now));
            }
        }
        let mut starved = false;
        loop {
            let Some(buf) = sendq.slot() else {
                starved = true;
                break;
            };
            let Some(t) = h.agent.poll_transmit(now, buf) else {
                break;
            };
            if let Some(sock) = h.sock_for(t.source) {
                sendq.commit(sock, t.destination, t.size);
                continue;
            }
            // A check from a relayed candidate: the TURN client wraps it into the same
            // (uncommitted) slot.
            let relayed = match h.servers.as_mut() {
                Some(sv) if sv.is_relayed(t.source) && t.size <= self.scratch.len() => {
                    self.scratch[..t.size].copy_from_slice(&buf[..t.size]);
                    let out = sendq.slot().expect("the same slot is still free");
                    sv.wrap(t.source, t.destination, &self.scratch[..t.size], out, now)
                }
                _ => None,
            };
            match relayed {
                Some(Wrapped::Datagram(sock, server, n)) => sendq.commit(sock, server, n),
                Some(Wrapped::Stream) => {}
                None => self.stats.drop_send += 1,
            }
        }
        while let Some(e) = h.agent.poll_event() {
            let app = match e {
                IceEvent::LocalCandidate(c) => Some(AgentEvent::Candidate(Some(Box::new(c)))),
                IceEvent::GatheringComplete => Some(AgentEvent::Candidate(None)),
                IceEvent::ConnectionState(s) => {
                    let up = matches!(s, ConnectionState::Connected | ConnectionState::Completed);
                    if up != h.up {
                        h.up = up;
                        if up {
                            self.stats.connected += 1;
                        } else {
                            self.stats.connected -= 1;
                        }
                    }
                    if let Some(l) = &h.link {
                        l.set_state(s);
                    }
                    Some(AgentEvent::State(s))
                }
                IceEvent::SelectedPair { local, remote } => {
                    h.selected_sock = h.sock_for(local);
                    if let Some(sv) = h.servers.as_mut()
                        && sv.is_relayed(local)
                    {
                        // RFC 8656 §12: a channel for the pair in use (4-byte overhead).
                        sv.selected(local, remote, now);
                    }
                    if let Some(SockRole::Mux(m)) = h
                        .selected_sock
                        .and_then(|s| self.roles.get(s.0 as usize).copied())
                        && !h.routes.contains(&(m, remote))
                    {
                        h.add_route((m, remote));
                        self.routes.insert((m, remote), (me, slot));
                        broadcast(&self.peers, me, || IceCmd::Route {
                            mux: m,
                            remote,
                            shard: me,
                            slot,
                        });
                    }
                    let lc = h
                        .agent
                        .local_candidates()
                        .iter()
                        .find(|c| c.base == local || c.addr == local)
                        .cloned();
                    let rc = h
                        .agent
                        .remote_candidates()
                        .iter()
                        .find(|c| c.addr == remote)
                        .cloned();
                    lc.zip(rc).map(|(l, r)| AgentEvent::SelectedPair {
                        local: Box::new(l),
                        remote: Box::new(r),
                    })
                }
                IceEvent::RoleChanged { .. } => None,
            };
            if let (Some(ev), Some(l)) = (app, &h.link) {
                l.event(ev);
            }
        }
        if let Some(sv) = h.servers.as_mut()
            && !sv.transmit(now, sendq)
        {
            starved = true;
        }
        let next = if starved {
            // No send slot left this turn: retry once the flush has freed some (the next
            // turn), not `now`, which `run_timers` would pop again at once.
            Some(now + STARVED_RETRY)
        } else {
            let sv = h.servers.as_ref().and_then(|s| s.poll_timeout());
            match (h.agent.poll_timeout(), sv) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if let Some(at) = next
            && h.timer_at.is_none_or(|t| at < t)
        {
            h.timer_at = Some(at);
            self.timers.schedule(at, slot);
        }
    }

    /// Runs every agent whose deadline passed; their checks share this turn's flush.
    /// Each entry due at the start runs at most once per turn: an agent that asks to run
    /// again at `now` (or earlier) is served on the next turn, so the loop always ends.
    pub(crate) fn run_timers(&mut self, now: Instant, sendq: &mut SendQueue) {
        let budget = self.timers.len();
        for _ in 0..budget {
            let Some(slot) = self.timers.pop_expired(now) else {
                break;
            };
            let Some(h) = self.table.get_mut(slot) else {
                continue;
            };
            match h.timer_at {
                Some(t) if t <= now => {
                    h.timer_at = None;
                    h.agent.handle_timeout(now);
                    if let Some(sv) = h.servers.as_mut() {
                        sv.handle_timeout(now);
                    }
                    self.drive(now, sendq, slot);
                }
                _ => {}
            }
        }
    }

    /// A command from a handle or another shard (outside the receive callback).
    pub(crate) fn command(&mut self, now: Instant, backend: &mut Backend, cmd: IceCmd) {
        match cmd {
            IceCmd::Create(n) => {
                let NewAgent {
                    key,
                    mut config,
                    mode,
                    link,
                } = *n;
                let slot = self.table.next_slot();
                config.tid_prefix = Some(tid_prefix(self.shard, slot));
                let Ok(agent) = IceAgent::new(config) else {
                    return;
                };
                let h = Hosted::new(key, agent, mode, link);
                let slot = self.table.insert(h);
                self.stats.created += 1;
                self.stats.agents += 1;
                let h = self.table.get_mut(slot).expect("just inserted");
                h.agent.handle_timeout(now);
                self.drive(now, backend.send_queue(), slot);
            }
            IceCmd::Gather {
                key,
                sockets,
                candidates,
                servers,
                types,
                seed,
                continual,
            } => {
                let Some(slot) = self.table.slot_of(key) else {
                    return;
                };
                // Continual gathering: a new address asks the first gathering's servers
                // again (their specs are kept by the agent's `Servers`).
                let kept = self.table.get_mut(slot).and_then(|h| h.servers.as_ref());
                let again = continual && servers.is_empty() && kept.is_some();
                let turn = servers.iter().any(|s| s.server.url.scheme.is_turn())
                    || (again && kept.is_some_and(|sv| sv.has_turn()));
                let mut dedicated = Vec::new();
                for (s, addr) in sockets {
                    debug_assert!(!addr.ip().is_unspecified());
                    // TURN: a duplicate to delete the allocation after the backend closed
                    // its socket (close).
                    let dup = if turn { s.try_clone().ok() } else { None };
                    if let Ok(id) = backend.add_bound_socket(s, addr) {
                        self.set_role(id, SockRole::Agent(slot));
                        dedicated.push((addr, id, dup));
                    }
                }
                let mux = self.mux.clone();
                if let Some(h) = self.table.get_mut(slot) {
                    // The socket list is rebuilt once per gathering, exact (one socket is
                    // the rule, and a first push reserves room for four).
                    let agent = &mut h.agent;
                    table::rebuild(&mut h.socks, |socks| {
                        socks.extend(dedicated.iter().map(|(addr, id, _)| (*addr, *id, false)));
                        for c in candidates {
                            if !socks.iter().any(|(b, _, _)| *b == c.base) {
                                // A mux candidate: find the mux socket it lives on.
                                if let Some((id, _)) =
                                    mux.iter().find(|(_, a)| base_matches(*a, c.base))
                                {
                                    socks.push((c.base, *id, true));
                                } else {
                                    continue;
                                }
                            }
                            if types.host {
                                let _ = agent.add_local_candidate(c);
                            }
                        }
                    });
                    let on_mux: Vec<(SocketAddr, SocketId)> = h
                        .socks
                        .iter()
                        .filter(|(_, _, mux)| *mux)
                        .map(|(b, id, _)| (*b, *id))
                        .collect();
                    if again {
                        let mut set = self.streams.as_mut();
                        if let Some(sv) = h.servers.as_mut() {
                            for (base, id, dup) in dedicated {
                                sv.add_socket(base, id, dup, now, set.as_deref_mut());
                            }
                            for id in sv.streams() {
                                self.stream_slots.insert(id, slot);
                            }
                        }
                    } else if servers.is_empty() || (dedicated.is_empty() && on_mux.is_empty()) {
                        if !continual {
                            h.agent.end_of_local_candidates();
                        }
                    } else {
                        let tcp = types.relay
                            && servers.iter().any(|s| {
                                s.server.url.scheme.is_turn()
                                    && s.server.url.transport == Protocol::Tcp
                            });
                        if tcp && self.streams.is_none() {
                            self.streams = open_stream_set(backend);
                        }
                        let set = if tcp { self.streams.as_mut() } else { None };
                        let prefix = tid_prefix(self.shard, slot);
                        let cache = &self.mux_mapped;
                        let known = |sock: SocketId, server: SocketAddr| {
                            cache
                                .get(&(sock, server))
                                .filter(|(_, at)| {
                                    now.saturating_duration_since(*at) < MUX_MAPPED_TTL
                                })
                                .map(|(mapped, _)| *mapped)
                        };
                        let mut sv = Servers::new(
                            &servers, dedicated, on_mux, prefix, &known, types, seed, now, set,
                        );
                        if continual {
                            sv.keep_gathering(servers);
                        }
                        for id in sv.streams() {
                            self.stream_slots.insert(id, slot);
                        }
                        // End of gathering follows once every server is done (drive).
                        h.servers = Some(Box::new(sv));
                    }
                }
                self.drive(now, backend.send_queue(), slot);
            }
            IceCmd::RemoveLocal { key, base } => {
                let Some(slot) = self.table.slot_of(key) else {
                    return;
                };
                let Some(h) = self.table.get_mut(slot) else {
                    return;
                };
                h.agent.remove_local_candidates(base);
                let gone = h.socks.iter().position(|(b, _, mux)| *b == base && !mux);
                let id = gone.map(|i| table::rebuild(&mut h.socks, |socks| socks.remove(i).1));
                if let (Some(id), Some(sv)) = (id, h.servers.as_mut()) {
                    // Relayed candidates allocated through the vanished address go too.
                    for relayed in sv.remove_socket(base, id) {
                        h.agent.remove_local_candidates(relayed);
                    }
                }
                if id.is_some() && h.selected_sock == id {
                    h.selected_sock = None;
                }
                if let Some(id) = id {
                    self.set_role(id, SockRole::None);
                    backend.remove_socket(id);
                }
                self.drive(now, backend.send_queue(), slot);
            }
            IceCmd::RemoteCredentials { key, ufrag, pwd } => {
                self.with(now, backend, key, |h| {
                    if h.started || h.agent.is_lite() {
                        let _ = h.agent.set_remote_credentials(&ufrag, &pwd);
                    } else {
                        h.pending_remote = Some(Box::new((ufrag, pwd)));
                    }
                });
            }
            IceCmd::RemoteCandidate { key, candidate } => {
                self.with(now, backend, key, |h| {
                    if let Some(sv) = h.servers.as_mut() {
                        // RFC 8656 §9: the relay passes only peers with a permission.
                        sv.add_remote(candidate.addr, now);
                    }
                    let _ = h.agent.add_remote_candidate(*candidate);
                });
            }
            IceCmd::EndOfRemoteCandidates { key } => {
                self.with(now, backend, key, |h| h.agent.end_of_remote_candidates());
            }
            IceCmd::Restart {
                key,
                ufrag,
                pwd,
                reply,
            } => {
                debug_assert_eq!(
                    demux::shard_of_ufrag(ufrag.as_bytes()),
                    Some(self.shard),
                    "a restart's ufrag names its shard"
                );
                let Some(slot) = self.table.slot_of(key) else {
                    return;
                };
                let Some(h) = self.table.get_mut(slot) else {
                    return;
                };
                if h.agent
                    .restart(Some(ufrag.clone()), Some(pwd.clone()))
                    .is_err()
                {
                    return;
                }
                // Credentials held back for a role not chosen yet belong to the old session.
                h.pending_remote = None;
                h.agent.handle_timeout(now);
                self.table.set_ufrag(slot, &ufrag);
                // Server answers of this turn reach the agent in `drive`: read after it.
                self.drive(now, backend.send_queue(), slot);
                if let Some(h) = self.table.get_mut(slot) {
                    let _ = reply.send(Restarted {
                        ufrag,
                        pwd,
                        candidates: h.agent.signalled_candidates().cloned().collect(),
                        complete: h.agent.gathering_complete(),
                    });
                }
            }
            IceCmd::Start { key, controlling } => {
                self.with(now, backend, key, |h| {
                    h.started = true;
                    h.agent.set_controlling(controlling);
                    if let Some(p) = h.pending_remote.take() {
                        let _ = h.agent.set_remote_credentials(&p.0, &p.1);
                    }
                });
            }
            IceCmd::Send { key, data } => {
                let Some(slot) = self.table.slot_of(key) else {
                    return;
                };
                let Some(h) = self.table.get_mut(slot) else {
                    return;
                };
                let sendq = backend.send_queue();
                let sent = h.agent.selected_pair().is_some_and(|(local, remote)| {
                    let sock = h.selected_sock;
                    send_app(h, sendq, now, sock, local, remote, &data)
                });
                if sent {
                    self.stats.data_out += 1;
                } else {
                    self.stats.drop_send += 1;
                }
                // A relayed send may have started a CreatePermission: wake for it.
                if let Some(at) = h.servers.as_ref().and_then(|s| s.poll_timeout())
                    && h.timer_at.is_none_or(|t| at < t)
                {
                    h.timer_at = Some(at);
                    self.timers.schedule(at, slot);
                }
            }
            IceCmd::Stats { key, reply } => {
                if let Some(h) = self.table.slot_of(key).and_then(|s| self.table.get_mut(s)) {
                    let _ = reply.send(h.conn_stats());
                }
            }
            IceCmd::Close { key } => self.close(now, backend, key),
            IceCmd::Handoff { mux, from, data } => {
                self.stats.handoffs_in += 1;
                if usize::from(mux) < self.mux.len() {
                    self.on_mux(now, backend.send_queue(), mux, from, &data, false, None);
                } else {
                    self.stats.drop_handoff += 1;
                }
            }
            IceCmd::Route {
                mux,
                remote,
                shard,
                slot,
            } => {
                self.routes.insert((mux, remote), (shard, slot));
            }
            IceCmd::Unroute { mux, remote, shard } => {
                if self
                    .routes
                    .get(&(mux, remote))
                    .is_some_and(|r| r.0 == shard)
                {
                    self.routes.remove(&(mux, remote));
                }
            }
            IceCmd::Peers(p) => self.peers = Some(p),
        }
    }

    fn with(&mut self, now: Instant, backend: &mut Backend, key: u64, f: impl FnOnce(&mut Hosted)) {
        let Some(slot) = self.table.slot_of(key) else {
            return;
        };
        if let Some(h) = self.table.get_mut(slot) {
            f(h);
            // Trickle: new candidates or credentials may start checks now.
            h.agent.handle_timeout(now);
        }
        self.drive(now, backend.send_queue(), slot);
    }

    fn close(&mut self, now: Instant, backend: &mut Backend, key: u64) {
        let me = self.shard;
        let Some(slot) = self.table.slot_of(key) else {
            return;
        };
        let Some(mut h) = self.table.remove(slot) else {
            return;
        };
        h.agent.close();
        if let Some(sv) = h.servers.as_mut() {
            sv.close(now, &mut self.scratch);
            // TURN over TCP: closing the connection deletes the allocation (RFC 8656 §3.1).
            if let Some(set) = self.streams.as_mut() {
                for id in sv.close_streams(set) {
                    self.stream_slots.remove(&id);
                }
            }
        }
        if h.up {
            self.stats.connected -= 1;
        }
        if let Some(l) = &h.link {
            l.set_state(ConnectionState::Closed);
            l.event(AgentEvent::State(ConnectionState::Closed));
        }
        for (_, id, mux) in &h.socks {
            if !mux {
                self.set_role(*id, SockRole::None);
                backend.remove_socket(*id);
            }
        }
        for (m, remote) in std::mem::take(&mut h.routes) {
            self.routes.remove(&(m, remote));
            broadcast(&self.peers, me, || IceCmd::Unroute {
                mux: m,
                remote,
                shard: me,
            });
        }
        self.stats.agents -= 1;
        self.stats.closed += 1;
    }

    /// Reads the agents' TURN-over-TCP streams (when a watched fd was ready): each frame
    /// goes to its relay's client, relayed data to the agent as from the peer; a closed
    /// stream (or one that is not STUN/ChannelData framed) ends its relay.
    pub(crate) fn poll_streams(&mut self, now: Instant, sendq: &mut SendQueue) {
        let Some(mut set) = self.streams.take() else {
            return;
        };
        set.poll(&mut |set, id, _peer, bytes| {
            let Some(&slot) = self.stream_slots.get(&id) else {
                set.close(id);
                return;
            };
            if !self.on_stream(now, sendq, slot, id, bytes) {
                set.close(id);
            }
        });
        set.take_closed(&mut self.closed);
        self.streams = Some(set);
        let mut closed = std::mem::take(&mut self.closed);
        for (id, _) in closed.drain(..) {
            let Some(slot) = self.stream_slots.remove(&id) else {
                continue;
            };
            if let Some(sv) = self.table.get_mut(slot).and_then(|h| h.servers.as_mut()) {
                sv.stream_closed(id, "TCP stream to the server closed");
            }
            self.drive(now, sendq, slot);
        }
        self.closed = closed; // keeps its capacity
    }

    /// Bytes from `stream` of the agent in `slot`: false if they are not framed (the
    /// stream is then closed by the caller).
    fn on_stream(
        &mut self,
        now: Instant,
        sendq: &mut SendQueue,
        slot: u32,
        stream: StreamId,
        bytes: &[u8],
    ) -> bool {
        let Some(mut dec) = self
            .table
            .get_mut(slot)
            .and_then(|h| h.servers.as_mut())
            .and_then(|sv| sv.take_decoder(stream))
        else {
            return false;
        };
        let mut ok = match self.table.get_mut(slot).and_then(|h| h.servers.as_mut()) {
            Some(sv) => sv.stream_input(stream, bytes, &mut dec).is_ok(),
            None => false,
        };
        while let Some(frame) = dec.next_frame() {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("TURN over TCP: {e}");
                    ok = false;
                    break;
                }
            };
            let Some(h) = self.table.get_mut(slot) else {
                return false;
            };
            let Some(sv) = h.servers.as_mut() else {
                return false;
            };
            if let FromServer::Data {
                relayed,
                peer,
                data,
            } = sv.on_frame(now, stream, frame)
            {
                self.feed(now, sendq, slot, None, peer, relayed, data, None);
            }
        }
        if let Some(sv) = self.table.get_mut(slot).and_then(|h| h.servers.as_mut()) {
            sv.put_decoder(stream, dec);
        }
        self.drive(now, sendq, slot);
        ok
    }

    /// Writes what the agents' TCP relays queued this turn.
    fn flush_streams(&mut self) {
        let Some(set) = self.streams.as_mut() else {
            return;
        };
        for &slot in self.stream_slots.values() {
            if let Some(sv) = self.table.get_mut(slot).and_then(|h| h.servers.as_mut()) {
                sv.flush_streams(set);
            }
        }
    }

    /// End of a loop turn: write the TCP relays' frames, wake the shards we handed
    /// datagrams to, publish counters (`io`: the backend's, for the lent-buffer gauge).
    pub(crate) fn end_turn(&mut self, io: &IoStats) {
        self.stats.lent_buffers = io.lends - io.lend_returns;
        if !self.stream_slots.is_empty() {
            self.flush_streams();
        }
        if self.wake != 0 {
            if let Some(peers) = &self.peers {
                for (i, (_, waker)) in peers.iter().enumerate() {
                    if self.wake & (1 << (i % 64)) != 0 {
                        waker.wake();
                    }
                }
            }
            self.wake = 0;
        }
        self.counters.ice.publish(&self.stats);
    }
}

/// Sends application data from the local base `local` to `remote`: through the TURN
/// client when `local` is a relayed address (RFC 8656 §11-12), else copied into a send
/// slot of `sock`. Counts it on the agent; false if it could not be queued.
fn send_app(
    h: &mut table::Hosted,
    sendq: &mut SendQueue,
    now: Instant,
    sock: Option<SocketId>,
    local: SocketAddr,
    remote: SocketAddr,
    data: &[u8],
) -> bool {
    let Some(out) = sendq.slot() else {
        return false;
    };
    let queued = match h.servers.as_mut() {
        Some(sv) if sv.is_relayed(local) => match sv.wrap(local, remote, data, out, now) {
            Some(Wrapped::Datagram(sock, server, n)) => {
                sendq.commit(sock, server, n);
                true
            }
            Some(Wrapped::Stream) => true,
            None => false,
        },
        _ => match sock {
            Some(sock) if data.len() <= out.len() => {
                out[..data.len()].copy_from_slice(data);
                sendq.commit(sock, remote, data.len());
                true
            }
            _ => false,
        },
    };
    if queued {
        h.bytes_out += data.len() as u64;
        h.packets_out += 1;
    }
    queued
}

/// The shard's set of TURN-over-TCP streams, watched by the backend (`None`, logged, if
/// either fails: TCP relays then fail to gather).
fn open_stream_set(backend: &mut Backend) -> Option<StreamSet> {
    let set = StreamSet::new(MAX_TURN_STREAMS, MAX_TURN_BACKLOG, 64 * 1024)
        .inspect_err(|e| tracing::warn!("TURN over TCP: {e}"))
        .ok()?;
    backend
        .watch_fd(set.fd())
        .inspect_err(|e| tracing::warn!("TURN over TCP: {e}"))
        .ok()?;
    Some(set)
}

/// Sends `cmd()` to every shard but `me` (a route announced or withdrawn).
fn broadcast(peers: &Option<Peers>, me: u16, cmd: impl Fn() -> IceCmd) {
    let Some(peers) = peers else { return };
    for (i, (tx, waker)) in peers.iter().enumerate() {
        if i != usize::from(me) {
            let _ = tx.send(Control::Ice(cmd()));
            waker.wake();
        }
    }
}

/// The first 6 bytes of every transaction id the agent in `slot` of `shard` sends: the
/// mux demultiplexer routes responses by them (RFC 8489 §6: the id is ours to choose).
fn tid_prefix(shard: u16, slot: u32) -> [u8; 6] {
    let mut p = [0u8; 6];
    p[..2].copy_from_slice(&shard.to_be_bytes());
    p[2..].copy_from_slice(&slot.to_be_bytes());
    p
}

/// Whether a candidate base lives on a socket bound to `bound` (exact, or the same port on
/// an unspecified address of the same family).
fn base_matches(bound: SocketAddr, base: SocketAddr) -> bool {
    bound == base
        || (bound.ip().is_unspecified()
            && bound.port() == base.port()
            && bound.is_ipv4() == base.is_ipv4())
}
