//! One shard's thread: its backend, its sockets, its sans-IO server, its loop.
//!
//! Relay sockets: the server asks for them through [`RelayPorts`]. Inside the receive
//! callback the backend is borrowed, so [`Deferred`] answers `Later` to `open` (the
//! Allocate datagram is copied aside and replayed after the batch with [`Binder`], which
//! binds a port from the range and registers it) and queues `close` until the batch ends.
//! In shared-port mode ([`SharedPorts`]) `Binder` hands out slots of wildcard port sockets
//! instead, and datagrams on those go to `Server::handle_relayed` with their destination.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::ice::IceHost;
use super::shared_ports::SharedPorts;
use super::tls::{Ending, Fed, ServerSession};
use super::{Control, ShardCounters, ShardError};
use crate::io::{
    self, Backend, BackendKind, RecvMeta, SendQueue, SocketId, StreamId, StreamSet, Waker,
};
use crate::stun::stream::{frame_len, padding};
use crate::turn::server::{
    DropReason, OpenError, Outcome, PortWish, RelayPorts, Server, ServerConfig, Sock,
};

/// Everything a shard thread is started with.
pub(super) struct Params {
    pub index: usize,
    pub core: Option<usize>,
    pub backend: BackendKind,
    pub io: io::Config,
    pub server: ServerConfig,
    /// Relay port range.
    pub ports: (u16, u16),
    /// Shared-port relay sockets on these relay IPs, from this shard's slice of the port
    /// range (`None`: one socket per allocation, from the whole range).
    pub shared_ports: Option<(Vec<IpAddr>, (u16, u16))>,
    pub sockets: Vec<UdpSocket>,
    /// This shard's copies of the `[ice] listen` mux sockets.
    pub ice_sockets: Vec<UdpSocket>,
    /// TCP listeners (STUN/TURN over TCP), one per `server.listen` address when enabled.
    pub tcp: Vec<TcpListener>,
    /// TLS listeners (STUN/TURN over TLS), one per `server.tls_listen` address.
    pub tls_listeners: Vec<TcpListener>,
    /// The TLS configuration when `tls_listeners` is not empty.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a TCP/TLS stream may hold no allocation (`[server] max_allocate_timeout`).
    pub max_allocate: Duration,
    /// Open TCP/TLS streams at most (`[server] max_tcp_connections`).
    pub max_streams: usize,
    pub parked: Parked,
    pub control: Receiver<Control>,
    pub counters: Arc<ShardCounters>,
}

/// Longest sleep when nothing is scheduled, so counters stay fresh for observers.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// A relay socket to close (`None`) or a shared-port slot to free, after the batch.
type ToClose = Vec<(Sock, Option<SocketAddr>)>;

/// `RelayPorts` inside the receive callback: cannot open, closes after the batch.
struct Deferred<'a> {
    to_close: &'a mut ToClose,
    parked: &'a Parked,
}

impl RelayPorts for Deferred<'_> {
    fn open(&mut self, _: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Later)
    }
    fn close(&mut self, sock: Sock) {
        self.to_close.push((sock, None));
    }
    /// `Binder::end_relay` (after the batch) closes a per-allocation socket.
    fn end_relay(&mut self, sock: Sock, relayed: SocketAddr) {
        self.to_close.push((sock, Some(relayed)));
    }
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Later)
    }
    fn release(&mut self, addr: SocketAddr) {
        parked_take(self.parked, addr);
    }
}

/// Relay sockets bound for a RESERVATION-TOKEN, shared by the shards: bound (so the port
/// stays ours) but registered with no backend until an Allocate claims them.
pub(super) type Parked = Arc<Mutex<HashMap<SocketAddr, UdpSocket>>>;

pub(super) fn parked_take(parked: &Parked, addr: SocketAddr) -> Option<UdpSocket> {
    parked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&addr)
}

/// `RelayPorts` outside the callback: binds from the port range and registers.
struct Binder<'a> {
    backend: &'a mut Backend,
    range: (u16, u16),
    /// Where the next search starts (spreads shards and reuse over the range).
    next: &'a mut u16,
    parked: &'a Parked,
    shared: Option<&'a mut SharedPorts>,
}

impl Binder<'_> {
    fn register(&mut self, sock: UdpSocket) -> Result<(Sock, SocketAddr), OpenError> {
        let addr = sock.local_addr().map_err(|_| OpenError::Exhausted)?;
        let id = self
            .backend
            .add_socket(sock)
            .map_err(|_| OpenError::Exhausted)?;
        Ok((Sock(id.0), addr))
    }
}

impl RelayPorts for Binder<'_> {
    fn open(&mut self, ip: IpAddr, wish: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        if let Some(sp) = self.shared.as_deref_mut() {
            return sp.open(self.backend, self.parked, ip, wish);
        }
        let (lo, hi) = self.range;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span.min(4096) {
            let port = *self.next;
            *self.next = if port >= hi { lo } else { port + 1 };
            if wish != PortWish::Any && port % 2 == 1 {
                continue;
            }
            let sock = match bind_relay(SocketAddr::new(ip, port)) {
                Ok(s) => s,
                // Out of file descriptors: no other port will do better.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return Err(OpenError::Exhausted);
                }
                Err(_) => continue,
            };
            if wish == PortWish::EvenReserveNext {
                let next = SocketAddr::new(ip, port.wrapping_add(1));
                if port == hi || port == u16::MAX {
                    continue;
                }
                let Ok(reserved) = bind_relay(next) else {
                    continue;
                };
                self.parked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(next, reserved);
            }
            return self.register(sock);
        }
        Err(OpenError::Exhausted)
    }

    fn close(&mut self, sock: Sock) {
        self.backend.remove_socket(SocketId(sock.0));
    }

    fn claim(&mut self, addr: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        if let Some(sp) = self.shared.as_deref_mut() {
            return sp.claim(self.backend, self.parked, addr);
        }
        let sock = parked_take(self.parked, addr).ok_or(OpenError::Exhausted)?;
        self.register(sock)
    }

    fn release(&mut self, addr: SocketAddr) {
        parked_take(self.parked, addr);
    }

    fn shared(&self) -> bool {
        self.shared.is_some()
    }

    fn end_relay(&mut self, sock: Sock, relayed: SocketAddr) {
        match self.shared.as_deref_mut() {
            Some(sp) => sp.end(self.backend, sock, relayed),
            None => self.close(sock),
        }
    }
}

/// Builds the shard's backend, reports readiness (with its waker) and runs the loop.
pub(super) fn run(
    mut p: Params,
    ready: Sender<Result<Waker, ShardError>>,
) -> Result<(), ShardError> {
    if let Some(core) = p.core
        && let Err(e) = io::pin_current_thread(core)
    {
        tracing::warn!(
            shard = p.index,
            core,
            "cannot pin shard thread, it runs unpinned: {e}"
        );
    }
    let sockets = std::mem::take(&mut p.sockets);
    let ice_sockets = std::mem::take(&mut p.ice_sockets);
    let (mut backend, mux) = match setup(&p, sockets, ice_sockets) {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(ShardError::Thread(p.index, msg));
        }
    };
    let region = backend.recv_region();
    p.counters
        .recv_region_start
        .store(region.start as u64, std::sync::atomic::Ordering::Relaxed);
    p.counters
        .recv_region_end
        .store(region.end as u64, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(Ok(backend.waker()));
    tracing::debug!(shard = p.index, core = ?p.core, "shard running");

    let mut server = Server::new(p.server.clone());
    let mut ice = IceHost::new(p.index, mux, p.counters.clone());
    let listeners = (
        std::mem::take(&mut p.tcp),
        std::mem::take(&mut p.tls_listeners),
    );
    let limits = (p.max_streams, p.max_allocate);
    let tls = p.tls.take();
    let mut tcp = match Tcp::new(listeners, tls, limits, p.io.buf_size, &mut backend) {
        Ok(t) => t,
        Err(e) => return Err(ShardError::Thread(p.index, format!("tcp listeners: {e}"))),
    };
    let (lo, hi) = p.ports;
    // Each shard starts its port search at its own offset of the range.
    let mut next_port =
        lo + ((u32::from(hi - lo) + 1) * p.index as u32 / 16).min(u32::from(hi - lo)) as u16;
    let mut shared = p
        .shared_ports
        .as_ref()
        .map(|(ips, range)| SharedPorts::new(ips, *range));
    let mut to_close: ToClose = Vec::new();
    let mut later: Vec<(Sock, SocketAddr, Vec<u8>)> = Vec::new();
    let mut scratch = vec![0u8; p.io.buf_size];
    let mut turns = 0u64;
    loop {
        let now = Instant::now();
        let shutdown = loop {
            match p.control.try_recv() {
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => break true,
                Ok(Control::Ice(cmd)) => ice.command(now, &mut backend, cmd),
                Ok(Control::Tls(config)) => tcp.tls = Some(config),
                Err(TryRecvError::Empty) => break false,
            }
        };
        // Datagrams held for what the control messages just brought: a check for an agent
        // whose `Create` was still queued, data for a route just broadcast.
        ice.retry_unrouted(now, backend.send_queue());
        // On shutdown, one last non-blocking turn answers what already arrived.
        let timeout = if shutdown {
            Duration::ZERO
        } else {
            let at = match (server.poll_timeout(), ice.next_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match at {
                Some(at) => at.saturating_duration_since(now).min(IDLE_TICK),
                None => IDLE_TICK,
            }
        };
        // ICE reads the clock once per poll, at its first datagram (timers and RTTs
        // need better than the turn's start, which may precede a long sleep).
        let mut ice_now: Option<Instant> = None;
        // `now` is read once per turn: at most IDLE_TICK stale, far below the 1 s
        // resolution of lifetimes and nonces.
        backend.poll(Some(timeout), &mut |sendq, m: RecvMeta, data, lend| {
            let RecvMeta { sock, from, .. } = m;
            if ice.owns(sock) {
                let now = *ice_now.get_or_insert_with(Instant::now);
                ice.on_datagram(now, sendq, sock, from, data, lend);
                return;
            }
            if let Some(port) = shared.as_ref().and_then(|sp| sp.port_of(sock)) {
                relayed(&mut server, now, sendq, m, port, data, tcp.out());
                return;
            }
            let mut ports = Deferred {
                to_close: &mut to_close,
                parked: &p.parked,
            };
            answer(
                &mut server,
                now,
                sendq,
                sock,
                from,
                data,
                &mut ports,
                &mut later,
                tcp.out(),
            )
        })?;
        if backend.take_watch_ready() {
            // Either set may be the ready one (both are watched): each poll is one
            // `epoll_wait` when idle.
            ice.poll_streams(Instant::now(), backend.send_queue());
            let mut ports = Deferred {
                to_close: &mut to_close,
                parked: &p.parked,
            };
            tcp.poll(
                &mut server,
                now,
                backend.send_queue(),
                &mut ports,
                &mut later,
            );
        }
        // Every agent due now; their sends join this turn's flush (one submission).
        ice.run_timers(Instant::now(), backend.send_queue());
        let io_stats = backend.stats();
        ice.end_turn(&io_stats);
        // Publish before the flush: whoever sees an answer then also sees it counted
        // (io counters lag one turn).
        turns += 1;
        p.counters.publish(server.stats(), &io_stats, turns);
        publish_relay_sockets(&p.counters, shared.as_ref());
        tcp.publish(&p.counters);
        tcp.flush();
        backend.flush()?;
        // Work the receive callback could not do: closes, Allocate replays, expiries,
        // allocations of closed TCP connections.
        let now = Instant::now();
        let due = server.poll_timeout().is_some_and(|at| at <= now) || tcp.check_due(now);
        if due || !later.is_empty() || !to_close.is_empty() || !tcp.closed.is_empty() {
            let mut ports = Binder {
                backend: &mut backend,
                range: p.ports,
                next: &mut next_port,
                parked: &p.parked,
                shared: shared.as_mut(),
            };
            for (s, relayed) in to_close.drain(..) {
                match relayed {
                    Some(r) => ports.end_relay(s, r),
                    None => ports.close(s),
                }
            }
            for (sock, from, data) in later.drain(..) {
                match server.handle(now, sock, from, &data, &mut scratch, &mut ports) {
                    Outcome::Reply(n) => {
                        emit(ports.backend, tcp.out(), sock, None, from, &scratch[..n]);
                    }
                    Outcome::Send { sock, src, to, len } => {
                        emit(ports.backend, tcp.out(), sock, src, to, &scratch[..len]);
                    }
                    Outcome::Later | Outcome::Drop(_) => {}
                }
            }
            server.handle_timeout(now, &mut ports);
            tcp.check_allocations(now, &server);
            tcp.flush();
            // Every stream closed so far (this flush takes what it and the checks closed,
            // freeing their ids) ends its allocation now, before a new stream can take its
            // id (next turn's poll); after the deferred requests, so an Allocate deferred
            // from a stream that closed in the same turn is created, then ended with it.
            for (id, peer) in tcp.closed.drain(..) {
                server.end_client(stream_sock(id), peer, &mut ports);
            }
            backend.flush()?;
            p.counters.publish(server.stats(), &backend.stats(), turns);
            publish_relay_sockets(&p.counters, shared.as_ref());
            tcp.publish(&p.counters);
        }
        if shutdown {
            break;
        }
    }
    tracing::debug!(shard = p.index, io = ?backend.stats(), "shard stopped");
    Ok(())
}

/// The hot path: the answer or relayed datagram is written straight into a send slot, no
/// copy beyond the payload, no allocation. A datagram relayed to a TCP client is written to
/// its stream from the slot (which then stays free).
#[inline]
#[allow(clippy::too_many_arguments)]
fn answer(
    server: &mut Server,
    now: Instant,
    sendq: &mut SendQueue,
    sock: SocketId,
    from: SocketAddr,
    data: &[u8],
    ports: &mut Deferred<'_>,
    later: &mut Vec<(Sock, SocketAddr, Vec<u8>)>,
    streams: Option<TcpOut<'_>>,
) {
    match sendq.slot() {
        Some(slot) => match server.handle(now, Sock(sock.0), from, data, slot, ports) {
            Outcome::Reply(n) => sendq.commit(sock, from, n),
            Outcome::Send { sock, src, to, len } => match (as_stream(sock), streams) {
                (None, _) => sendq.commit_from(SocketId(sock.0), src, to, len),
                (Some(id), Some(mut st)) => st.send(id, &slot[..len]),
                (Some(_), None) => {}
            },
            Outcome::Later => later.push((Sock(sock.0), from, data.to_vec())),
            Outcome::Drop(_) => {}
        },
        None => server.note_drop(DropReason::NoRoom),
    }
}

/// A peer's datagram on a shared-port relay socket: relayed to the allocation whose
/// relayed address is (destination IP, `port`), or dropped and counted (no destination
/// reported, or not an allocation's relayed address).
#[inline]
fn relayed(
    server: &mut Server,
    now: Instant,
    sendq: &mut SendQueue,
    m: RecvMeta,
    port: u16,
    data: &[u8],
    streams: Option<TcpOut<'_>>,
) {
    let Some(dst) = m.dst else {
        server.note_drop(DropReason::NotRelayed);
        return;
    };
    let Some(slot) = sendq.slot() else {
        server.note_drop(DropReason::NoRoom);
        return;
    };
    let to_addr = SocketAddr::new(dst, port);
    if let Outcome::Send { sock, src, to, len } =
        server.handle_relayed(now, Sock(m.sock.0), to_addr, m.from, data, slot)
    {
        match (as_stream(sock), streams) {
            (None, _) => sendq.commit_from(SocketId(sock.0), src, to, len),
            (Some(id), Some(mut st)) => st.send(id, &slot[..len]),
            (Some(_), None) => {}
        }
    }
}

fn publish_relay_sockets(counters: &ShardCounters, shared: Option<&SharedPorts>) {
    if let Some(sp) = shared {
        counters
            .relay_port_sockets
            .store(sp.sockets() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `Sock` tokens of TCP streams carry this bit; UDP sockets are backend `SocketId`s.
const STREAM_BIT: u32 = 1 << 31;

fn stream_sock(id: StreamId) -> Sock {
    Sock(STREAM_BIT | id.0)
}

fn as_stream(sock: Sock) -> Option<StreamId> {
    (sock.0 & STREAM_BIT != 0).then_some(StreamId(sock.0 & !STREAM_BIT))
}

/// The streams side of a send: the stream set and the TLS sessions of its TLS streams.
/// Frames are queued, not written: [`Tcp::flush`] writes each stream's once per turn.
struct TcpOut<'a> {
    set: &'a mut StreamSet,
    sessions: &'a mut HashMap<u32, Box<ServerSession>>,
    /// TLS streams with frames (or handshake records) to seal at the end of the turn.
    sealing: &'a mut Vec<StreamId>,
    /// TLS records being written (reused).
    records: &'a mut Vec<u8>,
}

impl TcpOut<'_> {
    /// Bytes read from TLS stream `id` (its session made on its first bytes): the
    /// plaintext into `plain`, the handshake's answers (or a failure's alert) sent at the
    /// end of the turn (or by a close now).
    fn decrypt(
        &mut self,
        config: &Arc<rustls::ServerConfig>,
        id: StreamId,
        bytes: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Fed, String> {
        let session = match self.sessions.entry(id.0) {
            hashbrown::hash_map::Entry::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(Box::new(ServerSession::new(config)?))
            }
        };
        plain.clear();
        let fed = session.input(bytes, plain);
        if session.list() {
            self.sealing.push(id);
        }
        fed
    }

    /// Closes a stream after what was queued for it; a TLS one's session ends as `how`
    /// says ([`Ending`]).
    fn close(&mut self, id: StreamId, how: Ending) {
        if let Some(tls) = self.sessions.get_mut(&id.0) {
            self.records.clear();
            tls.end(how, self.records);
            self.set.queue(id, &[self.records]);
        }
        self.set.close(id);
    }

    /// Queues one frame for a stream, zero-padded to a multiple of 4 (RFC 8656 §12.5),
    /// for its TLS session if it has one.
    fn send(&mut self, id: StreamId, frame: &[u8]) {
        const ZEROS: [u8; 3] = [0; 3];
        let pad = &ZEROS[..padding(frame.len())];
        match self.sessions.get_mut(&id.0) {
            None => {
                self.set.queue(id, &[frame, pad]);
            }
            Some(tls) => {
                tls.push(&[frame, pad]);
                if tls.list() {
                    self.sealing.push(id);
                }
            }
        }
    }
}

/// Sends `bytes` on a UDP socket or a TCP stream.
fn emit(
    backend: &mut Backend,
    streams: Option<TcpOut<'_>>,
    sock: Sock,
    src: Option<IpAddr>,
    to: SocketAddr,
    bytes: &[u8],
) {
    match (as_stream(sock), streams) {
        (None, _) => {
            let _ = backend.send_from(SocketId(sock.0), src, to, bytes);
        }
        (Some(id), Some(mut st)) => st.send(id, bytes),
        (Some(_), None) => {}
    }
}

/// STUN/TURN over TCP and TLS (RFC 8656 §3.1, RFC 8489 §6.2.2): the listeners and streams
/// of one shard, the bytes of frames split across reads, and the TLS sessions of streams
/// accepted on a TLS listener.
struct Tcp {
    streams: Option<StreamSet>,
    /// Bytes of an incomplete frame per stream (only while one is pending).
    partial: HashMap<u32, Vec<u8>>,
    /// Streams closed since the last turn: their allocations end.
    closed: Vec<(StreamId, SocketAddr)>,
    /// Listeners from this index on are TLS listeners.
    tls_from: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    sessions: HashMap<u32, Box<ServerSession>>,
    /// TLS streams to seal for at the end of the turn.
    sealing: Vec<StreamId>,
    /// Decrypted bytes of one read (reused).
    plain: Vec<u8>,
    /// TLS records being written (reused).
    records: Vec<u8>,
    /// `[server] max_allocate_timeout`.
    max_allocate: Duration,
    /// Allocation checks, in deadline order (one timeout for all: a FIFO): when, the
    /// stream, and which accept of that id it belongs to.
    checks: VecDeque<(Instant, StreamId, u64)>,
    /// The accept number of each stream id's current stream (ids are reused).
    accepts: Vec<u64>,
    /// Accepts so far (numbers them); streams accepted in the last poll (reused).
    accepted_total: u64,
    accepted: Vec<StreamId>,
    /// Streams closed because a check found them without an allocation.
    timed_out: u64,
}

/// Unsent bytes kept per connection.
const MAX_BACKLOG: usize = 256 * 1024;

impl Tcp {
    fn new(
        (listeners, tls_listeners): (Vec<TcpListener>, Vec<TcpListener>),
        tls: Option<Arc<rustls::ServerConfig>>,
        (max_streams, max_allocate): (usize, Duration),
        buf_size: usize,
        backend: &mut Backend,
    ) -> Result<Self, crate::io::IoError> {
        let tls_from = listeners.len();
        let streams = if listeners.is_empty() && tls_listeners.is_empty() {
            None
        } else {
            let mut set = StreamSet::new(max_streams, MAX_BACKLOG, 16 * buf_size)?;
            for l in listeners.into_iter().chain(tls_listeners) {
                set.add_listener(l)?;
            }
            backend.watch_fd(set.fd())?;
            Some(set)
        };
        Ok(Tcp {
            streams,
            partial: HashMap::new(),
            closed: Vec::new(),
            tls_from,
            tls,
            sessions: HashMap::new(),
            sealing: Vec::new(),
            plain: Vec::new(),
            records: Vec::new(),
            max_allocate,
            checks: VecDeque::new(),
            accepts: Vec::new(),
            accepted_total: 0,
            accepted: Vec::new(),
            timed_out: 0,
        })
    }

    /// Whether an allocation check is due at `now`.
    fn check_due(&self, now: Instant) -> bool {
        self.checks.front().is_some_and(|&(at, ..)| at <= now)
    }

    /// Closes the streams whose check is due and that hold no allocation (coturn's
    /// `max-allocate-timeout`): idle connections, TLS handshakes that never finish,
    /// STUN-only clients, and connections whose allocation ended. A stream with an
    /// allocation is checked again `max_allocate` later. Its close is taken by the
    /// flush that follows, like any other.
    fn check_allocations(&mut self, now: Instant, server: &Server) {
        let Some(set) = self.streams.as_mut() else {
            return;
        };
        let mut out = TcpOut {
            set,
            sessions: &mut self.sessions,
            sealing: &mut self.sealing,
            records: &mut self.records,
        };
        while let Some(&(at, id, accept)) = self.checks.front() {
            if at > now {
                break;
            }
            self.checks.pop_front();
            if self.accepts.get(id.0 as usize) != Some(&accept) {
                continue; // a later stream holds this id, with its own check
            }
            let Some(peer) = out.set.peer_addr(id) else {
                continue; // closed already
            };
            if server.allocation_counters(stream_sock(id), peer).is_some() {
                self.checks.push_back((now + self.max_allocate, id, accept));
            } else {
                tracing::debug!(
                    peer = %peer,
                    "closing a TCP/TLS connection that held no allocation for {:?}",
                    self.max_allocate
                );
                out.close(id, Ending::CloseNotify);
                self.timed_out += 1;
            }
        }
    }

    /// Publishes the stream counters.
    fn publish(&self, counters: &ShardCounters) {
        if let Some(set) = &self.streams {
            counters.publish_tcp(&set.stats(), set.open(), self.timed_out);
        }
    }

    /// The streams side of a send, if there are streams.
    fn out(&mut self) -> Option<TcpOut<'_>> {
        Some(TcpOut {
            set: self.streams.as_mut()?,
            sessions: &mut self.sessions,
            sealing: &mut self.sealing,
            records: &mut self.records,
        })
    }

    /// Writes the turn's frames: each TLS stream's sealed in one go, then one write per
    /// stream.
    fn flush(&mut self) {
        let Some(set) = self.streams.as_mut() else {
            return;
        };
        for id in self.sealing.drain(..) {
            if let Some(tls) = self.sessions.get_mut(&id.0) {
                self.records.clear();
                tls.seal_pending(&mut self.records);
                set.queue(id, &[&self.records]);
            }
        }
        set.flush();
        // A write that failed or overflowed its backlog (here or in the turn), or an
        // allocation check, closed a stream: its allocation ends in the loop's next
        // housekeeping, not when some later read happens to poll the set.
        self.take_closed();
    }

    /// Reads every ready stream, cuts the bytes (decrypted first on a TLS stream) into
    /// frames and hands each to the server.
    fn poll(
        &mut self,
        server: &mut Server,
        now: Instant,
        sendq: &mut SendQueue,
        ports: &mut Deferred<'_>,
        later: &mut Vec<(Sock, SocketAddr, Vec<u8>)>,
    ) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        let (partial, sessions) = (&mut self.partial, &mut self.sessions);
        let (plain, records, sealing) = (&mut self.plain, &mut self.records, &mut self.sealing);
        let (tls, tls_from) = (&self.tls, self.tls_from);
        streams.poll(&mut |set, id, peer, bytes| {
            let on_tls = tls
                .as_ref()
                .filter(|_| set.listener_of(id).is_some_and(|l| l >= tls_from));
            let mut out = TcpOut {
                set,
                sessions,
                sealing,
                records,
            };
            let (bytes, close_after) = match on_tls {
                None => (bytes, false),
                Some(config) => match out.decrypt(config, id, bytes, plain) {
                    // close_notify: the frames before it are still handled, then the
                    // stream closes (its allocation ends with it).
                    Ok(fed) => (&plain[..], fed == Fed::Closed),
                    Err(err) => {
                        tracing::debug!(peer = %peer, "closing TLS stream: {err}");
                        server.note_drop(DropReason::Malformed);
                        out.close(id, Ending::Failed);
                        return;
                    }
                },
            };
            match partial.remove(&id.0) {
                Some(mut pending) => {
                    pending.extend_from_slice(bytes);
                    frames(
                        server, now, sendq, ports, later, &mut out, partial, id, peer, &pending,
                    );
                }
                None => frames(
                    server, now, sendq, ports, later, &mut out, partial, id, peer, bytes,
                ),
            }
            if close_after {
                out.close(id, Ending::CloseNotify); // answering the client's
            }
        });
        // Accepted streams get their allocation check; then closes (an id is reused
        // only after its close was taken, and carries a new accept number then).
        streams.take_accepted(&mut self.accepted);
        for id in self.accepted.drain(..) {
            let i = id.0 as usize;
            if self.accepts.len() <= i {
                self.accepts.resize(i + 1, 0);
            }
            self.accepted_total += 1;
            self.accepts[i] = self.accepted_total;
            self.checks
                .push_back((now + self.max_allocate, id, self.accepted_total));
        }
        // Streams that close early leave their checks behind: with many connections
        // opened and closed within one timeout, drop those of streams no longer open.
        if self.checks.len() > 2 * streams.max_streams() {
            let accepts = &self.accepts;
            self.checks.retain(|&(_, id, accept)| {
                accepts[id.0 as usize] == accept && streams.peer_addr(id).is_some()
            });
        }
        self.take_closed();
    }

    /// Streams closed since the last call (by their peers, by errors, by this shard) go
    /// to `closed`, whose allocations the loop ends; their frame tails and TLS sessions
    /// are dropped now, before a new stream can take the id.
    fn take_closed(&mut self) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        let from = self.closed.len();
        streams.take_closed(&mut self.closed);
        for (id, _) in &self.closed[from..] {
            self.partial.remove(&id.0);
            self.sessions.remove(&id.0);
        }
    }
}

/// Handles the whole frames at the start of `buf`, keeps an incomplete tail, closes the
/// stream on bytes that cannot be STUN or ChannelData.
#[allow(clippy::too_many_arguments)]
fn frames(
    server: &mut Server,
    now: Instant,
    sendq: &mut SendQueue,
    ports: &mut Deferred<'_>,
    later: &mut Vec<(Sock, SocketAddr, Vec<u8>)>,
    out: &mut TcpOut<'_>,
    partial: &mut HashMap<u32, Vec<u8>>,
    id: StreamId,
    peer: SocketAddr,
    mut buf: &[u8],
) {
    let sock = stream_sock(id);
    while !buf.is_empty() {
        let n = match frame_len(buf) {
            Ok(Some(n)) => n,
            Ok(None) => {
                partial.insert(id.0, buf.to_vec());
                return;
            }
            Err(e) => {
                tracing::debug!(
                    peer = %peer,
                    "closing TCP stream: {e} (next bytes {:02x?})",
                    &buf[..buf.len().min(24)]
                );
                server.note_drop(DropReason::Malformed);
                out.close(id, Ending::Abort);
                return;
            }
        };
        let (frame, rest) = buf.split_at(n);
        buf = rest;
        let Some(slot) = sendq.slot() else {
            server.note_drop(DropReason::NoRoom);
            continue;
        };
        match server.handle(now, sock, peer, frame, slot, ports) {
            Outcome::Reply(len) => out.send(id, &slot[..len]),
            Outcome::Send { sock, src, to, len } => match as_stream(sock) {
                None => sendq.commit_from(SocketId(sock.0), src, to, len),
                Some(other) => out.send(other, &slot[..len]),
            },
            Outcome::Later => later.push((sock, peer, frame.to_vec())),
            Outcome::Drop(_) => {}
        }
    }
}

/// A relay socket: no SO_REUSEADDR/SO_REUSEPORT, so a port is never shared by two
/// allocations (on Linux two UDP sockets with SO_REUSEADDR may bind the same port), nor a
/// shared port by two shards.
pub(super) fn bind_relay(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_cloexec(true)?;
    sock.set_nonblocking(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

type Mux = Vec<(SocketId, SocketAddr)>;

fn setup(
    p: &Params,
    sockets: Vec<UdpSocket>,
    ice_sockets: Vec<UdpSocket>,
) -> Result<(Backend, Mux), ShardError> {
    let mut backend = Backend::new(p.backend, &p.io)?;
    for s in sockets {
        backend.add_socket(s)?;
    }
    let mut mux = Vec::with_capacity(ice_sockets.len());
    for s in ice_sockets {
        let addr = s.local_addr().map_err(io::IoError::Io)?;
        mux.push((backend.add_socket(s)?, addr));
    }
    Ok((backend, mux))
}
