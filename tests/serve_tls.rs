//! `icering serve --tls-listen`: SIGHUP (or SIGUSR2, coturn's) re-reads the certificate
//! and key, so a renewed certificate takes effect without a restart; a reload that fails
//! (a broken key file) keeps the old one and the server up. Checked with TLS handshakes
//! of a rustls client trusting one CA or the other; and a client's close_notify closes the
//! stream, answered with the server's own.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Pki;

/// A TLS handshake with the server at `at`, trusting only `ca` (PEM).
fn handshake(at: SocketAddr, ca: &str) -> Result<(), String> {
    connect(at, ca).map(drop)
}

/// A TLS session with the server at `at`, handshake done.
fn connect(at: SocketAddr, ca: &str) -> Result<(rustls::ClientConnection, TcpStream), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(at.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(at).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok((conn, sock))
}

/// Whether `bytes` from the server, fed to the client session `conn`, hold the server's
/// close_notify.
fn closes(conn: &mut rustls::ClientConnection, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match conn.read_tls(&mut bytes) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match conn.process_new_packets() {
            Ok(state) if state.peer_has_closed() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_reload_keeps_the_old_one() {
    let (old, new) = (Pki::new(), Pki::new());
    let files = old.files("serve-tls");
    let (cert, key) = (&files.cert, &files.key);
    let args = [
        &["--listen", "127.0.0.1:0", "--shards", "2"],
        &files.serve_args()[..],
    ];
    let serve = common::spawn_serve(&args.concat(), false, 2).expect("icering serve starts");
    let at = serve.addrs[1];
    handshake(at, &old.ca).expect("the first certificate");
    assert!(handshake(at, &new.ca).is_err());

    // The client's close_notify: the server answers with its own and closes the stream.
    let (mut conn, mut sock) = connect(at, &old.ca).unwrap();
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
    let rest = common::read_until_closed(&sock, Duration::from_secs(5)).expect("closed");
    assert!(closes(&mut conn, &rest), "{rest:02x?}");

    // A broken key: the reload fails, the old certificate stays, the server stays up.
    std::fs::write(key, "not a key").unwrap();
    signal(serve.child.id(), libc::SIGHUP);
    let line = serve.wait_log("TLS reload failed");
    assert!(line.contains(key.as_str()), "{line}");
    handshake(at, &old.ca).expect("the old certificate after a failed reload");

    // The renewed pair, then SIGUSR2 (coturn's signal for it).
    std::fs::write(cert, &new.cert).unwrap();
    std::fs::write(key, &new.key).unwrap();
    signal(serve.child.id(), libc::SIGUSR2);
    serve.wait_log("TLS certificate and key reloaded");
    // Each shard takes the new configuration with its next control messages: wait for
    // ten new handshakes in a row (connections spread over both shards), then the old CA
    // must fail every time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        match handshake(at, &new.ca) {
            Ok(()) => in_a_row += 1,
            Err(_) => {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for _ in 0..10 {
        assert!(handshake(at, &old.ca).is_err());
    }
}

/// `--max-allocate-timeout`: a connection to the TLS port that never starts its handshake,
/// and one whose handshake is done but that asks for no allocation (that one after the
/// server's close_notify), are closed at their check and counted in the stats line.
#[test]
fn tls_connections_without_an_allocation_are_closed() {
    let pki = Pki::new();
    let files = pki.files("serve-tls-idle");
    let ours = [
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--max-allocate-timeout",
        "1",
        "--stats-interval",
        "1",
    ];
    let args = [&ours[..], &files.serve_args()[..]].concat();
    let serve = common::spawn_serve(&args, false, 2).expect("icering serve starts");
    let at = serve.addrs[1];
    let silent = TcpStream::connect(at).unwrap();
    let (mut session, handshaken) = connect(at, &pki.ca).expect("handshake");
    let limit = Duration::from_secs(10);
    common::read_until_closed(&silent, limit).expect("the silent connection is closed");
    let rest = common::read_until_closed(&handshaken, limit)
        .expect("the connection without allocation is closed");
    assert!(
        closes(&mut session, &rest),
        "close_notify first: {rest:02x?}"
    );
    serve.wait_log("tcp_no_allocation_closed=2");
}
