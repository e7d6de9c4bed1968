//! TCP streams beside the UDP backends: listeners and connections on one level-triggered
//! epoll set, for protocols that also run over TCP (TURN, RFC 8656 §3.1). Knows no
//! protocol: it hands out the bytes each read returned and writes what it is given; the
//! caller frames them.
//!
//! The shard registers [`StreamSet::fd`] with its backend ([`Backend::watch_fd`]), so an
//! incoming connection or byte ends the backend's wait, then drives [`StreamSet::poll`].
//! [`StreamSet::send`] writes at once (`writev`); [`StreamSet::queue`] only appends, and
//! [`StreamSet::flush`] then writes each stream's queued bytes in one `write`, so the many
//! small frames a turn relays to one connection cost one syscall. What the kernel does
//! not take is kept in a per-stream backlog (bounded by `max_backlog`, beyond which the
//! stream is closed) and written when the socket is writable again. TCP is the fallback
//! transport: its writes are plain syscalls, not part of the io_uring batch.
//!
//! [`Backend::watch_fd`]: super::Backend::watch_fd

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The read callback of [`StreamSet::poll`]: `(set, stream, peer, bytes)`.
pub type OnData<'a> = dyn FnMut(&mut StreamSet, StreamId, SocketAddr, &[u8]) + 'a;

/// A connection of a [`StreamSet`]. Ids are reused once [`StreamSet::take_closed`] has
/// reported the stream closed, so a reported close never names a newer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// Counters of a [`StreamSet`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because `max_streams` were open.
    pub refused: u64,
    /// Connections closed (by the peer, an error, [`StreamSet::close`] or a full backlog).
    pub closed: u64,
    /// Streams closed because their write backlog would exceed `max_backlog`.
    pub backlog_overflows: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// Epoll tokens: listeners `LISTENER | index`, streams `generation << 32 | index`.
const LISTENER: u64 = 1 << 63;
const EVENTS: usize = 256;
/// Reads per readable stream per `poll` round (fairness; epoll is level-triggered).
const READS_PER_ROUND: usize = 4;
/// Rounds of `epoll_wait` per `poll` before giving the loop back.
const ROUNDS: usize = 8;

struct Stream {
    sock: TcpStream,
    peer: SocketAddr,
    generation: u32,
    backlog: Vec<u8>,
    /// EPOLLOUT is registered (the backlog is not empty, or the connect is pending).
    want_write: bool,
    /// An outgoing connect has not completed yet: sends go to the backlog.
    connecting: bool,
    /// Index of the listener that accepted it (`NOT_ACCEPTED` for outgoing streams).
    listener: u32,
    /// Listed in `dirty`: [`StreamSet::queue`]d bytes wait for the next flush.
    dirty: bool,
}

const NOT_ACCEPTED: u32 = u32::MAX;

impl Stream {
    /// Writes the backlog until it is empty or the kernel takes no more (`Ok`), counting
    /// the bytes in `bytes_out`; `Err` when the stream failed.
    fn write_out(&mut self, bytes_out: &mut u64) -> io::Result<()> {
        while !self.backlog.is_empty() {
            match (&self.sock).write(&self.backlog) {
                Ok(n) => {
                    *bytes_out += n as u64;
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Registers (or drops) interest in writability: EPOLLOUT while bytes wait in the
    /// backlog, readability always.
    fn watch_writes(&mut self, epfd: RawFd, id: StreamId, on: bool) {
        self.want_write = on;
        let token = (u64::from(self.generation) << 32) | u64::from(id.0);
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if on {
            events |= libc::EPOLLOUT as u32;
        }
        let _ = ctl(
            epfd,
            libc::EPOLL_CTL_MOD,
            self.sock.as_raw_fd(),
            events,
            token,
        );
    }
}

/// TCP listeners and their accepted streams on one epoll set; see the module docs.
pub struct StreamSet {
    epfd: OwnedFd,
    listeners: Vec<TcpListener>,
    streams: Vec<Option<Stream>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    open: usize,
    max_streams: usize,
    max_backlog: usize,
    buf: Box<[u8]>,
    events: Box<[libc::epoll_event]>,
    closed: Vec<(StreamId, SocketAddr)>,
    accepted: Vec<StreamId>,
    /// Streams with queued bytes for the next [`flush`](Self::flush).
    dirty: Vec<StreamId>,
    stats: StreamStats,
}

impl std::fmt::Debug for StreamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSet")
            .field("listeners", &self.listeners.len())
            .field("open", &self.open)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ctl(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and event struct.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
}

impl StreamSet {
    /// An empty set: at most `max_streams` open connections, at most `max_backlog` unsent
    /// bytes per stream, reads of up to `read_buf` bytes.
    pub fn new(max_streams: usize, max_backlog: usize, read_buf: usize) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right away.
        let epfd = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        Ok(Self {
            epfd,
            listeners: Vec::new(),
            streams: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: 0,
            max_streams,
            max_backlog,
            buf: vec![0; read_buf.max(1)].into(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into(),
            closed: Vec::new(),
            accepted: Vec::new(),
            dirty: Vec::new(),
            stats: StreamStats::default(),
        })
    }

    /// The epoll set's fd: readable when a listener or stream has something to do.
    pub fn fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Open streams.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Open streams at most (more connections are accepted and closed at once).
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// Accept connections on `listener` (made non-blocking here).
    pub fn add_listener(&mut self, listener: TcpListener) -> io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let token = LISTENER | self.listeners.len() as u64;
        ctl(
            self.fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            token,
        )?;
        self.listeners.push(listener);
        Ok(addr)
    }

    /// Local address of stream `id`, if open.
    pub fn local_addr(&self, id: StreamId) -> Option<SocketAddr> {
        self.get(id)?.sock.local_addr().ok()
    }

    /// Which listener accepted stream `id` (in [`add_listener`](Self::add_listener)
    /// order); `None` for an outgoing stream or one not open. No syscall.
    pub fn listener_of(&self, id: StreamId) -> Option<usize> {
        let s = self.get(id)?;
        (s.listener != NOT_ACCEPTED).then_some(s.listener as usize)
    }

    /// Remote address of stream `id`, if open.
    pub fn peer_addr(&self, id: StreamId) -> Option<SocketAddr> {
        self.get(id).map(|s| s.peer)
    }

    fn get(&self, id: StreamId) -> Option<&Stream> {
        self.streams.get(id.0 as usize)?.as_ref()
    }

    /// Accepts, reads and writes backlogs until nothing is ready (or a fairness bound is
    /// reached: then the fd stays readable and the next wait ends at once). Every read's
    /// bytes go to `on_data(set, stream, peer, bytes)`, which may [`send`](Self::send) and
    /// [`close`](Self::close). Closed streams are then listed by
    /// [`take_closed`](Self::take_closed).
    pub fn poll(&mut self, on_data: &mut OnData<'_>) {
        for _ in 0..ROUNDS {
            // SAFETY: `events` is valid for EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    0,
                )
            };
            if n <= 0 {
                return;
            }
            for k in 0..n as usize {
                let ev = self.events[k];
                let token = ev.u64;
                if token & LISTENER != 0 {
                    self.accept((token & !LISTENER) as usize);
                    continue;
                }
                let idx = (token & 0xffff_ffff) as u32;
                let generation = (token >> 32) as u32;
                if self.generations.get(idx as usize) != Some(&generation) {
                    continue;
                }
                let id = StreamId(idx);
                if ev.events & libc::EPOLLOUT as u32 != 0 {
                    if !self.finish_connect(id) {
                        continue;
                    }
                    self.write_backlog(id);
                }
                if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(id, on_data);
                }
            }
        }
    }

    fn accept(&mut self, listener: usize) {
        loop {
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            let (sock, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ECONNABORTED, EMFILE...: the connection is lost; the listener stays.
                Err(e) => {
                    self.stats.refused += 1;
                    tracing::debug!("tcp accept: {e}");
                    return;
                }
            };
            if self.open >= self.max_streams || sock.set_nonblocking(true).is_err() {
                self.stats.refused += 1;
                continue; // dropping `sock` closes it
            }
            let _ = sock.set_nodelay(true);
            match self.insert(sock, peer, false, listener as u32) {
                Ok(id) => self.accepted.push(id),
                Err(_) => {
                    self.stats.refused += 1;
                    continue;
                }
            }
            self.stats.accepted += 1;
        }
    }

    /// Registers an open (or connecting) stream in a free slot.
    fn insert(
        &mut self,
        sock: TcpStream,
        peer: SocketAddr,
        connecting: bool,
        listener: u32,
    ) -> io::Result<StreamId> {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.streams.push(None);
                self.generations.push(0);
                (self.streams.len() - 1) as u32
            }
        };
        let generation = self.generations[idx as usize];
        let token = (u64::from(generation) << 32) | u64::from(idx);
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if connecting {
            events |= libc::EPOLLOUT as u32;
        }
        if let Err(e) = ctl(
            self.fd(),
            libc::EPOLL_CTL_ADD,
            sock.as_raw_fd(),
            events,
            token,
        ) {
            self.free.push(idx);
            return Err(e);
        }
        self.streams[idx as usize] = Some(Stream {
            sock,
            peer,
            generation,
            backlog: Vec::new(),
            want_write: connecting,
            connecting,
            listener,
            dirty: false,
        });
        self.open += 1;
        Ok(StreamId(idx))
    }

    /// Opens a connection to `addr` without blocking: the stream is registered for
    /// writability until the connect completes; what is [`send`](Self::send) before that
    /// waits in its backlog and is written once it completes. A connect that fails later
    /// closes the stream ([`take_closed`](Self::take_closed) lists it); one that fails at
    /// once (or a full set) is the error here.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<StreamId> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        if self.open >= self.max_streams {
            return Err(io::Error::other("too many open streams"));
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        let _ = sock.set_tcp_nodelay(true);
        let connecting = match sock.connect(&SockAddr::from(addr)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
            Err(e) => return Err(e),
        };
        self.insert(TcpStream::from(sock), addr, connecting, NOT_ACCEPTED)
    }

    /// Registers a connection opened elsewhere (e.g. set up with blocking I/O first),
    /// made non-blocking here; an outgoing stream ([`listener_of`](Self::listener_of) is
    /// `None`). A full set is the error.
    pub fn adopt(&mut self, sock: TcpStream) -> io::Result<StreamId> {
        if self.open >= self.max_streams {
            return Err(io::Error::other("too many open streams"));
        }
        sock.set_nonblocking(true)?;
        let _ = sock.set_nodelay(true);
        let peer = sock.peer_addr()?;
        self.insert(sock, peer, false, NOT_ACCEPTED)
    }

    /// A pending connect's stream became writable: whether it is connected now (else it
    /// is closed). Streams not connecting are connected.
    fn finish_connect(&mut self, id: StreamId) -> bool {
        let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return false;
        };
        if !s.connecting {
            return true;
        }
        match s.sock.take_error() {
            Ok(None) => {
                s.connecting = false;
                true
            }
            Ok(Some(e)) | Err(e) => {
                tracing::debug!(peer = %s.peer, "tcp connect: {e}");
                self.close(id);
                false
            }
        }
    }

    fn read(&mut self, id: StreamId, on_data: &mut OnData<'_>) {
        // The read buffer is lent to the callback while `self` is borrowed mutably.
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..READS_PER_ROUND {
            let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                break;
            };
            let peer = s.peer;
            match (&s.sock).read(&mut buf) {
                Ok(0) => {
                    self.close(id);
                    break;
                }
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    on_data(self, id, peer, &buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(id);
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Writes `parts` (in order, after anything still in the backlog) to stream `id`.
    /// What the kernel does not take now is kept and written when the socket drains; if
    /// that would exceed `max_backlog`, the stream is closed. Returns whether the stream
    /// is still open.
    pub fn send(&mut self, id: StreamId, parts: &[&[u8]]) -> bool {
        let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return false;
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        if s.backlog.is_empty() && !s.connecting {
            let slices: [IoSlice<'_>; 4] =
                std::array::from_fn(|k| IoSlice::new(parts.get(k).copied().unwrap_or_default()));
            let n = parts.len().min(4);
            loop {
                match (&s.sock).write_vectored(&slices[..n]) {
                    Ok(w) => {
                        written = w;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        self.close(id);
                        return false;
                    }
                }
            }
            // More than four parts: the rest goes through the backlog.
        }
        self.stats.bytes_out += written as u64;
        if written == total {
            return true;
        }
        if s.backlog.len() + (total - written) > self.max_backlog {
            self.stats.backlog_overflows += 1;
            self.close(id);
            return false;
        }
        let mut skip = written;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            s.backlog.extend_from_slice(&p[skip..]);
            skip = 0;
        }
        if !s.want_write {
            s.watch_writes(self.epfd.as_raw_fd(), id, true);
        }
        true
    }

    /// Appends `parts` to stream `id`'s output without writing: the next
    /// [`flush`](Self::flush) writes all of a stream's queued bytes at once, so many small
    /// frames for one stream in a turn cost one syscall. `false` if the stream is not open
    /// or was closed because its unsent bytes would exceed `max_backlog`.
    pub fn queue(&mut self, id: StreamId, parts: &[&[u8]]) -> bool {
        let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return false;
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if s.backlog.len() + total > self.max_backlog {
            self.stats.backlog_overflows += 1;
            self.close(id);
            return false;
        }
        for p in parts {
            s.backlog.extend_from_slice(p);
        }
        // A stream waiting for EPOLLOUT (or its connect) writes its backlog then.
        if !s.dirty && !s.want_write && total > 0 {
            s.dirty = true;
            self.dirty.push(id);
        }
        true
    }

    /// Writes what [`queue`](Self::queue) gathered, one write per stream; what the kernel
    /// does not take waits for writability, as with [`send`](Self::send).
    pub fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                continue;
            };
            if !s.dirty {
                continue; // closed, and the id taken by a new stream
            }
            s.dirty = false;
            if s.want_write {
                continue;
            }
            if s.write_out(&mut self.stats.bytes_out).is_err() {
                self.close(id);
                continue;
            }
            if !s.backlog.is_empty() {
                s.watch_writes(self.epfd.as_raw_fd(), id, true);
            } else if s.backlog.capacity() > self.max_backlog / 4 {
                s.backlog = Vec::new();
            }
        }
        self.dirty = dirty;
    }

    fn write_backlog(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        if s.write_out(&mut self.stats.bytes_out).is_err() {
            self.close(id);
            return;
        }
        if s.backlog.is_empty() {
            s.backlog = Vec::new();
            s.watch_writes(self.epfd.as_raw_fd(), id, false);
        }
    }

    /// Closes stream `id`: its unsent bytes are written if the kernel takes them at once
    /// (a last frame, a TLS close_notify), the rest is dropped. Unknown ids are ignored.
    pub fn close(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        if !s.backlog.is_empty() && !s.connecting {
            let _ = (&s.sock).write(&s.backlog);
        }
        let _ = ctl(
            self.epfd.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            s.sock.as_raw_fd(),
            0,
            0,
        );
        let g = &mut self.generations[id.0 as usize];
        *g = g.wrapping_add(1);
        // The id is free once `take_closed` has reported it.
        self.open -= 1;
        self.stats.closed += 1;
        self.closed.push((id, s.peer));
    }

    /// Streams accepted since the last call, appended to `out` (a set with listeners
    /// should call this after every [`poll`](Self::poll); the list grows until then). A
    /// stream listed may have closed in the same poll: [`take_closed`](Self::take_closed)
    /// lists it too, and its id is not reused before that.
    pub fn take_accepted(&mut self, out: &mut Vec<StreamId>) {
        out.append(&mut self.accepted);
    }

    /// Streams closed since the last call, with their peers, appended to `out`. Their ids
    /// are free for new streams from now on (call this after every [`poll`](Self::poll)).
    pub fn take_closed(&mut self, out: &mut Vec<(StreamId, SocketAddr)>) {
        self.free.extend(self.closed.iter().map(|(id, _)| id.0));
        out.append(&mut self.closed);
    }
}
