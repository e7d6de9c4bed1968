//! The STUN answer path allocates nothing per packet: a counting global allocator sees the
//! same number of allocations whether the running server answers 100 or 2,100 requests.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use icering::config::{Config, IoBackendChoice};
use icering::io::{self, BackendChoice};
use icering::shard::Runtime;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn answering_binding_requests_does_not_allocate() {
    let mut backends = vec![IoBackendChoice::Portable];
    if io::select_backend(BackendChoice::Uring).is_ok() {
        backends.push(IoBackendChoice::Uring);
    }
    for backend in backends {
        let mut c = Config::embedded();
        c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.server.shards = 1;
        c.io.backend = backend;
        let rt = Runtime::start(&c).unwrap();
        let server = rt.local_addrs()[0];
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Warm up: first-use allocations (thread-locals, lazy statics) happen here.
        for i in 0..100u32 {
            let mut tid = [0u8; 12];
            tid[..4].copy_from_slice(&i.to_be_bytes());
            common::binding_round_trip(&client, server, tid);
        }
        let before = ALLOCS.load(Relaxed);
        for i in 100..2100u32 {
            let mut tid = [0u8; 12];
            tid[..4].copy_from_slice(&i.to_be_bytes());
            common::binding_round_trip(&client, server, tid);
        }
        let during = ALLOCS.load(Relaxed) - before;
        let counters = rt.shard_counters();
        rt.shutdown().unwrap();
        let answered: u64 = counters.iter().map(|c| c.server().answered).sum();
        assert!(answered >= 2100, "{backend:?}: {answered}");
        // Idle ticks and counter publishing allocate nothing either; allow a handful for
        // anything incidental in the test harness itself.
        assert!(
            during < 20,
            "{backend:?}: {during} allocations while answering 2,000 requests"
        );
    }
}
