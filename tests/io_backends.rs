//! Real-socket tests of both I/O backends, loopback only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use icering::io::{
    Backend, BackendChoice, BackendKind, Config, Lend, RecvMeta, SendQueue, bind_udp,
    select_backend,
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn kinds() -> Vec<BackendKind> {
    let mut v = vec![BackendKind::Portable];
    match select_backend(BackendChoice::Uring) {
        Ok((k, why)) => {
            eprintln!("{why}");
            v.push(k);
        }
        Err(e) => eprintln!("skipping uring: {e}"),
    }
    v
}

fn small_cfg() -> Config {
    Config {
        batch: 32,
        buf_size: 2048,
        buf_count: 256,
        send_slots: 256,
        gso: true,
        gro: false,
    }
}

/// Aborts the process if a test hangs (a broken waker would block `poll(None)` forever).
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(name: &'static str) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if d.load(Ordering::Relaxed) {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            eprintln!("watchdog: test {name} hung");
            std::process::abort();
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Echo callback using the zero-copy slot API.
fn echo(sq: &mut SendQueue, m: RecvMeta, payload: &[u8], _: &mut Lend) {
    let slot = sq.slot().expect("send slot");
    slot[..payload.len()].copy_from_slice(payload);
    sq.commit(m.sock, m.from, payload.len());
}

/// A backend of `kind` with one IPv4 loopback socket (4 MiB receive buffer); its address.
fn echo_server(kind: BackendKind, cfg: &Config) -> (Backend, SocketAddr) {
    let mut b = Backend::new(kind, cfg).unwrap();
    let id = b
        .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
        .unwrap();
    let server = b.local_addr(id);
    (b, server)
}

/// A blocking IPv4 loopback client (4 MiB receive buffer, so it drops no replies) whose
/// reads give up after 5 s.
fn blocking_client() -> UdpSocket {
    let client = bind_udp(SocketAddr::new(V4, 0), false).unwrap();
    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
}

/// Poll (echoing) until `want` datagrams were delivered or `limit` passes.
fn pump(b: &mut Backend, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut got = 0;
    while got < want && Instant::now() < deadline {
        got += b
            .poll(Some(Duration::from_millis(50)), &mut echo)
            .expect("poll");
        b.flush().expect("flush");
    }
    got
}

fn datagram(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 97) % 1400;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_le_bytes());
    v.extend((4..len).map(|j| (i as usize + j * 7) as u8));
    v
}

fn echo_roundtrip(kind: BackendKind, ip: IpAddr) {
    let _wd = Watchdog::new("echo_roundtrip");
    let mut b = Backend::new(kind, &small_cfg()).expect("backend");
    assert_eq!(b.kind(), kind);
    let id = b
        .add_socket(bind_udp(SocketAddr::new(ip, 0), false).expect("bind"))
        .expect("add");
    let server = b.local_addr(id);
    assert_eq!(server.ip(), ip);
    let client = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    const N: u32 = 1000;
    const WINDOW: u32 = 32;
    let mut seen = vec![false; N as usize];
    let mut buf = [0u8; 4096];
    for start in (0..N).step_by(WINDOW as usize) {
        let end = (start + WINDOW).min(N);
        for i in start..end {
            client.send_to(&datagram(i), server).unwrap();
        }
        let want = (end - start) as usize;
        assert_eq!(
            pump(&mut b, want, Duration::from_secs(10)),
            want,
            "{kind} {ip}"
        );
        for _ in start..end {
            let (n, from) = client.recv_from(&mut buf).expect("echo reply");
            assert_eq!(from, server);
            let i = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert!(i < N);
            assert_eq!(&buf[..n], &datagram(i)[..], "datagram {i} corrupted");
            seen[i as usize] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "{kind} {ip}: missing echoes");
    // Reap the last send completions (io_uring counts a send when its CQE arrives).
    for _ in 0..3 {
        b.poll(Some(Duration::ZERO), &mut echo).unwrap();
    }
    let st = b.stats();
    assert_eq!(st.received, u64::from(N));
    assert_eq!(st.sent, u64::from(N));
    assert_eq!(st.send_errors, 0);
    assert_eq!(st.truncated, 0);
}

#[test]
fn echo_roundtrip_ipv4() {
    for kind in kinds() {
        echo_roundtrip(kind, V4);
    }
}

#[test]
fn echo_roundtrip_ipv6() {
    for kind in kinds() {
        echo_roundtrip(kind, V6);
    }
}

#[test]
fn burst_larger_than_buffer_ring_then_still_receives() {
    let _wd = Watchdog::new("burst");
    for kind in kinds() {
        let cfg = Config {
            batch: 16,
            buf_size: 2048,
            buf_count: 64,
            send_slots: 64,
            gso: true,
            gro: false,
        };
        let (mut b, server) = echo_server(kind, &cfg);
        let client = UdpSocket::bind(SocketAddr::new(V4, 0)).unwrap();
        // 3x the ring, all queued in the socket before the backend looks.
        for i in 0..(3 * cfg.buf_count as u32) {
            let mut d = [0u8; 200];
            d[..4].copy_from_slice(&i.to_le_bytes());
            client.send_to(&d, server).unwrap();
        }
        let mut burst = 0usize;
        let mut idle = 0;
        while idle < 3 {
            let n = b
                .poll(Some(Duration::from_millis(50)), &mut |_, _, p, _| {
                    assert_eq!(p.len(), 200);
                    burst += 1;
                })
                .unwrap();
            idle = if n == 0 { idle + 1 } else { 0 };
        }
        // The socket must still be armed: later datagrams arrive.
        for i in 0..10u32 {
            client
                .send_to(&(1_000_000 + i).to_le_bytes(), server)
                .unwrap();
        }
        let mut late = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while late < 10 && Instant::now() < deadline {
            b.poll(Some(Duration::from_millis(50)), &mut |_, _, p, _| {
                if p.len() == 4 {
                    late += 1;
                }
            })
            .unwrap();
        }
        let st = b.stats();
        eprintln!("{kind}: burst delivered {burst}/192, late {late}/10, stats {st:?}");
        assert!(burst > 0);
        assert_eq!(late, 10, "{kind}: socket stopped receiving after burst");
    }
}

#[test]
fn echo_burst_with_few_send_slots() {
    let _wd = Watchdog::new("few_slots");
    for kind in kinds() {
        let cfg = Config {
            batch: 16,
            buf_size: 2048,
            buf_count: 512,
            send_slots: 32,
            gso: true,
            gro: false,
        };
        let (mut b, server) = echo_server(kind, &cfg);
        let client = blocking_client();
        // More requests than send slots arrive in one poll; the echo callback must always
        // find a slot (backends push sends to the kernel mid-batch and reclaim slots).
        const N: usize = 300;
        for i in 0..N as u32 {
            client.send_to(&datagram(i % 8), server).unwrap();
        }
        assert_eq!(pump(&mut b, N, Duration::from_secs(10)), N, "{kind}");
        let mut buf = [0u8; 2048];
        for _ in 0..N {
            let (n, _) = client.recv_from(&mut buf).expect("echo reply");
            let i = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(&buf[..n], &datagram(i)[..]);
        }
        assert_eq!(b.stats().send_errors, 0);
    }
}

/// Many rounds of echo bursts through a small ring and a tiny send queue: a receive
/// that fills the send queue makes the backend reap sends and set other completions
/// aside, also while it handles completions set aside before. None may be lost: a lost
/// receive completion keeps its buffer from the ring for good (64 buffers here, so a leak
/// stalls a later round), a lost final multishot one leaves the socket deaf.
#[test]
fn echo_rounds_through_a_small_ring_and_tiny_send_queue_lose_nothing() {
    let _wd = Watchdog::new("rounds");
    for kind in kinds() {
        let cfg = Config {
            batch: 4,
            buf_size: 2048,
            buf_count: 64,
            send_slots: 8,
            gso: false,
            gro: false,
        };
        let (mut b, server) = echo_server(kind, &cfg);
        let client = blocking_client();
        let mut buf = [0u8; 2048];
        const ROUNDS: usize = 20;
        const N: usize = 400;
        for round in 0..ROUNDS {
            // Sent from another thread while the backend works, so receive completions
            // keep arriving while earlier ones are handled.
            let sender = client.try_clone().unwrap();
            let t = std::thread::spawn(move || {
                for i in 0..N as u32 {
                    sender.send_to(&datagram(i % 8), server).unwrap();
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                }
            });
            let got = pump(&mut b, N, Duration::from_secs(10));
            t.join().unwrap();
            assert_eq!(got, N, "{kind}: round {round}: {:?}", b.stats());
            for _ in 0..N {
                client.recv_from(&mut buf).expect("echo reply");
            }
        }
        let st = b.stats();
        assert_eq!(st.received, (ROUNDS * N) as u64, "{kind}: {st:?}");
    }
}

#[test]
fn waker_wakes_blocking_poll() {
    let _wd = Watchdog::new("waker");
    for kind in kinds() {
        let mut b = Backend::new(kind, &small_cfg()).unwrap();
        // A socket that never receives anything, so only the waker can end poll(None).
        b.add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();

        // Wake-up issued before poll is not lost.
        b.waker().wake();
        let mut n = 0;
        while b.stats().wakeups == 0 {
            n += b.poll(None, &mut |_, _, _, _| {}).unwrap();
        }
        assert_eq!(n, 0);

        // Wake-up from another thread while blocked.
        let w = b.waker();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
                w.wake();
            }
        });
        let before = b.stats().wakeups;
        while b.stats().wakeups == before {
            b.poll(None, &mut |_, _, _, _| {}).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}

#[test]
fn remove_socket_then_add_another() {
    let _wd = Watchdog::new("remove_add");
    for kind in kinds() {
        let mut b = Backend::new(kind, &small_cfg()).unwrap();
        let client = UdpSocket::bind(SocketAddr::new(V4, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let keep = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let keep_addr = b.local_addr(keep);
        let mut buf = [0u8; 64];
        for round in 0..20u8 {
            let id = b
                .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
                .unwrap();
            let addr = b.local_addr(id);
            client.send_to(&[round, 1], addr).unwrap();
            assert_eq!(
                pump(&mut b, 1, Duration::from_secs(10)),
                1,
                "{kind} round {round}"
            );
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&[round, 1][..], addr));
            b.remove_socket(id);
            b.remove_socket(id); // idempotent
        }
        // Queued send to a removed socket is dropped and counted, not fatal.
        let gone = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        b.send_to(gone, client.local_addr().unwrap(), b"x").unwrap();
        b.remove_socket(gone);
        b.flush().unwrap();
        assert!(b.stats().send_errors >= 1);
        // The socket that stayed is unaffected.
        client.send_to(b"still here", keep_addr).unwrap();
        assert_eq!(pump(&mut b, 1, Duration::from_secs(10)), 1);
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"still here"[..], keep_addr));
    }
}

#[test]
fn send_queue_full_and_send_to_flushes() {
    let _wd = Watchdog::new("sendq");
    for kind in kinds() {
        let cfg = Config {
            batch: 8,
            buf_size: 512,
            buf_count: 64,
            send_slots: 8,
            gso: true,
            gro: false,
        };
        let mut b = Backend::new(kind, &cfg).unwrap();
        let id = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let sink = UdpSocket::bind(SocketAddr::new(V4, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = sink.local_addr().unwrap();
        for _ in 0..8 {
            b.send_queue().send_to(id, dest, b"q").unwrap();
        }
        assert!(b.send_slot().is_none());
        assert!(b.send_queue().send_to(id, dest, b"q").is_err());
        // Backend::send_to makes room by flushing.
        for _ in 0..24 {
            b.send_to(id, dest, b"q").unwrap();
        }
        b.flush().unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..32 {
            assert_eq!(sink.recv(&mut buf).unwrap(), 1);
        }
        assert!(b.send_to(id, dest, &[0u8; 513]).is_err());
    }
}

#[test]
fn select_backend_auto_is_ok_and_choice_parses() {
    let (kind, why) = select_backend(BackendChoice::Auto).expect("auto never fails");
    eprintln!("{why} -> {kind}");
    assert!(why.starts_with("io backend: "));
    let (k, _) = select_backend(BackendChoice::Portable).unwrap();
    assert_eq!(k, BackendKind::Portable);
    for s in ["auto", "uring", "portable"] {
        let c: BackendChoice = s.parse().unwrap();
        assert_eq!(c.to_string(), s);
    }
    assert!("epollx".parse::<BackendChoice>().is_err());
}

// ---- UDP GSO ----

/// Deterministic contents for the `seq`-th datagram to destination `dest`, `len` bytes.
fn gso_datagram(dest: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(dest as u32).to_le_bytes());
    v.extend((8..len).map(|j| (seq as usize * 31 + dest * 7 + j) as u8));
    v.truncate(len);
    v
}

/// A client with a large receive buffer (bind_udp asks for 4 MiB), blocking with a timeout.
fn gso_client(ip: IpAddr) -> UdpSocket {
    let c = bind_udp(SocketAddr::new(ip, 0), false).unwrap();
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Queue every `(client, len)` of `plan` on one backend socket in one go, flush once, and
/// check that each client receives its datagrams complete, intact and in order.
/// Returns the stats after all send completions were reaped.
fn gso_send_plan(
    kind: BackendKind,
    gso: bool,
    ip: IpAddr,
    clients: usize,
    plan: &[(usize, usize)],
) -> icering::io::IoStats {
    let cfg = Config {
        batch: 32,
        buf_size: 2048,
        buf_count: 256,
        send_slots: 1024,
        gso,
        gro: false,
    };
    assert!(plan.len() <= cfg.send_slots);
    let mut b = Backend::new(kind, &cfg).unwrap();
    if !gso {
        assert!(
            !b.gso(),
            "{kind}: gso off in the config but on in the backend"
        );
    }
    let id = b
        .add_socket(bind_udp(SocketAddr::new(ip, 0), false).unwrap())
        .unwrap();
    let server = b.local_addr(id);
    let cs: Vec<UdpSocket> = (0..clients).map(|_| gso_client(ip)).collect();
    let addrs: Vec<SocketAddr> = cs.iter().map(|c| c.local_addr().unwrap()).collect();

    let mut expect: Vec<Vec<Vec<u8>>> = vec![Vec::new(); clients];
    for &(c, len) in plan {
        let d = gso_datagram(c, expect[c].len() as u32, len);
        b.send_queue().send_to(id, addrs[c], &d).unwrap();
        expect[c].push(d);
    }
    b.flush().unwrap();

    let mut buf = vec![0u8; 4096];
    for (c, want) in expect.iter().enumerate() {
        for (seq, d) in want.iter().enumerate() {
            let (n, from) = cs[c]
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{kind} gso={gso}: client {c} datagram {seq}: {e}"));
            assert_eq!(from, server);
            assert_eq!(
                &buf[..n],
                &d[..],
                "{kind} gso={gso}: client {c} datagram {seq} wrong (len {n}, want {})",
                d.len()
            );
        }
    }
    // Reap the send completions (io_uring counts sends when their CQE arrives).
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats().sent + b.stats().send_errors < plan.len() as u64 && Instant::now() < deadline {
        b.poll(Some(Duration::from_millis(10)), &mut |_, _, _, _| {})
            .unwrap();
    }
    let st = b.stats();
    assert_eq!(st.sent, plan.len() as u64, "{kind} gso={gso}: {st:?}");
    assert_eq!(st.send_errors, 0, "{kind} gso={gso}: {st:?}");
    assert_eq!(st.gso_fallbacks, 0, "{kind} gso={gso}: {st:?}");
    if !gso || !b.gso() {
        if gso {
            eprintln!("{kind}: kernel without UDP GSO; checked the fallback path only");
        }
        assert_eq!((st.gso_sends, st.gso_segments), (0, 0), "{kind}: {st:?}");
    }
    // Every queued slot came back.
    assert_eq!(
        b.send_queue().available(),
        cfg.send_slots,
        "{kind} gso={gso}"
    );
    st
}

#[test]
fn gso_burst_of_equal_replies_to_one_destination() {
    let _wd = Watchdog::new("gso_burst");
    for kind in kinds() {
        for ip in [V4, V6] {
            let plan = vec![(0, 1000); 300];
            let on = gso_send_plan(kind, true, ip, 1, &plan);
            eprintln!("{kind} {ip} gso on: {on:?}");
            if on.gso_sends > 0 {
                // 64 segments per send at most: 4 x 64 + 44.
                assert_eq!((on.gso_sends, on.gso_segments), (5, 300), "{kind} {ip}");
            }
            let off = gso_send_plan(kind, false, ip, 1, &plan);
            assert_eq!((off.gso_sends, off.gso_segments), (0, 0), "{kind} {ip}");
        }
    }
}

#[test]
fn gso_runs_respect_byte_limit_and_end_at_a_shorter_datagram() {
    let _wd = Watchdog::new("gso_limits");
    for kind in kinds() {
        // 65000 / 1400 = 46 segments per send: 46 + 46 + 8.
        let st = gso_send_plan(kind, true, V4, 1, &vec![(0, 1400); 100]);
        if st.gso_sends > 0 {
            assert_eq!((st.gso_sends, st.gso_segments), (3, 100), "{kind}");
        }
        // 10 x 500 + a shorter 200 end one run; 5 x 500 form the next; a longer datagram
        // after a run starts a new one.
        let mut plan = vec![(0, 500); 10];
        plan.push((0, 200));
        plan.extend([(0, 500); 5]);
        plan.extend([(0, 600), (0, 600)]);
        let st = gso_send_plan(kind, true, V4, 1, &plan);
        if st.gso_sends > 0 {
            assert_eq!((st.gso_sends, st.gso_segments), (3, 18), "{kind}");
        }
    }
}

#[test]
fn gso_mixed_sizes_and_destinations_interleaved() {
    let _wd = Watchdog::new("gso_mixed");
    // Runs of 1..=9 datagrams, each run to one of 3 clients with one of a few sizes, and
    // single datagrams of varying size in between.
    let mut plan = Vec::new();
    let mut x: u32 = 12345;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    while plan.len() < 900 {
        let c = (next() % 3) as usize;
        let len = [20, 96, 120, 548, 1200, 1472][(next() % 6) as usize];
        let run = 1 + next() % 9;
        for _ in 0..run {
            plan.push((c, len));
        }
        let odd = (next() % 3) as usize;
        plan.push((odd, 1 + (next() % 1500) as usize));
    }
    for kind in kinds() {
        for ip in [V4, V6] {
            let on = gso_send_plan(kind, true, ip, 3, &plan);
            eprintln!("{kind} {ip} mixed, gso on: {on:?}");
            let off = gso_send_plan(kind, false, ip, 3, &plan);
            assert_eq!((off.gso_sends, off.gso_segments), (0, 0), "{kind} {ip}");
            if crate_gso_expected(kind) {
                assert!(on.gso_sends > 0, "{kind} {ip}: no GSO send: {on:?}");
                assert!(on.gso_segments >= 2 * on.gso_sends, "{kind} {ip}: {on:?}");
            }
        }
    }
}

/// Whether a default backend of this kind ends up with GSO on (kernel support).
fn crate_gso_expected(kind: BackendKind) -> bool {
    Backend::new(kind, &small_cfg()).unwrap().gso()
}

#[test]
fn gso_echo_burst_replies_arrive_in_order() {
    let _wd = Watchdog::new("gso_echo");
    for kind in kinds() {
        for gso in [true, false] {
            let cfg = Config { gso, ..small_cfg() };
            let (mut b, server) = echo_server(kind, &cfg);
            let client = gso_client(V4);
            // All requests are in the server socket before the first poll, so one poll
            // answers many of them and the equal-size replies share one destination.
            const N: u32 = 200;
            for i in 0..N {
                client.send_to(&gso_datagram(0, i, 300), server).unwrap();
            }
            assert_eq!(
                pump(&mut b, N as usize, Duration::from_secs(10)),
                N as usize
            );
            let mut buf = [0u8; 2048];
            for i in 0..N {
                let (n, from) = client.recv_from(&mut buf).expect("echo reply");
                assert_eq!(from, server);
                assert_eq!(&buf[..n], &gso_datagram(0, i, 300)[..], "{kind} reply {i}");
            }
            for _ in 0..3 {
                b.poll(Some(Duration::ZERO), &mut echo).unwrap();
            }
            let st = b.stats();
            eprintln!("{kind} gso={gso} echo: {st:?}");
            assert_eq!((st.sent, st.send_errors), (u64::from(N), 0), "{kind}");
            if gso && b.gso() {
                assert!(st.gso_sends > 0, "{kind}: {st:?}");
            } else {
                assert_eq!(st.gso_sends, 0, "{kind}: {st:?}");
            }
        }
    }
}

#[test]
fn gso_rejected_by_kernel_falls_back_to_single_sends() {
    use std::os::fd::AsRawFd;
    let _wd = Watchdog::new("gso_fallback");
    for kind in kinds() {
        let mut b = Backend::new(kind, &small_cfg()).unwrap();
        if !b.gso() {
            eprintln!("{kind}: kernel without UDP GSO; nothing to fall back from");
            continue;
        }
        // With SO_NO_CHECK (no UDP checksum, IPv4 only) the kernel refuses UDP_SEGMENT sends
        // with EINVAL, while single datagrams still go out.
        let sock = bind_udp(SocketAddr::new(V4, 0), false).unwrap();
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid c_int on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
        let id = b.add_socket(sock).unwrap();
        let client = gso_client(V4);
        let dest = client.local_addr().unwrap();
        const N: u32 = 100;
        for i in 0..N {
            b.send_queue()
                .send_to(id, dest, &gso_datagram(0, i, 700))
                .unwrap();
        }
        b.flush().unwrap();
        // io_uring learns of the rejection from the completion and re-queues the datagrams;
        // they go out at the next flush.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.stats().sent < u64::from(N) && Instant::now() < deadline {
            b.poll(Some(Duration::from_millis(10)), &mut |_, _, _, _| {})
                .unwrap();
            b.flush().unwrap();
        }
        let mut seen = vec![false; N as usize];
        let mut buf = [0u8; 2048];
        for _ in 0..N {
            let (n, _) = client.recv_from(&mut buf).expect("datagram after fallback");
            let i = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert!(
                i < N && !seen[i as usize],
                "{kind}: unexpected datagram {i}"
            );
            assert_eq!(
                &buf[..n],
                &gso_datagram(0, i, 700)[..],
                "{kind}: datagram {i}"
            );
            seen[i as usize] = true;
        }
        let st = b.stats();
        eprintln!("{kind} fallback: {st:?}");
        assert!(!b.gso(), "{kind}: GSO still on after a rejection");
        assert!(st.gso_fallbacks >= 1, "{kind}: {st:?}");
        assert_eq!((st.sent, st.send_errors), (u64::from(N), 0), "{kind}");
        assert_eq!((st.gso_sends, st.gso_segments), (0, 0), "{kind}");
    }
}

#[test]
fn gso_groups_interleaved_flows_and_keeps_each_flow_in_order() {
    let _wd = Watchdog::new("gso_grouping");
    // Round robin over 4 destinations (a relay forwarding bursts for 4 allocations): no two
    // consecutive sends share a destination, yet each destination's 60 equal datagrams
    // leave as one GSO send, in order (gso_send_plan checks every client's order).
    let plan: Vec<(usize, usize)> = (0..240).map(|k| (k % 4, 500)).collect();
    for kind in kinds() {
        for ip in [V4, V6] {
            let on = gso_send_plan(kind, true, ip, 4, &plan);
            if crate_gso_expected(kind) {
                assert_eq!(
                    (on.gso_sends, on.gso_segments),
                    (4, 240),
                    "{kind} {ip}: {on:?}"
                );
            }
        }
    }
}

/// Port 0 with SO_REUSEADDR/SO_REUSEPORT: Linux may pick a port another reuse socket of
/// this user holds; `bind_udp` resolves port 0 with a plain probe first, so 1,000 sockets
/// held at once all get distinct ports.
#[test]
fn port_zero_binds_never_share_a_port() {
    let socks: Vec<UdpSocket> = (0..1000)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap(), true).unwrap())
        .collect();
    let mut ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        socks.len(),
        "two reuse sockets got the same port"
    );
}

/// UDP GRO on the receiving backend: a GSO burst from another backend (equal-size
/// datagrams, a shorter last one) arrives as one merged receive and is handed to the
/// callback datagram by datagram, intact and in order; a single datagram larger than
/// `buf_size` is still dropped as truncated; with each backend.
#[test]
fn gro_splits_a_merged_burst_into_its_datagrams() {
    let _wd = Watchdog::new("gro_split");
    for kind in kinds() {
        let cfg = Config {
            gro: true,
            ..small_cfg()
        };
        let mut rx = Backend::new(kind, &cfg).unwrap();
        let rid = rx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let dest = rx.local_addr(rid);
        // The sender: GSO on, so the burst leaves as one UDP_SEGMENT send when it can.
        let mut tx = Backend::new(kind, &small_cfg()).unwrap();
        let tid = tx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let src = tx.local_addr(tid);
        let mut want: Vec<Vec<u8>> = (0..20).map(|i| gso_datagram(0, i, 300)).collect();
        want.push(gso_datagram(0, 20, 120));
        for d in &want {
            tx.send_queue().send_to(tid, dest, d).unwrap();
        }
        tx.flush().unwrap();
        // One datagram larger than a send slot after the burst, from a plain socket.
        let big = UdpSocket::bind(SocketAddr::new(V4, 0)).unwrap();
        big.send_to(&[7u8; 2100], dest).unwrap();

        let mut got: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want.len() && Instant::now() < deadline {
            rx.poll(Some(Duration::from_millis(20)), &mut |_, m, data, _| {
                assert_eq!(m.sock, rid);
                got.push((m.from, data.to_vec()));
            })
            .unwrap();
            tx.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        }
        // Let the oversized datagram arrive and be counted.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.stats().truncated == 0 && Instant::now() < deadline {
            rx.poll(Some(Duration::from_millis(20)), &mut |_, m, data, _| {
                got.push((m.from, data.to_vec()));
            })
            .unwrap();
        }
        let st = rx.stats();
        eprintln!("{kind} gro={} tx gso={}: {st:?}", rx.gro(), tx.gso());
        assert_eq!(got.len(), want.len(), "{kind}: {st:?}");
        for (k, ((from, d), w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*from, src, "{kind} datagram {k}");
            assert_eq!(d, w, "{kind} datagram {k}");
        }
        assert_eq!(st.received, want.len() as u64, "{kind}: {st:?}");
        assert_eq!(st.truncated, 1, "{kind}: {st:?}");
        if rx.gro() && tx.gso() {
            // Loopback keeps a GSO send whole for a GRO socket.
            assert!(st.gro_receives >= 1, "{kind}: no merged receive: {st:?}");
            assert!(st.gro_segments <= want.len() as u64, "{kind}: {st:?}");
        } else {
            assert_eq!((st.gro_receives, st.gro_segments), (0, 0), "{kind}: {st:?}");
        }
    }
}

/// UDP GRO with datagrams too large for `buf_size`: a merged GSO burst of 3,000-byte
/// datagrams (a sender with larger slots) cannot be delivered, so every datagram in it is
/// dropped and counted as truncated — no partial or mis-split delivery — and the socket
/// goes on receiving: a small datagram sent after it arrives intact; with each backend.
#[test]
fn gro_burst_of_oversized_datagrams_is_dropped_and_counted() {
    let _wd = Watchdog::new("gro_oversized");
    for kind in kinds() {
        let cfg = Config {
            gro: true,
            ..small_cfg()
        };
        let mut rx = Backend::new(kind, &cfg).unwrap();
        let rid = rx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let dest = rx.local_addr(rid);
        let tx_cfg = Config {
            buf_size: 4096,
            ..small_cfg()
        };
        let mut tx = Backend::new(kind, &tx_cfg).unwrap();
        let tid = tx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        for i in 0..3 {
            let d = gso_datagram(0, i, 3000);
            tx.send_queue().send_to(tid, dest, &d).unwrap();
        }
        tx.flush().unwrap();
        let small = gso_datagram(1, 9, 200);
        // After the burst's flush, so it queues behind it on the receiving socket.
        tx.send_queue().send_to(tid, dest, &small).unwrap();
        tx.flush().unwrap();

        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.is_empty() && Instant::now() < deadline {
            rx.poll(Some(Duration::from_millis(20)), &mut |_, _, data, _| {
                got.push(data.to_vec());
            })
            .unwrap();
            tx.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        }
        let st = rx.stats();
        eprintln!("{kind} gro={} tx gso={}: {st:?}", rx.gro(), tx.gso());
        if rx.gro() && tx.gso() {
            // The burst left as one GSO send, so it reached the GRO socket merged.
            assert!(tx.stats().gso_sends >= 1, "{kind}: {:?}", tx.stats());
        }
        assert_eq!(got, vec![small], "{kind}: {st:?}");
        assert_eq!(st.received, 1, "{kind}: {st:?}");
        // Merged or not, each of the three oversized datagrams is one truncation.
        assert_eq!(st.truncated, 3, "{kind}: {st:?}");
        assert_eq!((st.gro_receives, st.gro_segments), (0, 0), "{kind}: {st:?}");
    }
}

/// Lending ([`Lend`]): every received datagram is lent as a `Bytes` that points into the
/// backend's receive buffer region (no copy) until `lend_cap` buffers are out; past the
/// cap lends are refused and counted while the socket keeps receiving. The lent bytes
/// stay intact while hundreds more datagrams cycle through the other buffers; dropping
/// them on another thread gives the buffers back (lends == returns after the next poll),
/// after which lending works again; and a lent `Bytes` outlives its backend. With each
/// backend.
#[test]
fn lent_datagrams_point_into_the_receive_buffers_and_come_back() {
    let _wd = Watchdog::new("lend");
    for kind in kinds() {
        let mut b = Backend::new(kind, &small_cfg()).unwrap();
        let cap = b.lend_cap();
        assert!(cap > 0, "{kind}");
        let region = b.recv_region();
        let id = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let dest = b.local_addr(id);
        let client = UdpSocket::bind(SocketAddr::new(V4, 0)).unwrap();

        // Receives `want` datagrams, lending each; returns (lent, copied).
        let receive = |b: &mut Backend, first: u32, want: u32| {
            let mut lent: Vec<(u32, bytes::Bytes)> = Vec::new();
            let mut copied = 0u32;
            for start in (first..first + want).step_by(16) {
                let end = (start + 16).min(first + want);
                for i in start..end {
                    client.send_to(&datagram(i), dest).unwrap();
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut got = 0;
                while got < end - start && Instant::now() < deadline {
                    b.poll(Some(Duration::from_millis(20)), &mut |_, _, data, lend| {
                        let i = u32::from_le_bytes(data[..4].try_into().unwrap());
                        assert_eq!(data, &datagram(i)[..]);
                        // Not part of the payload: never lent.
                        let elsewhere = [0u8; 4];
                        // SAFETY: neither slice is written after this.
                        assert!(lend.lend(&elsewhere).is_none());
                        // SAFETY: `data` is not written after this.
                        match lend.lend(data) {
                            Some(bytes) => lent.push((i, bytes)),
                            None => copied += 1,
                        }
                        got += 1;
                    })
                    .unwrap();
                }
                assert_eq!(got, end - start, "{kind}: {:?}", b.stats());
            }
            (lent, copied)
        };

        let n = cap as u32 + 40;
        let (held, copied) = receive(&mut b, 0, n);
        let st = b.stats();
        assert_eq!(held.len(), cap, "{kind}: {st:?}");
        assert_eq!(copied, n - cap as u32, "{kind}: {st:?}");
        assert_eq!((st.lends, st.lend_refused), (cap as u64, u64::from(copied)));
        assert_eq!(st.lend_returns, 0);
        // Many more datagrams through the buffers that are not lent (refused lends).
        let (more, _) = receive(&mut b, n, 300);
        assert!(more.is_empty(), "{kind}: lent past the cap");
        for (i, bytes) in &held {
            let p = bytes.as_ptr() as usize;
            assert!(region.contains(&p), "{kind}: datagram {i} was copied");
            assert_eq!(
                &bytes[..],
                &datagram(*i)[..],
                "{kind}: lent datagram {i} reused"
            );
        }

        // Dropped elsewhere: the buffers come back at the next poll.
        let (keep, rest) = held.split_at(1);
        let keep = keep.to_vec();
        let rest = rest.to_vec();
        drop(held);
        thread::spawn(move || drop(rest)).join().unwrap();
        b.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        let st = b.stats();
        assert_eq!(st.lends - st.lend_returns, 1, "{kind}: {st:?}");
        // And lending works again, up to the cap.
        let (again, _) = receive(&mut b, n + 300, 8);
        assert_eq!(again.len(), 8, "{kind}: {:?}", b.stats());
        drop(again);

        // The one still held outlives the backend.
        drop(b);
        let (i, bytes) = &keep[0];
        assert_eq!(&bytes[..], &datagram(*i)[..], "{kind}");
    }
}

/// Lending with UDP GRO: the datagrams of one merged burst are lent from one buffer (one
/// loan per receive buffer, not per datagram), intact; dropping them returns the buffer.
#[test]
fn lent_gro_segments_share_their_buffer() {
    let _wd = Watchdog::new("lend_gro");
    for kind in kinds() {
        let cfg = Config {
            gro: true,
            ..small_cfg()
        };
        let mut rx = Backend::new(kind, &cfg).unwrap();
        let region = rx.recv_region();
        let rid = rx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let dest = rx.local_addr(rid);
        let mut tx = Backend::new(kind, &small_cfg()).unwrap();
        let tid = tx
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let want: Vec<Vec<u8>> = (0..20).map(|i| gso_datagram(0, i, 300)).collect();
        for d in &want {
            tx.send_queue().send_to(tid, dest, d).unwrap();
        }
        tx.flush().unwrap();
        let mut got: Vec<bytes::Bytes> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < want.len() && Instant::now() < deadline {
            rx.poll(Some(Duration::from_millis(20)), &mut |_, _, data, lend| {
                // SAFETY: `data` is not written after this.
                got.push(lend.lend(data).expect("under the cap"));
            })
            .unwrap();
            tx.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        }
        let st = rx.stats();
        eprintln!("{kind} gro={} tx gso={}: {st:?}", rx.gro(), tx.gso());
        assert_eq!(got.len(), want.len(), "{kind}: {st:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(&g[..], &w[..], "{kind}");
            assert!(region.contains(&(g.as_ptr() as usize)), "{kind}");
        }
        // One loan per receive buffer: merged receives lend once for all their datagrams.
        let buffers = st.received - st.gro_segments + st.gro_receives;
        assert_eq!(st.lends, buffers, "{kind}: {st:?}");
        if rx.gro() && tx.gso() {
            assert!(st.lends < want.len() as u64, "{kind}: {st:?}");
        }
        drop(got);
        rx.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        let st = rx.stats();
        assert_eq!(st.lend_returns, st.lends, "{kind}: {st:?}");
    }
}

/// A wildcard socket registered with `add_socket_pktinfo` reports each datagram's local
/// destination IP, and answers from it (`commit_from`): the client sees the address it
/// sent to. A plain socket on the same backend reports none. Both backends, with GRO on
/// (control space for GRO and pktinfo together) and off.
fn pktinfo_roundtrip(kind: BackendKind, v6: bool, gro: bool) {
    let _wd = Watchdog::new("pktinfo_roundtrip");
    let cfg = Config { gro, ..small_cfg() };
    let mut b = Backend::new(kind, &cfg).expect("backend");
    let any = if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let wild = b
        .add_socket_pktinfo(bind_udp(SocketAddr::new(any, 0), false).expect("bind"))
        .expect("add");
    let port = b.local_addr(wild).port();
    let plain_ip = if v6 { V6 } else { V4 };
    let plain = b
        .add_socket(bind_udp(SocketAddr::new(plain_ip, 0), false).unwrap())
        .unwrap();
    let plain_addr = b.local_addr(plain);
    // Local destinations: 127.0.0.1-3 (all of 127/8 is local), or ::1.
    let dsts: Vec<IpAddr> = if v6 {
        vec![V6]
    } else {
        (1..=3).map(|i| IpAddr::from([127, 0, 0, i])).collect()
    };
    let client = UdpSocket::bind(SocketAddr::new(plain_ip, 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for (k, &dst) in dsts.iter().enumerate() {
        client
            .send_to(&[k as u8; 40], SocketAddr::new(dst, port))
            .unwrap();
    }
    client.send_to(b"plain", plain_addr).unwrap();
    let mut got: Vec<(RecvMeta, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < dsts.len() + 1 && Instant::now() < deadline {
        b.poll(Some(Duration::from_millis(20)), &mut |sq, m, data, _| {
            got.push((m, data.to_vec()));
            // Answer from the address it was sent to.
            sq.send_from(m.sock, m.dst, m.from, data).unwrap();
        })
        .unwrap();
        b.flush().unwrap();
    }
    assert_eq!(got.len(), dsts.len() + 1, "{kind} gro={gro}");
    for (m, data) in &got {
        if m.sock == plain {
            assert_eq!(m.dst, None, "plain sockets report no destination");
            assert_eq!(data, b"plain");
        } else {
            assert_eq!(m.sock, wild);
            assert_eq!(m.dst, Some(dsts[data[0] as usize]), "{kind} gro={gro}");
        }
    }
    let mut buf = [0u8; 2048];
    for _ in 0..got.len() {
        let (n, from) = client.recv_from(&mut buf).expect("answer");
        if &buf[..n] == b"plain" {
            assert_eq!(from, plain_addr);
        } else {
            assert_eq!(
                from,
                SocketAddr::new(dsts[buf[0] as usize], port),
                "{kind}: the answer leaves from the address asked"
            );
        }
    }
}

#[test]
fn pktinfo_reports_destination_and_sends_from_it() {
    for kind in kinds() {
        for gro in [false, true] {
            pktinfo_roundtrip(kind, false, gro);
            pktinfo_roundtrip(kind, true, gro);
        }
    }
}

/// GSO merges only datagrams with the same socket, destination and source IP: a burst of
/// equal-size datagrams to one client from two source IPs, interleaved, arrives with each
/// datagram's own source (merged per source: two GSO sends when GSO is available).
#[test]
fn gso_runs_never_mix_source_ips() {
    for kind in kinds() {
        let _wd = Watchdog::new("gso_runs_never_mix_source_ips");
        let mut b = Backend::new(kind, &small_cfg()).unwrap();
        let wild = b
            .add_socket_pktinfo(bind_udp("0.0.0.0:0".parse().unwrap(), false).unwrap())
            .unwrap();
        let port = b.local_addr(wild).port();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let dest = client.local_addr().unwrap();
        let srcs: [IpAddr; 2] = [[127, 0, 0, 2].into(), [127, 0, 0, 3].into()];
        const N: u32 = 40;
        for i in 0..N {
            let src = srcs[(i % 2) as usize];
            let mut d = [0u8; 100];
            d[..4].copy_from_slice(&i.to_be_bytes());
            b.send_queue().send_from(wild, Some(src), dest, &d).unwrap();
        }
        b.flush().unwrap();
        let mut buf = [0u8; 2048];
        let mut per_src = [0u32; 2];
        for _ in 0..N {
            let (n, from) = client.recv_from(&mut buf).expect("every datagram arrives");
            assert_eq!(n, 100);
            let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
            assert_eq!(
                from,
                SocketAddr::new(srcs[(i % 2) as usize], port),
                "{kind} #{i}"
            );
            per_src[(i % 2) as usize] += 1;
        }
        assert_eq!(per_src, [N / 2, N / 2]);
        for _ in 0..3 {
            b.poll(Some(Duration::ZERO), &mut |_, _, _, _| {}).unwrap();
        }
        let st = b.stats();
        assert_eq!((st.sent, st.send_errors), (u64::from(N), 0), "{kind}");
        if b.gso() {
            assert_eq!(st.gso_sends, 2, "{kind}: one GSO send per source IP");
        }
    }
}
