//! The sans-IO TURN client (RFC 8656) and a STUN Binding client for server-reflexive
//! discovery (RFC 8489 §6.2, RFC 8445 §5.1.1.2).
//!
//! [`Client`] holds one allocation on one server, for one local transport address. Like
//! the other protocol objects it never opens a socket or reads a clock; the runtime
//! drives it (crate docs, "drive loop"):
//!
//! 1. [`Client::poll_timeout`] / [`Client::handle_timeout`] — retransmissions
//!    (RFC 8489 §6.2.1, none over TCP), refreshes of the allocation (§7), permissions
//!    (§9) and channels (§12) before they expire;
//! 2. [`Client::poll_transmit`] — requests to the server, written into the caller's buffer;
//! 3. [`Client::handle_packet`] — every datagram (or stream frame, see [`stream`]) from
//!    the server: responses are consumed; Data indications and ChannelData come back as
//!    [`Handled::Data`] `(peer, payload)` borrowed from the input, no copy;
//! 4. [`Client::poll_event`] — [`ClientEvent`]s: allocated, permission, channel, failure;
//! 5. [`Client::send_to`] — application data to a peer, written into the caller's buffer
//!    as a Send indication (§11) until a channel is bound, then as ChannelData (§12).
//!
//! Authentication (RFC 8489 §9.2): the first Allocate goes without credentials; the 401
//! carries REALM and NONCE (and PASSWORD-ALGORITHMS from RFC 8489 servers), the request
//! is repeated with USERNAME/REALM/NONCE and MESSAGE-INTEGRITY (MD5 key), or
//! PASSWORD-ALGORITHMS + PASSWORD-ALGORITHM(SHA-256) and MESSAGE-INTEGRITY-SHA256 when the
//! server offered SHA-256. A 438 (stale nonce) repeats the request with the new nonce.
//!
//! The state machine does not depend on the transport: [`ClientConfig::transport`] only
//! turns retransmission off (RFC 8489 §6.2.2) and pads ChannelData (RFC 8656 §12.5) for
//! TCP, where the runtime cuts the byte stream with [`stream::StreamDecoder`].
//!
//! [`BindingClient`] is the server-reflexive gatherer: one Binding request, retransmitted,
//! answered by XOR-MAPPED-ADDRESS or a timeout. It lives here rather than in `ice`
//! because it shares the transaction timers with the TURN client and talks to the same
//! servers; the ICE agent only receives the candidate it yields.

mod binding;
pub mod stream;
#[cfg(test)]
mod tests;
mod txn;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::net::{Protocol, Transmit};
use crate::stun::{
    self, ChannelData, Class, IntegrityKey, IntegrityKeySha256, Message, MessageType,
    MessageWriter, Method, PasswordAlgorithm, StunError, TransactionId, attr,
};

pub use binding::{BindingClient, BindingEvent};
pub use txn::Retransmit;
use txn::{Due, TidSource, Timer};

/// Why a request or the allocation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// No answer after all retransmissions (RFC 8489 §6.2.1) or Ti over TCP.
    #[error("{0} request timed out")]
    Timeout(&'static str),
    /// The server answered with an error code.
    #[error("{method} refused: {code} {reason}")]
    Refused {
        /// Request method.
        method: &'static str,
        /// ERROR-CODE.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// 401 after an authenticated attempt: wrong user name or password.
    #[error("{0} refused: 401 (wrong credentials)")]
    Unauthorized(&'static str),
    /// A success response without the attributes it must carry.
    #[error("malformed {0} response")]
    BadResponse(&'static str),
    /// There is no allocation (yet, or any more).
    #[error("no allocation")]
    NotAllocated,
    /// The peer's address family differs from the relayed address's.
    #[error("peer {0} is not of the relayed address's family")]
    Family(SocketAddr),
    /// A message could not be written (buffer too small, data too long).
    #[error("stun: {0}")]
    Stun(#[from] StunError),
}

/// What [`Client::handle_packet`] made of a datagram from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled<'a> {
    /// Data relayed from `peer` (Data indication or ChannelData).
    Data {
        /// The peer's transport address.
        peer: SocketAddr,
        /// Payload, borrowed from the datagram.
        data: &'a [u8],
    },
    /// A response or other TURN message, consumed (or dropped as stale/forged).
    Consumed,
    /// Not a TURN message for this client (not from the server, or a STUN message that
    /// answers none of our transactions): offer it to someone else.
    NotOurs,
}

/// Something the runtime should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The allocation exists: `relayed` is the relay candidate's address, `mapped` the
    /// client's address as the server saw it (its `raddr`).
    Allocated {
        /// XOR-RELAYED-ADDRESS.
        relayed: SocketAddr,
        /// XOR-MAPPED-ADDRESS.
        mapped: SocketAddr,
        /// Granted lifetime in seconds.
        lifetime: u32,
    },
    /// A Refresh succeeded with this lifetime.
    Refreshed {
        /// Granted lifetime in seconds.
        lifetime: u32,
    },
    /// A permission for this peer IP is installed (first time only; refreshes are quiet).
    PermissionCreated(IpAddr),
    /// A channel is bound to `peer`; data to it now goes as ChannelData.
    ChannelBound {
        /// Peer.
        peer: SocketAddr,
        /// Channel number.
        channel: u16,
    },
    /// A CreatePermission or ChannelBind failed; the allocation lives on.
    RequestFailed(ClientError),
    /// The allocation failed or was lost (Allocate refused, refresh failed): terminal.
    Failed(ClientError),
    /// [`Client::close`] finished: the allocation was deleted (or the server did not
    /// answer the Refresh with lifetime 0 in time).
    Closed,
}

/// The password algorithm in use (RFC 8489 §18.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAlg {
    /// MD5 long-term key, MESSAGE-INTEGRITY (HMAC-SHA1): what RFC 5389 servers use.
    Md5,
    /// SHA-256 long-term key, MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// Settings of one TURN client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The TURN server's address.
    pub server: SocketAddr,
    /// The local address datagrams are sent from (the `source` of each [`Transmit`]).
    pub local: SocketAddr,
    /// UDP, or TCP (no retransmission, padded ChannelData).
    pub transport: Protocol,
    /// Long-term credential user name.
    pub username: String,
    /// Long-term credential password.
    pub password: String,
    /// LIFETIME to ask for, in seconds (`None`: the server's default, 600 s).
    pub lifetime: Option<u32>,
    /// Retransmission timers.
    pub retransmit: Retransmit,
    /// Seed of the transaction ids (take it from the OS).
    pub seed: u64,
}

impl ClientConfig {
    /// UDP defaults for `server` with a user name and password.
    pub fn new(server: SocketAddr, local: SocketAddr, username: &str, password: &str) -> Self {
        ClientConfig {
            server,
            local,
            transport: Protocol::Udp,
            username: username.into(),
            password: password.into(),
            lifetime: None,
            retransmit: Retransmit::default(),
            seed: 0,
        }
    }
}

/// Counters of one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent, retransmissions included.
    pub requests_sent: u64,
    /// Retransmissions.
    pub retransmits: u64,
    /// 438 answers that made a request repeat with a new nonce.
    pub stale_nonces: u64,
    /// Send indications written.
    pub indications_sent: u64,
    /// ChannelData messages written.
    pub channel_data_sent: u64,
    /// Data delivered from peers.
    pub data_received: u64,
    /// Datagrams from the server dropped: malformed, unknown channel, integrity failure.
    pub dropped: u64,
    /// Data for a peer without an installed permission (a CreatePermission was started).
    pub dropped_no_permission: u64,
}

/// Refresh a permission this long before its 300 s lifetime ends (RFC 8656 §9: "the
/// client SHOULD refresh ... before it expires").
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Refresh a channel binding after this (lifetime 600 s, RFC 8656 §12).
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// Stale-nonce retries per request before giving up.
const MAX_STALE: u8 = 3;
/// Largest request this client writes.
const MAX_REQUEST: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated,
    Closing,
    Closed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Allocate,
    Refresh(u32),
    /// Refresh with lifetime 0 while allocating: deletes an allocation whose success
    /// answer was lost (see `Client::response`), then Allocate starts again.
    Reset,
    Permission(IpAddr),
    ChannelBind(SocketAddr, u16),
}

impl Request {
    fn method(self) -> Method {
        match self {
            Request::Allocate => Method::ALLOCATE,
            Request::Refresh(_) | Request::Reset => Method::REFRESH,
            Request::Permission(_) => Method::CREATE_PERMISSION,
            Request::ChannelBind(..) => Method::CHANNEL_BIND,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Request::Allocate => "Allocate",
            Request::Refresh(_) | Request::Reset => "Refresh",
            Request::Permission(_) => "CreatePermission",
            Request::ChannelBind(..) => "ChannelBind",
        }
    }
}

#[derive(Debug)]
struct Txn {
    tid: TransactionId,
    req: Request,
    timer: Timer,
    bytes: Vec<u8>,
    /// Whether the request carried credentials (a 401 to it means they are wrong).
    authenticated: bool,
    stale_retries: u8,
}

#[derive(Debug)]
struct Auth {
    realm: String,
    nonce: String,
    alg: PasswordAlg,
    /// The PASSWORD-ALGORITHMS value of the 401, echoed in every request (§9.2.4).
    algorithms: Option<Vec<u8>>,
    key: IntegrityKey,
    key256: IntegrityKeySha256,
}

#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    /// The server refused it (403: peer policy); not asked again.
    refused: bool,
    installed: bool,
    in_flight: bool,
    refresh_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    number: u16,
    bound: bool,
    in_flight: bool,
    refresh_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Allocation {
    relayed: SocketAddr,
    mapped: SocketAddr,
    refresh_at: Instant,
}

/// A sans-IO TURN client: one allocation (see the [module docs](self)).
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    state: State,
    tids: TidSource,
    auth: Option<Auth>,
    alloc: Option<Allocation>,
    txns: Vec<Txn>,
    perms: Vec<Permission>,
    channels: Vec<Channel>,
    next_channel: u16,
    /// Allocations deleted after a 437 to a retransmitted Allocate.
    resets: u8,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
}

impl Client {
    /// A client that starts allocating at `now` (the first Allocate is due at once).
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        let mut c = Client {
            tids: TidSource::new(cfg.seed),
            cfg,
            state: State::Allocating,
            auth: None,
            alloc: None,
            txns: Vec::new(),
            perms: Vec::new(),
            channels: Vec::new(),
            next_channel: stun::channel_data::MIN_CHANNEL,
            resets: 0,
            events: VecDeque::new(),
            stats: ClientStats::default(),
        };
        c.start(Request::Allocate, now);
        c
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.cfg.server
    }

    /// The local address the client sends from.
    pub fn local(&self) -> SocketAddr {
        self.cfg.local
    }

    /// The transport to the server.
    pub fn transport(&self) -> Protocol {
        self.cfg.transport
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.alloc.map(|a| a.relayed)
    }

    /// The client's address as the server saw it, once allocated.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.alloc.map(|a| a.mapped)
    }

    /// The password algorithm learnt from the server's 401, once challenged.
    pub fn password_algorithm(&self) -> Option<PasswordAlg> {
        self.auth.as_ref().map(|a| a.alg)
    }

    /// Whether the allocation is usable.
    pub fn is_allocated(&self) -> bool {
        self.state == State::Allocated
    }

    /// Whether the client ended (closed or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Whether a permission for `ip` is installed.
    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.perms.iter().any(|p| p.ip == ip && p.installed)
    }

    /// The channel bound to `peer`, if any.
    pub fn channel(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.bound)
            .map(|c| c.number)
    }

    /// Counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    fn reliable(&self) -> bool {
        self.cfg.transport == Protocol::Tcp
    }

    fn alive(&self) -> bool {
        matches!(self.state, State::Allocating | State::Allocated)
    }

    // ------------------------------------------------------------------ requests

    /// Installs (and keeps refreshing) a permission for `peer`'s IP (RFC 8656 §9): the
    /// relay accepts datagrams only from peers with a permission. Before the allocation
    /// exists the request waits for it.
    pub fn create_permission(&mut self, peer: SocketAddr, now: Instant) {
        let ip = peer.ip();
        if !self.alive() || self.perms.iter().any(|p| p.ip == ip) {
            return;
        }
        self.perms.push(Permission {
            ip,
            refused: false,
            installed: false,
            in_flight: false,
            refresh_at: now,
        });
        if self.state == State::Allocated {
            self.request_permission(self.perms.len() - 1, now);
        }
    }

    /// Binds a channel to `peer` (RFC 8656 §12) and keeps it refreshed; data to `peer` goes
    /// as ChannelData (4 bytes of overhead instead of 36+) once the server confirmed it.
    /// Returns the channel number chosen.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) -> Result<u16, ClientError> {
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        if let Some(c) = self.channels.iter().find(|c| c.peer == peer) {
            return Ok(c.number);
        }
        if self.next_channel > stun::channel_data::MAX_CHANNEL {
            return Err(ClientError::Stun(StunError::BadChannelNumber(
                self.next_channel,
            )));
        }
        let number = self.next_channel;
        self.next_channel += 1;
        self.channels.push(Channel {
            peer,
            number,
            bound: false,
            in_flight: true,
            refresh_at: now + CHANNEL_REFRESH,
        });
        // ChannelBind installs the permission too (RFC 8656 §12.2); keep ours refreshed.
        self.create_permission(peer, now);
        self.start(Request::ChannelBind(peer, number), now);
        Ok(number)
    }

    /// Deletes the allocation: Refresh with LIFETIME 0 (RFC 8656 §7); [`ClientEvent::Closed`]
    /// follows its answer (or its timeout).
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Allocated => {
                self.txns.clear();
                self.state = State::Closing;
                self.start(Request::Refresh(0), now);
            }
            State::Allocating => {
                self.txns.clear();
                self.finish(State::Closed, ClientEvent::Closed);
            }
            State::Closing | State::Closed | State::Failed => {}
        }
    }

    fn request_permission(&mut self, i: usize, now: Instant) {
        let p = &mut self.perms[i];
        if p.in_flight {
            return;
        }
        p.in_flight = true;
        let ip = p.ip;
        self.start(Request::Permission(ip), now);
    }

    /// Starts a transaction; its first send is due at `now`.
    fn start(&mut self, req: Request, now: Instant) {
        match self.build(req, now, 0) {
            Ok(t) => self.txns.push(t),
            Err(e) => self.fail_request(req, e),
        }
    }

    fn build(&mut self, req: Request, now: Instant, stale_retries: u8) -> Result<Txn, ClientError> {
        let tid = self.tids.next_tid();
        let mut buf = [0u8; MAX_REQUEST];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(req.method(), Class::Request),
            &tid,
        )?;
        match req {
            Request::Allocate => {
                w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])?;
                if let Some(l) = self.cfg.lifetime {
                    w.add_u32(attr::LIFETIME, l)?;
                }
            }
            Request::Refresh(l) => w.add_u32(attr::LIFETIME, l)?,
            Request::Reset => w.add_u32(attr::LIFETIME, 0)?,
            Request::Permission(ip) => {
                w.add_xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(ip, 0))?;
            }
            Request::ChannelBind(peer, n) => {
                let b = n.to_be_bytes();
                w.add_raw(attr::CHANNEL_NUMBER, &[b[0], b[1], 0, 0])?;
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            }
        }
        let authenticated = if let Some(a) = &self.auth {
            w.add_raw(attr::USERNAME, self.cfg.username.as_bytes())?;
            w.add_raw(attr::REALM, a.realm.as_bytes())?;
            w.add_raw(attr::NONCE, a.nonce.as_bytes())?;
            if let Some(algs) = &a.algorithms {
                w.add_raw(attr::PASSWORD_ALGORITHMS, algs)?;
                let chosen = match a.alg {
                    PasswordAlg::Md5 => PasswordAlgorithm::MD5,
                    PasswordAlg::Sha256 => PasswordAlgorithm::SHA256,
                };
                w.add(&stun::Attribute::PasswordAlgorithm(chosen))?;
            }
            match a.alg {
                PasswordAlg::Md5 => w.add_message_integrity(&a.key)?,
                PasswordAlg::Sha256 => w.add_message_integrity_sha256(&a.key256)?,
            }
            true
        } else {
            false
        };
        w.add_fingerprint()?;
        let n = w.finish();
        Ok(Txn {
            tid,
            req,
            timer: Timer::new(now, &self.cfg.retransmit),
            bytes: buf[..n].to_vec(),
            authenticated,
            stale_retries,
        })
    }

    // ------------------------------------------------------------------ drive loop

    /// When [`handle_timeout`](Self::handle_timeout) next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.alive() && self.state != State::Closing {
            return None;
        }
        let mut t = self.txns.iter().map(|t| t.timer.deadline()).min();
        let mut fold = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if self.state == State::Allocated {
            if let Some(a) = &self.alloc {
                fold(a.refresh_at);
            }
            for p in self.perms.iter().filter(|p| !p.in_flight && !p.refused) {
                fold(p.refresh_at);
            }
            for c in self.channels.iter().filter(|c| c.bound && !c.in_flight) {
                fold(c.refresh_at);
            }
        }
        t
    }

    /// Runs timers: retransmissions and timeouts, refreshes that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let reliable = self.reliable();
        let rt = self.cfg.retransmit;
        let mut i = 0;
        while i < self.txns.len() {
            if self.txns[i].timer.due(now, &rt, reliable) == Due::TimedOut {
                let t = self.txns.swap_remove(i);
                self.fail_request(t.req, ClientError::Timeout(t.req.name()));
            } else {
                i += 1;
            }
        }
        if self.state != State::Allocated {
            return;
        }
        if let Some(a) = self.alloc
            && now >= a.refresh_at
            && !self
                .txns
                .iter()
                .any(|t| matches!(t.req, Request::Refresh(_)))
        {
            let lifetime = self.cfg.lifetime.unwrap_or(600);
            self.start(Request::Refresh(lifetime), now);
        }
        for i in 0..self.perms.len() {
            let p = &self.perms[i];
            if !p.in_flight && !p.refused && now >= p.refresh_at {
                self.request_permission(i, now);
            }
        }
        for i in 0..self.channels.len() {
            let c = self.channels[i];
            if c.bound && !c.in_flight && now >= c.refresh_at {
                self.channels[i].in_flight = true;
                self.start(Request::ChannelBind(c.peer, c.number), now);
            }
        }
    }

    /// Writes the next request that is due into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let reliable = self.reliable();
        let rt = self.cfg.retransmit;
        for t in &mut self.txns {
            if t.timer.due(now, &rt, reliable) != Due::Send {
                continue;
            }
            let n = t.bytes.len();
            let dst = buf.get_mut(..n)?;
            dst.copy_from_slice(&t.bytes);
            if t.timer.sends() > 0 {
                self.stats.retransmits += 1;
            }
            t.timer.sent(now, &rt, reliable);
            self.stats.requests_sent += 1;
            return Some(Transmit {
                source: self.cfg.local,
                destination: self.cfg.server,
                size: n,
            });
        }
        None
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Writes `data` for `peer` into `buf`: ChannelData if a channel is bound, else a Send
    /// indication (RFC 8656 §11.1). Without an installed permission for the peer's IP
    /// nothing is written (`Ok(None)`, counted) and a CreatePermission is started (unless
    /// the server refused that IP with 403 before): the relay would drop the data anyway.
    /// No allocation on this path.
    pub fn send_to(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Option<Transmit>, ClientError> {
        if self.state != State::Allocated {
            return Err(ClientError::NotAllocated);
        }
        if let Some(a) = self.alloc
            && a.relayed.is_ipv4() != peer.is_ipv4()
        {
            return Err(ClientError::Family(peer));
        }
        let transmit = |size| Transmit {
            source: self.cfg.local,
            destination: self.cfg.server,
            size,
        };
        if let Some(c) = self.channels.iter().find(|c| c.peer == peer && c.bound) {
            let n = ChannelData {
                channel: c.number,
                data,
            }
            .encode(buf, self.reliable())?;
            self.stats.channel_data_sent += 1;
            return Ok(Some(transmit(n)));
        }
        if !self.has_permission(peer.ip()) {
            self.stats.dropped_no_permission += 1;
            self.create_permission(peer, now);
            return Ok(None);
        }
        let tid = self.tids.next_tid();
        let mut w =
            MessageWriter::new(buf, MessageType::new(Method::SEND, Class::Indication), &tid)?;
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
        w.add_raw(attr::DATA, data)?;
        let n = w.finish();
        self.stats.indications_sent += 1;
        Ok(Some(transmit(n)))
    }

    /// Feeds a datagram (or stream frame) that arrived from `from`.
    pub fn handle_packet<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Handled<'a> {
        if from != self.cfg.server {
            return Handled::NotOurs;
        }
        match data.first() {
            Some(0x40..=0x7F) => return self.channel_data(data),
            Some(0..=3) => {}
            _ => return Handled::NotOurs,
        }
        let Ok(m) = Message::parse(data) else {
            return Handled::NotOurs;
        };
        match m.class() {
            Class::Indication if m.method() == Method::DATA => self.data_indication(&m),
            Class::Success | Class::Error => self.response(now, &m),
            _ => Handled::NotOurs,
        }
    }

    fn channel_data<'a>(&mut self, data: &'a [u8]) -> Handled<'a> {
        let Ok(cd) = ChannelData::parse_udp(data) else {
            self.stats.dropped += 1;
            return Handled::Consumed;
        };
        match self
            .channels
            .iter()
            .find(|c| c.number == cd.channel && c.bound)
        {
            Some(c) => {
                self.stats.data_received += 1;
                Handled::Data {
                    peer: c.peer,
                    data: cd.data,
                }
            }
            None => {
                self.stats.dropped += 1;
                Handled::Consumed
            }
        }
    }

    fn data_indication<'a>(&mut self, m: &Message<'a>) -> Handled<'a> {
        match (m.xor_address(attr::XOR_PEER_ADDRESS), m.data()) {
            (Some(Ok(peer)), Some(data)) if self.state == State::Allocated => {
                self.stats.data_received += 1;
                Handled::Data { peer, data }
            }
            _ => {
                self.stats.dropped += 1;
                Handled::Consumed
            }
        }
    }

    fn response(&mut self, now: Instant, m: &Message<'_>) -> Handled<'static> {
        let Some(i) = self.txns.iter().position(|t| &t.tid == m.transaction_id()) else {
            return Handled::NotOurs;
        };
        if m.method() != self.txns[i].req.method() {
            self.stats.dropped += 1;
            return Handled::Consumed;
        }
        if m.fingerprint_offset().is_some() && m.verify_fingerprint().is_err() {
            self.stats.dropped += 1;
            return Handled::Consumed;
        }
        if m.class() == Class::Success {
            // A success must be signed with our key (RFC 8489 §9.2.5); otherwise it is
            // forged or garbled: ignore it and let the transaction retransmit.
            if self.txns[i].authenticated && !self.verify(m) {
                self.stats.dropped += 1;
                return Handled::Consumed;
            }
            let t = self.txns.swap_remove(i);
            self.success(now, t.req, m);
            return Handled::Consumed;
        }
        let (code, reason) = match m.error_code() {
            Some(e) => (e.code, e.reason.to_owned()),
            None => (0, String::new()),
        };
        let t = self.txns.swap_remove(i);
        match code {
            401 => {
                let first = !t.authenticated;
                if t.stale_retries < MAX_STALE && self.learn_challenge(m, first) {
                    self.restart(t.req, now, t.stale_retries + 1);
                } else if first {
                    self.fail_request(t.req, ClientError::BadResponse(t.req.name()));
                } else {
                    self.fail_request(t.req, ClientError::Unauthorized(t.req.name()));
                }
            }
            // RFC 8656 §7.2 servers need not recognise a retransmitted Allocate: a 437 to
            // one means the first copy succeeded and its answer was lost. Delete that
            // allocation (we do not know its relayed address) and allocate again.
            437 if t.req == Request::Allocate && t.timer.sends() > 1 && self.resets < 2 => {
                self.resets += 1;
                self.start(Request::Reset, now);
            }
            _ if t.req == Request::Reset && code != 401 && code != 438 => {
                self.start(Request::Allocate, now);
            }
            438 if t.stale_retries < MAX_STALE && self.learn_nonce(m) => {
                self.stats.stale_nonces += 1;
                self.restart(t.req, now, t.stale_retries + 1);
            }
            _ if self.state == State::Closing => self.finish(State::Closed, ClientEvent::Closed),
            _ => self.fail_request(
                t.req,
                ClientError::Refused {
                    method: t.req.name(),
                    code,
                    reason,
                },
            ),
        }
        Handled::Consumed
    }

    fn restart(&mut self, req: Request, now: Instant, stale: u8) {
        match self.build(req, now, stale) {
            Ok(t) => self.txns.push(t),
            Err(e) => self.fail_request(req, e),
        }
    }

    fn verify(&self, m: &Message<'_>) -> bool {
        let Some(a) = &self.auth else { return false };
        if m.integrity_sha256_offset().is_some() {
            m.verify_integrity_sha256(&a.key256).is_ok()
        } else {
            m.verify_integrity(&a.key).is_ok()
        }
    }

    /// Takes REALM, NONCE and PASSWORD-ALGORITHMS from a 401. With `first` false (we had
    /// credentials already) it only succeeds when the realm or nonce changed, which allows
    /// one more attempt; otherwise the credentials are wrong.
    fn learn_challenge(&mut self, m: &Message<'_>, first: bool) -> bool {
        let (Some(realm), Some(nonce)) = (m.realm(), m.nonce()) else {
            return false;
        };
        if !first {
            let Some(a) = &self.auth else { return false };
            if a.realm == realm && a.nonce == nonce {
                return false;
            }
            if a.realm == realm {
                self.auth.as_mut().expect("checked").nonce = nonce.to_owned();
                return true;
            }
        }
        let algorithms = m.get(attr::PASSWORD_ALGORITHMS).map(|a| a.value);
        let alg = match algorithms {
            Some(v)
                if stun::attr::password_algorithms(v).any(|a| {
                    a.is_ok_and(|a| a.algorithm == PasswordAlgorithm::SHA256.algorithm)
                }) =>
            {
                PasswordAlg::Sha256
            }
            _ => PasswordAlg::Md5,
        };
        let u = &self.cfg.username;
        let p = &self.cfg.password;
        let (key, key256) = match alg {
            PasswordAlg::Md5 => {
                let k = stun::long_term_key_md5(u, realm, p);
                (IntegrityKey::new(&k), IntegrityKeySha256::new(&k))
            }
            PasswordAlg::Sha256 => {
                let k = stun::long_term_key_sha256(u, realm, p);
                (IntegrityKey::new(&k), IntegrityKeySha256::new(&k))
            }
        };
        self.auth = Some(Auth {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            alg,
            algorithms: algorithms.map(<[u8]>::to_vec),
            key,
            key256,
        });
        true
    }

    /// Takes the new NONCE of a 438 (RFC 8489 §9.2.5).
    fn learn_nonce(&mut self, m: &Message<'_>) -> bool {
        match (m.nonce(), self.auth.as_mut()) {
            (Some(n), Some(a)) => {
                a.nonce = n.to_owned();
                if let Some(r) = m.realm() {
                    a.realm = r.to_owned();
                }
                true
            }
            _ => false,
        }
    }

    fn success(&mut self, now: Instant, req: Request, m: &Message<'_>) {
        match req {
            Request::Allocate => {
                let relayed = m
                    .xor_addresses(attr::XOR_RELAYED_ADDRESS)
                    .filter_map(Result::ok)
                    .find(|a| a.is_ipv4() == self.cfg.local.is_ipv4())
                    .or_else(|| {
                        m.xor_address(attr::XOR_RELAYED_ADDRESS)
                            .and_then(Result::ok)
                    });
                let mapped = m.xor_mapped_address().and_then(Result::ok);
                let (Some(relayed), Some(mapped), Some(lifetime)) = (relayed, mapped, m.lifetime())
                else {
                    self.fail_request(req, ClientError::BadResponse("Allocate"));
                    return;
                };
                self.alloc = Some(Allocation {
                    relayed,
                    mapped,
                    refresh_at: now + refresh_after(lifetime),
                });
                self.state = State::Allocated;
                self.events.push_back(ClientEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
                for i in 0..self.perms.len() {
                    self.request_permission(i, now);
                }
            }
            Request::Refresh(_) if self.state == State::Closing => {
                self.finish(State::Closed, ClientEvent::Closed);
            }
            Request::Reset => self.start(Request::Allocate, now),
            Request::Refresh(_) => {
                let lifetime = m.lifetime().unwrap_or(0);
                if let Some(a) = &mut self.alloc {
                    a.refresh_at = now + refresh_after(lifetime);
                }
                self.events.push_back(ClientEvent::Refreshed { lifetime });
            }
            Request::Permission(ip) => {
                if let Some(p) = self.perms.iter_mut().find(|p| p.ip == ip) {
                    p.in_flight = false;
                    p.refresh_at = now + PERMISSION_REFRESH;
                    if !p.installed {
                        p.installed = true;
                        self.events.push_back(ClientEvent::PermissionCreated(ip));
                    }
                }
            }
            Request::ChannelBind(peer, number) => {
                if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
                    c.in_flight = false;
                    c.refresh_at = now + CHANNEL_REFRESH;
                    if !c.bound {
                        c.bound = true;
                        self.events.push_back(ClientEvent::ChannelBound {
                            peer,
                            channel: number,
                        });
                    }
                }
            }
        }
    }

    fn fail_request(&mut self, req: Request, e: ClientError) {
        match req {
            Request::Allocate | Request::Reset => {
                self.finish(State::Failed, ClientEvent::Failed(e));
            }
            Request::Refresh(_) if self.state == State::Closing => {
                self.finish(State::Closed, ClientEvent::Closed);
            }
            Request::Refresh(_) => self.finish(State::Failed, ClientEvent::Failed(e)),
            Request::Permission(ip) if matches!(e, ClientError::Refused { code: 403, .. }) => {
                // Peer policy: asking again would get the same answer.
                if let Some(p) = self.perms.iter_mut().find(|p| p.ip == ip) {
                    p.refused = true;
                    p.installed = false;
                    p.in_flight = false;
                }
                self.events.push_back(ClientEvent::RequestFailed(e));
            }
            Request::Permission(ip) => {
                // Forget it: the next send_to / create_permission asks again.
                self.perms.retain(|p| p.ip != ip || p.installed);
                if let Some(p) = self.perms.iter_mut().find(|p| p.ip == ip) {
                    p.in_flight = false;
                }
                self.events.push_back(ClientEvent::RequestFailed(e));
            }
            Request::ChannelBind(_, number) => {
                self.channels.retain(|c| c.number != number || c.bound);
                if let Some(c) = self.channels.iter_mut().find(|c| c.number == number) {
                    c.in_flight = false;
                }
                self.events.push_back(ClientEvent::RequestFailed(e));
            }
        }
    }

    fn finish(&mut self, state: State, event: ClientEvent) {
        if matches!(self.state, State::Closed | State::Failed) {
            return;
        }
        self.state = state;
        self.txns.clear();
        self.alloc = None;
        self.events.push_back(event);
    }
}

/// When to refresh: a fifth of the lifetime before it ends, at most a minute early
/// (RFC 8656 §7.1 leaves the margin to the client).
fn refresh_after(lifetime: u32) -> Duration {
    let l = u64::from(lifetime);
    let margin = (l / 5).clamp(1, 60);
    Duration::from_secs(l.saturating_sub(margin).max(1))
}

/// A remote candidate became known: every relay of its address family (or not yet
/// allocated) installs a permission for it (RFC 8656 §9). Shared by the runtimes that
/// drive several relays for one agent (`icering ping`, the shards).
pub fn permit_everywhere<'a>(
    relays: impl IntoIterator<Item = &'a mut Client>,
    remote: SocketAddr,
    now: Instant,
) {
    for c in relays {
        if c.relayed().is_none_or(|a| a.is_ipv4() == remote.is_ipv4()) {
            c.create_permission(remote, now);
        }
    }
}

/// The selected pair is (`relayed`, `remote`): the relay owning `relayed` binds a channel
/// to `remote` (RFC 8656 §12), so data goes as ChannelData instead of Send indications.
pub fn bind_selected<'a>(
    relays: impl IntoIterator<Item = &'a mut Client>,
    relayed: SocketAddr,
    remote: SocketAddr,
    now: Instant,
) {
    if let Some(c) = relays.into_iter().find(|c| c.relayed() == Some(relayed)) {
        let _ = c.bind_channel(remote, now);
    }
}
