//! Lending received datagrams: a [`Bytes`] that points into the receive buffer itself.
//!
//! Both backends keep their receive buffers in one [`Region`] owned by an `Arc`'d
//! [`Pool`]. While the receive callback runs, [`Lend`] knows which buffer holds the
//! datagram; [`Lend::lend`] turns a part of it into a `Bytes` whose owner ([`Loan`], one
//! per buffer, shared by every `Bytes` sliced from that buffer, e.g. the segments of a GRO
//! burst) keeps the buffer away from the kernel. When the last such `Bytes` is dropped, on
//! any thread, the loan pushes the buffer index into the pool's return queue (a bounded
//! lock-free crossbeam channel as large as the pool, so the push never blocks or fails);
//! the backend drains that queue at the start of each `poll` and hands the buffers back
//! (io_uring: to the provided-buffer ring; portable: to its spare list).
//!
//! At most `cap` buffers are out at once (io_uring: half the ring; portable: the spare
//! buffers beyond the `recvmmsg` batch). Past the cap `lend` says `None` and counts a
//! refusal: the caller copies instead, and a slow application never starves the receive
//! path. The region outlives the backend as long as any loan holds the `Arc`.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::Region;

/// The receive buffers of one backend, and the queue of lent buffers given back.
pub(crate) struct Pool {
    region: Region,
    buf_size: usize,
    back_tx: Sender<u32>,
    back_rx: Receiver<u32>,
}

// SAFETY: the region is plain memory reached only through raw pointers. A lent range is
// only read (through `Loan::as_ref`) and never handed to the kernel or written by the
// backend until its loan is dropped; every other range is used by the backend's thread
// alone. The channel ends are `Send + Sync`.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

/// The owner behind lent `Bytes`: buffer `buf` (all `buf_size` bytes of it; the lent
/// `Bytes` are slices of the received part).
struct Loan {
    pool: Arc<Pool>,
    buf: u32,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        let size = self.pool.buf_size;
        // SAFETY: buffer `buf` lies in the region (`Lend::begin` is given indices of the
        // pool's buffers only); it is not written while the loan lives (see `Pool`'s
        // Send/Sync); the memory is initialised (anonymous mappings read as zeros).
        unsafe {
            std::slice::from_raw_parts(
                self.pool.region.as_ptr().add(self.buf as usize * size),
                size,
            )
        }
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // The channel holds every buffer of the pool at once: never full (a failure here
        // would keep the buffer from the ring for good).
        let sent = self.pool.back_tx.try_send(self.buf);
        debug_assert!(sent.is_ok(), "lent buffer {} not returned", self.buf);
    }
}

/// Lends parts of the datagram being delivered as [`Bytes`]; handed to the receive
/// callback of [`Backend::poll`](super::Backend::poll). See the module docs of
/// [`io`](super) ("Lending").
pub struct Lend {
    pool: Arc<Pool>,
    /// Most buffers out at once.
    cap: usize,
    /// The buffer being delivered (only read while the callback runs, after `begin`).
    cur: u32,
    /// The current buffer's loan, once something of it was lent.
    held: Option<Bytes>,
    pub(crate) lends: u64,
    pub(crate) returns: u64,
    pub(crate) refused: u64,
}

impl fmt::Debug for Lend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lend")
            .field("cap", &self.cap)
            .field("out", &self.out())
            .finish_non_exhaustive()
    }
}

impl Lend {
    /// A pool over `region` (`bufs` buffers of `buf_size` bytes) lending at most `cap`
    /// of them at once.
    pub(crate) fn new(region: Region, bufs: usize, buf_size: usize, cap: usize) -> Self {
        debug_assert!(bufs * buf_size <= region.len);
        let (back_tx, back_rx) = crossbeam_channel::bounded(bufs.max(1));
        Self {
            pool: Arc::new(Pool {
                region,
                buf_size,
                back_tx,
                back_rx,
            }),
            cap,
            cur: 0,
            held: None,
            lends: 0,
            returns: 0,
            refused: 0,
        }
    }

    /// The receive buffer memory.
    pub(crate) fn region(&self) -> &Region {
        &self.pool.region
    }

    /// Most buffers lent at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Buffers lent now (as of the last drain of the return queue).
    pub fn out(&self) -> usize {
        (self.lends - self.returns) as usize
    }

    /// Datagrams of buffer `buf` (a buffer of the pool, owned by user space now) are
    /// about to be handed out.
    #[inline]
    pub(crate) fn begin(&mut self, buf: u32) {
        self.cur = buf;
    }

    /// The current buffer's datagrams have been handed out: true if part of it was lent
    /// (the backend must then keep it away from the kernel until it comes back).
    #[inline]
    pub(crate) fn end(&mut self) -> bool {
        // Test first: `take` would move the whole `Option<Bytes>` every time.
        if self.held.is_none() {
            return false;
        }
        self.held = None;
        true
    }

    /// The next lent buffer given back (every `Bytes` into it dropped), if any.
    #[inline]
    pub(crate) fn returned(&mut self) -> Option<u32> {
        if self.out() == 0 {
            return None; // nothing lent: no need to look at the queue
        }
        let b = self.pool.back_rx.try_recv().ok()?;
        self.returns += 1;
        Some(b)
    }

    /// `part` (a subslice of the payload being delivered) as a `Bytes` pointing into the
    /// receive buffer, without a copy. The buffer stays away from the kernel until every
    /// `Bytes` into it is dropped (from any thread). `None` if `part` is not inside the
    /// current receive buffer, or if `cap` buffers are already out (counted: the caller
    /// copies instead). The first lend of a buffer allocates the loan's shared header
    /// (`Bytes::from_owner`: one 24-byte allocation, a reference count beside the
    /// buffer's loan); further lends from the same buffer (the datagrams of a GRO burst) only
    /// bump its reference count. Safe: the payload is a shared view and nothing writes to
    /// a buffer between its delivery and its return (the kernel gets it back only then).
    pub fn lend(&mut self, part: &[u8]) -> Option<Bytes> {
        let (buf, size) = (self.cur, self.pool.buf_size);
        let base = self.pool.region.as_ptr() as usize + buf as usize * size;
        let at = (part.as_ptr() as usize).checked_sub(base)?;
        if at + part.len() > size {
            return None;
        }
        if self.held.is_none() {
            if self.out() >= self.cap {
                self.refused += 1;
                return None;
            }
            self.held = Some(Bytes::from_owner(Loan {
                pool: self.pool.clone(),
                buf,
            }));
            self.lends += 1;
        }
        self.held.as_ref().map(|b| b.slice(at..at + part.len()))
    }
}
