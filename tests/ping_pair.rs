//! Two `icering ping` processes against each other on loopback, with pion's ping-pong
//! HTTP signalling on free (non-default) ports.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ping(role: &str, listen: u16, remote: u16) -> std::process::Child {
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

#[test]
fn controlling_and_controlled_exchange_three_messages_each_way() {
    let (p1, p2) = (free_port(), free_port());
    let a = ping("--controlling", p1, p2);
    let b = ping("--controlled", p2, p1);
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let (ta, tb) = (text(&a), text(&b));
    assert!(a.status.success(), "controlling:\n{ta}\ncontrolled:\n{tb}");
    assert!(b.status.success(), "controlling:\n{ta}\ncontrolled:\n{tb}");
    for i in 1..=3 {
        assert!(ta.contains(&format!("received: pong {i}\n")), "{ta}");
        assert!(ta.contains(&format!("sent: ping {i}\n")), "{ta}");
        assert!(tb.contains(&format!("received: ping {i}\n")), "{tb}");
        assert!(tb.contains(&format!("sent: pong {i}\n")), "{tb}");
    }
    for t in [&ta, &tb] {
        assert!(t.contains("selected pair: 127.0.0.1:"), "{t}");
        assert!(t.contains(" (host) -> 127.0.0.1:"), "{t}");
        assert!(t.contains(" (host)\n"), "{t}");
        assert!(t.contains("ice state: Connected"), "{t}");
        assert!(t.contains("local candidate: "), "{t}");
    }
}

#[test]
fn bad_stun_and_turn_flags_are_refused_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--stun", "stun://127.0.0.1"],
            "no \"//\" after the scheme",
        ),
        (&["--stun", "http:127.0.0.1"], "unknown scheme"),
        (
            &["--turn", "turn:127.0.0.1?transport=sctp"],
            "unknown transport",
        ),
        (&["--turn", "stun:127.0.0.1"], "not a turn: or turns: URL"),
        (
            &["--turn", "turn:127.0.0.1"],
            "--turn needs both --turn-user and --turn-pass",
        ),
        (
            &["--candidate-types", "host,bogus"],
            "unknown candidate type",
        ),
    ];
    for (flags, want) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_icering"))
            .args(["ping", "--controlling"])
            .args(*flags)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

#[test]
fn times_out_with_a_reason_when_no_peer_shows_up() {
    let (p1, p2) = (free_port(), free_port());
    let o = Command::new(env!("CARGO_BIN_EXE_icering"))
        .args([
            "ping",
            "--controlled",
            "--signal-listen",
            &format!("127.0.0.1:{p1}"),
            "--signal-remote",
            &format!("http://127.0.0.1:{p2}"),
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("timed out"), "{err}");
    // The diagnostics: nothing arrived, and no pair was formed.
    assert!(err.contains("0 datagrams received; pairs: )"), "{err}");
}
