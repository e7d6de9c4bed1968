//! `icering ping` against aioice (pure-Python ICE) wrapped in pion's ping-pong HTTP
//! signalling (tests/interop/aioice_peer.py), in both roles, on loopback only.
//! Skipped (with a printed reason) when `python3 -c "import aioice"` fails.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

fn aioice_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aioice"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        // CI installs aioice (.ci/run): there a missing peer is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the aioice interop: python3 cannot import aioice"
        );
        eprintln!("skipping: python3 with aioice not available (pip install aioice)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn common_args(listen: u16, remote: u16) -> Vec<String> {
    [
        "--signal-listen".into(),
        format!("127.0.0.1:{listen}"),
        "--signal-remote".into(),
        format!("http://127.0.0.1:{remote}"),
        "--count".into(),
        "3".into(),
        "--interval".into(),
        "0.2".into(),
        "--timeout".into(),
        "25".into(),
    ]
    .into()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(icering_controlling: bool) {
    if !aioice_available() {
        return;
    }
    let (ours, theirs) = if icering_controlling {
        ("--controlling", "--controlled")
    } else {
        ("--controlled", "--controlling")
    };
    let (p1, p2) = (free_port(), free_port());
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aioice_peer.py");
    let a = Command::new(env!("CARGO_BIN_EXE_icering"))
        .arg("ping")
        .arg(ours)
        .args(common_args(p1, p2))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = Command::new("python3")
        .arg(peer)
        .arg(theirs)
        .args(common_args(p2, p1))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let (ta, tb) = (text(&a), text(&b));
    let both = format!("icering:\n{ta}\naioice:\n{tb}");
    assert!(a.status.success(), "{both}");
    assert!(b.status.success(), "{both}");
    let (our_word, their_word) = if icering_controlling {
        ("ping", "pong")
    } else {
        ("pong", "ping")
    };
    for i in 1..=3 {
        assert!(
            ta.contains(&format!("received: {their_word} {i}\n")),
            "{both}"
        );
        assert!(
            tb.contains(&format!("received: {our_word} {i}\n")),
            "{both}"
        );
    }
    assert!(ta.contains("selected pair: 127.0.0.1:"), "{both}");
    assert!(tb.contains("connected"), "{both}");
}

#[test]
fn icering_controlling_aioice_controlled() {
    run(true);
}

#[test]
fn aioice_controlling_icering_controlled() {
    run(false);
}
