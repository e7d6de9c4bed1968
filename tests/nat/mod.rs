//! The NAT lab: a topology of network namespaces, veth pairs and iptables NAT private to
//! one test, torn down on drop (also when the test panics). See docs/nat.md.
//!
//! ```text
//!  host A ns            router A ns                public ns               router B ns            host B ns
//!  eth 10.1.0.2 ── lan 10.1.0.1 | wan 100.64.1.2 ── pa 100.64.1.1            pb 100.64.2.1 ── wan 100.64.2.2 | lan 10.2.0.1 ── eth 10.2.0.2
//!     sig 192.168.0.1 ─────────────────── signalling veth (no NAT) ────────────────────────────── sig 192.168.0.2
//!                                      lo: 100.64.0.1, .2, .3 (servers)
//! ```
//!
//! Routers NAT what leaves `wan` (or route without NAT), hosts route through their router,
//! and the public namespace forwards between `pa` and `pb`: it knows no route to the private
//! LANs, so a host is only reachable through its NAT; its default route ends in a gateway
//! nobody answers for, so traffic to unknown addresses vanishes instead of failing the
//! sender. The ping processes' HTTP signalling uses the direct `sig` veth between the two
//! hosts, which bypasses the NATs.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Prefix of every namespace the lab creates: `icnl<pid>x<n>-<role>`.
const PREFIX: &str = "icnl";

pub const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
pub const ROUTER_A_WAN: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
pub const ROUTER_B_WAN: Ipv4Addr = Ipv4Addr::new(100, 64, 2, 2);
pub const SIG_A: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const SIG_B: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The STUN/TURN server's first address (also the relay address).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The server's second address (RFC 4787 mapping tests: same socket, other destination).
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// A public address with no server: the source of unsolicited packets.
pub const STRANGER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
pub const TURN_PORT: u16 = 3478;
pub const TURN_USER: &str = "lab";
pub const TURN_PASS: &str = "labpass";

/// How a router treats what leaves its `wan` link (RFC 4787 terms).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Plain routing; the public namespace routes to the LAN.
    None,
    /// `MASQUERADE`: endpoint-independent mapping (conntrack keeps the source port), with
    /// address-and-port-dependent filtering (only replies to conntrack entries get in).
    EndpointIndependent,
    /// `MASQUERADE --random-fully`: address-and-port-dependent mapping (a random port per
    /// destination), the same filtering.
    Symmetric,
}

/// Loss and one-way delay on router A's `wan` link, each direction.
#[derive(Copy, Clone, Debug)]
pub struct Impair {
    pub loss_percent: u32,
    pub delay: Duration,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nat_a: Nat,
    pub nat_b: Nat,
    pub impair_a: Option<Impair>,
    /// Routers drop forwarded UDP to this destination port (TURN over UDP blocked).
    pub block_udp_port: Option<u16>,
}

/// Whether this process can build the lab: `Ok` or the reason it cannot.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    for tool in ["ip", "iptables"] {
        if !have(tool) {
            return Err(format!(
                "`{tool}` not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    let probe = format!("{PREFIX}{}probe{}", std::process::id(), next_id());
    run(&["ip", "netns", "add", &probe]).map_err(|e| format!("cannot create a netns: {e}"))?;
    let nat = ns_run(&probe, &["iptables", "-t", "nat", "-S"]);
    let _ = run(&["ip", "netns", "del", &probe]);
    nat.map_err(|e| format!("iptables NAT unusable: {e}"))?;
    Ok(())
}

/// `true` when the lab can run. Otherwise prints "skipped: <reason>" and returns `false`,
/// or panics when `CI=true` (CI runs as root with iproute2 and iptables installed).
pub fn lab_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{test}: the NAT lab must run under CI, but: {reason}");
            eprintln!("skipped: {test}: {reason}");
            false
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Like [`lab_or_skip`] for one more tool a scenario needs (e.g. coturn's `turnserver`).
pub fn tool_or_skip(test: &str, tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: `{tool}` must be installed under CI");
    eprintln!("skipped: {test}: `{tool}` not installed");
    false
}

fn next_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command to completion; `Err` with its stderr when it fails.
pub fn run(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command inside namespace `ns`.
pub fn ns_run(ns: &str, argv: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

/// Runs `f` on a thread that joined namespace `ns`: sockets it creates live there.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let file =
        File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with an fd we hold open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| format!("thread in netns {ns} panicked"))?
    })
}

/// Namespaces whose creating test process is gone (killed before its Drop ran): their
/// processes are killed and the namespaces deleted, so a crashed run leaves nothing behind.
fn reap_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_ns(name);
        }
    }
}

/// Kills the processes inside `ns` (all started by a lab) and deletes it; its veths and
/// iptables rules go with it.
fn delete_ns(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a process living in a namespace this lab created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Whether the kernel has the netem qdisc (probed once; some kernels are built without it).
fn have_netem() -> bool {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        let ns = format!("{PREFIX}{}netem{}", std::process::id(), next_id());
        if run(&["ip", "netns", "add", &ns]).is_err() {
            return false;
        }
        // A veth, not a dummy device: some kernels have no dummy driver.
        let ok = veth(&ns, "d0", &ns, "d1").is_ok()
            && ns_run(
                &ns,
                &[
                    "tc", "qdisc", "add", "dev", "d0", "root", "netem", "delay", "1ms",
                ],
            )
            .is_ok();
        let _ = run(&["ip", "netns", "del", &ns]);
        ok
    })
}

/// One lab: five namespaces, the links between them, NAT rules, and whatever runs inside.
pub struct Lab {
    pub id: String,
    pub public: String,
    pub router_a: String,
    pub router_b: String,
    pub host_a: String,
    pub host_b: String,
    created: Vec<String>,
    wires: Vec<Wire>,
    servers: Vec<Child>,
    /// Every line the servers logged, in order.
    log: Arc<std::sync::Mutex<Vec<String>>>,
    coturn_log: Option<PathBuf>,
    files: Vec<PathBuf>,
    /// How the impaired link was made ("netem" or "userspace wire"), if there is one.
    pub impairment: Option<&'static str>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for w in &mut self.wires {
            w.stop();
        }
        for ns in self.created.iter().rev() {
            delete_ns(ns);
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Lab {
    /// Builds the topology of `spec`. On error everything created so far is removed.
    pub fn new(spec: &Spec) -> Result<Lab, String> {
        reap_stale();
        let id = format!("{PREFIX}{}x{}", std::process::id(), next_id());
        let mut lab = Lab {
            public: format!("{id}-pub"),
            router_a: format!("{id}-ra"),
            router_b: format!("{id}-rb"),
            host_a: format!("{id}-ha"),
            host_b: format!("{id}-hb"),
            id,
            created: Vec::new(),
            wires: Vec::new(),
            servers: Vec::new(),
            log: Arc::default(),
            coturn_log: None,
            files: Vec::new(),
            impairment: None,
        };
        lab.build(spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &Spec) -> Result<(), String> {
        let (p, ra, rb, ha, hb) = (
            self.public.clone(),
            self.router_a.clone(),
            self.router_b.clone(),
            self.host_a.clone(),
            self.host_b.clone(),
        );
        for ns in [&p, &ra, &rb, &ha, &hb] {
            run(&["ip", "netns", "add", ns])?;
            self.created.push(ns.clone());
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // The rest of the Internet: a default route out of a veth to a gateway whose MAC
        // nobody has, so packets to unknown destinations (e.g. a peer's private host
        // candidate) vanish silently as they would upstream, instead of failing the sender
        // with ENETUNREACH (coturn closes an allocation on that error). Not a dummy device:
        // some kernels are built without it.
        veth(&p, "inet", &p, "inet1")?;
        run(&[
            "ip",
            "-n",
            &p,
            "neigh",
            "add",
            "100.64.255.254",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "inet",
            "nud",
            "permanent",
        ])?;
        run(&[
            "ip",
            "-n",
            &p,
            "route",
            "add",
            "default",
            "via",
            "100.64.255.254",
            "dev",
            "inet",
            "onlink",
        ])?;
        for ip in [SERVER, SERVER2, STRANGER] {
            run(&[
                "ip",
                "-n",
                &p,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "lo",
            ])?;
        }
        for ns in [&p, &ra, &rb] {
            in_ns(ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
                .map_err(|e| format!("ip_forward in {ns}: {e}"))?;
        }

        // public <-> routers ("the internet"); router A's link may be impaired.
        match spec.impair_a {
            Some(imp) if !have_netem() => {
                self.wires.push(Wire::new(&p, "pa", &ra, "wan", imp)?);
                self.impairment = Some("userspace wire (TUN pair; no netem in this kernel)");
            }
            _ => veth(&p, "pa", &ra, "wan")?,
        }
        veth(&p, "pb", &rb, "wan")?;
        addr(&p, "pa", "100.64.1.1/24")?;
        addr(&ra, "wan", "100.64.1.2/24")?;
        addr(&p, "pb", "100.64.2.1/24")?;
        addr(&rb, "wan", "100.64.2.2/24")?;
        if let Some(imp) = spec.impair_a
            && self.wires.is_empty()
        {
            let loss = format!("{}%", imp.loss_percent);
            let delay = format!("{}ms", imp.delay.as_millis());
            for (ns, dev) in [(&p, "pa"), (&ra, "wan")] {
                ns_run(
                    ns,
                    &[
                        "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", &delay, "loss",
                        &loss,
                    ],
                )?;
            }
            self.impairment = Some("tc netem");
        }

        // routers <-> hosts
        veth(&ra, "lan", &ha, "eth")?;
        veth(&rb, "lan", &hb, "eth")?;
        addr(&ra, "lan", "10.1.0.1/24")?;
        addr(&ha, "eth", "10.1.0.2/24")?;
        addr(&rb, "lan", "10.2.0.1/24")?;
        addr(&hb, "eth", "10.2.0.2/24")?;
        run(&[
            "ip",
            "-n",
            &ra,
            "route",
            "add",
            "default",
            "via",
            "100.64.1.1",
        ])?;
        run(&[
            "ip",
            "-n",
            &rb,
            "route",
            "add",
            "default",
            "via",
            "100.64.2.1",
        ])?;
        run(&[
            "ip", "-n", &ha, "route", "add", "default", "via", "10.1.0.1",
        ])?;
        run(&[
            "ip", "-n", &hb, "route", "add", "default", "via", "10.2.0.1",
        ])?;

        // signalling, bypassing the NATs
        veth(&ha, "sig", &hb, "sig")?;
        addr(&ha, "sig", "192.168.0.1/30")?;
        addr(&hb, "sig", "192.168.0.2/30")?;

        for (router, nat, lan, wan_gw) in [
            (&ra, spec.nat_a, "10.1.0.0/24", "100.64.1.2"),
            (&rb, spec.nat_b, "10.2.0.0/24", "100.64.2.2"),
        ] {
            match nat {
                Nat::None => {
                    run(&["ip", "-n", &p, "route", "add", lan, "via", wan_gw])?;
                }
                Nat::EndpointIndependent | Nat::Symmetric => {
                    let mut masq = vec![
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "wan",
                        "-j",
                        "MASQUERADE",
                    ];
                    if nat == Nat::Symmetric {
                        masq.push("--random-fully");
                    }
                    ns_run(router, &masq)?;
                    // Filtering: only conntrack replies get in. Dropping new inbound flows
                    // before conntrack confirms them also keeps an early check from the
                    // peer from taking the tuple the host's own mapping needs.
                    for chain in ["INPUT", "FORWARD"] {
                        ns_run(
                            router,
                            &[
                                "iptables",
                                "-A",
                                chain,
                                "-i",
                                "wan",
                                "-m",
                                "conntrack",
                                "--ctstate",
                                "NEW,INVALID",
                                "-j",
                                "DROP",
                            ],
                        )?;
                    }
                }
            }
            if let Some(port) = spec.block_udp_port {
                let port = port.to_string();
                ns_run(
                    router,
                    &[
                        "iptables", "-A", "FORWARD", "-p", "udp", "--dport", &port, "-j", "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn temp_file(&mut self, name: &str, contents: &str) -> Result<PathBuf, String> {
        let path = std::env::temp_dir().join(format!("{}-{name}", self.id));
        std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        self.files.push(path.clone());
        Ok(path)
    }

    /// What the servers in the public namespace logged so far.
    pub fn server_log(&self) -> String {
        let mut text = self.log.lock().unwrap().join("\n");
        if let Some(path) = &self.coturn_log {
            text += &std::fs::read_to_string(path).unwrap_or_default();
        }
        text
    }

    /// Packets the userspace wire forwarded and dropped, from the router out and into it
    /// (`None` without one, e.g. netem).
    pub fn wire_stats(&self) -> Option<String> {
        self.wires.first().map(|w| {
            let n = |i: usize| w.stats[i].load(Ordering::Relaxed);
            format!(
                "out: {} forwarded, {} dropped; in: {} forwarded, {} dropped",
                n(0),
                n(1),
                n(2),
                n(3)
            )
        })
    }

    /// Starts `icering serve` in the public namespace: STUN and TURN (UDP and TCP) on
    /// [`SERVER`] and [`SERVER2`] port [`TURN_PORT`], relaying from [`SERVER`], static
    /// user [`TURN_USER`], private peers allowed (the lab's "public" range is 100.64/10).
    pub fn start_icering_serve(&mut self) -> Result<(), String> {
        let config = format!(
            "[server]\nlisten = [\"{SERVER}:{TURN_PORT}\", \"{SERVER2}:{TURN_PORT}\"]\n\
             shards = 1\n\n[turn]\nrealm = \"natlab\"\nrelay_ips = [\"{SERVER}\"]\n\
             users = [\"{TURN_USER}:{TURN_PASS}\"]\nallow_private_peers = true\n"
        );
        let path = self.temp_file("serve.toml", &config)?;
        let path = path.to_str().unwrap().to_owned();
        let public = self.public.clone();
        let child = spawn_in(
            &public,
            &[env!("CARGO_BIN_EXE_icering"), "serve", "--config", &path],
            Stdio::null(),
            Stdio::piped(),
        )?;
        self.wait_ready(child, |l| l.contains("listening on"), 2, "icering serve")
    }

    /// Starts coturn's `turnserver` in the public namespace on [`SERVER`]:[`TURN_PORT`]
    /// (UDP and TCP), the same user and realm: an independent TURN-over-TCP server for the
    /// coturn variant of scenario 5. Its log goes to a file [`Lab::server_log`] reads.
    pub fn start_coturn(&mut self) -> Result<(), String> {
        let tmp = std::env::temp_dir();
        let pidfile = tmp.join(format!("{}-turnserver.pid", self.id));
        let db = tmp.join(format!("{}-turndb", self.id));
        let log = tmp.join(format!("{}-turnserver.log", self.id));
        self.files
            .extend([pidfile.clone(), db.clone(), log.clone()]);
        self.coturn_log = Some(log.clone());
        let server = SERVER.to_string();
        let user = format!("{TURN_USER}:{TURN_PASS}");
        let port = TURN_PORT.to_string();
        let public = self.public.clone();
        let mut child = spawn_in(
            &public,
            &[
                "turnserver",
                "-n",
                "--listening-ip",
                &server,
                "--relay-ip",
                &server,
                "--listening-port",
                &port,
                "--min-port",
                "49152",
                "--max-port",
                "65535",
                "--lt-cred-mech",
                "--user",
                &user,
                "--realm",
                "natlab",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--verbose",
                "--no-stdout-log",
                "--log-file",
                log.to_str().unwrap(),
                "--simple-log",
                "--pidfile",
                pidfile.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
            ],
            Stdio::null(),
            Stdio::null(),
        )?;
        // Ready once its TCP listener accepts.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = in_ns(&public, || {
                std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((SERVER, TURN_PORT)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })?;
            if up {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "turnserver exited ({status}): {}",
                    self.server_log()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("turnserver did not listen: {}", self.server_log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.servers.push(child);
        Ok(())
    }

    fn wait_ready(
        &mut self,
        mut child: Child,
        ready: impl Fn(&str) -> bool,
        want: usize,
        what: &str,
    ) -> Result<(), String> {
        let out = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let keep = self.log.clone();
        let tag = what.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(format!("{tag}: {line}"));
                // Keep draining after the receiver is gone so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut log = Vec::new();
        let mut seen = 0;
        while seen < want {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if ready(&line) {
                        seen += 1;
                    }
                    log.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(format!("{what} did not start ({status:?}): {log:#?}"));
                }
            }
        }
        self.servers.push(child);
        Ok(())
    }

    /// Starts `icering ping` on host A (controlling) or B (controlled) with `extra` flags,
    /// signalling over the `sig` veth, `--count 3 --interval 0.2 --timeout 25`.
    ///
    /// On an impaired lab `--interval 0.05 --timeout 60`: the side that finishes first
    /// lingers only max(2 intervals, 0.5 s), so with 20 % loss and 0.2 s the peer was
    /// sometimes left short of its 3 messages (about 1 run in 10), and 10 messages in the
    /// linger make that vanishingly rare; lost STUN/ICE retransmissions (RTO doubling) made
    /// a few runs in 30 take 17-25 s, close to the default timeout.
    pub fn spawn_ping(&self, controlling: bool, extra: &[String]) -> Result<Child, String> {
        let (ns, role, host, listen, remote) = if controlling {
            (&self.host_a, "--controlling", HOST_A, SIG_A, SIG_B)
        } else {
            (&self.host_b, "--controlled", HOST_B, SIG_B, SIG_A)
        };
        let bind = format!("{host}:0");
        let listen = format!("{listen}:9000");
        let remote = format!("http://{remote}:9000");
        let mut argv = vec![
            env!("CARGO_BIN_EXE_icering"),
            "ping",
            role,
            "--bind",
            &bind,
            "--signal-listen",
            &listen,
            "--signal-remote",
            &remote,
            "--count",
            "3",
            "--interval",
            if self.impairment.is_some() {
                "0.05"
            } else {
                "0.2"
            },
            "--timeout",
            if self.impairment.is_some() {
                "60"
            } else {
                "25"
            },
        ];
        argv.extend(extra.iter().map(String::as_str));
        spawn_in(ns, &argv, Stdio::piped(), Stdio::piped())
    }

    /// Runs both ping processes to completion.
    pub fn ping_pair(&self, extra_a: &[String], extra_b: &[String]) -> (PingRun, PingRun) {
        let a = self.spawn_ping(true, extra_a).expect("ping A starts");
        let b = self.spawn_ping(false, extra_b).expect("ping B starts");
        (
            PingRun::from(a.wait_with_output().unwrap()),
            PingRun::from(b.wait_with_output().unwrap()),
        )
    }
}

fn veth(ns1: &str, dev1: &str, ns2: &str, dev2: &str) -> Result<(), String> {
    run(&[
        "ip", "link", "add", "name", dev1, "netns", ns1, "type", "veth", "peer", "name", dev2,
        "netns", ns2,
    ])?;
    run(&["ip", "-n", ns1, "link", "set", "dev", dev1, "up"])?;
    run(&["ip", "-n", ns2, "link", "set", "dev", dev2, "up"])?;
    Ok(())
}

fn addr(ns: &str, dev: &str, cidr: &str) -> Result<(), String> {
    run(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]).map(drop)
}

fn spawn_in(ns: &str, argv: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Child, String> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))
}

/// One finished `icering ping`.
pub struct PingRun {
    pub ok: bool,
    pub stdout: String,
    pub text: String,
}

impl From<Output> for PingRun {
    fn from(o: Output) -> Self {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let text = format!(
            "status {:?}\n--- stdout\n{stdout}--- stderr\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        PingRun {
            ok: o.status.success(),
            stdout,
            text,
        }
    }
}

/// The last `selected pair: <addr> [(<kind>)] -> <addr> [(<kind>)]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub local: SocketAddr,
    pub local_kind: Option<String>,
    pub remote: SocketAddr,
    pub remote_kind: Option<String>,
}

impl Selected {
    pub fn kinds(&self) -> [Option<&str>; 2] {
        [self.local_kind.as_deref(), self.remote_kind.as_deref()]
    }
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kinds().contains(&Some(kind))
    }
}

impl PingRun {
    pub fn selected(&self) -> Option<Selected> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("selected pair: "))?;
        let (l, r) = line.split_once(" -> ")?;
        fn side(s: &str) -> Option<(SocketAddr, Option<String>)> {
            let mut it = s.split_whitespace();
            let addr = it.next()?.parse().ok()?;
            let kind = it
                .next()
                .map(|k| k.trim_matches(|c| c == '(' || c == ')').to_owned());
            Some((addr, kind))
        }
        let (local, local_kind) = side(l)?;
        let (remote, remote_kind) = side(r)?;
        Some(Selected {
            local,
            local_kind,
            remote,
            remote_kind,
        })
    }

    /// Asserts exit 0 and `count` messages each way (`ping`/`pong` by role).
    pub fn assert_exchanged(&self, controlling: bool, count: u64, other: &PingRun) {
        assert!(
            self.ok,
            "this side:\n{}\nother side:\n{}",
            self.text, other.text
        );
        let (word, peer) = if controlling {
            ("ping", "pong")
        } else {
            ("pong", "ping")
        };
        for i in 1..=count {
            let line = format!("sent: {word} {i}\n");
            assert!(self.stdout.contains(&line), "no {line:?}:\n{}", self.text);
        }
        // Under loss some messages never arrive; the run ends once `count` did.
        let got = self.stdout.matches(&format!("received: {peer} ")).count() as u64;
        assert!(got >= count, "received {got} < {count}:\n{}", self.text);
    }
}

/// A userspace point-to-point link standing in for netem: a TUN device at each end, one
/// thread per direction forwarding IP packets after `delay`, dropping `loss_percent` %.
struct Wire {
    stop: Arc<AtomicBool>,
    /// Packets forwarded and dropped, each direction.
    stats: Arc<[AtomicU64; 4]>,
    threads: Vec<JoinHandle<()>>,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Creates TUN device `name` in namespace `ns` and returns its (non-blocking) queue fd.
fn tun(ns: &str, name: &str) -> Result<OwnedFd, String> {
    in_ns(ns, || {
        // SAFETY: open(2) with a static NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!("/dev/net/tun: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq we own.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(format!(
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(fd)
    })?
}

impl Wire {
    fn new(ns1: &str, dev1: &str, ns2: &str, dev2: &str, imp: Impair) -> Result<Wire, String> {
        let a = Arc::new(tun(ns1, dev1)?);
        let b = Arc::new(tun(ns2, dev2)?);
        run(&["ip", "-n", ns1, "link", "set", "dev", dev1, "up"])?;
        run(&["ip", "-n", ns2, "link", "set", "dev", dev2, "up"])?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new([const { AtomicU64::new(0) }; 4]);
        let mut threads = Vec::new();
        for (i, (from, to)) in [(a.clone(), b.clone()), (b, a)].into_iter().enumerate() {
            let stop = stop.clone();
            let stats = stats.clone();
            // A seed of its own per direction (they once shared one: the n-th packets of
            // both directions met the same fate), mixed so its first draws are not small.
            let seed = splitmix(u64::from(std::process::id()) << 8 | i as u64);
            threads.push(std::thread::spawn(move || {
                let stats = &stats[2 * i..2 * i + 2];
                pump(from.as_raw_fd(), to.as_raw_fd(), imp, &stop, stats, seed);
                drop((from, to));
            }));
        }
        Ok(Wire {
            stop,
            stats,
            threads,
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Forwards packets from `from` to `to` after `imp.delay`, dropping `imp.loss_percent` %
/// (xorshift, seeded), until `stop`.
fn pump(
    from: RawFd,
    to: RawFd,
    imp: Impair,
    stop: &AtomicBool,
    stats: &[AtomicU64],
    mut seed: u64,
) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(t, _)| *t <= now) {
            let (_, p) = queue.pop_front().unwrap();
            // SAFETY: write(2) from a live buffer to an fd kept open by the caller.
            unsafe { libc::write(to, p.as_ptr().cast(), p.len()) };
        }
        let wait = queue
            .front()
            .map_or(Duration::from_millis(50), |(t, _)| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        let mut pfd = libc::pollfd {
            fd: from,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as i32) };
        loop {
            // SAFETY: read(2) into a live buffer from an fd kept open by the caller.
            let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            if (seed % 100) < u64::from(imp.loss_percent) {
                stats[1].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            stats[0].fetch_add(1, Ordering::Relaxed);
            queue.push_back((Instant::now() + imp.delay, buf[..n as usize].to_vec()));
        }
    }
}

/// SplitMix64's output function: a well-spread nonzero xorshift seed from a small number.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// `ip:port` of this lab's server.
pub fn server(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), TURN_PORT)
}
