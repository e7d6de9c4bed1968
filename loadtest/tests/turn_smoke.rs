//! `icering-loadtest turn` end to end: the real binary against an in-process icering TURN
//! relay (`Runtime`, real sockets on 127.0.0.1), and `--raw-echo` against a plain UDP echo
//! thread. Short runs; asserts what the load generator and the server counted, no timing.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::config::{Config, IoBackendChoice};
use icering::shard::Runtime;

const ALLOCS: u64 = 6;

fn relay() -> (Runtime, SocketAddr) {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 1;
    c.io.backend = IoBackendChoice::Portable;
    c.turn.users = vec!["load:secret".into()];
    c.turn.realm = "smoke".into();
    c.turn.allow_loopback_peers = true;
    c.turn.min_port = 46000;
    c.turn.max_port = 46999;
    let rt = Runtime::start(&c).expect("runtime starts");
    let addr = rt.local_addrs()[0];
    (rt, addr)
}

/// Runs the load generator, returns its JSON report.
fn load(target: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_icering-loadtest"))
        .args(["turn", "--target", &target.to_string()])
        .args(["--user", "load", "--pass", "secret"])
        .args(["--allocations", &ALLOCS.to_string(), "--window", "4"])
        .args(["--duration", "0.5", "--timeout-ms", "10000", "--json"])
        .args(extra)
        .output()
        .expect("icering-loadtest runs");
    assert!(
        out.status.success(),
        "icering-loadtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn n(r: &serde_json::Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {r}"))
}

/// Every datagram sent came back once, valid, and every allocation relayed. (`stray`,
/// datagrams from other sources, is not asserted: on a shared machine another process's
/// leftovers can reach a port it has just released.)
fn assert_clean(r: &serde_json::Value) {
    assert!(n(r, "answered") > 0, "{r}");
    assert_eq!(n(r, "answered"), n(r, "sent"), "{r}");
    for key in [
        "lost",
        "invalid",
        "late_or_duplicate",
        "send_failed",
        "flows_without_answer",
    ] {
        assert_eq!(n(r, key), 0, "{key}: {r}");
    }
}

/// Server counters are published once per shard loop turn: wait for the expected values.
fn wait_stats(rt: &Runtime, ok: impl Fn(&icering::turn::server::ServerStats) -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if ok(&rt.stats()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn turn_load_through_icering_relay_loses_nothing() {
    let (rt, server) = relay();
    let mut created = 0;
    let mut relayed = 0;
    for (mode, extra) in [
        ("channel, uring or portable", &[][..]),
        (
            "indications, portable",
            &["--indications", "--io", "portable"][..],
        ),
        (
            "channel, two driver threads and peers",
            &["--threads", "2"][..],
        ),
    ] {
        let r = load(server, extra);
        eprintln!("{mode}: {r}");
        assert_clean(&r);
        assert_eq!(n(&r, "peer_echo_dropped"), 0, "{r}");
        assert_eq!(n(&r, "not_deleted"), 0, "{r}");
        created += ALLOCS;
        relayed += n(&r, "answered");
        // Setup made one allocation per flow, teardown's Refresh 0 deleted each, and every
        // round trip the generator counted went through the relay both ways.
        assert!(
            wait_stats(&rt, |s| s.allocations_created == created
                && s.allocations_ended == created
                && s.relayed_to_peer >= relayed
                && s.relayed_to_client >= relayed),
            "{mode}: server counters {:?}",
            rt.stats()
        );
    }
    rt.shutdown().unwrap();
}

#[test]
fn raw_echo_mode_counts_every_echo() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut echoed = 0u64;
            while !stop.load(Relaxed) {
                if let Ok((len, from)) = sock.recv_from(&mut buf) {
                    sock.send_to(&buf[..len], from).unwrap();
                    echoed += 1;
                }
            }
            echoed
        })
    };
    for extra in [&["--raw-echo"][..], &["--raw-echo", "--indications"][..]] {
        let r = load(addr, extra);
        assert_clean(&r);
        assert!(r.get("peer_echo_dropped").is_none(), "{r}");
        assert!(r.get("not_deleted").is_none(), "{r}");
    }
    stop.store(true, Relaxed);
    assert!(echo.join().unwrap() > 0);
}
