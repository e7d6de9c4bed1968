//! `icering ping` gathering server-reflexive and relayed candidates: two ping processes on
//! loopback with `icering serve` as their STUN/TURN server (UDP), and with coturn's
//! `turnserver` for TURN over TCP (our server has no TCP listener yet). Skipped, saying
//! so, when coturn is not installed; under `CI` that is a failure.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};

use common::spawn_serve;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ping(role: &str, listen: u16, remote: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_icering"))
        .args([
            "ping",
            role,
            "--signal-listen",
            &format!("127.0.0.1:{listen}"),
            "--signal-remote",
            &format!("http://127.0.0.1:{remote}"),
            "--count",
            "3",
            "--interval",
            "0.2",
            "--timeout",
            "25",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a controlling and a controlled ping with the given extra flags; both must exit 0
/// after three messages each way. Returns their outputs.
fn pair(controlling: &[&str], controlled: &[&str]) -> (String, String) {
    let (p1, p2) = (free_port(), free_port());
    let a = ping("--controlling", p1, p2, controlling);
    let b = ping("--controlled", p2, p1, controlled);
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let (ta, tb) = (text(&a), text(&b));
    let both = format!("controlling:\n{ta}\ncontrolled:\n{tb}");
    assert!(a.status.success(), "{both}");
    assert!(b.status.success(), "{both}");
    for i in 1..=3 {
        assert!(ta.contains(&format!("received: pong {i}\n")), "{both}");
        assert!(tb.contains(&format!("received: ping {i}\n")), "{both}");
    }
    for t in [&ta, &tb] {
        assert!(t.contains("gathering complete"), "{both}");
    }
    (ta, tb)
}

/// Whether a `local candidate:` line contains `what`.
fn local_has(out: &str, what: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with("local candidate: ") && l.contains(what))
}

/// The last `selected pair:` line of a run.
fn selected(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| l.starts_with("selected pair: "))
        .unwrap_or_else(|| panic!("no selected pair in\n{out}"))
}

fn serve(ports: &str) -> common::ServeProcess {
    let (lo, hi) = ports.split_once('-').unwrap();
    spawn_serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--user",
            "alice:secret",
            "--realm",
            "icering.test",
            "--allow-loopback-peers",
            "--min-port",
            lo,
            "--max-port",
            hi,
        ],
        false,
        1,
    )
    .expect("icering serve starts")
}

#[test]
fn srflx_is_gathered_and_dropped_when_it_equals_the_host_candidate() {
    let server = serve("46000-46099");
    let stun = format!("stun:{}", server.addrs[0]);
    // The controlling side gathers only srflx (on loopback it equals the socket address,
    // kept because there is no host candidate); the controlled side host + srflx, where
    // the srflx duplicate is dropped.
    let (ta, tb) = pair(
        &["--stun", &stun, "--candidate-types", "srflx"],
        &["--stun", &stun],
    );
    assert!(ta.contains(&format!("stun {stun}:")), "{ta}");
    assert!(ta.contains("typ srflx raddr 127.0.0.1 rport "), "{ta}");
    assert!(!local_has(&ta, "typ host"), "{ta}");
    assert!(
        tb.contains("equals the host candidate; dropped"),
        "controlled:\n{tb}"
    );
    assert!(!local_has(&tb, "typ srflx"), "{tb}");
    let sa = selected(&ta);
    assert!(sa.contains(" (srflx) -> 127.0.0.1:"), "{sa}");
    assert!(sa.ends_with("(host)"), "{sa}");
    assert!(selected(&tb).ends_with("(srflx)"), "{tb}");
}

#[test]
fn relay_only_selects_a_relay_pair_and_data_flows_both_ways() {
    let server = serve("46100-46199");
    let turn = format!("turn:{}", server.addrs[0]);
    let (ta, tb) = relay_pair(&["--turn", &turn]);
    assert!(!local_has(&ta, "typ host"), "{ta}");
    let sa = selected(&ta);
    // The relayed address comes from the server's relay port range.
    let port: u16 = sa
        .trim_start_matches("selected pair: 127.0.0.1:")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{sa}"));
    assert!((46100..=46199).contains(&port), "{sa}");
    assert!(sa.contains(" (relay) -> 127.0.0.1:"), "{sa}");
    assert!(sa.ends_with("(host)"), "{sa}");
    let sb = selected(&tb);
    assert!(
        sb.ends_with(&format!("-> 127.0.0.1:{port} (relay)")),
        "{sb}"
    );
    assert!(ta.contains("channel 0x4000 bound to"), "{ta}");
}

#[test]
fn bad_turn_credentials_leave_host_candidates_working() {
    let server = serve("46200-46299");
    let turn = format!("turn:{}", server.addrs[0]);
    let (ta, _) = pair(
        &[
            "--turn",
            &turn,
            "--turn-user",
            "alice",
            "--turn-pass",
            "nope",
        ],
        &[],
    );
    assert!(ta.contains("401 (wrong credentials)"), "{ta}");
    assert!(!local_has(&ta, "typ relay"), "{ta}");
    assert!(selected(&ta).contains("(host) -> "), "{ta}");
}

/// coturn's `turnserver` on loopback with its TCP listener only (no UDP client listener).
fn coturn_tcp_only(port: u16, relay_ports: (u16, u16)) -> Option<common::Killed> {
    common::coturn(
        "the coturn TCP test",
        port,
        relay_ports,
        &[
            &format!("--listening-port={port}"),
            "--no-tls",
            "--no-dtls",
            "--no-udp",
        ],
    )
}

#[test]
fn turn_over_tcp_against_coturn_gives_a_relay_pair() {
    let port = free_port();
    let Some(_coturn) = coturn_tcp_only(port, (46300, 46399)) else {
        return;
    };
    let turn = format!("turn:127.0.0.1:{port}?transport=tcp");
    relay_pair(&["--turn", &turn]);
}

/// A relay-only controlling ping (`turn` flags plus alice's credentials) against a plain
/// controlled one: the relay pair is selected on both sides. Returns both outputs.
fn relay_pair(turn: &[&str]) -> (String, String) {
    let mut flags = turn.to_vec();
    flags.extend([
        "--turn-user",
        "alice",
        "--turn-pass",
        "secret",
        "--candidate-types",
        "relay",
    ]);
    let (ta, tb) = pair(&flags, &[]);
    assert!(ta.contains("typ relay raddr 127.0.0.1 rport "), "{ta}");
    let sa = selected(&ta);
    assert!(sa.contains(" (relay) -> 127.0.0.1:"), "{sa}");
    assert!(selected(&tb).ends_with("(relay)"), "{tb}");
    (ta, tb)
}

/// `turns:` (TURN over TLS) to coturn's TLS listener, its certificate checked against the
/// test CA given by `--turn-ca`; under a name the certificate does not hold, the ping says
/// so and connects over its host candidate.
#[test]
fn turn_over_tls_against_coturn_gives_a_relay_pair() {
    let port = free_port();
    let pki = common::Pki::new();
    let Some(_coturn) = common::coturn_tls("the coturn TLS test", port, (46600, 46699), &pki)
    else {
        return;
    };
    let ca = std::env::temp_dir().join(format!("icering-ping-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, &pki.ca).unwrap();
    let turn = format!("turns:127.0.0.1:{port}");
    let ca_arg = ca.display().to_string();
    relay_pair(&["--turn", &turn, "--turn-ca", &ca_arg]);

    let wrong_name = format!("turns:localhost:{port}");
    let (ta, _) = pair(
        &[
            "--turn",
            &wrong_name,
            "--turn-ca",
            &ca_arg,
            "--turn-user",
            "alice",
            "--turn-pass",
            "secret",
            "--candidate-types",
            "host,relay",
        ],
        &[],
    );
    let _ = std::fs::remove_file(&ca);
    assert!(ta.contains("certificate not valid for name"), "{ta}");
    assert!(!ta.contains("typ relay"), "{ta}");
}
