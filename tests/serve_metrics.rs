//! `icering serve --metrics ADDR`: `GET /metrics` shows every shard's counters in the
//! Prometheus text format, and they move with real traffic (a TURN allocation relaying to
//! a peer, a TCP connection).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::turn::{TurnClient, peer, peer_recv};

/// The sum over shards of the samples of `name` in `text`.
fn total(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn metrics_follow_a_relayed_allocation() {
    let serve = common::spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--user",
            "alice:secret",
            "--allow-loopback-peers",
            "--min-port",
            "31800",
            "--max-port",
            "31899",
            "--metrics",
            "127.0.0.1:0",
        ],
        false,
        1,
    )
    .expect("icering serve starts");
    let line = serve.wait_log("metrics on http://");
    let at: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let (status, text) = common::http(at, "GET", "/metrics", "text/plain", "");
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE icering_server_allocations gauge"),
        "{text}"
    );
    assert_eq!(total(&text, "icering_server_allocations_created_total"), 0);
    assert_eq!(
        text.matches("icering_shard_loop_turns_total{shard=")
            .count(),
        2
    );

    let mut c = TurnClient::new(serve.addrs[0], "alice", "secret");
    let relay = c.allocate_ok();
    let p = peer();
    assert!(c.create_permission(p.local_addr().unwrap()).is_success());
    c.send_indication(p.local_addr().unwrap(), b"counted");
    assert_eq!(peer_recv(&p).expect("relayed").0, relay);
    let tcp = std::net::TcpStream::connect(serve.addrs[0]).unwrap();

    // Shards publish once per loop turn: wait for the counters to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = common::http(at, "GET", "/metrics", "text/plain", "");
        let seen = (
            total(&text, "icering_server_allocations_created_total"),
            total(&text, "icering_server_allocations"),
            total(&text, "icering_server_relayed_to_peer_total"),
            total(&text, "icering_shard_tcp_open"),
        );
        if seen == (1, 1, 1, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(tcp);
    let (status, _) = common::http(at, "GET", "/other", "text/plain", "");
    assert_eq!(status, 404);
}
