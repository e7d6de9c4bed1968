//! Interop with coturn's client: `turnutils_uclient` against `icering serve`, with
//! `turnutils_peer` (or the client itself, `-y`) as the peer. Long-term credentials
//! (`-u/-w`) and TURN REST credentials (`-W secret`), channels and Send indications (`-s`),
//! over UDP and over TCP (`-t`).
//!
//! Skipped, saying so, when coturn's tools are not installed (CI installs coturn).
//! Wrong credentials are tested in `turn_relay.rs`: uclient retries a 401 silently
//! forever, so there is no output to check.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Killed, spawn_serve};

fn coturn_tools() -> bool {
    let ok = common::have("turnutils_uclient") && common::have("turnutils_peer");
    if !ok {
        // CI installs coturn (.ci/run): there a missing tool is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the coturn interop: turnutils_uclient/turnutils_peer not installed"
        );
        eprintln!(
            "SKIPPED: turnutils_uclient/turnutils_peer not installed \
             (apt-get install coturn); coturn interop not tested"
        );
    }
    ok
}

/// coturn's `turnutils_peer` echoing on 127.0.0.1 (killed on drop), and its port.
fn udp_peer() -> (Killed, String) {
    let port = free_udp_port().to_string();
    let peer = Killed(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts"),
    );
    std::thread::sleep(Duration::from_millis(300));
    (peer, port)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs turnutils_uclient to completion (60 s limit) and returns its output.
fn uclient(args: &[&str]) -> String {
    let mut child = Command::new("turnutils_uclient")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turnutils_uclient starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// uclient with `flags`, `clients` clients of 100 messages each to the UDP peer on
/// `peer_port`, authenticated by `auth`, through the server on 127.0.0.1:`port`: every
/// message must come back.
fn relay_through(flags: &[&str], clients: u64, peer_port: &str, port: &str, auth: [&str; 4]) {
    let m = clients.to_string();
    let mut args = flags.to_vec();
    args.extend([
        "-n",
        "100",
        "-m",
        &m,
        "-l",
        "120",
        "-e",
        "127.0.0.1",
        "-r",
        peer_port,
        "-p",
        port,
    ]);
    args.extend(auth);
    args.push("127.0.0.1");
    assert_complete(&uclient(&args), 100 * clients);
}

/// Asserts uclient finished with every message received and none lost.
fn assert_complete(out: &str, expect_msgs: u64) {
    let lost = out
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("no 'Total lost packets' line:\n{out}"));
    assert!(
        lost.contains("Total lost packets 0 ("),
        "packets lost: {lost}\n{out}"
    );
    let totals = out
        .lines()
        .find(|l| l.contains("start_mclient: tot_send_msgs="))
        .unwrap_or_else(|| panic!("no totals line:\n{out}"));
    let nums: Vec<u64> = totals
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    // "N: : start_mclient: tot_send_msgs=S, tot_recv_msgs=R"
    let (sent, recv) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(sent >= expect_msgs, "{totals}");
    assert_eq!(recv, sent, "{totals}");
    assert!(
        !out.contains("error 4") && !out.contains("error 5"),
        "{out}"
    );
    eprintln!("{lost}\n{totals}");
}

fn serve(ports: &str) -> common::ServeProcess {
    serve_with(ports, &[])
}

fn serve_with(ports: &str, extra: &[&str]) -> common::ServeProcess {
    let (lo, hi) = ports.split_once('-').unwrap();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--user",
        "user:pass",
        "--static-auth-secret",
        "north",
        "--realm",
        "icering.test",
        "--allow-loopback-peers",
        "--min-port",
        lo,
        "--max-port",
        hi,
    ];
    args.extend(extra);
    // One "listening on" line for the UDP address, one per TLS address.
    let listens = 1 + extra.iter().filter(|a| **a == "--tls-listen").count();
    spawn_serve(&args, false, listens).expect("icering serve starts")
}

#[test]
fn turnutils_uclient_long_term_and_rest_credentials() {
    if !coturn_tools() {
        return;
    }
    let server = serve("45000-45999");
    let port = server.addrs[0].port().to_string();
    let (_peer, peer_port) = udp_peer();
    let user = ["-u", "user", "-w", "pass"];
    // Long-term credentials, channels (ChannelBind + ChannelData), RTP/RTCP pairs with
    // EVEN-PORT + RESERVATION-TOKEN: 2 clients × 100 messages.
    relay_through(&[], 2, &peer_port, &port, user);
    // Send/Data indications instead of channels.
    relay_through(&["-s"], 2, &peer_port, &port, user);
    // TURN over TCP (RFC 8656 §3.1): channels, then Send indications.
    relay_through(&["-t"], 2, &peer_port, &port, user);
    relay_through(&["-t", "-s"], 2, &peer_port, &port, user);
    // TURN REST credentials from the shared secret.
    relay_through(&[], 2, &peer_port, &port, ["-u", "rest", "-W", "north"]);
    // Client to client through two allocations (no external peer), without RTCP.
    let args = [
        "-y",
        "-c",
        "-n",
        "100",
        "-m",
        "2",
        "-l",
        "120",
        "-p",
        &port,
        "-u",
        "user",
        "-w",
        "pass",
        "127.0.0.1",
    ];
    assert_complete(&uclient(&args), 200);
}

/// coturn's client against shared-port relay sockets (two relay IPs on one socket per
/// port): channels with RTP/RTCP pairs (EVEN-PORT + RESERVATION-TOKEN), then Send
/// indications; every message comes back through the relay.
#[test]
fn turnutils_uclient_against_shared_port_relay() {
    if !coturn_tools() {
        return;
    }
    let server = serve_with(
        "31600-31799",
        &[
            "--relay-socket",
            "shared-port",
            "--relay-ip",
            "127.0.0.2",
            "--relay-ip",
            "127.0.0.3",
        ],
    );
    let port = server.addrs[0].port().to_string();
    let (_peer, peer_port) = udp_peer();
    let user = ["-u", "user", "-w", "pass"];
    relay_through(&[], 4, &peer_port, &port, user);
    relay_through(&["-s"], 4, &peer_port, &port, user);
}

/// coturn's client over TLS (`-t -S`: TURN over TLS, OpenSSL) against `icering serve
/// --tls-listen` with a certificate made here: channels, then Send indications; every
/// message comes back through the relay.
#[test]
fn turnutils_uclient_over_tls() {
    if !coturn_tools() {
        return;
    }
    let files = common::Pki::new().files("uclient-tls");
    let server = serve_with("48200-48399", &files.serve_args());
    drop(files);
    let port = server.addrs[1].port().to_string();
    let (_peer, peer_port) = udp_peer();
    let user = ["-u", "user", "-w", "pass"];
    relay_through(&["-t", "-S"], 2, &peer_port, &port, user);
    relay_through(&["-t", "-S", "-s"], 2, &peer_port, &port, user);
}
