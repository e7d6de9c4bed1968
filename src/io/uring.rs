//! io_uring backend.
//!
//! * One ring per backend, `SINGLE_ISSUER | DEFER_TASKRUN` (plain setup if the kernel
//!   refuses those flags with `EINVAL`): completions are produced only inside our own
//!   `io_uring_enter(GETEVENTS)`, i.e. inside [`poll`](UringBackend::poll).
//! * Receive: a provided-buffer ring (`IORING_REGISTER_PBUF_RING`, group 0) of `buf_count`
//!   buffers of `buf_size`; each socket has one multishot `RecvMsg` armed over it. A CQE
//!   carries the buffer id; the buffer is parsed with [`types::RecvMsgOut`], handed to the
//!   callback in place and pushed back to the ring right after — unless the callback lent
//!   part of it ([`Lend`]): then it returns to the ring when the last `Bytes` into it is
//!   dropped (at most half the ring is lent at once). A CQE without `MORE`
//!   (`ENOBUFS`, error, termination) marks the socket for re-arming before the next enter.
//! * Send: `SendMsg` SQEs whose `msghdr`/`iovec` live in per-slot arrays allocated once;
//!   the slot returns to the [`SendQueue`] when its CQE arrives. With GSO, a run of
//!   datagrams goes out as one `SendMsg` whose `msghdr`, iovecs (one per slot) and
//!   `UDP_SEGMENT` control message live in a preallocated [`GsoGroup`]; its CQE frees every
//!   slot of the group. If no group is free, the run is sent datagram by datagram.
//! * GRO ([`Config::gro`]): every socket gets `UDP_GRO`, the receive template reserves
//!   room for its control message, and the ring holds at most `GRO_BUF_COUNT` buffers of
//!   `GRO_BUF_SIZE` bytes; a receive with a `UDP_GRO` segment size is handed to the
//!   callback one datagram at a time, in place.
//! * Waker: a blocking eventfd with a `Read` kept armed.
//!
//! `user_data` = `kind << 56 | generation << 32 | index` (index = socket index, send slot or
//! GSO group).
//!
//! Invariant: SQEs that name a socket fd are submitted before that fd can be closed
//! (`remove_socket` submits before dropping the socket), so a reused fd number is never hit.

use std::cell::UnsafeCell;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

use super::{
    Config, GEN_MASK, GRO_BUF_COUNT, GRO_BUF_SIZE, GRO_CMSG_SPACE, GSO_MAX_SEGMENTS, GsoState,
    IoError, IoStats, Lend, OnRecv, PKTINFO_CMSG_SPACE, RecvMeta, Region, SendCmsg, SendQueue,
    SockTable, SocketId, Waker, bind_udp, enable_gro, gro_split, gro_supported, is_gso_rejection,
    recv_cmsgs, sockaddr_from_bytes, src_ip,
};

const K_RECV: u64 = 1;
const K_SEND: u64 = 2;
const K_WAKE: u64 = 3;
const K_CANCEL: u64 = 4;
const K_SEND_GSO: u64 = 5;
const K_WATCH: u64 = 6;
const BGID: u16 = 0;
/// Submission queue entries.
const SQ_ENTRIES: u32 = 1024;
/// Most GSO sends in flight at once (each group record is ~1.4 KiB); beyond that, runs are
/// sent datagram by datagram until completions free a group.
const MAX_GSO_GROUPS: usize = 256;

/// Everything one in-flight GSO `SendMsg` points at: never moved while in flight (the
/// groups live in a boxed slice allocated in `new`).
struct GsoGroup {
    hdr: libc::msghdr,
    cmsg: SendCmsg,
    iov: [libc::iovec; GSO_MAX_SEGMENTS],
    slots: [u32; GSO_MAX_SEGMENTS],
    len: usize,
}

impl GsoGroup {
    fn new() -> Self {
        // SAFETY: msghdr and iovec are plain old data; all-zero is valid.
        unsafe {
            Self {
                hdr: mem::zeroed(),
                cmsg: SendCmsg::new(),
                iov: mem::zeroed(),
                slots: [0; GSO_MAX_SEGMENTS],
                len: 0,
            }
        }
    }
}

fn ud(kind: u64, generation: u32, idx: u32) -> u64 {
    (kind << 56) | (u64::from(generation & GEN_MASK) << 32) | u64::from(idx)
}

/// The provided-buffer ring: `count` `BufRingEntry`s (page-aligned, shared with the
/// kernel) describing `count` buffers of `buf_size` bytes. The buffers themselves live in
/// the [`Lend`] pool's region (`Arc`-owned, so lent buffers outlive the ring).
struct BufRing {
    entries: Region,
    /// Start of the buffer region (owned by the backend's `Lend`).
    bufs: *mut u8,
    mask: u16,
    tail: u16,
    buf_size: usize,
}

impl BufRing {
    /// The receive buffers: with `lazy`, only each buffer's first page is resident up
    /// front, the rest as the kernel first writes it (the GRO ring: 68 KiB buffers that
    /// small datagrams barely use).
    fn buffers(count: usize, buf_size: usize, lazy: bool) -> io::Result<Region> {
        if lazy {
            Region::new_first_pages(count, buf_size)
        } else {
            Region::new(count * buf_size)
        }
    }

    /// A ring over `bufs` (`count` buffers of `buf_size`, all given to the kernel).
    fn new(count: usize, buf_size: usize, bufs: &Region) -> io::Result<Self> {
        let mut r = Self {
            entries: Region::new(count * mem::size_of::<BufRingEntry>())?,
            bufs: bufs.as_ptr(),
            mask: (count - 1) as u16,
            tail: 0,
            buf_size,
        };
        for bid in 0..count {
            r.push(bid as u16);
        }
        r.publish();
        Ok(r)
    }

    fn base(&self) -> *mut BufRingEntry {
        self.entries.as_ptr().cast()
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid <= mask, so the offset is inside the buffer region.
        unsafe { self.bufs.add(usize::from(bid & self.mask) * self.buf_size) }
    }

    /// Give buffer `bid` back (visible to the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        let addr = self.buf_ptr(bid) as u64;
        // SAFETY: the index is masked into the ring; the entry at `tail` is not owned by the
        // kernel (it only consumes entries below the published tail). Entry 0's `resv`
        // (the shared tail) is not touched by these setters.
        unsafe {
            let e = &mut *self.base().add(usize::from(self.tail & self.mask));
            e.set_addr(addr);
            e.set_len(self.buf_size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `base` is the first, initialised entry of the ring; the tail is a u16
        // shared with the kernel, so it is written atomically with release ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.base()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

/// io_uring backend; see the module docs.
pub struct UringBackend {
    // Declared first: dropped before the memory it points into.
    ring: IoUring,
    bufring: BufRing,
    /// The receive buffers (`bufring` points into its region) and their loans.
    pub(crate) lend: Lend,
    recv_hdr: Box<libc::msghdr>,
    /// The receive template of sockets that report the destination IP: room for the
    /// `IP(V6)_PKTINFO` control message too.
    recv_hdr_pktinfo: Box<libc::msghdr>,
    socks: SockTable,
    rearm: Vec<(u32, u32)>,
    pub(crate) sendq: SendQueue,
    send_hdrs: Box<[libc::msghdr]>,
    send_iov: Box<[libc::iovec]>,
    /// Per send slot: control messages of a single send with a source IP.
    send_cmsgs: Box<[SendCmsg]>,
    gso_groups: Box<[GsoGroup]>,
    gso_free: Vec<u32>,
    pub(crate) gso: GsoState,
    /// Sockets get `UDP_GRO`; receives may carry several datagrams (see the module docs).
    pub(crate) gro: bool,
    /// Largest single datagram delivered (`buf_size - 144`, as without GRO).
    max_datagram: usize,
    /// Send slots (not SQEs) submitted and not yet completed.
    inflight_sends: usize,
    pub(crate) waker: Waker,
    wake_buf: Box<UnsafeCell<u64>>,
    wake_armed: bool,
    /// Foreign fds whose readability ends a wait (see `Backend::watch_fd`), with whether
    /// their poll is armed: one one-shot `PollAdd` each (the index in the user data),
    /// re-armed at the next poll, so they behave level-triggered.
    watch: Vec<(std::os::fd::RawFd, bool)>,
    pub(crate) watch_ready: bool,
    closing: bool,
    cqes: Vec<cqueue::Entry>,
    stash: Vec<cqueue::Entry>,
    pub(crate) stats: IoStats,
    batch: usize,
    defer_taskrun: bool,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("defer_taskrun", &self.defer_taskrun)
            .field("sockets", &self.socks)
            .field("sendq", &self.sendq)
            .field("inflight_sends", &self.inflight_sends)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn build_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, bool)> {
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(cq_entries)
        .build(entries)
    {
        Ok(r) => Ok((r, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(entries)
            .map(|r| (r, false)),
        Err(e) => Err(e),
    }
}

/// Push an SQE, submitting first if the SQ is full.
///
/// # Safety
/// Everything `e` points to must stay valid until its completion.
unsafe fn push_sqe(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
    for _ in 0..2 {
        // SAFETY: forwarded from the caller.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => {}
            Err(err) if is_transient(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "io_uring submission queue full",
    ))
}

fn is_send(c: &cqueue::Entry) -> bool {
    matches!(c.user_data() >> 56, K_SEND | K_SEND_GSO)
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY | libc::ETIME)
    )
}

impl UringBackend {
    /// Create the ring, register the buffer ring and arm the waker.
    pub fn new(cfg: &Config) -> Result<Self, IoError> {
        cfg.validate()?;
        let cq =
            ((cfg.buf_count + cfg.send_slots + 64).next_power_of_two() as u32).max(2 * SQ_ENTRIES);
        let (ring, defer_taskrun) = build_ring(SQ_ENTRIES, cq)
            .map_err(|e| IoError::UringUnavailable(format!("io_uring_setup failed: {e}")))?;
        let gro = cfg.gro && gro_supported();
        let (count, size) = if gro {
            (
                cfg.buf_count.min(GRO_BUF_COUNT),
                GRO_BUF_SIZE.max(cfg.buf_size),
            )
        } else {
            (cfg.buf_count, cfg.buf_size)
        };
        let bufs = BufRing::buffers(count, size, gro)?;
        let bufring = BufRing::new(count, size, &bufs)?;
        // Half the ring may be lent; the other half keeps receiving.
        let lend = Lend::new(bufs, count, size, count / 2);
        // SAFETY: the entry memory is page-aligned (mmap), holds mask + 1 entries and lives
        // as long as `self`; the ring (dropped first) is the only user.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufring.entries.as_ptr() as u64,
                (bufring.mask as usize + 1) as u16,
                BGID,
                0,
            )
        }
        .map_err(|e| IoError::UringUnavailable(format!("register_buf_ring failed: {e}")))?;

        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        recv_hdr.msg_controllen = if gro { GRO_CMSG_SPACE } else { 0 };
        let mut recv_hdr_pktinfo = Box::new(*recv_hdr);
        recv_hdr_pktinfo.msg_controllen += PKTINFO_CMSG_SPACE;

        let n = cfg.send_slots;
        // SAFETY: as above for msghdr/iovec.
        let send_hdrs = vec![unsafe { mem::zeroed::<libc::msghdr>() }; n].into();
        let send_iov = vec![unsafe { mem::zeroed::<libc::iovec>() }; n].into();
        let send_cmsgs = (0..n).map(|_| SendCmsg::new()).collect();
        let gso = GsoState::new(cfg);
        let groups = if gso.enabled {
            (n / 2).min(MAX_GSO_GROUPS)
        } else {
            0
        };
        let gso_groups: Box<[GsoGroup]> = (0..groups).map(|_| GsoGroup::new()).collect();

        let mut b = Self {
            ring,
            bufring,
            lend,
            recv_hdr,
            recv_hdr_pktinfo,
            socks: SockTable::default(),
            rearm: Vec::new(),
            sendq: SendQueue::new(n, cfg.buf_size)?,
            send_hdrs,
            send_iov,
            send_cmsgs,
            gso_groups,
            gso_free: (0..groups as u32).rev().collect(),
            gso,
            gro,
            max_datagram: cfg.buf_size - 144,
            inflight_sends: 0,
            waker: Waker::new(false)?,
            wake_buf: Box::new(UnsafeCell::new(0)),
            wake_armed: false,
            watch: Vec::new(),
            watch_ready: false,
            closing: false,
            cqes: Vec::with_capacity(cq as usize),
            stash: Vec::with_capacity(cq as usize),
            stats: IoStats::default(),
            batch: cfg.batch,
            defer_taskrun,
        };
        b.arm_wake()?;
        Ok(b)
    }

    /// Whether the ring runs with `SINGLE_ISSUER | DEFER_TASKRUN`.
    pub fn defer_taskrun(&self) -> bool {
        self.defer_taskrun
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::Read::new(
            Fd(self.waker.raw_fd()),
            self.wake_buf.get().cast::<u8>(),
            mem::size_of::<u64>() as u32,
        )
        .build()
        .user_data(ud(K_WAKE, 0, 0));
        // SAFETY: the eventfd and `wake_buf` (boxed, never moved) outlive the ring.
        unsafe { push_sqe(&mut self.ring, &e) }?;
        self.wake_armed = true;
        Ok(())
    }

    pub(crate) fn watch_fd(&mut self, fd: std::os::fd::RawFd) -> Result<(), IoError> {
        self.watch.push((fd, false));
        self.arm_watch()?;
        Ok(())
    }

    fn arm_watch(&mut self) -> io::Result<()> {
        if self.closing {
            return Ok(());
        }
        for i in 0..self.watch.len() {
            let (fd, armed) = self.watch[i];
            if armed {
                continue;
            }
            let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
                .build()
                .user_data(ud(K_WATCH, 0, i as u32));
            // SAFETY: the poll SQE holds no pointers; the caller keeps the fd open while
            // it is watched (`Backend::watch_fd`).
            unsafe { push_sqe(&mut self.ring, &e) }?;
            self.watch[i].1 = true;
        }
        Ok(())
    }

    fn arm_recv(&mut self, idx: u32) -> io::Result<()> {
        let e = &mut self.socks.entries[idx as usize];
        let Some(fd) = e.sock.as_ref().map(|s| s.as_raw_fd()) else {
            return Ok(());
        };
        let hdr = if e.pktinfo {
            &*self.recv_hdr_pktinfo
        } else {
            &*self.recv_hdr
        };
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), hdr, BGID)
            .build()
            .user_data(ud(K_RECV, e.generation, idx));
        e.armed = true;
        e.rearm = false;
        // SAFETY: both receive templates are boxed and live as long as the ring; the fd
        // stays open until this SQE is submitted (see the module invariant).
        unsafe { push_sqe(&mut self.ring, &sqe) }
    }

    fn rearm_pending(&mut self) -> io::Result<()> {
        while let Some((idx, generation)) = self.rearm.pop() {
            if self
                .socks
                .live_mut(idx, generation)
                .is_some_and(|e| e.rearm && !e.armed)
            {
                self.arm_recv(idx)?;
            }
        }
        Ok(())
    }

    pub(crate) fn add_socket(
        &mut self,
        sock: UdpSocket,
        pktinfo: bool,
        local: Option<SocketAddr>,
    ) -> Result<SocketId, IoError> {
        // A socket that refuses UDP_GRO just receives datagram by datagram.
        if self.gro {
            enable_gro(sock.as_raw_fd());
        }
        let id = self.socks.insert(sock, pktinfo, local)?;
        if let Err(e) = self.arm_recv(id.0) {
            self.socks.remove(id);
            return Err(e.into());
        }
        Ok(id)
    }

    pub(crate) fn remove_socket(&mut self, id: SocketId) {
        let Some((sock, generation, armed)) = self.socks.remove(id) else {
            return;
        };
        if armed {
            let e = opcode::AsyncCancel::new(ud(K_RECV, generation, id.0))
                .build()
                .user_data(ud(K_CANCEL, 0, 0));
            // SAFETY: the cancel SQE holds no pointers.
            if unsafe { push_sqe(&mut self.ring, &e) }.is_err() {
                tracing::warn!("io_uring: could not queue cancel for socket {}", id.0);
            }
        }
        // Submit everything naming this fd before closing it.
        if let Err(e) = self.ring.submit()
            && !is_transient(&e)
        {
            tracing::warn!("io_uring submit failed in remove_socket: {e}");
        }
        drop(sock);
    }

    pub(crate) fn local_addr(&self, id: SocketId) -> SocketAddr {
        self.socks.local_addr(id)
    }

    /// Turn queued send slots into `SendMsg` SQEs (not submitted yet): one per GSO run
    /// when GSO is on and a group record is free, otherwise one per datagram.
    fn push_sends(&mut self) {
        if self.sendq.queued.is_empty() {
            return;
        }
        let mut queued = mem::take(&mut self.sendq.queued);
        if self.gso.enabled {
            self.sendq.group_flows(&mut queued);
        }
        let mut pos = 0;
        while pos < queued.len() {
            let i = queued[pos] as usize;
            let Some(fd) = self.socks.fd(self.sendq.socks[i]) else {
                self.stats.send_errors += 1;
                self.sendq.release(i);
                pos += 1;
                continue;
            };
            let n = if self.gso.enabled && !self.gso_free.is_empty() {
                self.sendq.gso_run(&queued[pos..])
            } else {
                1
            };
            if n > 1 {
                self.push_gso(fd, &queued[pos..pos + n]);
            } else {
                self.push_single(fd, i);
            }
            pos += n;
        }
        queued.clear();
        self.sendq.queued = queued;
    }

    fn push_single(&mut self, fd: std::os::fd::RawFd, i: usize) {
        let iov = &mut self.send_iov[i];
        iov.iov_base = self.sendq.buf_ptr(i).cast();
        iov.iov_len = self.sendq.lens[i] as usize;
        let h = &mut self.send_hdrs[i];
        h.msg_name = (&self.sendq.addrs[i] as *const libc::sockaddr_storage)
            .cast_mut()
            .cast();
        h.msg_namelen = self.sendq.addr_lens[i];
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        match self.sendq.src(i) {
            0 if h.msg_controllen == 0 => {}
            src => self.send_cmsgs[i].attach(None, src_ip(src), h),
        }
        let sqe = opcode::SendMsg::new(Fd(fd), &*h)
            .build()
            .user_data(ud(K_SEND, 0, i as u32));
        // SAFETY: slot `i` (buffer, address, iovec, msghdr, control) is in flight until its CQE
        // and none of those arrays are reallocated; the fd is open (module invariant).
        match unsafe { push_sqe(&mut self.ring, &sqe) } {
            Ok(()) => self.inflight_sends += 1,
            Err(_) => {
                self.stats.send_errors += 1;
                self.sendq.release(i);
            }
        }
    }

    /// One `SendMsg` with a `UDP_SEGMENT` cmsg for `run` (same socket, source, destination
    /// and segment size, as checked by `SendQueue::gso_run`). A group record must be free.
    fn push_gso(&mut self, fd: std::os::fd::RawFd, run: &[u32]) {
        let g = self.gso_free.pop().expect("push_gso without a free group") as usize;
        let first = run[0] as usize;
        let grp = &mut self.gso_groups[g];
        for (k, &slot) in run.iter().enumerate() {
            let i = slot as usize;
            grp.iov[k].iov_base = self.sendq.buf_ptr(i).cast();
            grp.iov[k].iov_len = self.sendq.lens[i] as usize;
            grp.slots[k] = slot;
        }
        grp.len = run.len();
        let h = &mut grp.hdr;
        h.msg_name = (&self.sendq.addrs[first] as *const libc::sockaddr_storage)
            .cast_mut()
            .cast();
        h.msg_namelen = self.sendq.addr_lens[first];
        h.msg_iov = grp.iov.as_mut_ptr();
        h.msg_iovlen = run.len() as _;
        let (seg, src) = (self.sendq.lens[first] as u16, self.sendq.src(first));
        grp.cmsg.attach(Some(seg), src_ip(src), h);
        let sqe = opcode::SendMsg::new(Fd(fd), &grp.hdr)
            .build()
            .user_data(ud(K_SEND_GSO, 0, g as u32));
        // SAFETY: group `g` and the slots it names (buffers, first address) are in flight
        // until its CQE; the group array and the slot memory are never reallocated; the fd
        // is open (module invariant).
        match unsafe { push_sqe(&mut self.ring, &sqe) } {
            Ok(()) => self.inflight_sends += run.len(),
            Err(_) => {
                self.stats.send_errors += run.len() as u64;
                for &slot in run {
                    self.sendq.release(slot as usize);
                }
                self.gso_free.push(g as u32);
            }
        }
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        self.push_sends();
        self.rearm_pending()?;
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Flush, then reap send completions until a slot is free (other completions are
    /// stashed for the next `poll`).
    pub(crate) fn make_room(&mut self) -> Result<(), IoError> {
        self.flush()?;
        for attempt in 0..3 {
            if self.sendq.available() > 0 || self.inflight_sends == 0 {
                break;
            }
            let wait = if attempt == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            };
            self.enter(Some(wait))?;
            self.cqes.clear();
            self.cqes.extend(self.ring.completion());
            let cqes = mem::take(&mut self.cqes);
            for c in &cqes {
                if is_send(c) {
                    self.on_send_cqe(c);
                } else {
                    self.stash.push(c.clone());
                }
            }
            self.cqes = cqes;
        }
        Ok(())
    }

    /// Take everything already in the CQ: send completions free their slots now, all
    /// other completions go to the stash (in order) for the poll loop.
    fn reap_sends(&mut self) {
        loop {
            let Some(c) = self.ring.completion().next() else {
                break;
            };
            if is_send(&c) {
                self.on_send_cqe(&c);
            } else {
                self.stash.push(c);
            }
        }
    }

    /// Submit and wait for at least one completion or the timeout.
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Handles the completions `reap_sends` set aside. Handling them may set aside more
    /// (a receive that fills the send queue reaps sends again): those are kept for the
    /// next round, never dropped — a lost receive completion would keep its buffer from
    /// the ring for good, a lost final multishot one leave its socket deaf.
    fn drain_stash(&mut self, on_recv: &mut OnRecv<'_>) -> usize {
        let mut stash = mem::take(&mut self.stash);
        let mut delivered = 0;
        for c in &stash {
            delivered += self.on_cqe(c, on_recv);
        }
        stash.clear();
        // Newer than what was just handled: keep them, in order, for the next round.
        stash.append(&mut self.stash);
        self.stash = stash;
        delivered
    }

    pub(crate) fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut OnRecv<'_>,
    ) -> Result<usize, IoError> {
        self.push_sends();
        self.take_back_lent();
        self.rearm_pending()?;
        self.arm_watch()?;
        let mut delivered = 0;
        if !self.stash.is_empty() {
            delivered += self.drain_stash(on_recv);
        }
        let wait = if delivered > 0 {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        self.enter(wait)?;
        for _ in 0..4 {
            if !self.stash.is_empty() {
                // Completions set aside by `reap_sends` during the previous batch; they
                // are newer than that batch and older than anything still in the CQ.
                delivered += self.drain_stash(on_recv);
                continue;
            }
            self.cqes.clear();
            let cap = self.cqes.capacity();
            self.cqes.extend(self.ring.completion().take(cap));
            if self.cqes.is_empty() {
                break;
            }
            let cqes = mem::take(&mut self.cqes);
            for c in &cqes {
                delivered += self.on_cqe(c, on_recv);
            }
            self.cqes = cqes;
        }
        self.rearm_pending()?;
        Ok(delivered)
    }

    /// Lent buffers whose `Bytes` are all dropped go back into the ring.
    fn take_back_lent(&mut self) {
        let mut any = false;
        while let Some(bid) = self.lend.returned() {
            self.bufring.push(bid as u16);
            any = true;
        }
        if any {
            self.bufring.publish();
        }
    }

    fn on_send_cqe(&mut self, c: &cqueue::Entry) {
        let i = (c.user_data() & 0xffff_ffff) as usize;
        if c.user_data() >> 56 == K_SEND_GSO {
            self.on_gso_cqe(i, c.result());
            return;
        }
        self.inflight_sends -= 1;
        if c.result() < 0 {
            self.stats.send_errors += 1;
        } else {
            self.stats.sent += 1;
        }
        self.sendq.release(i);
    }

    /// Completion of GSO group `g`: frees the group and every slot in it — or, if the
    /// kernel refused GSO, turns GSO off and queues the slots again as single sends.
    fn on_gso_cqe(&mut self, g: usize, res: i32) {
        let grp = &self.gso_groups[g];
        let n = grp.len;
        self.inflight_sends -= n;
        if res >= 0 {
            self.stats.sent += n as u64;
            self.stats.gso_sends += 1;
            self.stats.gso_segments += n as u64;
        } else if is_gso_rejection(-res) {
            self.gso.rejected(-res, &mut self.stats);
        } else {
            self.stats.send_errors += n as u64;
        }
        let retry = res < 0 && is_gso_rejection(-res) && !self.closing;
        for &slot in &grp.slots[..n] {
            if retry {
                // Nothing of the group was sent; the slot still holds its datagram,
                // socket and destination. Order relative to later queued sends is lost
                // (once per backend, since GSO is now off).
                self.sendq.queued.push(slot);
            } else {
                self.sendq.release(slot as usize);
            }
        }
        self.gso_free.push(g as u32);
    }

    fn on_cqe(&mut self, c: &cqueue::Entry, on_recv: &mut OnRecv<'_>) -> usize {
        match c.user_data() >> 56 {
            K_RECV => self.on_recv_cqe(c, on_recv),
            K_SEND | K_SEND_GSO => {
                self.on_send_cqe(c);
                0
            }
            K_WAKE => {
                self.wake_armed = false;
                if c.result() >= 0 {
                    self.stats.wakeups += 1;
                }
                if !self.closing && self.arm_wake().is_err() {
                    tracing::warn!("io_uring: could not re-arm the waker read");
                }
                0
            }
            K_WATCH => {
                if let Some(w) = self.watch.get_mut((c.user_data() & 0xffff_ffff) as usize) {
                    w.1 = false;
                }
                self.watch_ready = true;
                0
            }
            _ => 0, // K_CANCEL
        }
    }

    fn on_recv_cqe(&mut self, c: &cqueue::Entry, on_recv: &mut OnRecv<'_>) -> usize {
        let data = c.user_data();
        let idx = (data & 0xffff_ffff) as u32;
        let generation = ((data >> 32) as u32) & GEN_MASK;
        let res = c.result();
        let flags = c.flags();
        let live = self.socks.live_mut(idx, generation).map(|e| e.pktinfo);
        let mut delivered = 0;
        if res < 0 {
            match -res {
                libc::ENOBUFS => self.stats.enobufs += 1,
                libc::ECANCELED => {}
                _ => self.stats.recv_errors += 1,
            }
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            if let Some(pktinfo) = live
                && res >= 0
            {
                delivered = self.deliver(SocketId(idx), pktinfo, bid, res as usize, on_recv);
            }
            // A lent buffer comes back through `take_back_lent`.
            if !self.lend.end() {
                self.bufring.push(bid);
                self.bufring.publish();
            }
        }
        if !cqueue::more(flags)
            && let Some(e) = self.socks.live_mut(idx, generation)
        {
            e.armed = false;
            if !self.closing {
                e.rearm = true;
                self.rearm.push((idx, generation));
                self.stats.rearms += 1;
            }
        }
        delivered
    }

    /// Parse buffer `bid` (`len` bytes written by the kernel) and hand the payload out: one
    /// datagram, or with GRO every `seg`-byte datagram of a merged burst (the last may be
    /// shorter). Returns the datagrams delivered.
    fn deliver(
        &mut self,
        id: SocketId,
        pktinfo: bool,
        bid: u16,
        len: usize,
        on_recv: &mut OnRecv<'_>,
    ) -> usize {
        let base = self.bufring.buf_ptr(bid);
        let len = len.min(self.bufring.buf_size);
        let hdr = if pktinfo {
            &self.recv_hdr_pktinfo
        } else {
            &self.recv_hdr
        };
        let parsed = {
            // SAFETY: the kernel handed buffer `bid` to us with this CQE and does not touch
            // it until we push it back; `len` bytes of it were written.
            let buf = unsafe { std::slice::from_raw_parts(base, len) };
            match RecvMsgOut::parse(buf, hdr) {
                Ok(out) if out.is_payload_truncated() || out.is_name_data_truncated() => Err(true),
                // The GRO segment size or the destination IP may be what was cut off: the
                // buffer cannot be split, or not be attributed.
                Ok(out) if (self.gro || pktinfo) && out.is_control_data_truncated() => Err(true),
                Ok(out) => {
                    let payload = out.payload_data();
                    let off = payload.as_ptr() as usize - base as usize;
                    let (seg, dst) = if self.gro || pktinfo {
                        recv_cmsgs(out.control_data(), pktinfo)
                    } else {
                        (None, None)
                    };
                    Ok((
                        sockaddr_from_bytes(out.name_data()),
                        off,
                        payload.len(),
                        seg,
                        dst,
                    ))
                }
                Err(()) => Err(false),
            }
        };
        let (from, off, plen, seg, dst) = match parsed {
            Ok((Some(from), off, plen, seg, dst)) => (from, off, plen, seg, dst),
            Ok((None, ..)) | Err(false) => {
                self.stats.recv_errors += 1;
                return 0;
            }
            Err(true) => {
                self.stats.truncated += 1;
                return 0;
            }
        };
        let segs = match gro_split(plen, seg, self.max_datagram) {
            Ok(segs) => segs,
            Err(n) => {
                self.stats.truncated += n;
                return 0;
            }
        };
        let start = usize::from(bid & self.bufring.mask) * self.bufring.buf_size + off;
        self.lend.begin(u32::from(bid & self.bufring.mask));
        let region = self.lend.region().as_ptr();
        let meta = RecvMeta {
            sock: id,
            from,
            dst,
        };
        let mut delivered = 0;
        for (at, n) in segs {
            // SAFETY: in bounds of buffer `bid` (parse checked `off + plen`); the kernel
            // does not own the buffer while it is delivered or lent, and nothing writes to
            // it meanwhile (the payload and every lent `Bytes` are shared views).
            let payload = unsafe { std::slice::from_raw_parts(region.add(start + at), n) };
            delivered += 1;
            self.stats.received += 1;
            on_recv(&mut self.sendq, meta, payload, &mut self.lend);
            if self.sendq.queued() >= self.batch {
                self.push_sends();
                if let Err(e) = self.ring.submit()
                    && !is_transient(&e)
                {
                    tracing::warn!("io_uring submit failed: {e}");
                }
                if self.sendq.available() == 0 {
                    self.reap_sends();
                }
            }
        }
        if delivered > 1 {
            self.stats.gro_receives += 1;
            self.stats.gro_segments += delivered as u64;
        }
        delivered
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // Cancel everything that points into our memory and wait (bounded) for the
        // completions, so the kernel is done with the buffers before they are unmapped.
        self.closing = true;
        let targets: Vec<u64> = self
            .socks
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.armed && e.sock.is_some())
            .map(|(i, e)| ud(K_RECV, e.generation, i as u32))
            .chain(self.wake_armed.then(|| ud(K_WAKE, 0, 0)))
            .collect();
        for t in targets {
            let e = opcode::AsyncCancel::new(t)
                .build()
                .user_data(ud(K_CANCEL, 0, 0));
            // SAFETY: no pointers in a cancel SQE.
            let _ = unsafe { push_sqe(&mut self.ring, &e) };
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut noop = |_: &mut SendQueue, _: RecvMeta, _: &[u8], _: &mut Lend| {};
        while Instant::now() < deadline {
            let armed = self.socks.entries.iter().any(|e| e.armed);
            if !armed && !self.wake_armed && self.inflight_sends == 0 {
                break;
            }
            if self.enter(Some(Duration::from_millis(10))).is_err() {
                break;
            }
            let cqes: Vec<cqueue::Entry> = self.ring.completion().collect();
            for c in &cqes {
                self.on_cqe(c, &mut noop);
            }
        }
    }
}

/// Probe io_uring for everything the backend needs; `Ok(reason)` / `Err(reason)`.
pub(crate) fn probe() -> Result<String, String> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let v = s.trim();
        if v == "2" {
            return Err("io_uring_disabled=2".to_string());
        }
    }
    let (ring, _) = build_ring(8, 16).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Read::CODE, "READ"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("kernel lacks IORING_OP_{name}"));
        }
    }
    drop(ring);

    // Functional check: multishot RecvMsg over a buffer ring, on a loopback socket.
    let cfg = Config {
        batch: 4,
        buf_size: 512,
        buf_count: 8,
        send_slots: 4,
        gso: false,
        gro: false,
    };
    let mut b = UringBackend::new(&cfg).map_err(|e| e.to_string())?;
    let sock = bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false)
        .map_err(|e| format!("probe socket: {e}"))?;
    let id = b.add_socket(sock, false, None).map_err(|e| e.to_string())?;
    let me = b.local_addr(id);
    for _ in 0..2 {
        b.sendq
            .send_to(id, me, b"icering io_uring probe")
            .map_err(|e| e.to_string())?;
    }
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while got < 2 && Instant::now() < deadline {
        b.poll(Some(Duration::from_millis(50)), &mut |_, _, _, _| got += 1)
            .map_err(|e| format!("probe poll: {e}"))?;
    }
    let st = b.stats;
    if got < 2 {
        return Err(format!(
            "multishot recvmsg probe received {got}/2 datagrams (recv_errors={}, send_errors={})",
            st.recv_errors, st.send_errors
        ));
    }
    if st.rearms > 0 {
        return Err("recvmsg is not multishot on this kernel".to_string());
    }
    Ok(if b.defer_taskrun {
        "kernel supports multishot recvmsg + buffer rings, SINGLE_ISSUER|DEFER_TASKRUN".to_string()
    } else {
        "kernel supports multishot recvmsg + buffer rings; DEFER_TASKRUN refused".to_string()
    })
}
