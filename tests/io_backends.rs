//! Real-socket tests of both I/O backends, loopback only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use icering::io::{
    Backend, BackendChoice, BackendKind, Config, SendQueue, SocketId, bind_udp, select_backend,
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
fn echo(sq: &mut SendQueue, sock: SocketId, from: SocketAddr, payload: &mut [u8]) {
    let slot = sq.slot().expect("send slot");
    slot[..payload.len()].copy_from_slice(payload);
    sq.commit(sock, from, payload.len());
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
        };
        let mut b = Backend::new(kind, &cfg).unwrap();
        let id = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let server = b.local_addr(id);
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
                .poll(Some(Duration::from_millis(50)), &mut |_, _, _, p| {
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
            b.poll(Some(Duration::from_millis(50)), &mut |_, _, _, p| {
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
        };
        let mut b = Backend::new(kind, &cfg).unwrap();
        let id = b
            .add_socket(bind_udp(SocketAddr::new(V4, 0), false).unwrap())
            .unwrap();
        let server = b.local_addr(id);
        // bind_udp asks for a 4 MiB receive buffer, so the client itself drops no replies.
        let client = bind_udp(SocketAddr::new(V4, 0), false).unwrap();
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
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
