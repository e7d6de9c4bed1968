//! One shard's thread: its backend, its sockets, its sans-IO server, its loop.
//!
//! Relay sockets: the server asks for them through [`RelayPorts`]. Inside the receive
//! callback the backend is borrowed, so [`Deferred`] answers `Later` to `open` (the
//! Allocate datagram is copied aside and replayed after the batch with [`Binder`], which
//! binds a port from the range and registers it) and queues `close` until the batch ends.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use hashbrown::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::ice::{IceCounters, IceHost};
use super::{Control, ShardCounters, ShardError};
use crate::io::{self, Backend, BackendKind, SendQueue, SocketId, Waker};
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
    pub sockets: Vec<UdpSocket>,
    /// This shard's copies of the `[ice] listen` mux sockets.
    pub ice_sockets: Vec<UdpSocket>,
    pub parked: Parked,
    pub control: Receiver<Control>,
    pub counters: Arc<ShardCounters>,
    pub ice: Arc<IceCounters>,
}

/// Longest sleep when nothing is scheduled, so counters stay fresh for observers.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// `RelayPorts` inside the receive callback: cannot open, closes after the batch.
struct Deferred<'a> {
    to_close: &'a mut Vec<Sock>,
    parked: &'a Parked,
}

impl RelayPorts for Deferred<'_> {
    fn open(&mut self, _: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Later)
    }
    fn close(&mut self, sock: Sock) {
        self.to_close.push(sock);
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

fn parked_take(parked: &Parked, addr: SocketAddr) -> Option<UdpSocket> {
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
        let sock = parked_take(self.parked, addr).ok_or(OpenError::Exhausted)?;
        self.register(sock)
    }

    fn release(&mut self, addr: SocketAddr) {
        parked_take(self.parked, addr);
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
        tracing::warn!(shard = p.index, core, "cannot pin shard thread: {e}");
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
    let _ = ready.send(Ok(backend.waker()));
    tracing::debug!(shard = p.index, core = ?p.core, "shard running");

    let mut server = Server::new(p.server.clone());
    let mut ice = IceHost::new(p.index, mux, p.ice.clone());
    let (lo, hi) = p.ports;
    // Each shard starts its port search at its own offset of the range.
    let mut next_port =
        lo + ((u32::from(hi - lo) + 1) * p.index as u32 / 16).min(u32::from(hi - lo)) as u16;
    let mut to_close: Vec<Sock> = Vec::new();
    let mut later: Vec<(Sock, SocketAddr, Vec<u8>)> = Vec::new();
    let mut scratch = vec![0u8; p.io.buf_size];
    let mut turns = 0u64;
    loop {
        let now = Instant::now();
        let shutdown = loop {
            match p.control.try_recv() {
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => break true,
                Ok(Control::Ice(cmd)) => ice.command(now, &mut backend, cmd),
                Err(TryRecvError::Empty) => break false,
            }
        };
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
        backend.poll(Some(timeout), &mut |sendq, sock, from, data| {
            if ice.owns(sock) {
                let now = *ice_now.get_or_insert_with(Instant::now);
                ice.on_datagram(now, sendq, sock, from, data);
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
            )
        })?;
        // Every agent due now runs; its checks join this turn's flush (one submission).
        ice.run_timers(Instant::now(), backend.send_queue());
        ice.end_turn();
        // Publish before the flush: whoever sees an answer then also sees it counted
        // (io counters lag one turn).
        turns += 1;
        p.counters.publish(server.stats(), &backend.stats(), turns);
        backend.flush()?;
        // Work the receive callback could not do: closes, Allocate replays, the sweep.
        let now = Instant::now();
        let due = server.poll_timeout().is_some_and(|at| at <= now);
        if due || !later.is_empty() || !to_close.is_empty() {
            let mut ports = Binder {
                backend: &mut backend,
                range: p.ports,
                next: &mut next_port,
                parked: &p.parked,
            };
            for s in to_close.drain(..) {
                ports.close(s);
            }
            for (sock, from, data) in later.drain(..) {
                match server.handle(now, sock, from, &data, &mut scratch, &mut ports) {
                    Outcome::Reply(n) => {
                        let _ = ports.backend.send_to(SocketId(sock.0), from, &scratch[..n]);
                    }
                    Outcome::Send { sock, to, len } => {
                        let _ = ports.backend.send_to(SocketId(sock.0), to, &scratch[..len]);
                    }
                    Outcome::Later | Outcome::Drop(_) => {}
                }
            }
            server.handle_timeout(now, &mut ports);
            backend.flush()?;
            p.counters.publish(server.stats(), &backend.stats(), turns);
        }
        if shutdown {
            break;
        }
    }
    tracing::debug!(shard = p.index, "shard stopped");
    Ok(())
}

/// The hot path: the answer or relayed datagram is written straight into a send slot, no
/// copy beyond the payload, no allocation.
#[inline]
#[allow(clippy::too_many_arguments)]
fn answer(
    server: &mut Server,
    now: Instant,
    sendq: &mut SendQueue,
    sock: SocketId,
    from: SocketAddr,
    data: &mut [u8],
    ports: &mut Deferred<'_>,
    later: &mut Vec<(Sock, SocketAddr, Vec<u8>)>,
) {
    match sendq.slot() {
        Some(slot) => match server.handle(now, Sock(sock.0), from, data, slot, ports) {
            Outcome::Reply(n) => sendq.commit(sock, from, n),
            Outcome::Send { sock, to, len } => sendq.commit(SocketId(sock.0), to, len),
            Outcome::Later => later.push((Sock(sock.0), from, data.to_vec())),
            Outcome::Drop(_) => {}
        },
        None => server.note_drop(DropReason::NoRoom),
    }
}

/// A relay socket: no SO_REUSEADDR/SO_REUSEPORT, so a port is never shared by two
/// allocations (on Linux two UDP sockets with SO_REUSEADDR may bind the same port).
fn bind_relay(addr: SocketAddr) -> std::io::Result<UdpSocket> {
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
