//! The link between an application-owned agent ([`DataMode::App`](super::DataMode::App))
//! and its hosting on a shard: ONE shared allocation (`Arc<Link>`, 192 B) holding the
//! connection state, the event queue and the received-data queue, instead of three
//! channels (a tokio `mpsc` of `[ice] recv_queue` with its first 32-slot block allocated
//! up front, a `watch` and an event queue: ~2.6 KB per agent before any datagram).
//!
//! - **State**: an atomic (state and change count), read without a lock; watchers
//!   ([`StateWatch`], any number) wait on a `tokio::sync::Notify`, whose waiter list is
//!   intrusive (no allocation per watcher).
//! - **Events**: control traffic, a handful per agent's life: a mutex-guarded `VecDeque`
//!   that allocates only for events waiting ([`Events`]).
//! - **Data**: [`Ring`], a lock-free single-producer (the shard thread) /
//!   single-consumer (`Conn::recv`) queue bounded by `[ice] recv_queue`, that allocates
//!   nothing until the first datagram and then grows by doubling segments as the backlog
//!   needs (8 slots, 256 B + 40 B, at first), never per datagram once grown.
//! - **Closed flags**: the shard dropped the agent (reads end once drained), and the
//!   application dropped its data receiver (the shard stops queuing; counted as
//!   `drop_app_full`, as a closed channel was).
//!
//! No cache padding between the producer's and the consumer's indexes: it would cost
//! 128 B per agent to save a shared cache line per datagram, and memory per agent is what
//! this link is for.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{AgentEvent, ApiError};
use crate::ice::ConnectionState;

const STATES: [ConnectionState; 7] = [
    ConnectionState::New,
    ConnectionState::Checking,
    ConnectionState::Connected,
    ConnectionState::Completed,
    ConnectionState::Disconnected,
    ConnectionState::Failed,
    ConnectionState::Closed,
];

fn encode(s: ConnectionState) -> u32 {
    STATES.iter().position(|x| *x == s).unwrap_or(0) as u32
}

fn decode(v: u32) -> ConnectionState {
    STATES[(v & 0xff) as usize % STATES.len()]
}

/// The shared state of one application-owned agent.
pub(crate) struct Link {
    /// Connection state in the low 8 bits, the number of changes above.
    state: AtomicU32,
    /// The shard dropped the agent: no more state changes, events or data.
    closed: AtomicBool,
    /// A `Conn` took the data receiver (at most one ever does).
    data_taken: AtomicBool,
    /// The data receiver is gone: the shard drops instead of queuing.
    data_gone: AtomicBool,
    state_changed: Notify,
    ctl: Mutex<Ctl>,
    data_waker: AtomicWaker,
    data: Ring<Bytes>,
}

#[derive(Default)]
struct Ctl {
    events: VecDeque<AgentEvent>,
    waker: Option<Waker>,
    /// The [`Events`] receiver is gone: events are dropped instead of queued.
    deaf: bool,
}

impl Ctl {
    /// The oldest event; the queue's storage goes with the last one (events come a
    /// handful per agent's life: an agent that read them all keeps no buffer for them).
    fn pop(&mut self) -> Option<AgentEvent> {
        let ev = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        ev
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("state", &decode(self.state.load(Ordering::Relaxed)))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A new link whose data queue holds at most `recv_queue` datagrams; the shard's end
    /// and the application's shared state.
    pub(crate) fn new(recv_queue: usize) -> (LinkTx, Arc<Link>) {
        let link = Arc::new(Link {
            state: AtomicU32::new(encode(ConnectionState::New)),
            closed: AtomicBool::new(false),
            data_taken: AtomicBool::new(false),
            data_gone: AtomicBool::new(false),
            state_changed: Notify::new(),
            ctl: Mutex::new(Ctl::default()),
            data_waker: AtomicWaker::new(),
            data: Ring::new(recv_queue),
        });
        (LinkTx(link.clone(), std::marker::PhantomData), link)
    }

    fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection state now.
    pub(crate) fn state(&self) -> ConnectionState {
        decode(self.state.load(Ordering::SeqCst))
    }

    /// A watcher of the connection state.
    pub(crate) fn watch(self: &Arc<Self>) -> StateWatch {
        StateWatch {
            seen: self.state.load(Ordering::SeqCst),
            link: self.clone(),
        }
    }

    /// The event receiver (the agent makes one, once).
    pub(crate) fn events(self: &Arc<Self>) -> Events {
        Events { link: self.clone() }
    }

    /// The data receiver, the first time only.
    pub(crate) fn take_data(self: &Arc<Self>) -> Option<DataRx> {
        (!self.data_taken.swap(true, Ordering::AcqRel)).then(|| DataRx {
            link: self.clone(),
            returned: false,
        })
    }
}

/// The shard's end of a [`Link`] (kept in the agent's hosting record). Dropping it closes
/// the link: state `Closed`, and every reader ends once it has read what was queued.
/// Not `Sync` (one writer: `set_state` is a load then a store), still `Send`.
#[derive(Debug)]
pub(crate) struct LinkTx(Arc<Link>, std::marker::PhantomData<std::cell::Cell<()>>);

impl LinkTx {
    /// Publishes a state change to every watcher.
    pub(crate) fn set_state(&self, s: ConnectionState) {
        let v = self.0.state.load(Ordering::Relaxed);
        // Only this end writes the state: a plain store of the next change count.
        self.0.state.store(
            (v & !0xff).wrapping_add(0x100) | encode(s),
            Ordering::SeqCst,
        );
        self.0.state_changed.notify_waiters();
    }

    /// Queues an event (dropped if the application no longer listens).
    pub(crate) fn event(&self, ev: AgentEvent) {
        let waker = {
            let mut c = self.0.ctl();
            if c.deaf {
                return;
            }
            c.events.push_back(ev);
            c.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether a datagram would be queued now (checked before lending a buffer for it):
    /// only while a `dial`/`accept` holds the receiver. Before (an agent that never
    /// dials) and after it, nothing would read it: it is dropped and counted instead of
    /// pinning lent receive buffers until the agent closes.
    pub(crate) fn has_room(&self) -> bool {
        self.0.data_taken.load(Ordering::Acquire)
            && !self.0.data_gone.load(Ordering::Relaxed)
            && self.0.data.has_room()
    }

    /// Queues a received datagram for `Conn::recv`; gives it back if the queue is full
    /// or the receiver is gone. No lock; no allocation once the queue has grown to the
    /// backlog.
    pub(crate) fn push(&mut self, data: Bytes) -> Result<(), Bytes> {
        if !self.0.data_taken.load(Ordering::Acquire) || self.0.data_gone.load(Ordering::Relaxed) {
            return Err(data);
        }
        // SAFETY: `LinkTx` is the only producer (one per link, not `Clone`) and `push`
        // takes `&mut self`.
        unsafe { self.0.data.push(data) }?;
        self.0.data_waker.wake();
        Ok(())
    }
}

impl Drop for LinkTx {
    fn drop(&mut self) {
        if self.0.state() != ConnectionState::Closed {
            self.set_state(ConnectionState::Closed);
        }
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.state_changed.notify_waiters();
        self.0.data_waker.wake();
        let waker = self.0.ctl().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A watcher of an agent's connection state ([`Agent::state`](super::Agent::state)):
/// the current value without a lock, and [`changed`](Self::changed) to wait for the next
/// one. Clones watch independently.
#[derive(Clone)]
pub struct StateWatch {
    link: Arc<Link>,
    /// The raw state (with its change count) this watcher last saw.
    seen: u32,
}

impl std::fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StateWatch").field(&self.get()).finish()
    }
}

impl StateWatch {
    /// The connection state now.
    pub fn get(&self) -> ConnectionState {
        self.link.state()
    }

    /// Waits for a state this watcher has not seen yet and returns it (intermediate
    /// states may be skipped, as with a `watch`). [`ApiError::Closed`] once the shard has
    /// dropped the agent and its last state (`Closed`) was seen.
    pub async fn changed(&mut self) -> Result<ConnectionState, ApiError> {
        let link = &*self.link;
        loop {
            // Created before the state is read: `notify_waiters` after our read wakes it
            // (a `Notified` counts the notify_waiters calls since its creation).
            let notified = link.state_changed.notified();
            let v = link.state.load(Ordering::SeqCst);
            if v != self.seen {
                self.seen = v;
                return Ok(decode(v));
            }
            if link.closed.load(Ordering::SeqCst) {
                // The final state is stored before `closed`: read it once more.
                let v = link.state.load(Ordering::SeqCst);
                if v != self.seen {
                    self.seen = v;
                    return Ok(decode(v));
                }
                return Err(ApiError::Closed);
            }
            notified.await;
        }
    }
}

/// The receiving end of an agent's events, in order ([`Agent::take_events`]).
///
/// [`Agent::take_events`]: super::Agent::take_events
pub struct Events {
    link: Arc<Link>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("waiting", &self.link.ctl().events.len())
            .finish()
    }
}

impl Events {
    /// The next event; `None` once the agent is gone and every event was read.
    pub async fn recv(&mut self) -> Option<AgentEvent> {
        poll_fn(|cx| {
            let mut c = self.link.ctl();
            if let Some(ev) = c.pop() {
                return Poll::Ready(Some(ev));
            }
            // Under the lock: the shard queues its last events before it sets `closed`.
            if self.link.closed.load(Ordering::SeqCst) {
                return Poll::Ready(None);
            }
            if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                c.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<AgentEvent> {
        self.link.ctl().pop()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut c = self.link.ctl();
        c.deaf = true;
        c.events = VecDeque::new();
        c.waker = None;
    }
}

/// The receiving end of an agent's data (held by its `Conn`; one per link).
pub(crate) struct DataRx {
    link: Arc<Link>,
    /// Given back by a `dial`/`accept` that failed or was cancelled: the next one takes
    /// it again, and what was queued stays queued.
    returned: bool,
}

impl std::fmt::Debug for DataRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataRx")
            .field("slots", &self.link.data.slots())
            .finish()
    }
}

impl DataRx {
    fn pop(&mut self) -> Option<Bytes> {
        // SAFETY: `DataRx` is the only consumer (one per link: `Link::take_data`) and
        // `pop` takes `&mut self`.
        unsafe { self.link.data.pop() }
    }

    /// The next datagram; `None` once the shard dropped the agent and all was read.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        poll_fn(|cx| {
            if let Some(b) = self.pop() {
                return Poll::Ready(Some(b));
            }
            self.link.data_waker.register(cx.waker());
            // Registered before the second look: a push (or the close) after it wakes us.
            if let Some(b) = self.pop() {
                return Poll::Ready(Some(b));
            }
            if self.link.closed.load(Ordering::SeqCst) {
                // Datagrams are queued before `closed` is set.
                return Poll::Ready(self.pop());
            }
            Poll::Pending
        })
        .await
    }

    /// The connection state now (for `Conn`).
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Slots the data queue has allocated (0 before the first datagram). For tests.
    pub(crate) fn slots(&self) -> usize {
        self.link.data.slots()
    }

    /// Gives the receiver back unused, for a later `dial`/`accept` to take.
    pub(crate) fn give_back(mut self) {
        self.returned = true;
    }
}

impl Drop for DataRx {
    fn drop(&mut self) {
        if self.returned {
            // No pop from here on: the next `take_data` makes the only consumer.
            self.link.data_taken.store(false, Ordering::Release);
            return;
        }
        // The shard stops queuing; what is queued goes now (lent buffers back to the io
        // ring), not when the agent closes. A datagram the shard pushed while reading the
        // flag stays until the link is dropped.
        self.link.data_gone.store(true, Ordering::SeqCst);
        while self.pop().is_some() {}
    }
}

/// Smallest segment of the data queue.
const MIN_SLOTS: usize = 8;

/// A bounded lock-free single-producer / single-consumer queue that allocates nothing
/// until its first item, then grows (never past `bound` items) by linking a segment
/// twice the size of the last one when that one is full. Once a
/// segment is large enough for the backlog, it is reused as a ring: no allocation per
/// item.
///
/// Items have global indexes: `tail` is the next the producer writes, `head` the next
/// the consumer reads. Each segment holds the items from its `start` to the next
/// segment's `start` (the newest: to `tail`), item `i` at slot `i % cap`.
///
/// Memory ordering:
/// - The producer writes slot `t`, then stores `tail = t + 1` (Release); the consumer
///   loads `tail` (Acquire) before reading any slot below it, so it sees the item, and
///   every segment and `next`/`first` pointer the producer published before.
/// - The consumer reads slot `h`, then stores `head = h + 1` (Release); the producer loads
///   `head` (Acquire) before reusing a slot, which it only does for an index at least
///   `cap` past one below `head`. A stale (smaller) `head` only makes the producer see
///   the queue fuller than it is.
/// - Only the consumer frees a segment, once it has read all of it (its successor starts
///   at or before `head`); by then the producer has moved on to a later segment and
///   never touches it again.
pub(crate) struct Ring<T> {
    /// At most this many items (`u32`: with `slots`, one word; keeps the link in a
    /// smaller allocator size class).
    bound: u32,
    head: AtomicUsize,
    tail: AtomicUsize,
    /// The first segment, published with the first item.
    first: AtomicPtr<Seg<T>>,
    /// Slots allocated in all live segments (for the footprint probe).
    slots: AtomicU32,
    /// The segment the producer writes (producer only).
    prod: UnsafeCell<*mut Seg<T>>,
    /// The segment the consumer reads (consumer only; null before its first read).
    cons: UnsafeCell<*mut Seg<T>>,
}

// SAFETY: items move from the producer's thread to the consumer's (`T: Send`); the
// `UnsafeCell`s are each touched by one side only, per the contracts of `push` and `pop`.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above: shared access is through `push` (one producer) and `pop` (one
// consumer), synchronised by `head` and `tail`.
unsafe impl<T: Send> Sync for Ring<T> {}

struct Seg<T> {
    /// Index of this segment's first item.
    start: usize,
    /// The next segment, once the producer moved on.
    next: AtomicPtr<Seg<T>>,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Seg<T> {
    fn alloc(start: usize, cap: usize) -> *mut Seg<T> {
        debug_assert!(cap.is_power_of_two());
        Box::into_raw(Box::new(Seg {
            start,
            next: AtomicPtr::new(ptr::null_mut()),
            slots: (0..cap)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        }))
    }

    fn slot(&self, i: usize) -> *mut MaybeUninit<T> {
        self.slots[i & (self.slots.len() - 1)].get()
    }
}

impl<T> Ring<T> {
    /// An empty queue of at most `bound` items (at least 1); allocates nothing.
    pub(crate) fn new(bound: usize) -> Self {
        Ring {
            bound: bound.clamp(1, 1 << 30) as u32,
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            first: AtomicPtr::new(ptr::null_mut()),
            slots: AtomicU32::new(0),
            prod: UnsafeCell::new(ptr::null_mut()),
            cons: UnsafeCell::new(ptr::null_mut()),
        }
    }

    fn bound(&self) -> usize {
        self.bound as usize
    }

    fn max_cap(&self) -> usize {
        self.bound().next_power_of_two()
    }

    /// Slots allocated now (0 before the first item).
    pub(crate) fn slots(&self) -> usize {
        self.slots.load(Ordering::Relaxed) as usize
    }

    /// Whether a push would find room (may be stale towards "full"). `head` is read
    /// first: it never passes `tail`, so the difference cannot underflow from any thread.
    pub(crate) fn has_room(&self) -> bool {
        let h = self.head.load(Ordering::Acquire);
        self.tail.load(Ordering::Acquire) - h < self.bound()
    }

    fn new_seg(&self, start: usize, cap: usize) -> *mut Seg<T> {
        self.slots.fetch_add(cap as u32, Ordering::Relaxed);
        Seg::alloc(start, cap)
    }

    /// Appends `item`, or gives it back if `bound` items are queued.
    ///
    /// # Safety
    /// One producer: no two calls to `push` may run at once.
    pub(crate) unsafe fn push(&self, item: T) -> Result<(), T> {
        let t = self.tail.load(Ordering::Relaxed);
        let h = self.head.load(Ordering::Acquire);
        if t - h >= self.bound() {
            return Err(item);
        }
        // SAFETY: only the producer touches `prod` (the caller's contract).
        let prod = unsafe { &mut *self.prod.get() };
        if prod.is_null() {
            let seg = self.new_seg(t, MIN_SLOTS.min(self.max_cap()));
            *prod = seg;
            // Published to the consumer by the `tail` store below.
            self.first.store(seg, Ordering::Release);
        } else {
            // SAFETY: the producer's segment is live: the consumer frees a segment only
            // once a later one exists, and the producer always writes the latest.
            let (start, cap, next) = unsafe {
                let s = &**prod;
                (s.start, s.slots.len(), &s.next)
            };
            if t - h.max(start) == cap {
                // Full (items from an older segment, if any, are not in this one):
                // link a larger one. `t - h < bound <= max_cap` means `cap < max_cap`.
                // Doubling (not just the room left) so that a lasting backlog ends in
                // one segment that holds it, reused with no more allocation.
                debug_assert!(cap < self.max_cap());
                let seg = self.new_seg(t, (cap * 2).min(self.max_cap()));
                next.store(seg, Ordering::Release);
                *prod = seg;
            }
        }
        // SAFETY: slot `t` of the producer's segment is free: the segment holds fewer
        // than `cap` items from `max(head, start)` to `t`, so whatever was at this slot
        // (index `t - cap`) was read before `head` passed it (Acquire above).
        unsafe { (*(**prod).slot(t)).write(item) };
        self.tail.store(t + 1, Ordering::Release);
        Ok(())
    }

    /// Takes the oldest item.
    ///
    /// # Safety
    /// One consumer: no two calls to `pop` may run at once.
    pub(crate) unsafe fn pop(&self) -> Option<T> {
        let h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        if h == t {
            return None;
        }
        // SAFETY: only the consumer touches `cons` (the caller's contract).
        let cons = unsafe { &mut *self.cons.get() };
        if cons.is_null() {
            // Non-null: stored before the `tail` that made `h < t` visible.
            *cons = self.first.load(Ordering::Acquire);
        }
        loop {
            // SAFETY: `cons` is live (only this consumer frees segments).
            let next = unsafe { (**cons).next.load(Ordering::Acquire) };
            // SAFETY: a published segment stays live until the consumer frees it.
            if next.is_null() || unsafe { (*next).start } > h {
                break;
            }
            // Every item of `cons` was read and the producer writes `next` or later.
            // SAFETY: allocated by `Seg::alloc`, freed once (we move past it now).
            let old = unsafe { Box::from_raw(*cons) };
            self.slots
                .fetch_sub(old.slots.len() as u32, Ordering::Relaxed);
            drop(old);
            *cons = next;
        }
        // SAFETY: item `h` (below `tail`, Acquire above) was written into `cons`, and
        // the producer does not reuse its slot until `head` passes it.
        let item = unsafe { (*(**cons).slot(h)).assume_init_read() };
        self.head.store(h + 1, Ordering::Release);
        Some(item)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no producer or consumer runs.
        while unsafe { self.pop() }.is_some() {}
        let mut p = *self.cons.get_mut();
        if p.is_null() {
            p = *self.first.get_mut();
        }
        while !p.is_null() {
            // SAFETY: the segments from the consumer's on are live and freed once here.
            let seg = unsafe { Box::from_raw(p) };
            p = seg.next.load(Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Counts live items, so a test sees every item dropped exactly once.
    struct Counted(u64, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn allocates_nothing_before_the_first_item_then_grows_to_the_backlog_only() {
        let r = Ring::<u64>::new(256);
        assert_eq!(r.slots(), 0);
        // SAFETY: one thread.
        unsafe {
            assert_eq!(r.pop(), None);
            r.push(1).unwrap();
            assert_eq!(r.slots(), MIN_SLOTS);
            // A backlog of one, for many items: no growth.
            for i in 0..1000 {
                r.push(i).unwrap();
                assert_eq!(r.pop(), Some(if i == 0 { 1 } else { i - 1 }));
            }
            assert_eq!(r.slots(), MIN_SLOTS);
            // A backlog of 40: segments of 8, 16 and 32 linked; once drained, the last.
            let mut backlog = vec![r.pop().unwrap()];
            for i in 0..40 {
                r.push(i).unwrap();
            }
            assert_eq!(r.slots(), 8 + 16 + 32);
            while let Some(x) = r.pop() {
                backlog.push(x);
            }
            assert_eq!(backlog.len(), 41);
            assert_eq!(r.slots(), 32);
        }
    }

    #[test]
    fn a_full_queue_nobody_reads_then_a_lasting_backlog_allocates_no_more() {
        let r = Ring::<u64>::new(256);
        // SAFETY: one thread.
        unsafe {
            for i in 0..256 {
                r.push(i).unwrap();
            }
            assert!(r.push(256).is_err());
            // 8 + 16 + 32 + 64 + 128, then 256 for the last 8 items.
            assert_eq!(r.slots(), 504);
            // Read at last, with a backlog of 200 kept: one segment of 256 is left and
            // serves it as a ring.
            for i in 0..256 {
                assert_eq!(r.pop(), Some(i));
                if i % 5 != 0 {
                    r.push(256 + i).unwrap();
                }
            }
            assert_eq!(r.slots(), 256);
            for i in 0..10_000u64 {
                r.push(i).unwrap();
                r.pop().unwrap();
            }
            assert_eq!(r.slots(), 256);
        }
    }

    #[test]
    fn bounded_and_dropping_frees_every_item() {
        let live = Arc::new(AtomicUsize::new(0));
        let r = Ring::new(5);
        for i in 0..5 {
            live.fetch_add(1, Ordering::Relaxed);
            // SAFETY: one thread.
            assert!(unsafe { r.push(Counted(i, live.clone())) }.is_ok());
        }
        live.fetch_add(1, Ordering::Relaxed);
        // SAFETY: one thread.
        let back = unsafe { r.push(Counted(5, live.clone())) };
        assert_eq!(back.as_ref().map_err(|c| c.0).err(), Some(5));
        drop(back);
        assert_eq!(live.load(Ordering::Relaxed), 5);
        // SAFETY: one thread.
        assert_eq!(unsafe { r.pop() }.map(|c| c.0), Some(0));
        drop(r);
        assert_eq!(live.load(Ordering::Relaxed), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pop,
    }

    proptest! {
        /// The ring behaves as a `VecDeque` with a length limit, whatever the
        /// interleaving of pushes and pops and the bound.
        #[test]
        fn matches_a_bounded_vecdeque(
            bound in 1usize..70,
            ops in proptest::collection::vec(prop_oneof![3 => Just(Op::Push), 2 => Just(Op::Pop)], 0..600),
        ) {
            let live = Arc::new(AtomicUsize::new(0));
            let r = Ring::new(bound);
            let mut model = VecDeque::new();
            for (n, op) in ops.into_iter().enumerate() {
                let n = n as u64;
                match op {
                    Op::Push => {
                        live.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: one thread.
                        let got = unsafe { r.push(Counted(n, live.clone())) };
                        if model.len() < bound {
                            model.push_back(n);
                            prop_assert!(got.is_ok());
                        } else {
                            prop_assert_eq!(got.err().map(|c| c.0), Some(n));
                        }
                    }
                    // SAFETY: one thread.
                    Op::Pop => prop_assert_eq!(unsafe { r.pop() }.map(|c| c.0), model.pop_front()),
                }
                prop_assert!(r.slots() <= 2 * bound.next_power_of_two().max(MIN_SLOTS));
                prop_assert_eq!(live.load(Ordering::Relaxed), model.len());
            }
            drop(r);
            prop_assert_eq!(live.load(Ordering::Relaxed), 0);
        }
    }

    /// One producer thread and one consumer thread, a million items through a small
    /// bound (the queue is full and empty often, segments grow while the consumer lags):
    /// every item arrives once, in order.
    #[test]
    fn two_threads_pass_every_item_in_order() {
        // Miri (`cargo +nightly miri test --lib api::link`) checks the orderings with fewer.
        const N: u64 = if cfg!(miri) { 2_000 } else { 1_000_000 };
        let r = Arc::new(Ring::<u64>::new(100));
        let producer = {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut refused = 0u64;
                for i in 0..N {
                    // SAFETY: this thread is the only producer.
                    while unsafe { r.push(i) }.is_err() {
                        refused += 1;
                        std::thread::yield_now();
                    }
                    if i % 4096 == 0 {
                        std::thread::yield_now(); // let the consumer fall behind
                    }
                }
                refused
            })
        };
        let mut next = 0u64;
        while next < N {
            // SAFETY: this thread is the only consumer.
            match unsafe { r.pop() } {
                Some(x) => {
                    assert_eq!(x, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
            if next % 65536 == 1 {
                std::thread::yield_now(); // let the queue fill
            }
        }
        producer.join().unwrap();
        // SAFETY: both threads are done.
        assert_eq!(unsafe { r.pop() }, None);
        assert!(r.slots() <= 128, "{}", r.slots());
    }

    /// Many fresh rings through two threads: each grows from 8 slots while the other
    /// thread reads, so segment hand-over and freeing race many times; a few items are
    /// left for the drop.
    #[test]
    fn two_threads_grow_many_rings() {
        let live = Arc::new(AtomicUsize::new(0));
        for round in 0..if cfg!(miri) { 4 } else { 200u64 } {
            let r = Arc::new(Ring::new(256));
            let n = 3000u64;
            let producer = {
                let (r, live) = (r.clone(), live.clone());
                std::thread::spawn(move || {
                    for i in 0..n {
                        live.fetch_add(1, Ordering::Relaxed);
                        let mut item = Counted(i, live.clone());
                        // SAFETY: this thread is the only producer.
                        while let Err(back) = unsafe { r.push(item) } {
                            item = back;
                            std::thread::yield_now();
                        }
                        if (i + round) % 97 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            };
            let mut next = 0;
            while next < n - 5 {
                // SAFETY: this thread is the only consumer.
                match unsafe { r.pop() } {
                    Some(x) => {
                        assert_eq!(x.0, next);
                        next += 1;
                    }
                    None => std::thread::yield_now(),
                }
                if (next + round) % 89 == 0 {
                    std::thread::yield_now();
                }
            }
            producer.join().unwrap();
            drop(r);
            assert_eq!(live.load(Ordering::Relaxed), 0, "round {round}");
        }
    }

    /// `Arc<Link>` is 16 B of counts plus the link: at most 192 B, one of mimalloc's size
    /// classes (the next is 224).
    #[test]
    fn the_link_stays_in_its_size_class() {
        assert!(
            std::mem::size_of::<Link>() + 16 <= 192,
            "{}",
            std::mem::size_of::<Link>()
        );
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn every_watcher_sees_changes_and_the_end() {
        rt().block_on(async {
            let (tx, link) = Link::new(4);
            let watchers: Vec<_> = (0..3)
                .map(|_| {
                    let mut w = link.watch();
                    tokio::spawn(async move {
                        let mut seen = Vec::new();
                        while let Ok(s) = w.changed().await {
                            seen.push(s);
                        }
                        seen
                    })
                })
                .collect();
            tokio::task::yield_now().await; // every watcher waits now
            tx.set_state(ConnectionState::Checking);
            tokio::task::yield_now().await;
            tx.set_state(ConnectionState::Connected);
            tokio::task::yield_now().await;
            assert_eq!(link.state(), ConnectionState::Connected);
            drop(tx); // the shard dropped the agent: Closed, then the end
            for w in watchers {
                assert_eq!(
                    w.await.unwrap(),
                    [
                        ConnectionState::Checking,
                        ConnectionState::Connected,
                        ConnectionState::Closed
                    ]
                );
            }
            assert_eq!(link.watch().get(), ConnectionState::Closed);
        });
    }

    #[test]
    fn events_in_order_then_end_and_a_gone_receiver_stops_them() {
        rt().block_on(async {
            let (tx, link) = Link::new(4);
            let mut ev = link.events();
            let waiter = tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(AgentEvent::State(s)) = ev.recv().await {
                    got.push(s);
                }
                got
            });
            tokio::task::yield_now().await;
            tx.event(AgentEvent::State(ConnectionState::Checking));
            tx.event(AgentEvent::State(ConnectionState::Connected));
            drop(tx);
            assert_eq!(
                waiter.await.unwrap(),
                [ConnectionState::Checking, ConnectionState::Connected]
            );

            let (tx, link) = Link::new(4);
            drop(link.events());
            tx.event(AgentEvent::State(ConnectionState::Checking));
            assert!(link.ctl().events.is_empty());
        });
    }

    #[test]
    fn data_waits_then_ends_after_the_queue_is_read() {
        rt().block_on(async {
            let (mut tx, link) = Link::new(2);
            let mut rx = link.take_data().unwrap();
            assert!(link.take_data().is_none(), "one receiver per link");
            assert_eq!(rx.slots(), 0);
            let reader = tokio::spawn(async move {
                let first = rx.recv().await; // waits: nothing queued yet
                (first, rx)
            });
            tokio::task::yield_now().await;
            tx.push(Bytes::from_static(b"a")).unwrap();
            let (first, mut rx) = reader.await.unwrap();
            assert_eq!(first.as_deref(), Some(&b"a"[..]));
            assert_eq!(rx.slots(), MIN_SLOTS.min(2));
            tx.push(Bytes::from_static(b"b")).unwrap();
            tx.push(Bytes::from_static(b"c")).unwrap();
            assert!(!tx.has_room());
            assert!(tx.push(Bytes::from_static(b"d")).is_err(), "bound is 2");
            drop(tx);
            assert_eq!(rx.recv().await.as_deref(), Some(&b"b"[..]));
            assert_eq!(rx.recv().await.as_deref(), Some(&b"c"[..]));
            assert_eq!(rx.recv().await, None);
        });
    }

    #[test]
    fn a_gone_receiver_frees_its_queue_and_stops_the_shard_queuing() {
        let (mut tx, link) = Link::new(8);
        let rx = link.take_data().unwrap();
        let data = Bytes::from(vec![7u8; 100]);
        tx.push(data.clone()).unwrap();
        tx.push(data.clone()).unwrap();
        assert!(!data.is_unique());
        drop(rx);
        // The two queued copies went with the receiver, not with the link.
        assert!(data.is_unique(), "queued datagrams not dropped");
        assert!(!tx.has_room());
        assert!(tx.push(Bytes::from_static(b"x")).is_err());
    }
}
