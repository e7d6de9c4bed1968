//! The sans-IO STUN/TURN server a shard drives for every datagram on its sockets.
//!
//! It answers STUN Binding (RFC 8489 §6.3) and, when [`ServerConfig::turn`] is set, runs a
//! TURN relay (RFC 8656, UDP relaying): Allocate, Refresh, CreatePermission, ChannelBind,
//! Send/Data indications and ChannelData, with long-term credentials ([`auth`]), a peer
//! address policy and quotas ([`policy`]).
//!
//! ## Shape
//!
//! ```text
//!   shard (owns sockets, clock)                    Server (sans-IO)
//!   ─────────────────────────                      ─────────────────────────────────
//!   datagram on socket S from A ──handle(now, S, A, bytes, slot, ports)──▶ Outcome
//!        Reply(n)              ◀── answer written in `slot`, send it back on S to A
//!        Send{sock, to, len}   ◀── relayed datagram written in `slot`: send on `sock` to `to`
//!        Later                 ◀── needs a relay socket but `ports` cannot bind right now:
//!                                  call handle() again with the same bytes once it can
//!        Drop(reason)          ◀── nothing to send (counted)
//!   datagram on a shared-port relay socket S, sent to local (ip, P), from peer A
//!        ──handle_relayed(now, S, (ip, P), A, bytes, slot)──▶ Send to the client, or Drop
//!   every poll_timeout() ──handle_timeout(now, ports)──▶ due allocations off the timing
//!                                  wheel (1 s granularity): expiry, permissions, channels
//! ```
//!
//! Sockets are named by opaque [`Sock`] tokens chosen by the runtime (the shard uses its io
//! `SocketId`). Relay sockets are opened and closed through the small [`RelayPorts`] trait
//! the runtime implements: `open(ip)` binds a socket from the configured port range on a
//! relay address and registers it; `close(sock)` unregisters it. Inside its receive
//! callback the shard cannot register sockets, so there `open` answers
//! [`OpenError::Later`]; the server then returns [`Outcome::Later`] before changing any
//! state and the shard replays that (rare, Allocate-only) datagram after the batch with a
//! `RelayPorts` that binds directly. `close` may always be deferred by the runtime.
//!
//! Time is passed in (`now: Instant`); wall-clock seconds (for TURN REST expiry stamps)
//! are derived from [`TurnConfig::unix_at_epoch`] + `now - epoch`, both read once by the
//! runtime at start.
//!
//! The relay hot path (ChannelData, Send indication, peer datagram → Data indication or
//! ChannelData) does two hash lookups, writes the datagram straight into the caller's send
//! slot, allocates nothing and takes no lock.
//!
//! ## Without users
//!
//! With no `users` and no `static_auth_secrets`, every TURN request is refused with 401
//! (there is no credential that can pass); Binding still works.

mod allocation;
pub mod auth;
mod binding;
pub mod policy;
mod relay;
mod requests;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::stun::{self, Class, Message, Method, PacketKind};
use crate::wheel::TimerWheel;

pub use allocation::AllocationCounters;
use allocation::Allocations;
use auth::Authenticator;
pub use policy::{Cidr, PeerPolicy, Quotas, Reservations};

/// An opaque socket token chosen by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sock(pub u32);

/// Why a relay socket could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not possible right now; replay the datagram later ([`Outcome::Later`]).
    Later,
    /// No free port in the range, or the bind failed (answered with 508).
    Exhausted,
}

/// Which port a relay socket should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWish {
    /// Any port of the range.
    Any,
    /// An even port of the range (EVEN-PORT, RFC 8656 §14.6).
    Even,
    /// An even port whose odd neighbour is free too; the neighbour is bound and parked
    /// (not receiving) for a later [`RelayPorts::claim`] (EVEN-PORT with R=1).
    EvenReserveNext,
}

/// The runtime's side of relay sockets.
pub trait RelayPorts {
    /// Binds a UDP socket on `ip` (a port from the configured range as `wish` says),
    /// registers it for receiving, and returns its token and bound address.
    fn open(&mut self, ip: IpAddr, wish: PortWish) -> Result<(Sock, SocketAddr), OpenError>;
    /// Stops receiving on a relay socket and closes it.
    fn close(&mut self, sock: Sock);
    /// Registers the socket parked at `addr` by [`PortWish::EvenReserveNext`] (possibly
    /// by another shard) for receiving.
    fn claim(&mut self, addr: SocketAddr) -> Result<(Sock, SocketAddr), OpenError>;
    /// Closes the socket parked at `addr`.
    fn release(&mut self, addr: SocketAddr);
    /// Whether `open` and `claim` hand out shared-port sockets: one socket per relay port,
    /// bound to the wildcard address, carrying that port for every relay IP of its family,
    /// so several allocations share one [`Sock`]. The runtime then hands their peers'
    /// datagrams to [`Server::handle_relayed`] with the relayed address they were sent to,
    /// the server sends from that IP ([`Outcome::Send::src`]) and ends an allocation with
    /// [`end_relay`](Self::end_relay). Default: one socket per allocation.
    fn shared(&self) -> bool {
        false
    }
    /// Ends the relayed transport address `relayed` on `sock` when its allocation goes: a
    /// per-allocation socket is closed (the default: [`close`](Self::close)); a shared-port
    /// socket frees that IP's slot and closes once no relay IP uses its port any more.
    fn end_relay(&mut self, sock: Sock, relayed: SocketAddr) {
        let _ = relayed;
        self.close(sock);
    }
}

/// A `RelayPorts` that can open nothing (for Binding-only use and tests).
#[derive(Debug, Default)]
pub struct NoPorts;

impl RelayPorts for NoPorts {
    fn open(&mut self, _: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn close(&mut self, _: Sock) {}
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

/// The module's error: a request refused with a TURN/STUN error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    /// 400.
    #[error("400 bad request")]
    BadRequest,
    /// 403: peer refused by policy.
    #[error("403 forbidden")]
    Forbidden,
    /// 437: no allocation on this 5-tuple, or already one for Allocate.
    #[error("437 allocation mismatch")]
    AllocationMismatch,
    /// 440.
    #[error("440 address family not supported")]
    AddressFamilyNotSupported,
    /// 441: the request's user is not the allocation's.
    #[error("441 wrong credentials")]
    WrongCredentials,
    /// 442.
    #[error("442 unsupported transport protocol")]
    UnsupportedTransport,
    /// 443.
    #[error("443 peer address family mismatch")]
    PeerAddressFamilyMismatch,
    /// 486.
    #[error("486 allocation quota reached")]
    QuotaReached,
    /// 508.
    #[error("508 insufficient capacity")]
    InsufficientCapacity,
}

impl TurnError {
    fn code(self) -> stun::ErrorCode<'static> {
        use stun::ErrorCode as E;
        match self {
            TurnError::BadRequest => E::BAD_REQUEST,
            TurnError::Forbidden => E::FORBIDDEN,
            TurnError::AllocationMismatch => E::ALLOCATION_MISMATCH,
            TurnError::AddressFamilyNotSupported => E::ADDRESS_FAMILY_NOT_SUPPORTED,
            TurnError::WrongCredentials => E::WRONG_CREDENTIALS,
            TurnError::UnsupportedTransport => E::UNSUPPORTED_TRANSPORT,
            TurnError::PeerAddressFamilyMismatch => E::PEER_ADDRESS_FAMILY_MISMATCH,
            TurnError::QuotaReached => E::ALLOCATION_QUOTA_REACHED,
            TurnError::InsufficientCapacity => E::INSUFFICIENT_CAPACITY,
        }
    }
}

/// Why a datagram got no answer. Each reason has its own counter in [`ServerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a STUN message, or a STUN message that fails the checked parse.
    Malformed,
    /// A FINGERPRINT is present and wrong (RFC 8489 §7.3).
    BadFingerprint,
    /// A response or an indication that is not a Send indication.
    NotRequest,
    /// DTLS, RTP or unknown first byte; or ChannelData when TURN is off.
    NotStun,
    /// The output buffer could not hold the answer.
    NoRoom,
    /// Send indication or ChannelData on a 5-tuple without allocation.
    NoAllocation,
    /// No permission (or no channel) for that peer.
    NoPermission,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// Too many failed authentications from this source IP this minute.
    AuthRateLimited,
    /// A datagram on a shared-port relay socket to a local address that is not the relayed
    /// address of an allocation: a local IP that is no relay IP (e.g. a public interface),
    /// or a relay IP whose slot on that port is free.
    NotRelayed,
}

macro_rules! server_stats {
    ($($(#[doc = $doc:literal])* $field:ident),* $(,)?) => {
        /// Per-server counters (per shard, since each shard owns its server).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ServerStats {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        impl ServerStats {
            /// Adds another set of counters (to sum over shards).
            pub fn add(&mut self, o: &ServerStats) {
                $(self.$field += o.$field;)*
            }

            /// Number of counters.
            pub const COUNT: usize = [$(stringify!($field)),*].len();

            /// Each counter's doc comment, in declaration order (metrics' help texts).
            pub const HELP: [&'static str; Self::COUNT] = [$(concat!($($doc),*)),*];

            /// Every counter by name, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); Self::COUNT] {
                [$((stringify!($field), self.$field)),*]
            }

            /// Sets a counter by name (unknown names are ignored).
            pub fn set(&mut self, name: &str, v: u64) {
                match name {
                    $(stringify!($field) => self.$field = v,)*
                    _ => {}
                }
            }
        }
    };
}

server_stats!(
    /// Datagrams handled.
    received,
    /// Success responses sent.
    answered,
    /// Error responses sent (400, 401, 420, ...).
    errors_sent,
    /// Dropped: malformed.
    dropped_malformed,
    /// Dropped: bad fingerprint.
    dropped_bad_fingerprint,
    /// Dropped: not a request.
    dropped_not_request,
    /// Dropped: not STUN.
    dropped_not_stun,
    /// Dropped: no room for the answer.
    dropped_no_room,
    /// Dropped: no allocation for a Send indication or ChannelData.
    dropped_no_allocation,
    /// Dropped: no permission or channel for the peer.
    dropped_no_permission,
    /// Dropped: bandwidth cap.
    dropped_bandwidth,
    /// Dropped: failed-auth rate limit.
    dropped_auth_rate,
    /// Dropped: sent to a shared relay port at a local address that is no allocation's
    /// relayed address (not a relay IP, or a free slot).
    dropped_not_relayed,
    /// Requests whose credentials were wrong (401 after a MESSAGE-INTEGRITY check).
    auth_failures,
    /// Relay sockets that could not be opened (port range exhausted on every relay
    /// address, out of file descriptors): answered 508.
    relay_open_failures,
    /// Allocations created.
    allocations_created,
    /// Allocations deleted or expired.
    allocations_ended,
    /// Datagrams relayed client → peer.
    relayed_to_peer,
    /// Payload bytes relayed client → peer.
    relayed_to_peer_bytes,
    /// Datagrams relayed peer → client.
    relayed_to_client,
    /// Payload bytes relayed peer → client.
    relayed_to_client_bytes,
);

impl ServerStats {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_bad_fingerprint
            + self.dropped_not_request
            + self.dropped_not_stun
            + self.dropped_no_room
            + self.dropped_no_allocation
            + self.dropped_no_permission
            + self.dropped_bandwidth
            + self.dropped_auth_rate
            + self.dropped_not_relayed
    }

    /// Allocations alive (created − ended).
    pub fn allocations(&self) -> u64 {
        self.allocations_created
            .saturating_sub(self.allocations_ended)
    }

    fn count_drop(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.dropped_malformed,
            DropReason::BadFingerprint => &mut self.dropped_bad_fingerprint,
            DropReason::NotRequest => &mut self.dropped_not_request,
            DropReason::NotStun => &mut self.dropped_not_stun,
            DropReason::NoRoom => &mut self.dropped_no_room,
            DropReason::NoAllocation => &mut self.dropped_no_allocation,
            DropReason::NoPermission => &mut self.dropped_no_permission,
            DropReason::Bandwidth => &mut self.dropped_bandwidth,
            DropReason::AuthRateLimited => &mut self.dropped_auth_rate,
            DropReason::NotRelayed => &mut self.dropped_not_relayed,
        };
        *c += 1;
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the first `n` bytes of the output buffer back to the source, on the socket it
    /// arrived on.
    Reply(usize),
    /// Send the first `len` bytes of the output buffer to `to` on socket `sock`.
    Send {
        /// Socket to send from.
        sock: Sock,
        /// Source IP to send from, for a shared-port relay socket (bound to the wildcard
        /// address): the relayed address's IP, which the peer must see. `None`: the
        /// socket's own address.
        src: Option<IpAddr>,
        /// Destination.
        to: SocketAddr,
        /// Bytes written.
        len: usize,
    },
    /// Replay this datagram when relay sockets can be opened (see the module docs).
    Later,
    /// Send nothing.
    Drop(DropReason),
}

/// TURN relay settings (RFC 8656).
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// REALM.
    pub realm: String,
    /// Addresses relay sockets are bound on. Allocations rotate over the addresses of the
    /// requested family and fall over to the next one when a port range is exhausted, so
    /// several addresses multiply the ~64k ports one address offers.
    pub relay_ips: Vec<IpAddr>,
    /// Static users `(name, password)`.
    pub users: Vec<(String, String)>,
    /// TURN REST shared secrets (all accepted, for rotation).
    pub auth_secrets: Vec<String>,
    /// Allocation lifetime when the client asks for less (RFC 8656: 600 s).
    pub default_lifetime: u32,
    /// Longest allocation lifetime granted (RFC 8656: 3600 s).
    pub max_lifetime: u32,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: u32,
    /// Seconds a nonce stays valid before 438.
    pub nonce_lifetime: u32,
    /// Allocations per user, all shards (0 = unlimited) → 486.
    pub user_quota: u32,
    /// Allocations in total, all shards (0 = unlimited) → 508.
    pub total_quota: u32,
    /// Relayed bytes per second per allocation, each direction summed (0 = unlimited).
    pub bandwidth: u64,
    /// Failed authentications per source IP per minute before requests are dropped
    /// (0 = no limit).
    pub max_auth_failures: u32,
    /// Which peers may be relayed to.
    pub policy: PeerPolicy,
    /// Key of the stateless nonces; the same for every shard.
    pub nonce_secret: [u8; 32],
    /// The instant the server's clock starts at.
    pub epoch: Instant,
    /// Unix seconds at `epoch`.
    pub unix_at_epoch: u64,
    /// Quotas shared by all shards.
    pub quotas: Arc<Quotas>,
    /// RESERVATION-TOKENs shared by all shards.
    pub reservations: Arc<Reservations>,
}

impl TurnConfig {
    /// RFC 8656 defaults, no users, loopback relay, with `epoch` and `nonce_secret`.
    pub fn new(epoch: Instant, unix_at_epoch: u64, nonce_secret: [u8; 32]) -> Self {
        TurnConfig {
            realm: "icering".into(),
            relay_ips: vec![IpAddr::from([127, 0, 0, 1])],
            users: Vec::new(),
            auth_secrets: Vec::new(),
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            nonce_lifetime: 600,
            user_quota: 0,
            total_quota: 0,
            bandwidth: 0,
            max_auth_failures: 0,
            policy: PeerPolicy::default(),
            nonce_secret,
            epoch,
            unix_at_epoch,
            quotas: Arc::new(Quotas::default()),
            reservations: Arc::new(Reservations::default()),
        }
    }
}

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// SOFTWARE attribute value for responses; empty omits it.
    pub software: String,
    /// The TURN relay; `None` answers Binding only (TURN methods get 400).
    pub turn: Option<TurnConfig>,
}

/// TURN state of a server.
#[derive(Debug)]
struct Relay {
    cfg: TurnConfig,
    auth: Authenticator,
    allocs: Allocations,
    /// Source IP → (minute, failures in that minute).
    failures: HashMap<IpAddr, (u64, u32)>,
    /// Deadlines of the allocations (expiry, permissions, channel cool-downs), one live
    /// entry each (`Allocation::wake`).
    timers: TimerWheel<allocation::AllocId>,
    /// Next housekeeping of the failure table and reservations.
    next_sweep: Instant,
    /// Counter for Data indication transaction ids and reservation tokens.
    tid_counter: u64,
    /// Index into `cfg.relay_ips` the next allocation starts its search at.
    relay_rr: usize,
}

/// The sans-IO STUN/TURN server for one shard.
#[derive(Debug)]
pub struct Server {
    software: String,
    stats: ServerStats,
    relay: Option<Relay>,
}

/// Housekeeping period of the failure table and reservation tokens.
const SWEEP: Duration = Duration::from_secs(1);

impl Server {
    /// A server with `config`.
    pub fn new(config: ServerConfig) -> Self {
        let relay = config.turn.map(|cfg| Relay {
            auth: Authenticator::new(
                cfg.realm.clone(),
                &cfg.users,
                &cfg.auth_secrets,
                &cfg.nonce_secret,
                u64::from(cfg.nonce_lifetime),
            ),
            allocs: Allocations::default(),
            failures: HashMap::new(),
            timers: TimerWheel::new(cfg.epoch),
            next_sweep: cfg.epoch + SWEEP,
            tid_counter: 0,
            relay_rr: 0,
            cfg,
        });
        Server {
            software: config.software,
            stats: ServerStats::default(),
            relay,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Allocations alive on this server.
    pub fn allocations(&self) -> usize {
        self.relay.as_ref().map_or(0, |r| r.allocs.len())
    }

    /// `size_of` of one allocation's inline state (for footprint tests; the heap it owns
    /// — permission and channel tables, username — comes on top).
    #[doc(hidden)]
    pub fn allocation_struct_size() -> usize {
        std::mem::size_of::<allocation::Allocation>()
    }

    /// Counts a datagram the runtime dropped before it reached the server (e.g. no send
    /// slot free for the answer).
    pub fn note_drop(&mut self, reason: DropReason) {
        self.stats.received += 1;
        self.stats.count_drop(reason);
    }

    /// When [`handle_timeout`](Self::handle_timeout) next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let r = self.relay.as_ref()?;
        Some(match r.timers.next_deadline() {
            Some(at) => at.min(r.next_sweep),
            None => r.next_sweep,
        })
    }

    /// Ends expired allocations and drops expired permissions and channels (each
    /// allocation is on the shard's timing wheel at its next deadline, RFC 8656 §7, §9,
    /// §12), and once a second forgets old authentication failures and reservations.
    /// Cheap to call early.
    pub fn handle_timeout(&mut self, now: Instant, ports: &mut dyn RelayPorts) {
        let Some(r) = self.relay.as_mut() else {
            return;
        };
        let due = r.secs(now);
        while let Some(id) = r.timers.pop_expired(now) {
            let Some(a) = r.allocs.get_mut(id) else {
                continue;
            };
            if u64::from(a.wake) > due {
                continue; // stale: this allocation's live entry is later
            }
            if a.expires <= now {
                r.end_allocation(id, ports, &mut self.stats);
                continue;
            }
            a.expire(now);
            a.wake = u32::MAX;
            let next = a.next_deadline();
            r.wake(id, next, now);
        }
        if now < r.next_sweep {
            return;
        }
        r.next_sweep = now + SWEEP;
        for addr in r.cfg.reservations.expire(now) {
            ports.release(addr);
        }
        let minute = r.secs(now) / 60;
        r.failures.retain(|_, (m, _)| *m == minute);
    }

    /// Ends the allocation of the client 5-tuple `(sock, client)`, if any: the runtime
    /// calls it when the TCP/TLS connection carrying that 5-tuple closes, because the
    /// allocation is bound to the connection (RFC 8656 §2.1, §3.1).
    pub fn end_client(&mut self, sock: Sock, client: SocketAddr, ports: &mut dyn RelayPorts) {
        let Some(r) = self.relay.as_mut() else {
            return;
        };
        if let Some(id) = r.allocs.by_client(sock, client) {
            r.end_allocation(id, ports, &mut self.stats);
        }
    }

    /// Traffic counters of the allocation on a 5-tuple (listening socket, client).
    pub fn allocation_counters(
        &self,
        sock: Sock,
        client: SocketAddr,
    ) -> Option<AllocationCounters> {
        let r = self.relay.as_ref()?;
        let id = r.allocs.by_client(sock, client)?;
        r.allocs.get(id).map(|a| a.counters)
    }

    /// A datagram from `peer` on the shared-port relay socket `sock`, sent to the local
    /// transport address `relayed` (the destination IP the kernel reported and the socket's
    /// port; see [`RelayPorts::shared`]): relayed to the client of the allocation at that
    /// address (RFC 8656 §11.3, §12.7), or dropped and counted as
    /// [`DropReason::NotRelayed`] when no allocation has it — the wildcard socket also
    /// receives datagrams sent to local IPs that are no relay IPs.
    pub fn handle_relayed(
        &mut self,
        now: Instant,
        sock: Sock,
        relayed: SocketAddr,
        peer: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        self.stats.received += 1;
        let outcome = match self.relay.as_mut() {
            Some(r) => match r.allocs.by_relayed(relayed) {
                Some(id) if r.allocs.get(id).is_some_and(|a| a.relay_sock == sock) => {
                    r.peer_datagram(id, peer, datagram, out, now, &mut self.stats)
                }
                _ => Outcome::Drop(DropReason::NotRelayed),
            },
            None => Outcome::Drop(DropReason::NotRelayed),
        };
        if let Outcome::Drop(r) = outcome {
            self.stats.count_drop(r);
        }
        outcome
    }

    /// Handles one datagram that arrived on socket `sock` from `source`, writing any
    /// answer or relayed datagram into `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        sock: Sock,
        source: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
    ) -> Outcome {
        self.stats.received += 1;
        let outcome = self.dispatch(now, sock, source, datagram, out, ports);
        match outcome {
            Outcome::Reply(_) | Outcome::Send { .. } => {}
            // Replayed later: counted then.
            Outcome::Later => self.stats.received -= 1,
            Outcome::Drop(r) => self.stats.count_drop(r),
        }
        outcome
    }

    fn dispatch(
        &mut self,
        now: Instant,
        sock: Sock,
        source: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        ports: &mut dyn RelayPorts,
    ) -> Outcome {
        if let Some(r) = self.relay.as_mut()
            && let Some(id) = r.allocs.by_relay(sock)
        {
            return r.peer_datagram(id, source, datagram, out, now, &mut self.stats);
        }
        match (stun::classify(datagram), self.relay.as_mut()) {
            (PacketKind::Stun, _) => {}
            (_, Some(r)) if matches!(datagram.first(), Some(0x40..=0x7F)) => {
                return r.channel_data(sock, source, datagram, out, now, &mut self.stats);
            }
            _ => return Outcome::Drop(DropReason::NotStun),
        }
        let Ok(msg) = Message::parse(datagram) else {
            return Outcome::Drop(DropReason::Malformed);
        };
        if msg.fingerprint_offset().is_some() && msg.verify_fingerprint().is_err() {
            return Outcome::Drop(DropReason::BadFingerprint);
        }
        match (msg.class(), self.relay.as_mut()) {
            (Class::Request, _) => {}
            (Class::Indication, Some(r)) if msg.method() == Method::SEND => {
                return r.send_indication(sock, source, &msg, out, now, &mut self.stats);
            }
            _ => return Outcome::Drop(DropReason::NotRequest),
        }
        let software = self.software.as_str();
        let result = if msg.has_unknown_required() {
            binding::unknown_attributes(&msg, software, out)
        } else if msg.method() == Method::BINDING {
            binding::success(&msg, source, software, out)
        } else if let Some(r) = self.relay.as_mut() {
            match r.request(
                now,
                sock,
                source,
                &msg,
                out,
                ports,
                software,
                &mut self.stats,
            ) {
                requests::Handled::Answer(n, is_error) => Ok((n, is_error)),
                requests::Handled::Other(o) => return o,
            }
        } else {
            binding::error(&msg, &stun::ErrorCode::BAD_REQUEST, software, out)
        };
        match result {
            Ok((n, is_error)) => {
                if is_error {
                    self.stats.errors_sent += 1;
                } else {
                    self.stats.answered += 1;
                }
                Outcome::Reply(n)
            }
            Err(_) => Outcome::Drop(DropReason::NoRoom),
        }
    }
}

impl Relay {
    /// Seconds since the epoch.
    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.cfg.epoch).as_secs()
    }

    /// Puts allocation `id` on the timing wheel at `at` (rounded up to a whole second
    /// since the epoch, the resolution of TURN lifetimes), unless its live entry is
    /// already due earlier: one live entry per allocation, and a later deadline is found
    /// when that entry fires. Entries are never more than a permission lifetime ahead of
    /// `now`, so the permissions and channels a new allocation installs next fall after
    /// its first entry instead of each adding an earlier one (an entry superseded by an
    /// earlier one stays in the wheel until its time: memory).
    fn wake(&mut self, id: allocation::AllocId, at: Instant, now: Instant) {
        let at = at.min(now + Duration::from_secs(self.cfg.permission_lifetime.into()));
        let d = at.saturating_duration_since(self.cfg.epoch);
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let secs = u32::try_from(secs).unwrap_or(u32::MAX - 1);
        let Some(a) = self.allocs.get_mut(id) else {
            return;
        };
        if secs < a.wake {
            a.wake = secs;
            self.timers
                .schedule(self.cfg.epoch + Duration::from_secs(secs.into()), id);
        }
    }

    fn end_allocation(
        &mut self,
        id: allocation::AllocId,
        ports: &mut dyn RelayPorts,
        stats: &mut ServerStats,
    ) {
        if let Some(a) = self.allocs.remove(id) {
            ports.end_relay(a.relay_sock, a.relay);
            self.cfg.quotas.release(&a.cred.username);
            stats.allocations_ended += 1;
        }
    }
}
