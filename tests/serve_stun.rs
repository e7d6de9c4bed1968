//! `icering serve` as a STUN server: in-process with each io backend and as a process.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use icering::config::{Config, IoBackendChoice};
use icering::io::{self, BackendChoice};
use icering::shard::Runtime;
use icering::stun::{Class, Message};

fn backends() -> Vec<IoBackendChoice> {
    let mut v = vec![IoBackendChoice::Portable];
    match io::select_backend(BackendChoice::Uring) {
        Ok(_) => v.push(IoBackendChoice::Uring),
        Err(e) => eprintln!("skipping the uring backend here: {e}"),
    }
    v
}

fn runtime(backend: IoBackendChoice, listen: &[&str], shards: usize) -> Runtime {
    let mut c = Config::embedded();
    c.server.listen = listen.iter().map(|a| a.parse().unwrap()).collect();
    c.server.shards = shards;
    c.io.backend = backend;
    Runtime::start(&c).expect("runtime starts")
}

/// Counters after a graceful shutdown (each shard publishes its last turn before exiting;
/// `Runtime::stats` while running may lag by one loop turn).
fn final_stats(rt: Runtime) -> icering::turn::server::ServerStats {
    let counters = rt.shard_counters();
    rt.shutdown().unwrap();
    let mut total = icering::turn::server::ServerStats::default();
    for c in &counters {
        total.add(&c.server());
    }
    total
}

#[test]
fn binding_round_trips_on_ipv4_and_ipv6_with_each_backend() {
    for backend in backends() {
        let rt = runtime(backend, &["127.0.0.1:0", "[::1]:0"], 2);
        assert_eq!(rt.local_addrs().len(), 2);
        for &server in rt.local_addrs() {
            let bind: SocketAddr = if server.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            }
            .parse()
            .unwrap();
            // Several clients so SO_REUSEPORT spreads them over both shards.
            for c in 0..8u8 {
                let client = UdpSocket::bind(bind).unwrap();
                let mapped = binding_round_trip(&client, server, [c; 12]);
                assert_eq!(mapped, client.local_addr().unwrap(), "{backend:?} {server}");
            }
        }
        let stats = final_stats(rt);
        assert!(stats.answered >= 16, "{backend:?}: {stats:?}");
    }
}

#[test]
fn malformed_flood_interleaved_with_valid_requests() {
    for backend in backends() {
        let rt = runtime(backend, &["127.0.0.1:0"], 1);
        let server = rt.local_addrs()[0];
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let junk: [&[u8]; 6] = [
            b"",
            b"\x00\x01\x00",
            b"\x00\x01\x00\x04\x21\x12\xa4\x42abcdefghijkl", // length mismatch
            b"\x00\x01\x00\x00\x21\x12\xa4\x43abcdefghijkl", // bad cookie
            b"\x40\x00\x00\x04abcd",                         // ChannelData, no TURN
            b"\x01\x01\x00\x00\x21\x12\xa4\x42abcdefghijkl", // a response: not answered
        ];
        let rounds = 50u8;
        for r in 0..rounds {
            for j in junk {
                for _ in 0..4 {
                    client.send_to(j, server).unwrap();
                }
            }
            let mapped = binding_round_trip(&client, server, [r; 12]);
            assert_eq!(mapped, client.local_addr().unwrap());
        }
        // Nothing but answers to valid requests came back.
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = client.recv_from(&mut buf) {
            assert_eq!(Message::parse(&buf[..n]).unwrap().class(), Class::Success);
        }
        let rt_stats = final_stats(rt);
        assert!(rt_stats.answered >= u64::from(rounds));
        assert_eq!(rt_stats.errors_sent, 0);
        assert!(
            rt_stats.dropped() >= 24 * u64::from(rounds) * 9 / 10,
            "{rt_stats:?}"
        );
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    use icering::stun::{MessageType, MessageWriter, Method, attr};
    let rt = runtime(IoBackendChoice::Portable, &["127.0.0.1:0"], 1);
    let server = rt.local_addrs()[0];
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut req = [0u8; 64];
    let mut w = MessageWriter::new(
        &mut req,
        MessageType::new(Method::BINDING, Class::Request),
        &[7; 12],
    )
    .unwrap();
    w.add_raw(0x7777, b"????").unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let mut buf = [0u8; 1500];
    let mut got = None;
    for _ in 0..5 {
        client.send_to(&req[..n], server).unwrap();
        if let Ok((len, _)) = client.recv_from(&mut buf) {
            got = Some(len);
            break;
        }
    }
    let len = got.expect("an answer");
    let m = Message::parse(&buf[..len]).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.error_code().unwrap().code, 420);
    let unknown = m.get(attr::UNKNOWN_ATTRIBUTES).unwrap().value;
    assert_eq!(unknown, &[0x77, 0x77]);
    rt.shutdown().unwrap();
}

#[test]
fn process_answers_and_exits_zero_on_sigterm() {
    for io in ["portable", "auto"] {
        let mut p = spawn_serve(
            &[
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "[::1]:0",
                "--shards",
                "2",
                "--io",
                io,
            ],
            false,
            2,
        )
        .unwrap();
        for (i, &server) in p.addrs.clone().iter().enumerate() {
            let bind = if server.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let client = UdpSocket::bind(bind).unwrap();
            let mapped = binding_round_trip(&client, server, [i as u8 + 1; 12]);
            assert_eq!(mapped, client.local_addr().unwrap());
        }
        // Liveness, not speed: a hang shows up as no exit at all.
        let status = terminate(&mut p, Duration::from_secs(5)).expect("exits after SIGTERM");
        assert!(status.success(), "{io}: {status:?}");
    }
}

#[test]
fn uring_required_without_io_uring_is_a_clear_error_and_auto_falls_back() {
    let err = spawn_serve(&["--listen", "127.0.0.1:0", "--io", "uring"], true, 1)
        .err()
        .expect("must not start");
    assert!(err.contains("io_uring unavailable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let mut p = spawn_serve(&["--listen", "127.0.0.1:0", "--io", "auto"], true, 1).unwrap();
    assert!(
        p.log.iter().any(|l| l.contains("io backend: portable")),
        "auto must say it fell back: {:#?}",
        p.log
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = p.addrs[0];
    assert_eq!(
        binding_round_trip(&client, server, [9; 12]),
        client.local_addr().unwrap()
    );
    assert!(terminate(&mut p, Duration::from_secs(5)).unwrap().success());
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("icering-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[io]\nbuf_count = 1000\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_icering"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("io.buf_count"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
