//! Helpers shared by the integration tests: a STUN client on a std socket, spawning the
//! `icering` binary and reading the address it listens on, and a seccomp filter that makes
//! a child process look like a container where io_uring is blocked.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use icering::stun::{Class, Message, MessageType, MessageWriter, Method};

/// Builds a Binding request with FINGERPRINT and transaction id `tid`.
pub fn binding_request(tid: [u8; 12], buf: &mut [u8]) -> usize {
    let mut w =
        MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Request), &tid).unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

/// Sends a Binding request and waits for its answer (resending up to 5 times), checking the
/// transaction id, fingerprint and XOR-MAPPED-ADDRESS. Returns the mapped address.
pub fn binding_round_trip(client: &UdpSocket, server: SocketAddr, tid: [u8; 12]) -> SocketAddr {
    let mut req = [0u8; 64];
    let n = binding_request(tid, &mut req);
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        client.send_to(&req[..n], server).unwrap();
        while let Ok((len, from)) = client.recv_from(&mut buf) {
            assert_eq!(from, server);
            let m = Message::parse(&buf[..len]).expect("answer parses");
            if m.transaction_id() != &tid {
                continue; // an answer to an earlier resend
            }
            assert_eq!(m.class(), Class::Success);
            m.verify_fingerprint()
                .expect("answer has a valid FINGERPRINT");
            return m.xor_mapped_address().expect("XOR-MAPPED-ADDRESS").unwrap();
        }
    }
    panic!("no answer from {server} after 5 tries");
}

/// A running `icering serve` process; killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    pub log: Vec<String>,
    /// The log lines after start-up (read from the pipe as they come, so the child
    /// never blocks on it).
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Waits (up to 20 s) for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `icering serve` with `args`, waits for its "listening on" lines (one per
/// listen address, UDP ones first, then TLS) and returns them parsed. `pre_exec` may install a seccomp filter.
pub fn spawn_serve(
    args: &[&str],
    block_uring: bool,
    listens: usize,
) -> Result<ServeProcess, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_icering"));
    cmd.arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    if block_uring {
        block_io_uring(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut addrs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while addrs.len() < listens {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    // "ADDR/udp (...)", "ADDR/udp+tcp (...)", "ADDR/tls (...)".
                    let addr = rest.split('/').next().unwrap();
                    addrs.push(addr.parse().map_err(|e| format!("{addr}: {e}"))?);
                }
                log.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                return Err(format!("serve did not start ({status:?}); log: {log:#?}"));
            }
        }
    }
    Ok(ServeProcess {
        child,
        addrs,
        log,
        lines: rx,
    })
}

/// Reads `sock` until the peer closes it (EOF or a reset), each read waiting at most
/// `limit`: the bytes read before the close, or the error that ended the wait (a timeout:
/// not closed).
pub fn read_until_closed(
    mut sock: &std::net::TcpStream,
    limit: Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    sock.set_read_timeout(Some(limit))?;
    let mut got = Vec::new();
    match sock.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e),
    }
}

/// Makes `io_uring_setup` fail with EPERM in the child, as container seccomp profiles do.
pub fn block_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls async-signal-safe prctl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
            const SYS_IO_URING_SETUP: u32 = 425;
            let ret_errno = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32);
            let filter = [
                // A = arch
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                // if A != x86_64 goto allow
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 2,
                    k: AUDIT_ARCH_X86_64,
                },
                // A = syscall nr
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup goto deny
                libc::sock_filter {
                    code: 0x15,
                    jt: 1,
                    jf: 0,
                    k: SYS_IO_URING_SETUP,
                },
                // allow
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
                // deny with EPERM
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: ret_errno,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends SIGTERM and waits up to `limit` for the exit status.
pub fn terminate(p: &mut ServeProcess, limit: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
pub mod turn;

/// One HTTP/1.1 request (Connection: close); returns status and body.
pub fn http(admin: SocketAddr, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `read` every 10 ms until `f` holds for what it returns (the engine's counters are
/// published once per shard loop turn) and returns that; gives up after 30 s, so a broken
/// build fails instead of hanging.
pub fn wait_until<S: std::fmt::Debug>(
    what: &str,
    mut read: impl FnMut() -> S,
    f: impl Fn(&S) -> bool,
) -> S {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = read();
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for a plain condition.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    wait_until(what, &mut f, |ok| *ok);
}

/// Runs `ip CMD` (space-separated arguments), asserting it succeeds.
pub fn ip(cmd: &str) {
    let args: Vec<&str> = cmd.split(' ').collect();
    let out = Command::new("ip").args(&args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves this thread (and so the threads and processes it starts) into a fresh network
/// namespace, or says why it cannot: it needs root, `ip`, and each `(binary, how to
/// install it)` of `needs`. Without them the test prints "skipped: <reason>" and should
/// pass, except under `CI=true`, where this fails it.
pub fn own_netns(test: &str, needs: &[(&str, &str)]) -> bool {
    let missing = needs
        .iter()
        .find(|(bin, _)| Command::new(bin).arg("--version").output().is_err());
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not root (a network namespace needs CAP_SYS_ADMIN)".to_string())
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("`ip` not installed (apt-get install iproute2)".to_string())
    } else if let Some((bin, hint)) = missing {
        Some(format!("`{bin}` not installed ({hint})"))
    // SAFETY: unshare with CLONE_NEWNET only changes this thread's network namespace.
    } else if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        Some(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ))
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{test} must run under CI, but: {r}");
            eprintln!("skipped: {test}: {r}");
            false
        }
    }
}

/// Waits (no limit) until `w` shows Connected or Completed; that state, or the watch's
/// error (the agent is gone).
pub async fn up(
    w: &mut icering::StateWatch,
) -> Result<icering::ConnectionState, icering::ApiError> {
    use icering::ConnectionState::{Completed, Connected};
    loop {
        let s = w.get();
        if matches!(s, Connected | Completed) {
            return Ok(s);
        }
        w.changed().await?;
    }
}

/// `agent` (an App agent) is connected, again after a restart, within 20 s.
pub async fn until_up(agent: &icering::Agent) {
    let mut w = agent.state().expect("an App agent");
    tokio::time::timeout(Duration::from_secs(20), up(&mut w))
        .await
        .expect("connected within 20 s")
        .expect("the agent is alive");
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process (coturn's tools) killed on drop.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `turnserver` on 127.0.0.1 (user `alice:secret`, realm `coturn.test`, relays on
/// 127.0.0.1 in `relay_ports`, loopback peers allowed) with `args` on top, and waits until
/// it accepts TCP on `port`. `None`, saying so, when coturn is not installed; under `CI`
/// that is a failure (`test` names what would not run).
pub fn coturn(test: &str, port: u16, relay_ports: (u16, u16), args: &[&str]) -> Option<Killed> {
    if !have("turnserver") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run {test}: turnserver not installed"
        );
        eprintln!("SKIPPED {test}: turnserver not installed (apt-get install coturn)");
        return None;
    }
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--min-port={}", relay_ports.0),
            &format!("--max-port={}", relay_ports.1),
            "--user=alice:secret",
            "--realm=coturn.test",
            "--lt-cred-mech",
            "--allow-loopback-peers",
            "--no-cli",
            "--log-file=stdout",
            "--simple-log",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver starts");
    let c = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "turnserver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(c)
}

/// A test CA and a server certificate it signed for 127.0.0.1 (IP subjectAltName only),
/// as PEM.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::for_ip("127.0.0.1")
    }

    /// A CA and a server certificate it signed for `ip` (IP subjectAltName only).
    pub fn for_ip(ip: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "icering test CA");
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![ip.to_string()]).unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
        Pki {
            ca: ca_pem,
            cert,
            key: key.serialize_pem(),
        }
    }

    /// The server key's SubjectPublicKeyInfo hashed with SHA-256, in base64: what
    /// Chromium's `--ignore-certificate-errors-spki-list` takes to trust exactly this
    /// key.
    pub fn spki_sha256_base64(&self) -> String {
        use base64::Engine as _;
        use rcgen::PublicKeyData;
        use sha2::Digest;
        let key = rcgen::KeyPair::from_pem(&self.key).unwrap();
        let hash = sha2::Sha256::digest(key.subject_public_key_info());
        base64::engine::general_purpose::STANDARD.encode(hash)
    }
}

/// A [`Pki`]'s server certificate and key as PEM files in a directory of their own,
/// removed on drop.
pub struct PkiFiles {
    pub dir: std::path::PathBuf,
    pub cert: String,
    pub key: String,
}

impl PkiFiles {
    /// `icering serve` arguments for a TLS listener on a free loopback port with these
    /// files.
    pub fn serve_args(&self) -> [&str; 6] {
        let (cert, key) = (self.cert.as_str(), self.key.as_str());
        ["--tls-listen", "127.0.0.1:0", "--cert", cert, "--pkey", key]
    }
}

impl Drop for PkiFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    /// Writes the certificate and key under a temporary directory named after `tag`.
    pub fn files(&self, tag: &str) -> PkiFiles {
        let dir = std::env::temp_dir().join(format!("icering-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        PkiFiles {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            dir,
        }
    }
}

/// coturn with only a TLS listener on `port`, serving `pki`'s certificate.
pub fn coturn_tls(test: &str, port: u16, relay_ports: (u16, u16), pki: &Pki) -> Option<Killed> {
    let files = pki.files(&format!("coturn-tls-{port}"));
    // coturn has read the files once it listens (the guard removes them after).
    coturn(
        test,
        port,
        relay_ports,
        &[
            &format!("--tls-listening-port={port}"),
            &format!("--cert={}", files.cert),
            &format!("--pkey={}", files.key),
            "--no-udp",
            "--no-tcp",
            "--no-dtls",
        ],
    )
}
