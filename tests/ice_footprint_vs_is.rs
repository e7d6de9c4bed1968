//! Memory per connected agent (1 local, 1 remote host candidate): ours vs `is` 0.12
//! (str0m's standalone sans-IO ICE agent), measured the same way for both.
//!
//! A counting global allocator keeps, per thread, the bytes requested and not yet freed.
//! Live bytes are read before one agent pair is created and after both agents are connected
//! (events drained, as an application would); the difference is the pair's heap. Dropping
//! the controlled agent first splits it per side. Agents live on the stack here, so
//! `size_of` is added on top. One pair of each kind is connected and dropped first so
//! one-time lazy statics (tracing callsites, thread-locals) are not counted.
//!
//! Run with `cargo test --test ice_footprint_vs_is -- --nocapture` to see the numbers.
//! Only our agent is asserted (≤ 2 KiB per agent); `is` is reported, never asserted.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn add(delta: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

/// One more allocation (or reallocation) on this thread.
fn count() {
    let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to `System`; only a thread-local counter is
// updated on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
            count();
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
            count();
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
            count();
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ADDR_A: &str = "127.0.0.1:1000";
const ADDR_B: &str = "127.0.0.1:2000";

mod ours {
    use super::*;
    use icering::ice::{Candidate, IceAgent, IceConfig};
    use icering::net::Received;

    /// Runs `x`'s timer if due and hands its transmits to `y`; how many there were.
    pub fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent, buf: &mut [u8]) -> usize {
        if x.poll_timeout().is_some_and(|t| t <= now) {
            x.handle_timeout(now);
        }
        let mut n = 0;
        while let Some(t) = x.poll_transmit(now, buf) {
            n += 1;
            let pkt = Received {
                source: t.source,
                destination: t.destination,
                contents: &buf[..t.size],
            };
            y.handle_packet(now, pkt);
        }
        n
    }

    pub fn connected_pair(seed: u64) -> (IceAgent, IceAgent) {
        let (a, b, _) = connected_pair_at(seed);
        (a, b)
    }

    /// A connected pair and the virtual time it connected at.
    pub fn connected_pair_at(seed: u64) -> (IceAgent, IceAgent, Instant) {
        let mut a = IceAgent::new(IceConfig {
            controlling: true,
            seed,
            ..Default::default()
        })
        .unwrap();
        let mut b = IceAgent::new(IceConfig {
            seed: seed ^ 0xFF,
            ..Default::default()
        })
        .unwrap();
        let a_addr: SocketAddr = ADDR_A.parse().unwrap();
        let b_addr: SocketAddr = ADDR_B.parse().unwrap();
        a.add_local_candidate(Candidate::host(a_addr)).unwrap();
        b.add_local_candidate(Candidate::host(b_addr)).unwrap();
        let (u, p) = a.local_credentials();
        let (u, p) = (u.to_owned(), p.to_owned());
        b.set_remote_credentials(&u, &p).unwrap();
        let (u, p) = b.local_credentials();
        let (u, p) = (u.to_owned(), p.to_owned());
        a.set_remote_credentials(&u, &p).unwrap();
        a.add_remote_candidate(b.local_candidates()[0].clone())
            .unwrap();
        b.add_remote_candidate(a.local_candidates()[0].clone())
            .unwrap();
        let mut buf = [0u8; 1500];
        let mut now = Instant::now();
        a.handle_timeout(now);
        b.handle_timeout(now);
        let mut rounds = 0;
        while a.selected_pair().is_none() || b.selected_pair().is_none() {
            rounds += 1;
            assert!(rounds < 10_000, "icering pair did not connect");
            pump(now, &mut a, &mut b, &mut buf);
            pump(now, &mut b, &mut a, &mut buf);
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.map_or(now + Duration::from_millis(1), |t| t.max(now));
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        (a, b, now)
    }
}

mod str0m_is {
    use super::*;
    use is::stun::{StunMessage, StunPacket};
    use is::{Candidate, IceAgent, IceCreds};

    /// Same as `is`'s `DefaultSha1HmacProvider` (the crate is built without defaults).
    #[derive(Debug)]
    struct HmacSha1;

    impl is::Sha1HmacProvider for HmacSha1 {
        fn sha1_hmac(&self, key: &[u8], payloads: &[&[u8]]) -> [u8; 20] {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac =
                Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC-SHA1 takes any key length");
            for p in payloads {
                mac.update(p);
            }
            mac.finalize().into_bytes().into()
        }
    }

    static HMAC: HmacSha1 = HmacSha1;

    fn pump(now: Instant, x: &mut IceAgent, y: &mut IceAgent) {
        if x.poll_timeout().is_some_and(|t| t <= now) {
            x.handle_timeout(now);
        }
        while let Some(t) = x.poll_transmit() {
            let message = StunMessage::parse(&t.contents).expect("is sends only STUN");
            let pkt = StunPacket {
                proto: t.proto,
                source: t.source,
                destination: t.destination,
                message,
            };
            y.handle_packet(now, pkt);
        }
    }

    pub fn connected_pair() -> (IceAgent, IceAgent) {
        let mut a = IceAgent::with_hmac(IceCreds::new(), &HMAC);
        let mut b = IceAgent::with_hmac(IceCreds::new(), &HMAC);
        a.set_controlling(true);
        b.set_controlling(false);
        let a_addr: SocketAddr = ADDR_A.parse().unwrap();
        let b_addr: SocketAddr = ADDR_B.parse().unwrap();
        let ca = a
            .add_local_candidate(Candidate::host(a_addr, "udp").unwrap())
            .unwrap()
            .clone();
        let cb = b
            .add_local_candidate(Candidate::host(b_addr, "udp").unwrap())
            .unwrap()
            .clone();
        b.set_remote_credentials(a.local_credentials().clone());
        a.set_remote_credentials(b.local_credentials().clone());
        a.add_remote_candidate(cb);
        b.add_remote_candidate(ca);
        let mut now = Instant::now();
        a.handle_timeout(now);
        b.handle_timeout(now);
        let mut rounds = 0;
        while !a.state().is_connected() || !b.state().is_connected() {
            rounds += 1;
            assert!(rounds < 10_000, "is pair did not connect");
            pump(now, &mut a, &mut b);
            pump(now, &mut b, &mut a);
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            now = next.map_or(now + Duration::from_millis(1), |t| t.max(now));
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        (a, b)
    }
}

/// Heap of a connected pair: (controlling, controlled, left over after dropping both).
fn heap_of<A, B>(connect: impl Fn() -> (A, B)) -> (usize, usize, isize) {
    drop(connect()); // warm-up: one-time lazy statics
    let before = live();
    let (a, b) = connect();
    let connected = live();
    drop(b);
    let heap_b = connected - live();
    let heap_a = live() - before;
    drop(a);
    let leftover = live() - before;
    (heap_a as usize, heap_b as usize, leftover)
}

fn report(name: &str, stack: usize, (heap_a, heap_b, leftover): (usize, usize, isize)) -> usize {
    let per_agent = stack + (heap_a + heap_b) / 2;
    println!(
        "{name}: size_of {stack} B + heap {} B per agent (controlling {heap_a} B, controlled {heap_b} B) = {per_agent} B per connected agent (after drop: {leftover:+} B)",
        (heap_a + heap_b) / 2
    );
    per_agent
}

#[test]
fn connected_agent_footprint_vs_is() {
    let ours = report(
        "icering::ice::IceAgent",
        size_of::<icering::ice::IceAgent>(),
        heap_of(|| ours::connected_pair(7)),
    );
    let theirs = report(
        "is::IceAgent (0.12)",
        size_of::<is::IceAgent>(),
        heap_of(str0m_is::connected_pair),
    );
    println!("ratio is/icering: {:.1}x", theirs as f64 / ours as f64);
    assert!(ours <= 2048, "icering agent uses {ours} B > 2 KiB");
}

/// Issue 4's "no allocation per check in steady state": two connected agents keep up
/// keepalives and consent checks (RFC 8445 §11, RFC 7675) and answer each other's for two
/// minutes of virtual time without a single heap allocation.
#[test]
fn connected_agents_check_without_allocating() {
    let (mut a, mut b, mut now) = ours::connected_pair_at(11);
    let mut buf = [0u8; 1500];
    let before = allocs();
    let end = now + Duration::from_secs(120);
    let mut sent = 0;
    while now < end {
        sent += ours::pump(now, &mut a, &mut b, &mut buf);
        sent += ours::pump(now, &mut b, &mut a, &mut buf);
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        now = next.map_or(now + Duration::from_millis(100), |t| t.max(now));
    }
    let during = allocs() - before;
    // Requests and their answers went both ways the whole time, and the pair held.
    assert!(sent >= 100, "only {sent} messages in 120 s");
    assert!(a.selected_pair().is_some() && b.selected_pair().is_some());
    assert_eq!(
        during, 0,
        "{during} allocations for {sent} steady-state messages"
    );
}
