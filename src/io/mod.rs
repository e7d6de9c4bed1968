//! UDP I/O backends. Knows sockets, buffers and batches; knows no protocol.
//!
//! Two backends sit behind one [`Backend`] enum (static dispatch via `match`, no trait
//! objects):
//!
//! * [`UringBackend`] — io_uring with `SINGLE_ISSUER | DEFER_TASKRUN`. Every registered
//!   socket has one multishot `RecvMsg` armed over a provided-buffer ring; sends are
//!   `SendMsg` SQEs pointing into preallocated send slots; one `io_uring_enter` per loop both
//!   submits the send batch and waits for completions.
//! * [`PortableBackend`] — epoll + `recvmmsg`/`sendmmsg` with preallocated `mmsghdr` arrays.
//!
//! Pick one with [`select_backend`], which probes io_uring once per process (including a
//! functional multishot round-trip over loopback) and explains its decision in a string
//! meant for the startup log line.
//!
//! ## Buffers and the send queue
//!
//! Received datagrams are handed to the caller **in place**: the payload is a `&[u8]`
//! borrowed from the backend's receive buffer (the io_uring provided-buffer ring, or the
//! `recvmmsg` batch buffer) and is given back to the kernel right after the callback
//! returns. Nothing is allocated per packet. A caller that wants to keep the datagram
//! (hand it to another thread) lends it instead of copying it; see "Lending" below.
//!
//! Sends go through a [`SendQueue`]: a fixed pool of `buf_size`-byte slots, each with its
//! own destination address storage. To send, take a slot with [`SendQueue::slot`], write the
//! datagram into it, then [`SendQueue::commit`] it with a socket, destination and length.
//! Committed slots are submitted in one batch by [`Backend::flush`] (or at the start of the
//! next [`Backend::poll`]) and return to the pool once the kernel is done with them.
//!
//! The send queue is a separate object owned by the backend so that the receive callback
//! can answer while it still borrows the request:
//!
//! ```no_run
//! # use icering::io::*;
//! # fn demo(backend: &mut Backend) -> Result<(), IoError> {
//! backend.poll(None, &mut |sendq: &mut SendQueue, m: RecvMeta, request: &[u8], _lend| {
//!     // `request` lives in the receive buffer; the reply is written straight into a send
//!     // slot — no copy of the request, no allocation.
//!     if let Some(slot) = sendq.slot() {
//!         let n = request.len().min(slot.len());
//!         slot[..n].copy_from_slice(&request[..n]); // or: build a response in `slot`
//!         sendq.commit(m.sock, m.from, n);
//!     }
//! })?;
//! backend.flush()?; // one batch for all replies
//! # Ok(()) }
//! ```
//!
//! If the pool is exhausted inside the callback, [`SendQueue::slot`] returns `None` (and
//! [`SendQueue::send_to`] returns [`IoError::SendQueueFull`]); size
//! [`Config::send_slots`] for the largest burst a shard answers in one poll. While the
//! callback runs, the backends push committed sends to the kernel once `batch` of them have
//! accumulated, so slots keep cycling during long receive batches.
//!
//! ## Lending
//!
//! The callback's last argument, a [`Lend`], turns the payload (or any part of it) into a
//! [`bytes::Bytes`] that points into the receive buffer itself: `lend.lend(part)`. The
//! buffer then stays out of
//! the kernel's hands until every `Bytes` into it has been dropped, on any thread: the
//! last drop pushes the buffer's index into a lock-free return queue that the backend
//! drains at the start of each [`Backend::poll`] (io_uring: back into the provided-buffer
//! ring; portable: back to the spare buffers that replace lent ones in the `recvmmsg`
//! batch). The receive memory is `Arc`-owned, so lent `Bytes` outlive the backend safely.
//!
//! Lending is bounded by [`Backend::lend_cap`]: io_uring lends at most half of its ring,
//! portable owns `batch` spare buffers beside the batch. Past the cap `lend` returns
//! `None` ([`IoStats::lend_refused`]) and the caller copies, so an application that holds
//! on to its data cannot stop the shard from receiving. The first lend of a buffer costs
//! one small allocation (the shared owner header of `Bytes::from_owner`); the datagrams of
//! one GRO burst share it. Callers that do not lend pay nothing but a few stores per
//! receive buffer. [`IoStats::lends`] / [`IoStats::lend_returns`] count buffers going out
//! and coming back.
//!
//! ## UDP GSO
//!
//! With [`Config::gso`] (the default) and a kernel that knows `UDP_SEGMENT` (Linux ≥ 4.18,
//! probed once per process), a flush coalesces *consecutive* queued sends that share socket
//! and destination and have the same length (the last of a run may be shorter) into one
//! `sendmsg` carrying a `UDP_SEGMENT` control message: up to 64 datagrams and 65000 bytes,
//! one iovec per send slot (no copy). The kernel builds one large skb and segments it late
//! (on loopback: on receive), so route lookup, skb setup and the per-call socket path are
//! paid once per run instead of once per datagram. Single datagrams keep the plain path.
//! The portable backend puts such runs into the `mmsghdr`s of its `sendmmsg`; io_uring
//! sends each run as one `SendMsg` SQE whose completion frees every slot of the run.
//! All headers, iovec arrays and control messages are allocated in `new`.
//!
//! If the kernel rejects a GSO send (`EIO`: no checksum offload or IPsec on the route;
//! `EINVAL`/`EMSGSIZE`: e.g. a segment larger than the route MTU), its datagrams are sent
//! again one by one and GSO is turned off for that backend ([`IoStats::gso_fallbacks`],
//! one warning). [`IoStats::gso_sends`] / [`IoStats::gso_segments`] count accepted GSO
//! sends and the datagrams in them; [`Backend::gso`] says whether GSO is in use.
//!
//! ## UDP GRO
//!
//! With [`Config::gro`] (Linux ≥ 5.0 knows `UDP_GRO`, probed once per process) every
//! registered socket gets `UDP_GRO`: the kernel then queues a burst of
//! same-size datagrams from one source as one buffer — a GSO send arriving over loopback
//! stays whole, and NIC GRO merges a flow's consecutive packets within one NAPI poll — with
//! a `UDP_GRO` control message giving the segment size. The backend splits the buffer back
//! into datagrams and calls the receive callback once per datagram, so callers see no
//! difference; what is saved is the per-datagram receive work in the kernel (one socket
//! queue entry, one `recvmsg` and one completion per burst instead of per datagram).
//! Because a merged burst may be up to 64 KiB, receive buffers are [`GRO_BUF_SIZE`] bytes:
//! io_uring keeps at most [`GRO_BUF_COUNT`] of them in its provided-buffer ring (a dry ring
//! only delays receiving: the multishot receive ends with `ENOBUFS` and is re-armed, the
//! datagrams wait in the socket), the portable backend has `batch` of them for
//! `recvmmsg`. Only each buffer's first 4 KiB page is made resident up front (small
//! datagrams fit there; a merged burst faults in more, page by page, never huge pages), so
//! GRO costs less RSS than the `MAP_POPULATE`d 2 KiB buffers without it.
//! Single datagrams too large without GRO (io_uring: `buf_size - 144`, portable:
//! `buf_size`) are still dropped as truncated, as is every datagram of a burst with a
//! segment size that large, and a receive whose control message was cut off (`MSG_CTRUNC`).
//! [`IoStats::gro_receives`] / [`IoStats::gro_segments`] count merged receives and the
//! datagrams in them.
//!
//! ## Destination and source IP (wildcard sockets)
//!
//! A socket registered with [`Backend::add_socket_pktinfo`] (`IP_PKTINFO` /
//! `IPV6_RECVPKTINFO`) reports the local IP each datagram was sent to in
//! [`RecvMeta::dst`] — one socket bound to `0.0.0.0:P` can then serve port P on several
//! local addresses — and [`SendQueue::commit_from`] sends from a chosen local IP (an
//! `IP_PKTINFO` `ipi_spec_dst` / `IPV6_PKTINFO` control message, next to `UDP_SEGMENT` when
//! GSO applies; GSO runs never mix source IPs). Other sockets pay nothing: their receives
//! reserve no control space for it and parse none, their sends carry no control message.
//! Control data is untrusted layout: every length is checked, a truncated message yields
//! no destination, and a receive whose control data was cut off (`MSG_CTRUNC`) is dropped
//! as truncated.
//!
//! ## Errors
//!
//! Per-datagram failures (`EAGAIN` on send, ICMP-induced `ECONNREFUSED`, truncated
//! datagrams, `ENOBUFS` on the buffer ring) are counted in [`IoStats`], never returned.
//! Truncated datagrams (larger than `buf_size`) are dropped and counted.

mod affinity;
mod lend;
mod portable;
mod socket;
mod stream;
mod uring;
mod waker;

use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::Duration;

pub use affinity::{allowed_cores, available_cores, pin_current_thread};
pub use lend::Lend;
pub use portable::PortableBackend;
pub use socket::{bind_tcp_listener, bind_udp};
pub use stream::{OnData, StreamId, StreamSet, StreamStats};
pub use uring::UringBackend;
pub use waker::Waker;

/// The backend the operator asked for (`--io auto|uring|portable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if the probe succeeds, otherwise portable.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Portable,
}

impl FromStr for BackendChoice {
    type Err = IoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "portable" | "epoll" => Ok(Self::Portable),
            _ => Err(IoError::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Portable => "portable",
        })
    }
}

/// The backend actually in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// [`UringBackend`].
    Uring,
    /// [`PortableBackend`].
    Portable,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uring => "uring",
            Self::Portable => "portable",
        })
    }
}

/// Errors of the I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// io_uring was requested but cannot be used; the string says why.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(String),
    /// Binding a socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address we tried to bind.
        addr: SocketAddr,
        /// Underlying OS error.
        #[source]
        source: io::Error,
    },
    /// A [`Config`] value is unusable.
    #[error("invalid io config: {0}")]
    Config(String),
    /// `"{0}"` is not one of `auto`, `uring`, `portable`.
    #[error("unknown io backend {0:?} (expected auto, uring or portable)")]
    UnknownBackend(String),
    /// No free send slot, even after flushing.
    #[error("send queue full")]
    SendQueueFull,
    /// A datagram does not fit a send slot.
    #[error("datagram of {len} bytes exceeds the send slot size of {max} bytes")]
    TooLarge {
        /// Length of the datagram.
        len: usize,
        /// Slot size (`Config::buf_size`).
        max: usize,
    },
    /// Any other OS error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Index of a registered socket inside one backend.
///
/// Ids are reused after [`Backend::remove_socket`]; do not keep using an id after removing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u32);

/// Sizing of a backend. All memory is allocated once in `Backend::new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Datagrams per `recvmmsg`/`sendmmsg` call, and the send count after which queued sends
    /// are pushed to the kernel while a receive batch is still being handled.
    pub batch: usize,
    /// Size of every receive and send buffer; larger datagrams are dropped (counted as
    /// truncated). For io_uring the receive buffer also holds a 16-byte header and the
    /// 128-byte source address, so the largest receivable payload is `buf_size - 144`.
    pub buf_size: usize,
    /// Receive buffers in the io_uring provided-buffer ring (power of two, at most 32768).
    pub buf_count: usize,
    /// Send slots in the [`SendQueue`].
    pub send_slots: usize,
    /// Coalesce runs of equal-size datagrams to one destination into one UDP GSO
    /// (`UDP_SEGMENT`) send, if the kernel supports it. See the module docs.
    pub gso: bool,
    /// Receive with UDP GRO (`UDP_GRO`): the kernel hands a burst of same-size datagrams
    /// from one source as one buffer, split here into the datagrams. Receive buffers then
    /// grow to 68 KiB (fewer of them, first pages resident only). See the module docs.
    pub gro: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch: 64,
            buf_size: 2048,
            buf_count: 4096,
            send_slots: 1024,
            gso: true,
            gro: false,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), IoError> {
        if self.batch == 0 || self.batch > 1024 {
            return Err(IoError::Config(format!(
                "batch {} not in 1..=1024",
                self.batch
            )));
        }
        if self.buf_size < 256 || self.buf_size > 65536 + 256 {
            return Err(IoError::Config(format!(
                "buf_size {} not in 256..=65792",
                self.buf_size
            )));
        }
        if !self.buf_count.is_power_of_two() || self.buf_count > 32768 {
            return Err(IoError::Config(format!(
                "buf_count {} must be a power of two <= 32768",
                self.buf_count
            )));
        }
        if self.send_slots < self.batch || self.send_slots > 65536 {
            return Err(IoError::Config(format!(
                "send_slots {} not in batch..=65536",
                self.send_slots
            )));
        }
        Ok(())
    }
}

/// Counters, monotonically increasing since the backend was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams handed to the receive callback.
    pub received: u64,
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Sends that failed (EAGAIN, ECONNREFUSED, unknown socket, ...); the datagram is dropped.
    pub send_errors: u64,
    /// Receive errors (other than ENOBUFS / cancellation).
    pub recv_errors: u64,
    /// Times a multishot receive had to be re-armed (uring).
    pub rearms: u64,
    /// Times the provided-buffer ring ran dry (uring `ENOBUFS`).
    pub enobufs: u64,
    /// Datagrams dropped because they did not fit a receive buffer.
    pub truncated: u64,
    /// Wake-ups through the [`Waker`] observed by `poll`.
    pub wakeups: u64,
    /// Sends that carried more than one datagram as UDP GSO segments (accepted by the
    /// kernel). Their datagrams are also counted in `sent`.
    pub gso_sends: u64,
    /// Datagrams sent inside those GSO sends.
    pub gso_segments: u64,
    /// GSO sends the kernel rejected with `EIO`/`EINVAL`/`EMSGSIZE`; their datagrams were
    /// retried one by one, and the first such rejection turned GSO off for the backend.
    pub gso_fallbacks: u64,
    /// Receives that carried more than one datagram (UDP GRO). Their datagrams are also
    /// counted in `received`.
    pub gro_receives: u64,
    /// Datagrams handed to the callback out of those receives.
    pub gro_segments: u64,
    /// Receive buffers lent out as `Bytes` ([`Lend::lend`]); `lends - lend_returns` are
    /// out now (as of the last `poll`).
    pub lends: u64,
    /// Lent buffers given back (every `Bytes` into them dropped) and reused.
    pub lend_returns: u64,
    /// Lends refused because [`Backend::lend_cap`] buffers were already out (the caller
    /// copied instead).
    pub lend_refused: u64,
}

/// The probe result, computed once per process.
static URING_PROBE: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();

/// Decide which backend to use and say why, for the startup log line.
///
/// `Auto` probes io_uring once (sysctl, ring setup, opcode probe, and a real multishot
/// `RecvMsg` over a provided-buffer ring on a loopback socket) and falls back to portable.
/// `Uring` fails with [`IoError::UringUnavailable`] if the probe fails. Never panics.
pub fn select_backend(choice: BackendChoice) -> Result<(BackendKind, String), IoError> {
    match choice {
        BackendChoice::Portable => Ok((
            BackendKind::Portable,
            "io backend: portable (requested)".to_string(),
        )),
        BackendChoice::Uring => match URING_PROBE.get_or_init(uring::probe) {
            Ok(why) => Ok((BackendKind::Uring, format!("io backend: uring ({why})"))),
            Err(why) => Err(IoError::UringUnavailable(why.clone())),
        },
        BackendChoice::Auto => match URING_PROBE.get_or_init(uring::probe) {
            Ok(why) => Ok((BackendKind::Uring, format!("io backend: uring ({why})"))),
            Err(why) => Ok((
                BackendKind::Portable,
                format!("io backend: portable ({why})"),
            )),
        },
    }
}

/// What the backend knows about a received datagram besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// The socket it arrived on.
    pub sock: SocketId,
    /// Its source address.
    pub from: SocketAddr,
    /// The local IP it was sent to (its header's destination), for sockets registered with
    /// [`Backend::add_socket_pktinfo`] (`IP_PKTINFO` / `IPV6_RECVPKTINFO`); `None` for
    /// other sockets, or when the kernel's control message was missing.
    pub dst: Option<IpAddr>,
}

/// The receive callback of [`Backend::poll`]: `(send_queue, meta, payload, lend)`. The
/// payload is borrowed in place from the receive buffer (a shared view: lent parts may be
/// read on other threads meanwhile); `lend` turns
/// (a part of) it into a [`bytes::Bytes`] without copying (see "Lending").
pub type OnRecv<'a> = dyn FnMut(&mut SendQueue, RecvMeta, &[u8], &mut Lend) + 'a;

/// One I/O backend of one shard. Not `Send`: create it on the thread that drives it.
// One per shard, created once and never moved in the hot path: boxing the larger variant
// would only add an indirection to every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Backend {
    /// io_uring.
    Uring(UringBackend),
    /// epoll + recvmmsg/sendmmsg.
    Portable(PortableBackend),
}

macro_rules! dispatch {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            Backend::Uring($b) => $e,
            Backend::Portable($b) => $e,
        }
    };
}

impl Backend {
    /// Create a backend of the given kind; allocates all buffers.
    pub fn new(kind: BackendKind, cfg: &Config) -> Result<Self, IoError> {
        Ok(match kind {
            BackendKind::Uring => Self::Uring(UringBackend::new(cfg)?),
            BackendKind::Portable => Self::Portable(PortableBackend::new(cfg)?),
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Uring(_) => BackendKind::Uring,
            Self::Portable(_) => BackendKind::Portable,
        }
    }

    /// Register a bound UDP socket (made non-blocking here); the backend owns it from now on
    /// and starts receiving on it.
    pub fn add_socket(&mut self, sock: UdpSocket) -> Result<SocketId, IoError> {
        dispatch!(self, b => b.add_socket(sock, false, None))
    }

    /// As [`add_socket`](Self::add_socket) for a socket whose bound address the caller
    /// already read (`local` must be `sock.local_addr()`): saves a getsockname(2) per
    /// socket where agents bind one each.
    pub fn add_bound_socket(
        &mut self,
        sock: UdpSocket,
        local: SocketAddr,
    ) -> Result<SocketId, IoError> {
        dispatch!(self, b => b.add_socket(sock, false, Some(local)))
    }

    /// As [`add_socket`](Self::add_socket), and every datagram received on it reports its
    /// local destination IP in [`RecvMeta::dst`] (`IP_PKTINFO` / `IPV6_RECVPKTINFO` is set
    /// here): for a socket bound to a wildcard address that serves several local IPs. The
    /// other sockets pay nothing for it (no control space, no parsing).
    pub fn add_socket_pktinfo(&mut self, sock: UdpSocket) -> Result<SocketId, IoError> {
        use std::os::fd::AsRawFd;
        let v6 = sock.local_addr().map_err(IoError::Io)?.is_ipv6();
        enable_pktinfo(sock.as_raw_fd(), v6).map_err(IoError::Io)?;
        dispatch!(self, b => b.add_socket(sock, true, None))
    }

    /// Stop receiving on a socket and close it. Unknown ids are ignored. Sends still queued
    /// for it are dropped (counted as send errors) at the next flush.
    pub fn remove_socket(&mut self, id: SocketId) {
        dispatch!(self, b => b.remove_socket(id))
    }

    /// Local address of a registered socket. Panics if `id` is not registered.
    pub fn local_addr(&self, id: SocketId) -> SocketAddr {
        dispatch!(self, b => b.local_addr(id))
    }

    /// The send queue, for code that wants to hold on to it (same as inside `poll`).
    pub fn send_queue(&mut self) -> &mut SendQueue {
        dispatch!(self, b => &mut b.sendq)
    }

    /// A writable `buf_size`-byte send slot, or `None` if all slots are queued or in flight
    /// (call [`flush`](Self::flush) or [`poll`](Self::poll)). See [`SendQueue::slot`].
    pub fn send_slot(&mut self) -> Option<&mut [u8]> {
        self.send_queue().slot()
    }

    /// Queue the slot last returned by [`send_slot`](Self::send_slot). See [`SendQueue::commit`].
    pub fn commit_send(&mut self, sock: SocketId, dest: SocketAddr, len: usize) {
        self.send_queue().commit(sock, dest, len)
    }

    /// Copy `data` into a slot and queue it; if no slot is free, flush (and, for io_uring,
    /// reap completed sends) first. Fails with [`IoError::SendQueueFull`] only if that did
    /// not free a slot.
    pub fn send_to(
        &mut self,
        sock: SocketId,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), IoError> {
        self.send_from(sock, None, dest, data)
    }

    /// As [`send_to`](Self::send_to), from source IP `src` if given (see
    /// [`SendQueue::commit_from`]).
    pub fn send_from(
        &mut self,
        sock: SocketId,
        src: Option<IpAddr>,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), IoError> {
        if self.send_queue().available() == 0 {
            dispatch!(self, b => b.make_room()?);
        }
        self.send_queue().send_from(sock, src, dest, data)
    }

    /// Submit all queued sends as one batch. Per-datagram failures are counted, not returned.
    pub fn flush(&mut self) -> Result<(), IoError> {
        dispatch!(self, b => b.flush())
    }

    /// Flush queued sends, then wait until a datagram arrives, the [`Waker`] fires or
    /// `timeout` elapses (`None` = no timeout, `Some(ZERO)` = don't block), and hand every
    /// received datagram to `on_recv(send_queue, meta, payload, lend)` ([`RecvMeta`]:
    /// socket, source, destination IP; [`Lend`]: turns `payload` into a `Bytes` that
    /// keeps its receive buffer).
    ///
    /// Returns the number of datagrams delivered; it may be 0 after a wake-up, a timeout or
    /// a completion that carried no datagram (e.g. a send completion or a re-arm).
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut OnRecv<'_>,
    ) -> Result<usize, IoError> {
        dispatch!(self, b => b.poll(timeout, on_recv))
    }

    /// A cloneable, `Send` handle that wakes this backend out of [`poll`](Self::poll).
    pub fn waker(&self) -> Waker {
        dispatch!(self, b => b.waker.clone())
    }

    /// Also end [`poll`](Self::poll)'s wait when `fd` becomes readable (level-triggered),
    /// e.g. the epoll set of a [`StreamSet`]; [`take_watch_ready`](Self::take_watch_ready)
    /// then says so for any of them. May be called again for more fds (the shard watches
    /// the TURN server's listeners and the hosted agents' TURN-over-TCP streams, two
    /// [`StreamSet`]s): uring arms one one-shot poll per fd, portable adds one epoll entry
    /// per fd. The caller keeps each fd open while the backend lives.
    pub fn watch_fd(&mut self, fd: std::os::fd::RawFd) -> Result<(), IoError> {
        dispatch!(self, b => b.watch_fd(fd))
    }

    /// Whether a watched fd was readable since the last call (and clears the flag); the
    /// caller polls every watched set (a set with nothing ready costs one `epoll_wait`).
    pub fn take_watch_ready(&mut self) -> bool {
        dispatch!(self, b => std::mem::take(&mut b.watch_ready))
    }

    /// Counters.
    pub fn stats(&self) -> IoStats {
        dispatch!(self, b => IoStats {
            lends: b.lend.lends,
            lend_returns: b.lend.returns,
            lend_refused: b.lend.refused,
            ..b.stats
        })
    }

    /// Most receive buffers lent out at once (io_uring: half the provided-buffer ring;
    /// portable: `batch` spare buffers beside the `recvmmsg` batch).
    pub fn lend_cap(&self) -> usize {
        dispatch!(self, b => b.lend.cap())
    }

    /// Where the receive buffers live, as an address range (for tests that check that a
    /// `Bytes` points into them).
    #[doc(hidden)]
    pub fn recv_region(&self) -> std::ops::Range<usize> {
        dispatch!(self, b => {
            let r = b.lend.region();
            r.as_ptr() as usize..r.as_ptr() as usize + r.len
        })
    }

    /// Whether sends are currently coalesced with UDP GSO: [`Config::gso`] was set, the
    /// kernel supports `UDP_SEGMENT`, and no GSO send has been rejected yet.
    pub fn gso(&self) -> bool {
        dispatch!(self, b => b.gso.enabled)
    }

    /// Whether sockets receive with UDP GRO: [`Config::gro`] was set and the kernel
    /// supports `UDP_GRO`.
    pub fn gro(&self) -> bool {
        dispatch!(self, b => b.gro)
    }
}

/// Anonymous, page-aligned memory shared with the kernel. Accessed only through raw
/// pointers, because the kernel writes into it behind Rust's back.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    /// Memory made resident up front (`MAP_POPULATE`): no page fault on first use.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        Self::map(len, libc::MAP_POPULATE)
    }

    /// `count` buffers of `size` bytes (a multiple of the page size) of which only each
    /// buffer's first page is made resident up front; the rest becomes resident page by
    /// page as the kernel first writes it, and is never backed by transparent huge pages
    /// (`MADV_NOHUGEPAGE`). For the GRO receive buffers: a small datagram (receive header,
    /// address and payload) fits the first page, only a merged burst reaches further.
    pub(crate) fn new_first_pages(count: usize, size: usize) -> io::Result<Self> {
        let r = Self::map(count * size, 0)?;
        // SAFETY: the range is the mapping just made. Advice only: a kernel without THP
        // refuses it (EINVAL), which changes nothing.
        unsafe {
            libc::madvise(r.ptr.as_ptr().cast(), r.len, libc::MADV_NOHUGEPAGE);
        }
        for k in 0..count {
            // SAFETY: k * size < count * size = len; nothing else uses the memory yet.
            unsafe { r.ptr.as_ptr().add(k * size).write_volatile(0) };
        }
        Ok(r)
    }

    fn map(len: usize, flags: libc::c_int) -> io::Result<Self> {
        let len = len.max(1);
        // SAFETY: anonymous private mapping; no pointers are passed in.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// # Safety
    /// `off + len <= self.len`, and no other live reference covers the range (the kernel
    /// must not be writing to it either).
    // The region is kernel-shared raw memory (like an UnsafeCell); exclusivity is the
    // caller's obligation, stated in the safety contract.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds per the caller; exclusivity per the caller.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region").field("len", &self.len).finish()
    }
}

/// A send's source IP as one integer: 0 for none (the socket's own address; `::` means the
/// same), IPv4 as its IPv4-mapped IPv6 form.
#[inline]
fn src_bits(src: Option<IpAddr>) -> u128 {
    match src {
        None => 0,
        Some(IpAddr::V4(a)) => u128::from(a.to_ipv6_mapped()),
        Some(IpAddr::V6(a)) => u128::from(a),
    }
}

/// The source IP of [`src_bits`] back (`None` for 0). A v4-mapped value is the IPv4
/// address: a socket of either family never sends from a v4-mapped IPv6 source.
#[inline]
pub(crate) fn src_ip(bits: u128) -> Option<IpAddr> {
    if bits == 0 {
        return None;
    }
    let a = Ipv6Addr::from(bits);
    Some(match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    })
}

/// Socket in the high half, a hash of the destination (and source IP, if set) in the low
/// half: equal for equal (socket, source, destination); a collision only costs a missed GSO
/// run.
#[inline]
fn flow_key(sock: SocketId, src: u128, dest: SocketAddr) -> u64 {
    let s = if src == 0 {
        0
    } else {
        ((src as u64) ^ ((src >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32
    };
    let h = s ^ match dest {
        SocketAddr::V4(a) => u32::from(*a.ip()) ^ u32::from(a.port()).rotate_left(16),
        SocketAddr::V6(a) => {
            let x = u128::from(*a.ip());
            ((x as u64) ^ ((x >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32
                ^ u32::from(a.port())
        }
    };
    (u64::from(sock.0) << 32) | u64::from(h)
}

/// A fixed pool of send slots shared by both backends.
///
/// Slot life cycle: free → ([`slot`](Self::slot) + [`commit`](Self::commit)) queued →
/// (flush) in flight → (kernel done) free.
pub struct SendQueue {
    buf_size: usize,
    bufs: Region,
    addrs: Box<[libc::sockaddr_storage]>,
    addr_lens: Box<[libc::socklen_t]>,
    lens: Box<[u32]>,
    socks: Box<[SocketId]>,
    /// Per slot: the source IP to send from (`IP_PKTINFO`) as [`src_bits`], 0 for the
    /// socket's own. Written and read only once `uses_src` is set.
    srcs: Box<[u128]>,
    /// A send named a source IP at least once: until then (a queue that never does, e.g.
    /// every queue without shared-port relay sockets) `srcs` is neither written, compared
    /// nor hashed.
    uses_src: bool,
    /// Per slot: socket and a hash of the destination, to group flows before a flush.
    flows: Box<[u64]>,
    free: Vec<u32>,
    queued: Vec<u32>,
    /// Sort scratch for [`group_flows`](Self::group_flows): (flow, position, slot).
    order: Vec<(u64, u32, u32)>,
}

impl fmt::Debug for SendQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendQueue")
            .field("slots", &self.lens.len())
            .field("buf_size", &self.buf_size)
            .field("free", &self.free.len())
            .field("queued", &self.queued.len())
            .finish()
    }
}

impl SendQueue {
    pub(crate) fn new(slots: usize, buf_size: usize) -> io::Result<Self> {
        Ok(Self {
            buf_size,
            bufs: Region::new(slots * buf_size)?,
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { mem::zeroed::<libc::sockaddr_storage>() }; slots].into(),
            addr_lens: vec![0; slots].into(),
            lens: vec![0; slots].into(),
            socks: vec![SocketId(0); slots].into(),
            srcs: vec![0; slots].into(),
            uses_src: false,
            flows: vec![0; slots].into(),
            // Pop order: slot 0 first.
            free: (0..slots as u32).rev().collect(),
            queued: Vec::with_capacity(slots),
            order: Vec::with_capacity(slots),
        })
    }

    /// Size of every slot (`Config::buf_size`).
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Committed sends not yet submitted.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// The next free slot (`buf_size` bytes) to write a datagram into, or `None` if every
    /// slot is queued or in flight. Calling it again without `commit` returns the same slot.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let &i = self.free.last()?;
        // SAFETY: slot `i` is free: neither queued nor in flight, so the kernel does not
        // read it, and the returned borrow is tied to `&mut self`.
        Some(unsafe {
            self.bufs
                .slice_mut(i as usize * self.buf_size, self.buf_size)
        })
    }

    /// Queue the slot last returned by [`slot`](Self::slot): `len` bytes to `dest` via `sock`.
    ///
    /// # Panics
    /// If no slot is free (`slot()` returned `None`) or `len > buf_size`.
    #[inline]
    pub fn commit(&mut self, sock: SocketId, dest: SocketAddr, len: usize) {
        self.commit_bits(sock, 0, dest, len)
    }

    /// As [`commit`](Self::commit), with source IP `src` if given: the datagram leaves
    /// from that local address (`IP_PKTINFO` `ipi_spec_dst` / `IPV6_PKTINFO`), which a
    /// socket bound to a wildcard address needs to answer from the address it was reached
    /// on. GSO merges only datagrams with the same socket, source and destination.
    ///
    /// # Panics
    /// As [`commit`](Self::commit).
    #[inline(always)]
    pub fn commit_from(
        &mut self,
        sock: SocketId,
        src: Option<IpAddr>,
        dest: SocketAddr,
        len: usize,
    ) {
        let bits = src_bits(src);
        if bits != 0 {
            self.uses_src = true;
        }
        self.commit_bits(sock, bits, dest, len)
    }

    /// `commit` with the source as [`src_bits`] (0: none; nonzero only once `uses_src`).
    #[inline(always)]
    fn commit_bits(&mut self, sock: SocketId, bits: u128, dest: SocketAddr, len: usize) {
        assert!(
            len <= self.buf_size,
            "commit: len {len} > slot size {}",
            self.buf_size
        );
        let i = self.free.pop().expect("commit without a free send slot") as usize;
        self.addr_lens[i] = sockaddr_to_storage(dest, &mut self.addrs[i]);
        self.lens[i] = len as u32;
        self.socks[i] = sock;
        if self.uses_src {
            self.srcs[i] = bits;
        }
        self.flows[i] = flow_key(sock, bits, dest);
        self.queued.push(i as u32);
    }

    /// Copy `data` into a free slot and queue it.
    pub fn send_to(
        &mut self,
        sock: SocketId,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), IoError> {
        self.send_from(sock, None, dest, data)
    }

    /// Copy `data` into a free slot and queue it, from source IP `src` if given.
    pub fn send_from(
        &mut self,
        sock: SocketId,
        src: Option<IpAddr>,
        dest: SocketAddr,
        data: &[u8],
    ) -> Result<(), IoError> {
        if data.len() > self.buf_size {
            return Err(IoError::TooLarge {
                len: data.len(),
                max: self.buf_size,
            });
        }
        let slot = self.slot().ok_or(IoError::SendQueueFull)?;
        slot[..data.len()].copy_from_slice(data);
        self.commit_from(sock, src, dest, data.len());
        Ok(())
    }

    // ---- backend side ----

    fn buf_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: i < slots, so the offset is inside the region.
        unsafe { self.bufs.as_ptr().add(i * self.buf_size) }
    }

    /// Slot `i`'s source IP as [`src_bits`] (0: the socket's own).
    #[inline]
    pub(crate) fn src(&self, i: usize) -> u128 {
        if self.uses_src { self.srcs[i] } else { 0 }
    }

    fn release(&mut self, i: usize) {
        self.free.push(i as u32);
    }

    /// Reorders `queued` so that sends on the same socket to the same destination are
    /// adjacent, keeping their order within each (socket, destination) flow; order across
    /// flows is not kept (UDP promises none). Runs of equal-size datagrams to one peer — a
    /// relay forwarding a burst for one allocation, say — then become single GSO sends
    /// even when the batch interleaved them with other peers'. No allocation: the scratch
    /// is sized for every slot in `new`.
    fn group_flows(&mut self, queued: &mut [u32]) {
        if queued.len() < 3 {
            return;
        }
        // Nothing to do when the whole batch is one flow (a server answering one busy
        // client); otherwise sorting ≤ a few thousand keys costs far less than one syscall.
        let mut changes = 0;
        for w in queued.windows(2) {
            if self.flows[w[0] as usize] != self.flows[w[1] as usize] {
                changes += 1;
            }
        }
        if changes == 0 {
            return;
        }
        self.order.clear();
        self.order.extend(
            queued
                .iter()
                .enumerate()
                .map(|(pos, &slot)| (self.flows[slot as usize], pos as u32, slot)),
        );
        self.order.sort_unstable();
        for (q, &(_, _, slot)) in queued.iter_mut().zip(self.order.iter()) {
            *q = slot;
        }
    }

    /// How many of `run`'s leading slots can go out as one GSO send: consecutive slots
    /// with the same socket, source IP and destination and the same non-zero length (the last one may
    /// be shorter), at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`] in total. 1 means
    /// "send the first slot on its own". `run` must not be empty.
    fn gso_run(&self, run: &[u32]) -> usize {
        let first = run[0] as usize;
        let seg = self.lens[first] as usize;
        if seg == 0 || seg > usize::from(u16::MAX) {
            return 1;
        }
        let max = run
            .len()
            .min(GSO_MAX_SEGMENTS)
            .min(GSO_MAX_BYTES / seg.max(1));
        let mut n = 1;
        while n < max {
            let i = run[n] as usize;
            let len = self.lens[i] as usize;
            if len == 0
                || len > seg
                || self.socks[i] != self.socks[first]
                || (self.uses_src && self.srcs[i] != self.srcs[first])
                || !self.same_dest(i, first)
            {
                break;
            }
            n += 1;
            if len < seg {
                break; // a shorter datagram ends the run
            }
        }
        n
    }

    fn same_dest(&self, a: usize, b: usize) -> bool {
        let len = self.addr_lens[a];
        len == self.addr_lens[b] && {
            let len = (len as usize).min(mem::size_of::<libc::sockaddr_storage>());
            // SAFETY: both are valid sockaddr_storage values; we view their first bytes.
            let (x, y) = unsafe {
                (
                    std::slice::from_raw_parts(
                        (&self.addrs[a] as *const libc::sockaddr_storage).cast::<u8>(),
                        len,
                    ),
                    std::slice::from_raw_parts(
                        (&self.addrs[b] as *const libc::sockaddr_storage).cast::<u8>(),
                        len,
                    ),
                )
            };
            x == y
        }
    }
}

// ---- UDP GSO ----

/// Most datagrams coalesced into one GSO send (the kernel's `UDP_MAX_SEGMENTS` was 64
/// until Linux 6.9 raised it to 128).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send (an IPv4 UDP payload can be at most 65507 bytes).
pub(crate) const GSO_MAX_BYTES: usize = 65000;
/// `UDP_SEGMENT` from `<linux/udp.h>` (not exported by the `libc` crate for glibc/musl).
const UDP_SEGMENT: libc::c_int = 103;

/// Whether the kernel knows `UDP_SEGMENT` (Linux ≥ 4.18), probed once per process by
/// setting it on a throw-away UDP socket.
pub(crate) fn gso_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        use std::os::fd::AsRawFd;
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
            return false;
        };
        let seg: libc::c_int = 1200;
        // SAFETY: setsockopt with a valid c_int option value on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                UDP_SEGMENT,
                (&seg as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    })
}

/// Whether a failed GSO send should be retried as single datagrams (and GSO turned off):
/// `EIO` (no checksum offload / xfrm on the route), `EINVAL` (older kernels: segment larger
/// than the route MTU, too many segments) or `EMSGSIZE` (newer kernels: segment > MTU).
pub(crate) fn is_gso_rejection(errno: i32) -> bool {
    matches!(errno, libc::EIO | libc::EINVAL | libc::EMSGSIZE)
}

/// GSO state of one backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GsoState {
    /// Coalescing is on (config, kernel support, no rejection yet).
    pub(crate) enabled: bool,
}

impl GsoState {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            enabled: cfg.gso && gso_supported(),
        }
    }

    /// A GSO send was rejected: count it, and turn GSO off (logged once).
    pub(crate) fn rejected(&mut self, errno: i32, stats: &mut IoStats) {
        stats.gso_fallbacks += 1;
        if self.enabled {
            self.enabled = false;
            tracing::warn!(
                "UDP GSO send rejected ({}); sending datagrams one by one from now on",
                io::Error::from_raw_os_error(errno)
            );
        }
    }
}

/// `UDP_GRO` from `<linux/udp.h>`.
const UDP_GRO: libc::c_int = 104;

/// Receive buffer size with GRO: room for the largest merged burst (a UDP payload is at
/// most 65,507 bytes) plus the io_uring receive header, source address and control message,
/// rounded to whole 4 KiB pages so that every buffer starts a page (only first pages are
/// made resident up front, see `Region::new_first_pages`).
pub const GRO_BUF_SIZE: usize = 65536 + 4096;
/// Most receive buffers with GRO (each is [`GRO_BUF_SIZE`] bytes: 512 are 34 MiB of
/// address space, 2 MiB of it resident until merged bursts write further).
pub const GRO_BUF_COUNT: usize = 512;
/// Control space reserved per receive for the `UDP_GRO` message (`CMSG_SPACE(4)` = 24).
pub(crate) const GRO_CMSG_SPACE: usize = 32;

/// Whether the kernel knows `UDP_GRO` (Linux ≥ 5.0), probed once per process.
pub(crate) fn gro_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        use std::os::fd::AsRawFd;
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).is_ok_and(|s| enable_gro(s.as_raw_fd()))
    })
}

/// Sets `UDP_GRO` on a UDP socket; false if the kernel refused.
pub(crate) fn enable_gro(fd: std::os::fd::RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid c_int option value on a caller-owned socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// The segment size of a GRO receive, from its control messages (`SOL_UDP`/`UDP_GRO`, an
/// `int`); `None` for a plain datagram. Malformed control data reads as `None`.
#[cfg(test)]
pub(crate) fn gro_segment_size(control: &[u8]) -> Option<usize> {
    recv_cmsgs(control, false).0
}

/// What a receive's control messages say: the `UDP_GRO` segment size, and with `want_dst`
/// the destination IP from `IP_PKTINFO` (`ipi_addr`) or `IPV6_PKTINFO` (`ipi6_addr`).
/// Untrusted layout: every length is checked, a message whose length field is below the
/// header or beyond the bytes present ends the walk, a data part too short for its type is
/// ignored; a zero or negative segment size reads as `None`. Never panics, never reads out
/// of bounds.
pub(crate) fn recv_cmsgs(control: &[u8], want_dst: bool) -> (Option<usize>, Option<IpAddr>) {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    let (mut seg, mut dst) = (None, None);
    let mut rest = control;
    while rest.len() >= HDR {
        // SAFETY: HDR bytes are present; read_unaligned copes with any alignment.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        let len = h.cmsg_len as usize;
        if len < HDR || len > rest.len() {
            break;
        }
        let data = rest.get(cmsg_align(HDR)..len).unwrap_or(&[]);
        match (h.cmsg_level, h.cmsg_type) {
            (libc::SOL_UDP, UDP_GRO) => {
                if let Some(b) = data.get(..4) {
                    let v = i32::from_ne_bytes(b.try_into().unwrap_or([0; 4]));
                    seg = usize::try_from(v).ok().filter(|&s| s > 0);
                }
            }
            // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if want_dst => {
                if let Some(b) = data.get(8..12) {
                    let a: [u8; 4] = b.try_into().unwrap_or([0; 4]);
                    dst = Some(IpAddr::from(a));
                }
            }
            // struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if want_dst => {
                if let Some(b) = data.get(..16) {
                    let a: [u8; 16] = b.try_into().unwrap_or([0; 16]);
                    dst = Some(IpAddr::from(a));
                }
            }
            _ => {}
        }
        rest = rest.get(cmsg_align(len)..).unwrap_or(&[]);
    }
    (seg, dst)
}

/// Control space for the destination IP of a receive: `CMSG_SPACE(sizeof(in6_pktinfo))`
/// (40; the IPv4 `in_pktinfo` needs 32).
pub(crate) const PKTINFO_CMSG_SPACE: usize =
    cmsg_align(mem::size_of::<libc::cmsghdr>()) + cmsg_align(mem::size_of::<libc::in6_pktinfo>());

/// Asks the kernel for the destination IP of every datagram (`IP_PKTINFO` for IPv4,
/// `IPV6_RECVPKTINFO` for IPv6); the same option lets a send choose its source IP.
pub(crate) fn enable_pktinfo(fd: std::os::fd::RawFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt with a valid c_int option value on a caller-owned socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How a receive of `len` bytes splits into datagrams as `(offset, length)`: `seg` bytes
/// each (UDP GRO; the last may be shorter), or one datagram without a segment size — an
/// empty datagram too. `Err(n)`: the datagrams would exceed `max` bytes; the `n` of them
/// count as truncated.
pub(crate) fn gro_split(
    len: usize,
    seg: Option<usize>,
    max: usize,
) -> Result<impl Iterator<Item = (usize, usize)>, u64> {
    let seg = seg.filter(|&s| s < len).unwrap_or(len);
    if seg > max {
        return Err(len.div_ceil(seg) as u64);
    }
    let count = if len == 0 { 1 } else { len.div_ceil(seg) };
    Ok((0..count).map(move |i| (i * seg, seg.min(len - i * seg))))
}

/// `CMSG_ALIGN`: control message parts are aligned to `size_t`.
const fn cmsg_align(len: usize) -> usize {
    (len + mem::size_of::<usize>() - 1) & !(mem::size_of::<usize>() - 1)
}

/// `CMSG_SPACE(sizeof(u16))`.
const GSO_CMSG_SPACE: usize = cmsg_align(mem::size_of::<libc::cmsghdr>()) + cmsg_align(2);

/// Room for a send's control messages: `UDP_SEGMENT` and `IP(V6)_PKTINFO`.
const SEND_CMSG_SPACE: usize = GSO_CMSG_SPACE + PKTINFO_CMSG_SPACE;

/// One preallocated control buffer of a send: a `SOL_UDP`/`UDP_SEGMENT` message (GSO)
/// and/or an `IP_PKTINFO` / `IPV6_PKTINFO` message (source IP), written per send.
#[repr(C, align(8))]
pub(crate) struct SendCmsg([u8; SEND_CMSG_SPACE]);

impl SendCmsg {
    pub(crate) fn new() -> Self {
        Self([0; SEND_CMSG_SPACE])
    }

    /// Writes one control message at `off`; returns the offset after it.
    fn put(&mut self, off: usize, level: libc::c_int, ty: libc::c_int, data: &[u8]) -> usize {
        const HDR: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());
        let hdr = libc::cmsghdr {
            cmsg_len: (mem::size_of::<libc::cmsghdr>() + data.len()) as _,
            cmsg_level: level,
            cmsg_type: ty,
        };
        let end = off + HDR + cmsg_align(data.len());
        assert!(end <= SEND_CMSG_SPACE, "send control buffer too small");
        // SAFETY: `off + HDR <= SEND_CMSG_SPACE` (asserted); unaligned write of a C struct.
        unsafe { std::ptr::write_unaligned(self.0.as_mut_ptr().add(off).cast(), hdr) };
        self.0[off + HDR..off + HDR + data.len()].copy_from_slice(data);
        self.0[off + HDR + data.len()..end].fill(0);
        end
    }

    /// Writes the control messages of one send — a GSO segment size if `seg`, a source IP
    /// if `src` — and points `h`'s control fields at them (or clears them if neither).
    pub(crate) fn attach(&mut self, seg: Option<u16>, src: Option<IpAddr>, h: &mut libc::msghdr) {
        let mut off = 0;
        if let Some(seg) = seg {
            off = self.put(off, libc::SOL_UDP, UDP_SEGMENT, &seg.to_ne_bytes());
        }
        match src {
            None => {}
            Some(IpAddr::V4(a)) => {
                // in_pktinfo: ifindex 0 (routing decides), ipi_spec_dst = the source.
                let mut pi = [0u8; 12];
                pi[4..8].copy_from_slice(&a.octets());
                off = self.put(off, libc::IPPROTO_IP, libc::IP_PKTINFO, &pi);
            }
            Some(IpAddr::V6(a)) => {
                // in6_pktinfo: ipi6_addr = the source, ifindex 0.
                let mut pi = [0u8; 20];
                pi[..16].copy_from_slice(&a.octets());
                off = self.put(off, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pi);
            }
        }
        if off == 0 {
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        } else {
            h.msg_control = self.0.as_mut_ptr().cast();
            h.msg_controllen = off as _;
        }
    }
}

impl fmt::Debug for SendCmsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendCmsg")
    }
}

/// Write `addr` into `storage`, returning the address length.
pub(crate) fn sockaddr_to_storage(
    addr: SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Parse a raw `sockaddr` (as bytes, any alignment) into a `SocketAddr`.
pub(crate) fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    if b.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([b[0], b[1]]) as libc::c_int;
    if family == libc::AF_INET && b.len() >= mem::size_of::<libc::sockaddr_in>() {
        // SAFETY: length checked; read_unaligned copes with any alignment.
        let sin: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
            u16::from_be(sin.sin_port),
        )))
    } else if family == libc::AF_INET6 && b.len() >= mem::size_of::<libc::sockaddr_in6>() {
        // SAFETY: as above.
        let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sin6.sin6_addr.s6_addr),
            u16::from_be(sin6.sin6_port),
            sin6.sin6_flowinfo,
            sin6.sin6_scope_id,
        )))
    } else {
        None
    }
}

/// `sockaddr_storage` + length → `SocketAddr`.
pub(crate) fn sockaddr_from_storage(
    s: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = (len as usize).min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `s` is a valid sockaddr_storage; we view its first `len` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts((s as *const libc::sockaddr_storage).cast(), len) };
    sockaddr_from_bytes(bytes)
}

/// Clamp a timeout to whole milliseconds for epoll, rounding up so we never spin.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) if d.is_zero() => 0,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

/// A socket slot in a backend's table. `gen` is bumped on removal so stale completions or
/// events for a reused index are recognised.
#[derive(Debug)]
pub(crate) struct SockEntry {
    pub(crate) sock: Option<UdpSocket>,
    pub(crate) generation: u32,
    pub(crate) local: SocketAddr,
    /// Receives report their destination IP (`Backend::add_socket_pktinfo`).
    pub(crate) pktinfo: bool,
    /// uring: a multishot receive is armed.
    pub(crate) armed: bool,
    /// uring: needs a new multishot receive.
    pub(crate) rearm: bool,
}

/// Socket table shared by both backends.
#[derive(Debug, Default)]
pub(crate) struct SockTable {
    pub(crate) entries: Vec<SockEntry>,
    free: Vec<u32>,
}

impl SockTable {
    pub(crate) fn insert(
        &mut self,
        sock: UdpSocket,
        pktinfo: bool,
        local: Option<SocketAddr>,
    ) -> io::Result<SocketId> {
        sock.set_nonblocking(true)?;
        let local = match local {
            Some(a) => a,
            None => sock.local_addr()?,
        };
        if let Some(i) = self.free.pop() {
            let e = &mut self.entries[i as usize];
            e.sock = Some(sock);
            e.local = local;
            e.pktinfo = pktinfo;
            e.armed = false;
            e.rearm = false;
            Ok(SocketId(i))
        } else {
            self.entries.push(SockEntry {
                sock: Some(sock),
                generation: 0,
                local,
                pktinfo,
                armed: false,
                rearm: false,
            });
            Ok(SocketId(self.entries.len() as u32 - 1))
        }
    }

    /// Remove and return the socket and its generation before removal.
    pub(crate) fn remove(&mut self, id: SocketId) -> Option<(UdpSocket, u32, bool)> {
        let e = self.entries.get_mut(id.0 as usize)?;
        let sock = e.sock.take()?;
        let generation = e.generation;
        let armed = e.armed;
        e.generation = (e.generation + 1) & GEN_MASK;
        e.armed = false;
        e.rearm = false;
        self.free.push(id.0);
        Some((sock, generation, armed))
    }

    pub(crate) fn fd(&self, id: SocketId) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.entries
            .get(id.0 as usize)?
            .sock
            .as_ref()
            .map(|s| s.as_raw_fd())
    }

    /// The entry if `id` is live with generation `generation`.
    pub(crate) fn live_mut(&mut self, idx: u32, generation: u32) -> Option<&mut SockEntry> {
        self.entries
            .get_mut(idx as usize)
            .filter(|e| e.sock.is_some() && e.generation == generation)
    }

    pub(crate) fn local_addr(&self, id: SocketId) -> SocketAddr {
        let e = &self.entries[id.0 as usize];
        assert!(e.sock.is_some(), "local_addr: socket {id:?} not registered");
        e.local
    }
}

/// Generations are 24 bits so they fit next to an 8-bit op kind in `user_data`.
pub(crate) const GEN_MASK: u32 = 0x00ff_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    /// One control message as the kernel lays it out: header, data, padding.
    fn cmsg(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> Vec<u8> {
        cmsg_len_as(level, ty, data, HDR + data.len())
    }

    const HDR: usize = mem::size_of::<libc::cmsghdr>();

    /// As [`cmsg`], with `cmsg_len` claiming `len` bytes whatever the data.
    fn cmsg_len_as(level: libc::c_int, ty: libc::c_int, data: &[u8], len: usize) -> Vec<u8> {
        // SAFETY: cmsghdr is plain old data; all-zero is valid.
        let mut h: libc::cmsghdr = unsafe { mem::zeroed() };
        h.cmsg_len = len as _;
        h.cmsg_level = level;
        h.cmsg_type = ty;
        // SAFETY: reading the bytes of a plain C struct.
        let mut v =
            unsafe { std::slice::from_raw_parts((&h as *const libc::cmsghdr).cast::<u8>(), HDR) }
                .to_vec();
        v.extend_from_slice(data);
        v.resize(cmsg_align(v.len()), 0);
        v
    }

    fn pktinfo4(spec: [u8; 4], addr: [u8; 4]) -> Vec<u8> {
        let mut d = vec![1, 0, 0, 0];
        d.extend_from_slice(&spec);
        d.extend_from_slice(&addr);
        cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &d)
    }

    #[test]
    fn recv_cmsgs_reads_the_destination_ip_next_to_gro() {
        let a6: Ipv6Addr = "fd00::7".parse().unwrap();
        let mut d6 = a6.octets().to_vec();
        d6.extend_from_slice(&3u32.to_ne_bytes());
        let v6 = cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &d6);
        // ipi_addr (the header's destination) is what counts, not ipi_spec_dst.
        let v4 = pktinfo4([10, 0, 0, 9], [127, 0, 1, 2]);
        assert_eq!(recv_cmsgs(&v4, true), (None, Some([127, 0, 1, 2].into())));
        assert_eq!(recv_cmsgs(&v6, true), (None, Some(a6.into())));
        // Not asked for: not read.
        assert_eq!(recv_cmsgs(&v4, false), (None, None));
        let mut both = cmsg(libc::SOL_UDP, UDP_GRO, &1200i32.to_ne_bytes());
        both.extend(&v4);
        assert_eq!(
            recv_cmsgs(&both, true),
            (Some(1200), Some([127, 0, 1, 2].into()))
        );
        // Both kinds fit the control space reserved for them.
        assert!(v6.len() <= PKTINFO_CMSG_SPACE && v4.len() <= PKTINFO_CMSG_SPACE);
        assert!(both.len() <= GRO_CMSG_SPACE + PKTINFO_CMSG_SPACE);
    }

    /// Truncated or lying pktinfo messages read as "no destination", never a panic or an
    /// out-of-bounds read.
    #[test]
    fn recv_cmsgs_rejects_malformed_pktinfo() {
        let whole = pktinfo4([0; 4], [127, 0, 1, 2]);
        for cut in 0..whole.len() {
            let (_, dst) = recv_cmsgs(&whole[..cut], true);
            assert!(dst.is_none() || cut >= HDR + 12, "cut {cut}: {dst:?}");
        }
        // A data part too short for in_pktinfo / in6_pktinfo.
        assert_eq!(
            recv_cmsgs(
                &cmsg(libc::IPPROTO_IP, libc::IP_PKTINFO, &[1, 2, 3, 4]),
                true
            ),
            (None, None)
        );
        assert_eq!(
            recv_cmsgs(
                &cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &[9; 12]),
                true
            ),
            (None, None)
        );
        for len in [0, 3, HDR - 1, HDR + 64, u32::MAX as usize] {
            let m = cmsg_len_as(libc::IPPROTO_IP, libc::IP_PKTINFO, &[7; 12], len);
            assert_eq!(recv_cmsgs(&m, true), (None, None), "cmsg_len {len}");
        }
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..=96 {
            for _ in 0..1000 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = recv_cmsgs(&bytes, true);
            }
        }
    }

    /// The send control buffer: UDP_SEGMENT and/or a pktinfo naming the source, laid out
    /// as the kernel reads them (each CMSG_SPACE-aligned, controllen the sum).
    #[test]
    fn send_cmsg_lays_out_segment_and_source() {
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut h: libc::msghdr = unsafe { mem::zeroed() };
        let mut c = SendCmsg::new();
        c.attach(None, None, &mut h);
        assert!(h.msg_control.is_null() && h.msg_controllen == 0);
        c.attach(Some(1200), Some([127, 0, 1, 3].into()), &mut h);
        assert_eq!(h.msg_controllen as usize, GSO_CMSG_SPACE + 32);
        let bytes = c.0[..h.msg_controllen as usize].to_vec();
        // SAFETY: at least a cmsghdr's bytes.
        let seg: libc::cmsghdr = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        assert_eq!(
            (seg.cmsg_level, seg.cmsg_type, seg.cmsg_len as usize),
            (libc::SOL_UDP, UDP_SEGMENT, HDR + 2)
        );
        assert_eq!(&bytes[HDR..HDR + 2], &1200u16.to_ne_bytes());
        // The pktinfo carries the source in ipi_spec_dst.
        let pi = &bytes[GSO_CMSG_SPACE..];
        // SAFETY: at least a cmsghdr's bytes.
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(pi.as_ptr().cast()) };
        assert_eq!(
            (hdr.cmsg_level, hdr.cmsg_type, hdr.cmsg_len as usize),
            (libc::IPPROTO_IP, libc::IP_PKTINFO, HDR + 12)
        );
        assert_eq!(&pi[HDR + 4..HDR + 8], &[127, 0, 1, 3]);
        let a6: Ipv6Addr = "fd00::3".parse().unwrap();
        c.attach(None, Some(a6.into()), &mut h);
        assert_eq!(h.msg_controllen as usize, PKTINFO_CMSG_SPACE);
        assert_eq!(
            recv_cmsgs(&c.0[..PKTINFO_CMSG_SPACE], true).1,
            Some(a6.into())
        );
        c.attach(None, None, &mut h);
        assert!(h.msg_control.is_null() && h.msg_controllen == 0);
    }

    #[test]
    fn source_ips_round_trip_through_their_integer_form() {
        for ip in [
            "127.0.1.3",
            "0.0.0.0",
            "10.0.0.1",
            "::1",
            "fd00::3",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(src_ip(src_bits(Some(ip))), Some(ip));
        }
        assert_eq!(src_bits(None), 0);
        assert_eq!(src_ip(0), None);
        // `::` as a source means the socket's own address, as `None` does.
        assert_eq!(src_ip(src_bits(Some("::".parse().unwrap()))), None);
        assert_ne!(
            src_bits(Some("127.0.0.2".parse().unwrap())),
            src_bits(Some("127.0.0.3".parse().unwrap()))
        );
    }

    #[test]
    fn gro_split_cuts_bursts_and_keeps_single_datagrams_whole() {
        let split = |len, seg, max| gro_split(len, seg, max).map(|s| s.collect::<Vec<_>>());
        assert_eq!(split(0, None, 1500), Ok(vec![(0, 0)]));
        assert_eq!(split(100, None, 1500), Ok(vec![(0, 100)]));
        assert_eq!(
            split(250, Some(100), 1500),
            Ok(vec![(0, 100), (100, 100), (200, 50)])
        );
        // A segment size not below the length: one datagram.
        assert_eq!(split(100, Some(100), 1500), Ok(vec![(0, 100)]));
        assert_eq!(split(100, Some(400), 1500), Ok(vec![(0, 100)]));
        // Too large: every datagram of the burst is counted as truncated.
        assert_eq!(split(9000, Some(3000), 1500), Err(3));
        assert_eq!(split(3000, None, 1500), Err(1));
    }

    #[test]
    fn gro_segment_size_reads_the_udp_gro_message() {
        let gro = |seg: i32| cmsg(libc::SOL_UDP, UDP_GRO, &seg.to_ne_bytes());
        assert_eq!(gro_segment_size(&gro(1200)), Some(1200));
        // After another control message.
        let mut two = cmsg(libc::SOL_IP, libc::IP_TOS, &[0, 0, 0, 0]);
        two.extend(gro(300));
        assert_eq!(gro_segment_size(&two), Some(300));
        // No control data, or none of ours.
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(
            gro_segment_size(&cmsg(libc::SOL_IP, libc::IP_TOS, &[1, 0, 0, 0])),
            None
        );
    }

    /// Control data is parsed defensively: a zero or negative segment size, a data part
    /// too short for an `int`, a length field beyond the bytes present or below the header,
    /// and arbitrary bytes all read as "no segment size" (the buffer is then one datagram
    /// and size-checked as such), never a panic or an out-of-bounds read.
    #[test]
    fn gro_segment_size_rejects_malformed_control_data() {
        let gro = |seg: i32| cmsg(libc::SOL_UDP, UDP_GRO, &seg.to_ne_bytes());
        assert_eq!(gro_segment_size(&gro(0)), None);
        assert_eq!(gro_segment_size(&gro(-1)), None);
        assert_eq!(gro_segment_size(&gro(i32::MIN)), None);
        assert_eq!(
            gro_segment_size(&cmsg(libc::SOL_UDP, UDP_GRO, &[5, 0])),
            None
        );
        let whole = gro(1200);
        for cut in 0..whole.len() {
            let r = gro_segment_size(&whole[..cut]);
            // Header + int is the shortest complete message.
            assert!(r.is_none() || cut >= HDR + 4, "cut {cut}: {r:?}");
        }
        let data = 1200i32.to_ne_bytes();
        for len in [0, 3, HDR - 1, HDR + 64, u32::MAX as usize] {
            let m = cmsg_len_as(libc::SOL_UDP, UDP_GRO, &data, len);
            assert_eq!(gro_segment_size(&m), None, "cmsg_len {len}");
        }
        // Pseudo-random control bytes of every length up to 64 (xorshift, fixed seed).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..=64 {
            for _ in 0..2000 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                if let Some(s) = gro_segment_size(&bytes) {
                    assert!(s > 0 && s <= i32::MAX as usize);
                }
            }
        }
    }
}
