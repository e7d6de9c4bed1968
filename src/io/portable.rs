//! Portable backend: epoll (level-triggered) + `recvmmsg`/`sendmmsg`.
//!
//! All `mmsghdr`/`iovec`/`sockaddr_storage` arrays and the receive buffers are allocated
//! once; their addresses are written into the headers once (receive) or per flush (send).
//!
//! With GSO on, one `mmsghdr` of a `sendmmsg` may carry a run of datagrams (one iovec per
//! send slot plus a `UDP_SEGMENT` control message); otherwise each carries one datagram.
//! With GRO on, every socket gets `UDP_GRO`, each receive buffer is `GRO_BUF_SIZE` bytes with
//! room for a control message, and a receive carrying a `UDP_GRO` segment size is handed to
//! the callback one datagram at a time, in place.
//!
//! Lending ([`Lend`]): the receive region holds `2 × batch` buffers, `batch` of them
//! named by the `recvmmsg` headers and `batch` spares. When the callback lends part of a
//! buffer, a spare takes its place in the batch; the lent buffer becomes a spare again
//! once every `Bytes` into it is dropped. With no spare left, lending is refused (the
//! caller copies), so the batch always has its buffers.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{
    Config, GRO_BUF_SIZE, GRO_CMSG_SPACE, GsoState, IoError, IoStats, Lend, OnRecv,
    PKTINFO_CMSG_SPACE, RecvMeta, Region, SendCmsg, SendQueue, SockTable, SocketId, Waker,
    enable_gro, gro_split, gro_supported, is_gso_rejection, recv_cmsgs, sockaddr_from_storage,
    src_ip, timeout_ms,
};

/// Control space per receive: `UDP_GRO` and `IP(V6)_PKTINFO`, in `u64` words.
const RCTL_WORDS: usize = (GRO_CMSG_SPACE + PKTINFO_CMSG_SPACE).div_ceil(8);

/// epoll token of the waker (sockets use `generation << 32 | index`).
const WAKER_TOKEN: u64 = u64::MAX;
/// epoll token of the watched fds (`Backend::watch_fd`; one entry per fd).
const WATCH_TOKEN: u64 = u64::MAX - 1;
/// epoll events fetched per `epoll_wait`.
const MAX_EVENTS: usize = 64;
/// `recvmmsg` rounds per readable socket per poll before moving on (fairness; epoll is
/// level-triggered, so the rest is picked up next time).
const MAX_ROUNDS: usize = 16;

/// epoll + `recvmmsg`/`sendmmsg` backend.
pub struct PortableBackend {
    epfd: OwnedFd,
    pub(crate) waker: Waker,
    socks: SockTable,
    pub(crate) sendq: SendQueue,
    pub(crate) stats: IoStats,
    batch: usize,
    buf_size: usize,
    events: Box<[libc::epoll_event]>,
    // receive side
    /// Sockets get `UDP_GRO`; a receive may carry several datagrams (see the module docs).
    pub(crate) gro: bool,
    /// Bytes per receive buffer: `buf_size`, or [`GRO_BUF_SIZE`] with GRO.
    rbuf_size: usize,
    /// The receive buffers (`2 × batch` of them) and their loans.
    pub(crate) lend: Lend,
    /// Per `recvmmsg` slot: the buffer it receives into.
    slot_buf: Box<[u32]>,
    /// Buffers in no slot and not lent.
    spare: Vec<u32>,
    /// Per receive: room for the `UDP_GRO` (GRO) and `IP(V6)_PKTINFO` (sockets that report
    /// the destination IP) control messages.
    rctl: Box<[[u64; RCTL_WORDS]]>,
    rnames: Box<[libc::sockaddr_storage]>,
    riov: Box<[libc::iovec]>,
    rmsgs: Box<[libc::mmsghdr]>,
    // send side
    send: SendBufs,
    pub(crate) gso: GsoState,
    /// The watched fd (`Backend::watch_fd`) was readable in the last poll.
    pub(crate) watch_ready: bool,
}

/// Preallocated `sendmmsg` arguments: `batch` headers, each with its own GSO control
/// message and segment count, and one iovec per send slot (a `sendmmsg` call never names
/// more datagrams than there are slots).
struct SendBufs {
    msgs: Box<[libc::mmsghdr]>,
    cmsgs: Box<[SendCmsg]>,
    segs: Box<[usize]>,
    iov: Box<[libc::iovec]>,
    batch: usize,
}

impl std::fmt::Debug for PortableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortableBackend")
            .field("sockets", &self.socks)
            .field("sendq", &self.sendq)
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

impl PortableBackend {
    /// Create the backend and allocate all buffers.
    pub fn new(cfg: &Config) -> Result<Self, IoError> {
        cfg.validate()?;
        // SAFETY: plain syscall.
        let epfd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fresh descriptor we own.
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let waker = Waker::new(true)?;
        epoll_add(epfd.as_raw_fd(), waker.raw_fd(), WAKER_TOKEN)?;

        let batch = cfg.batch;
        let gro = cfg.gro && gro_supported();
        let rbuf_size = if gro {
            GRO_BUF_SIZE.max(cfg.buf_size)
        } else {
            cfg.buf_size
        };
        // With GRO, 68 KiB per receive of which only the first page is resident up front
        // (see `Region::new_first_pages`). `batch` buffers for the batch, `batch` spares
        // that stand in for lent ones.
        let nbufs = 2 * batch;
        let rbufs = if gro {
            Region::new_first_pages(nbufs, rbuf_size)?
        } else {
            Region::new(nbufs * rbuf_size)?
        };
        // SAFETY (all zeroed() below): these are C plain-old-data structs; all-zero is valid.
        let mut rnames: Box<[libc::sockaddr_storage]> =
            vec![unsafe { mem::zeroed::<libc::sockaddr_storage>() }; batch].into();
        let mut riov: Box<[libc::iovec]> =
            vec![unsafe { mem::zeroed::<libc::iovec>() }; batch].into();
        let mut rmsgs: Box<[libc::mmsghdr]> =
            vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; batch].into();
        for k in 0..batch {
            // SAFETY: k * rbuf_size is inside `rbufs`.
            riov[k].iov_base = unsafe { rbufs.as_ptr().add(k * rbuf_size) }.cast();
            riov[k].iov_len = rbuf_size;
            let h = &mut rmsgs[k].msg_hdr;
            h.msg_name = (&mut rnames[k] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut riov[k];
            h.msg_iovlen = 1;
        }
        let send = SendBufs {
            msgs: vec![unsafe { mem::zeroed::<libc::mmsghdr>() }; batch].into(),
            cmsgs: (0..batch).map(|_| SendCmsg::new()).collect(),
            segs: vec![0; batch].into(),
            iov: vec![unsafe { mem::zeroed::<libc::iovec>() }; cfg.send_slots].into(),
            batch,
        };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS].into();

        Ok(Self {
            epfd,
            waker,
            socks: SockTable::default(),
            sendq: SendQueue::new(cfg.send_slots, cfg.buf_size)?,
            stats: IoStats::default(),
            batch,
            buf_size: cfg.buf_size,
            events,
            gro,
            rbuf_size,
            lend: Lend::new(rbufs, nbufs, rbuf_size, batch),
            slot_buf: (0..batch as u32).collect(),
            spare: (batch as u32..nbufs as u32).rev().collect(),
            rctl: vec![[0u64; RCTL_WORDS]; batch].into(),
            rnames,
            riov,
            rmsgs,
            send,
            gso: GsoState::new(cfg),
            watch_ready: false,
        })
    }

    pub(crate) fn add_socket(
        &mut self,
        sock: UdpSocket,
        pktinfo: bool,
        local: Option<SocketAddr>,
    ) -> Result<SocketId, IoError> {
        let fd = sock.as_raw_fd();
        // A socket that refuses UDP_GRO just receives datagram by datagram.
        if self.gro {
            enable_gro(fd);
        }
        let id = self.socks.insert(sock, pktinfo, local)?;
        let generation = self.socks.entries[id.0 as usize].generation;
        if let Err(e) = epoll_add(self.epfd.as_raw_fd(), fd, token(id, generation)) {
            self.socks.remove(id);
            return Err(e.into());
        }
        Ok(id)
    }

    pub(crate) fn remove_socket(&mut self, id: SocketId) {
        if let Some((sock, _, _)) = self.socks.remove(id) {
            // SAFETY: EPOLL_CTL_DEL ignores the event pointer on modern kernels; pass a valid one.
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            unsafe {
                libc::epoll_ctl(
                    self.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    sock.as_raw_fd(),
                    &mut ev,
                );
            }
            drop(sock);
        }
    }

    pub(crate) fn watch_fd(&mut self, fd: RawFd) -> Result<(), IoError> {
        epoll_add(self.epfd.as_raw_fd(), fd, WATCH_TOKEN)?;
        Ok(())
    }

    pub(crate) fn local_addr(&self, id: SocketId) -> SocketAddr {
        self.socks.local_addr(id)
    }

    pub(crate) fn make_room(&mut self) -> Result<(), IoError> {
        self.flush()
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.flush_now();
        Ok(())
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut OnRecv<'_>,
    ) -> Result<usize, IoError> {
        self.flush()?;
        while let Some(b) = self.lend.returned() {
            self.spare.push(b);
        }
        // SAFETY: `events` is valid for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms(timeout),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e.into());
        }
        let mut delivered = 0;
        for k in 0..n as usize {
            let tok = self.events[k].u64;
            if tok == WATCH_TOKEN {
                self.watch_ready = true;
                continue;
            }
            if tok == WAKER_TOKEN {
                self.waker.drain();
                self.stats.wakeups += 1;
                continue;
            }
            let (idx, generation) = ((tok & 0xffff_ffff) as u32, (tok >> 32) as u32);
            let Some((fd, pktinfo)) = self
                .socks
                .live_mut(idx, generation)
                .and_then(|e| e.sock.as_ref().map(|s| (s.as_raw_fd(), e.pktinfo)))
            else {
                continue; // removed meanwhile
            };
            delivered += self.recv_socket(SocketId(idx), fd, pktinfo, on_recv);
        }
        Ok(delivered)
    }

    /// `recvmmsg` until the socket is drained (or MAX_ROUNDS), handing datagrams out in place.
    fn recv_socket(
        &mut self,
        id: SocketId,
        fd: RawFd,
        pktinfo: bool,
        on_recv: &mut OnRecv<'_>,
    ) -> usize {
        let mut delivered = 0;
        // Control space only for what this socket can receive: none for a plain socket.
        let ctl_len = if self.gro { GRO_CMSG_SPACE } else { 0 }
            + if pktinfo { PKTINFO_CMSG_SPACE } else { 0 };
        let want_ctl = ctl_len > 0;
        for _ in 0..MAX_ROUNDS {
            for (m, ctl) in self.rmsgs.iter_mut().zip(self.rctl.iter_mut()) {
                m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_flags = 0;
                m.msg_len = 0;
                if want_ctl {
                    m.msg_hdr.msg_control = ctl.as_mut_ptr().cast();
                    m.msg_hdr.msg_controllen = ctl_len as _;
                } else {
                    m.msg_hdr.msg_control = std::ptr::null_mut();
                    m.msg_hdr.msg_controllen = 0;
                }
            }
            // SAFETY: rmsgs/riov/rnames/rbufs are preallocated, point at each other and stay
            // alive and unmoved for the duration of the call.
            let r = unsafe {
                libc::recvmmsg(
                    fd,
                    self.rmsgs.as_mut_ptr(),
                    self.batch as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // Pending socket error (e.g. ICMP port unreachable): it is cleared by
                    // being reported; keep reading.
                    _ => {
                        self.stats.recv_errors += 1;
                        continue;
                    }
                }
            }
            let r = r as usize;
            for k in 0..r {
                let hdr = &self.rmsgs[k];
                // A cut-off control message may have held the GRO segment size or the
                // destination IP: the buffer cannot be split or attributed, so it is
                // dropped as truncated too.
                let cut = libc::MSG_TRUNC | if want_ctl { libc::MSG_CTRUNC } else { 0 };
                if hdr.msg_hdr.msg_flags & cut != 0 {
                    self.stats.truncated += 1;
                    continue;
                }
                let len = (hdr.msg_len as usize).min(self.rbuf_size);
                let Some(from) = sockaddr_from_storage(&self.rnames[k], hdr.msg_hdr.msg_namelen)
                else {
                    self.stats.recv_errors += 1;
                    continue;
                };
                let (seg, dst) = if want_ctl {
                    // `msg_controllen` is a size_t on glibc, a socklen_t on musl.
                    #[allow(clippy::unnecessary_cast)]
                    let clen = (hdr.msg_hdr.msg_controllen as usize).min(ctl_len);
                    // SAFETY: the kernel wrote `clen` bytes of control data into rctl[k]
                    // (`ctl_len <= RCTL_WORDS * 8`).
                    let ctl = unsafe {
                        std::slice::from_raw_parts(self.rctl[k].as_ptr().cast::<u8>(), clen)
                    };
                    recv_cmsgs(ctl, pktinfo)
                } else {
                    (None, None)
                };
                let meta = RecvMeta {
                    sock: id,
                    from,
                    dst,
                };
                let segs = match gro_split(len, seg, self.buf_size) {
                    Ok(segs) => segs,
                    Err(n) => {
                        self.stats.truncated += n;
                        continue;
                    }
                };
                let buf = self.slot_buf[k];
                let start = buf as usize * self.rbuf_size;
                self.lend.begin(buf);
                let region = self.lend.region().as_ptr();
                let mut n_seg = 0u64;
                for (at, n) in segs {
                    // SAFETY: slot k's buffer is ours until the next recvmmsg (a lent one
                    // leaves the batch), and nothing writes to it meanwhile (the payload
                    // and every lent `Bytes` are shared views).
                    let payload = unsafe { std::slice::from_raw_parts(region.add(start + at), n) };
                    n_seg += 1;
                    self.stats.received += 1;
                    delivered += 1;
                    on_recv(&mut self.sendq, meta, payload, &mut self.lend);
                    if self.sendq.queued() >= self.batch {
                        self.flush_now();
                    }
                }
                if self.lend.end() {
                    // Lent: a spare takes its place in the batch. `Lend` refuses once
                    // `batch` buffers are out, so one is left.
                    let s = self.spare.pop().expect("a spare for every lendable buffer");
                    self.slot_buf[k] = s;
                    // SAFETY: s < 2 × batch, inside the region.
                    self.riov[k].iov_base =
                        unsafe { region.add(s as usize * self.rbuf_size) }.cast();
                }
                if n_seg > 1 {
                    self.stats.gro_receives += 1;
                    self.stats.gro_segments += n_seg;
                }
            }
            if r < self.batch {
                break;
            }
        }
        // Keep `riov` alive/used (it is referenced only through raw pointers).
        debug_assert_eq!(self.riov.len(), self.batch);
        delivered
    }

    fn flush_now(&mut self) {
        flush_sends(
            &mut self.sendq,
            &self.socks,
            &mut self.send,
            &mut self.gso,
            &mut self.stats,
        );
    }
}

fn token(id: SocketId, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(id.0)
}

fn epoll_add(epfd: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll fd, valid event struct.
    cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Send every queued slot: grouped by socket (stable, so per-socket order is kept), up to
/// `batch` messages per `sendmmsg`, each message one datagram or (GSO) a run of them.
/// Failures are counted; all slots return to the pool.
fn flush_sends(
    q: &mut SendQueue,
    socks: &SockTable,
    send: &mut SendBufs,
    gso: &mut GsoState,
    stats: &mut IoStats,
) {
    if q.queued.is_empty() {
        return;
    }
    let mut queued = mem::take(&mut q.queued);
    // Group by socket (one `sendmmsg` per socket) and, within a socket, by destination
    // (longer GSO runs); order within each flow is kept.
    q.group_flows(&mut queued);
    let mut start = 0;
    while start < queued.len() {
        let sock = q.socks[queued[start] as usize];
        let mut end = start + 1;
        while end < queued.len() && q.socks[queued[end] as usize] == sock {
            end += 1;
        }
        let run = &queued[start..end];
        match socks.fd(sock) {
            None => stats.send_errors += run.len() as u64,
            Some(fd) => send_run(q, fd, run, send, gso, stats),
        }
        start = end;
    }
    for &i in &queued {
        q.release(i as usize);
    }
    queued.clear();
    q.queued = queued;
}

/// Send `run` (all for socket `fd`) in `sendmmsg` calls of up to `batch` messages.
fn send_run(
    q: &SendQueue,
    fd: RawFd,
    run: &[u32],
    send: &mut SendBufs,
    gso: &mut GsoState,
    stats: &mut IoStats,
) {
    let mut pos = 0;
    while pos < run.len() {
        // Fill up to `batch` messages starting at run[pos].
        let chunk_start = pos;
        let mut k = 0;
        let mut iv = 0;
        while k < send.batch && pos < run.len() {
            let n = if gso.enabled {
                q.gso_run(&run[pos..])
            } else {
                1
            };
            let first = run[pos] as usize;
            for (j, &slot) in run[pos..pos + n].iter().enumerate() {
                let i = slot as usize;
                send.iov[iv + j].iov_base = q.buf_ptr(i).cast();
                send.iov[iv + j].iov_len = q.lens[i] as usize;
            }
            let h = &mut send.msgs[k].msg_hdr;
            h.msg_name = (&q.addrs[first] as *const libc::sockaddr_storage)
                .cast_mut()
                .cast();
            h.msg_namelen = q.addr_lens[first];
            h.msg_iov = &mut send.iov[iv];
            h.msg_iovlen = n as _;
            let seg = (n > 1).then_some(q.lens[first] as u16);
            send.cmsgs[k].attach(seg, src_ip(q.src(first)), h);
            h.msg_flags = 0;
            send.msgs[k].msg_len = 0;
            send.segs[k] = n;
            k += 1;
            iv += n;
            pos += n;
        }
        let mut done = 0;
        while done < k {
            // SAFETY: msgs[done..k] are filled in above and point at live slot memory,
            // address storage, iovecs and control messages which outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    send.msgs[done..].as_mut_ptr(),
                    (k - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                for &n in &send.segs[done..done + r as usize] {
                    stats.sent += n as u64;
                    if n > 1 {
                        stats.gso_sends += 1;
                        stats.gso_segments += n as u64;
                    }
                }
                done += r as usize;
                continue;
            }
            let rest: usize = send.segs[done..k].iter().sum();
            if r == 0 {
                stats.send_errors += rest as u64;
                break;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => continue,
                // Socket buffer full: drop the rest of this call's datagrams.
                libc::EAGAIN => {
                    stats.send_errors += rest as u64;
                    break;
                }
                // GSO refused (no checksum offload, segment above the route MTU, ...):
                // nothing of this message was sent. Turn GSO off and refill from its first
                // datagram, now one datagram per message.
                e if send.segs[done] > 1 && is_gso_rejection(e) => {
                    gso.rejected(e, stats);
                    pos = chunk_start + send.segs[..done].iter().sum::<usize>();
                    break;
                }
                // The first message failed (e.g. ECONNREFUSED after ICMP, EINVAL address):
                // drop it and carry on with the next.
                _ => {
                    stats.send_errors += send.segs[done] as u64;
                    done += 1;
                }
            }
        }
    }
}
