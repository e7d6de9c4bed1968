//! icering against browsers' ICE agents, two independent implementations: headless
//! Chromium (Debian's `chromium`: libwebrtc) and Firefox (`firefox-esr`: nICEr) open an
//! `RTCPeerConnection` with a data channel and offer; an icering agent answers through
//! the public API. The browser controls (it offers, RFC 8445 §6.1.1 / RFC 8829), icering
//! is controlled, as a media server terminating browsers is.
//!
//! - The page (served by this test) posts its ufrag, pwd and trickled candidates to
//!   `/offer`; the handler creates the agent, gathers, adds the browser's candidates and
//!   starts `accept`, and answers with icering's credentials and candidates, which the
//!   page turns into an SDP answer (`a=setup:passive`, a made-up DTLS fingerprint: only
//!   ICE is under test). The page reports its ICE state and the selected pair's stats to
//!   `/log`.
//! - Asserted: both sides connect on the same 5-tuple; the browser's first datagram on
//!   the selected pair (its DTLS ClientHello, RFC 7983 §7: first byte 20..=63) reaches
//!   `Conn::recv`; datagrams icering sends reach the browser's selected pair (its
//!   `packetsReceived`, or `bytesReceived` where that is missing); and the browser's
//!   consent checks (RFC 7675) keep being answered: still connected 35 s later, past
//!   the 30 s after which a browser drops a pair without consent.
//! - Set-ups: a browser as it ships (host candidates hidden behind mDNS `.local` names,
//!   which icering refuses with a typed error: the pair forms from the browser's checks,
//!   a peer-reflexive candidate) against a full agent on its own socket (Chromium) and
//!   against an ICE-lite agent on the engine's shared port (Firefox, the media-server
//!   set-up); Chromium with plain host candidates against the lite agent; each
//!   browser gathering relayed candidates only (`iceTransportPolicy: 'relay'`) from the
//!   engine's own TURN server (RFC 8656): its TURN client allocates, permits and relays
//!   every check and datagram through our relay, and the server's counters must show it;
//!   Chromium doing the same over TLS (`turns:`) to the engine's TLS listener, with a
//!   certificate made by the test that Chromium checks (it is told to trust exactly that
//!   key, `--ignore-certificate-errors-spki-list`; Firefox has no such switch, and with
//!   a `turns:` URL on an IP it opened no connection in a trial);
//!   Chromium on a host behind a real NAT (the NAT lab of `tests/nat/`,
//!   endpoint-independent and symmetric) against the lite agent on a public address; and
//!   an ICE restart each browser starts (`restartIce()`, a new offer with new
//!   credentials) against the lite agent on the shared port, answered by
//!   `Agent::restart`: the browser must select a pair of the new generation and receive
//!   icering's datagrams on it.
//!
//! Each test but the NAT one moves its thread into a new network namespace
//! (`unshare(CLONE_NEWNET)`): a
//! veth pair with 10.77.0.1/24 on one end, and for Chromium a default route to an address
//! nobody holds (Chromium gathers on the default route's interface only, and never on
//! loopback). The engine, the HTTP server and the browser all live there, so nothing
//! leaves the machine. Needs root, `ip` and the browser; without them each test prints
//! "skipped: <reason>" and passes, except under `CI=true`, where it fails (`.ci/run`
//! installs both browsers).

mod common;
mod nat;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use icering::ice::CandidateKind;
use icering::{Agent, AgentOptions, Candidate, Config, Conn, ConnectionState, Engine};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The page: offer, post it, answer from icering's reply, report.
const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><script>
const log = (m) => fetch('/log', {method: 'POST', body: String(m)});
(async () => {
  // `?turn=URL`: gather relayed candidates only, from that TURN server.
  const turn = new URLSearchParams(location.search).get('turn');
  const pc = new RTCPeerConnection(turn
    ? {iceServers: [{urls: turn, username: 'web', credential: 'secret'}], iceTransportPolicy: 'relay'}
    : {iceServers: []});
  pc.createDataChannel('icering');
  const candidates = [];
  const gathered = new Promise((done) => {
    // An empty candidate string is Firefox's end-of-candidates for a generation (W3C).
    pc.onicecandidate = (e) => !e.candidate ? done()
      : e.candidate.candidate && candidates.push(e.candidate.candidate);
  });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered;
  const sdp = pc.localDescription.sdp;
  const attr = (name) => new RegExp('a=' + name + ':(.*)').exec(sdp)[1].trim();
  const mid = attr('mid');
  const reply = await fetch('/offer', {method: 'POST', body: JSON.stringify(
      {ufrag: attr('ice-ufrag'), pwd: attr('ice-pwd'), candidates})});
  const ans = await reply.json();
  if (!reply.ok) throw new Error('offer refused: ' + JSON.stringify(ans));
  const fingerprint = Array.from({length: 32}, (_, i) => (i * 7 + 16).toString(16).toUpperCase()).join(':');
  const lines = ['v=0', 'o=- 1 1 IN IP4 0.0.0.0', 's=-', 't=0 0', 'a=group:BUNDLE ' + mid,
    ...(ans.lite ? ['a=ice-lite'] : []),
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
    'a=ice-ufrag:' + ans.ufrag, 'a=ice-pwd:' + ans.pwd,
    'a=fingerprint:sha-256 ' + fingerprint, 'a=setup:passive', 'a=mid:' + mid,
    'a=sctp-port:5000',
    ...ans.candidates.map((c) => 'a=candidate:' + c), 'a=end-of-candidates'];
  pc.oniceconnectionstatechange = () => log('ice ' + pc.iceConnectionState);
  await pc.setRemoteDescription({type: 'answer', sdp: lines.join('\r\n') + '\r\n'});
  // `?restart=1`: an ICE restart (RFC 8445 §9, W3C restartIce) once the test says so:
  // a new offer with new credentials and candidates, answered from `/restart`.
  if (new URLSearchParams(location.search).get('restart')) (async () => {
    while ((await (await fetch('/go')).text()) !== '1') await new Promise((r) => setTimeout(r, 200));
    candidates.length = 0;
    const again = new Promise((done) => {
      pc.onicecandidate = (e) => !e.candidate ? done()
        : e.candidate.candidate && candidates.push(e.candidate.candidate);
    });
    pc.restartIce();
    await pc.setLocalDescription(await pc.createOffer());
    await again;
    const sdp2 = pc.localDescription.sdp;
    const attr2 = (name) => new RegExp('a=' + name + ':(.*)').exec(sdp2)[1].trim();
    const r = await fetch('/restart', {method: 'POST', body: JSON.stringify(
        {ufrag: attr2('ice-ufrag'), pwd: attr2('ice-pwd'), candidates})});
    const a2 = await r.json();
    if (!r.ok) throw new Error('restart refused: ' + JSON.stringify(a2));
    const lines2 = lines.filter((l) => !/^a=(ice-ufrag|ice-pwd|candidate|end-of-candidates):?/.test(l));
    const at = lines2.indexOf('a=fingerprint:sha-256 ' + fingerprint);
    lines2.splice(at, 0, 'a=ice-ufrag:' + a2.ufrag, 'a=ice-pwd:' + a2.pwd);
    lines2.push(...a2.candidates.map((c) => 'a=candidate:' + c), 'a=end-of-candidates');
    await pc.setRemoteDescription({type: 'answer', sdp: lines2.join('\r\n') + '\r\n'});
    log('restarted ' + attr('ice-ufrag') + ' ' + attr2('ice-ufrag'));
  })().catch((e) => log('error ' + e));
  setInterval(async () => {
    const stats = await pc.getStats();
    let pair;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    // Firefox has no transport stats: its selected pair says so itself.
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.selected) pair = s; });
    if (!pair) return;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    // The local address is hidden from stats while mDNS hides it: its port only.
    log(['pair', pair.packetsReceived ?? -1, pair.bytesReceived ?? -1, local.port,
         remote.address + ':' + remote.port, pc.iceConnectionState, local.candidateType,
         pair.id].join(' '));
  }, 200);
})().catch((e) => log('error ' + e));
</script>"#;

/// Moves this thread into a fresh network namespace with [`HOST`] on a veth, or says why
/// it cannot. Returns the browser's binary.
fn own_netns(test: &str, browser: Kind) -> Option<String> {
    let bin = browser.binary();
    if !common::own_netns(test, &[(&bin, browser.install_hint())]) {
        return None;
    }
    common::ip("link set lo up");
    common::ip("link add ic0 type veth peer name ic1");
    common::ip("link set ic1 up");
    common::ip(&format!("addr add {HOST}/24 dev ic0"));
    common::ip("link set ic0 up");
    if browser == Kind::Chromium {
        // Chromium gathers only on the default route's interface. The gateway is never
        // answered for: packets to other addresses die on ic1. (Firefox gathers on every
        // interface, and with such a route its start-up stalls.)
        common::ip("route add default via 10.77.0.2 dev ic0");
    }
    Some(bin)
}

/// The browser under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Chromium's libwebrtc ICE agent.
    Chromium,
    /// Firefox's (nICEr, an independent ICE implementation).
    Firefox,
}

impl Kind {
    fn binary(self) -> String {
        let (var, default) = match self {
            Kind::Chromium => ("ICERING_CHROMIUM", "chromium"),
            Kind::Firefox => ("ICERING_FIREFOX", "firefox-esr"),
        };
        std::env::var(var).unwrap_or_else(|_| default.into())
    }

    fn install_hint(self) -> &'static str {
        match self {
            Kind::Chromium => "apt-get install chromium",
            Kind::Firefox => "apt-get install firefox-esr",
        }
    }
}

/// How the icering side is set up.
#[derive(Clone, Copy)]
struct Setup {
    browser: Kind,
    lite: bool,
    mux: bool,
    /// The browser hides its host addresses behind mDNS names (both browsers' default).
    mdns: bool,
    /// The engine also serves TURN and the browser gathers relayed candidates only, from
    /// it (`iceTransportPolicy: 'relay'`): over UDP on [`TURN_PORT`], or over TLS on
    /// [`TURNS_PORT`] (`turns:`).
    relay: Relay,
    /// Once connected, the browser restarts ICE (`restartIce`, a new offer) and icering's
    /// agent restarts to answer it ([`Agent::restart`]).
    restart: bool,
}

const TURN_PORT: u16 = 3478;
const TURNS_PORT: u16 = 5349;

/// How the browser reaches the engine's TURN server, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    No,
    Udp,
    Tls,
}

/// The accepted connection, or why not. The agent stays with the task that accepted,
/// which serves the restart (`Setup::restart`).
type Accepted = Result<Conn, String>;

/// A restart offer and where its answer goes.
type RestartOffer = (Offer, tokio::sync::oneshot::Sender<Result<String, String>>);

/// What the `/offer` handler needs and reports.
struct Answerer {
    rt: tokio::runtime::Handle,
    engine: Engine,
    setup: Setup,
    /// The engine's address: agents gather on it only.
    here: Ipv4Addr,
    conn: Mutex<Option<mpsc::Sender<Accepted>>>,
    /// Browser candidates icering added, and refused as mDNS names.
    added: Mutex<Vec<Candidate>>,
    refused_mdns: AtomicUsize,
    /// Set by the test: the page's `/go` then says to restart.
    go: std::sync::atomic::AtomicBool,
    /// To the task that owns the agent: restart offers.
    restarts: Mutex<Option<tokio::sync::mpsc::Sender<RestartOffer>>>,
    /// icering's agent is up again after a restart (the task reports it).
    reconnected: Mutex<Option<mpsc::Sender<ConnectionState>>>,
}

#[derive(serde::Deserialize, Debug)]
struct Offer {
    ufrag: String,
    pwd: String,
    candidates: Vec<String>,
}

impl Answerer {
    fn offer(&self, body: &str) -> Result<String, String> {
        let offer: Offer = serde_json::from_str(body).map_err(|e| e.to_string())?;
        let opts = AgentOptions::default()
            .with_ip_filter({
                let here = IpAddr::V4(self.here);
                move |ip| ip == here
            })
            .with_lite(self.setup.lite)
            .with_mux(self.setup.mux);
        let _rt = self.rt.enter();
        let agent = self.engine.agent(opts).map_err(|e| e.to_string())?;
        let ours = agent.gather_candidates().map_err(|e| e.to_string())?;
        self.add_remote(&agent, &offer.candidates)?;
        let (ufrag, pwd) = agent.local_credentials();
        let tx = self.conn.lock().unwrap().take().ok_or("a second offer")?;
        let (restart_tx, mut restarts) = tokio::sync::mpsc::channel::<RestartOffer>(1);
        *self.restarts.lock().unwrap() = Some(restart_tx);
        let me = self.clone_for_task();
        self.rt.spawn(async move {
            let r = agent.accept(&offer.ufrag, &offer.pwd).await;
            let up = r.is_ok();
            let _ = tx.send(r.map_err(|e| e.to_string()));
            // Restart offers, answered by this agent's restart.
            while let Some((offer, reply)) = restarts.recv().await {
                if up {
                    let _ = reply.send(me.restart(&agent, offer).await);
                }
            }
        });
        Ok(answer(&ufrag, &pwd, self.setup.lite, &ours))
    }

    /// `/restart`: the browser's restart offer, answered by the accepting task.
    fn restart(&self, body: &str) -> Result<String, String> {
        let offer: Offer = serde_json::from_str(body).map_err(|e| e.to_string())?;
        let to = self
            .restarts
            .lock()
            .unwrap()
            .clone()
            .ok_or("no agent yet")?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        to.blocking_send((offer, reply))
            .map_err(|_| "the agent's task is gone")?;
        answer
            .blocking_recv()
            .map_err(|_| "no answer".to_string())?
    }

    /// The browser's candidates of an offer: added (and kept), or counted when refused as
    /// mDNS.
    fn add_remote(&self, agent: &Agent, lines: &[String]) -> Result<(), String> {
        let (added, mdns) = add_offer_candidates(agent, lines)?;
        self.added.lock().unwrap().extend(added);
        self.refused_mdns.fetch_add(mdns, Ordering::Relaxed);
        Ok(())
    }

    /// What the accepting task keeps of the answerer.
    fn clone_for_task(&self) -> Arc<Restarter> {
        Arc::new(Restarter {
            lite: self.setup.lite,
            reconnected: self.reconnected.lock().unwrap().clone(),
        })
    }
}

/// The accepting task's side of a restart.
struct Restarter {
    lite: bool,
    reconnected: Option<mpsc::Sender<ConnectionState>>,
}

impl Restarter {
    /// RFC 8445 §9: new local credentials and the candidates again for the answer, the
    /// browser's new ones in; reports once the agent is up again.
    async fn restart(&self, agent: &Agent, offer: Offer) -> Result<String, String> {
        let r = agent.restart().await.map_err(|e| e.to_string())?;
        let mut state = agent.state().ok_or("an App agent")?;
        agent
            .set_remote_credentials(&offer.ufrag, &offer.pwd)
            .map_err(|e| e.to_string())?;
        add_offer_candidates(agent, &offer.candidates)?;
        if let Some(tx) = self.reconnected.clone() {
            tokio::spawn(async move {
                if let Ok(s) = common::up(&mut state).await {
                    let _ = tx.send(s);
                }
            });
        }
        Ok(answer(&r.ufrag, &r.pwd, self.lite, &r.candidates))
    }
}

/// Adds an offer's candidate lines to `agent`, then the end of them; mDNS names (which
/// icering refuses with a typed error) are skipped. The candidates added, and how many
/// were mDNS names.
fn add_offer_candidates(
    agent: &Agent,
    lines: &[String],
) -> Result<(Vec<Candidate>, usize), String> {
    let (mut added, mut mdns) = (Vec::new(), 0);
    for line in lines {
        match Candidate::from_sdp(line) {
            Ok(c) => {
                agent
                    .add_remote_candidate(c.clone())
                    .map_err(|e| e.to_string())?;
                added.push(c);
            }
            Err(icering::ice::IceError::Unsupported("mDNS")) => mdns += 1,
            Err(e) => return Err(format!("candidate {line:?}: {e}")),
        }
    }
    agent.end_of_remote_candidates();
    Ok((added, mdns))
}

fn answer(ufrag: &str, pwd: &str, lite: bool, ours: &[Candidate]) -> String {
    serde_json::json!({
        "ufrag": ufrag,
        "pwd": pwd,
        "lite": lite,
        "candidates": ours.iter().map(Candidate::to_sdp).collect::<Vec<_>>(),
    })
    .to_string()
}

/// Serves the page, `/offer` and `/log` (one request per connection).
fn serve(listener: TcpListener, answerer: Arc<Answerer>, log: mpsc::Sender<String>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (answerer, log) = (answerer.clone(), log.clone());
        std::thread::spawn(move || {
            let _ = request(stream, &answerer, &log);
        });
    }
}

fn request(
    stream: TcpStream,
    answerer: &Answerer,
    log: &mpsc::Sender<String>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    // The page's query (`?turn=...`) is for the page's script only.
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let (status, ctype, out) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html", PAGE.to_string()),
        ("POST", "/offer") => match answerer.offer(&body) {
            Ok(json) => ("200 OK", "application/json", json),
            Err(e) => {
                let _ = log.send(format!("offer refused: {e}"));
                ("400 Bad Request", "application/json", format!("{e:?}"))
            }
        },
        ("GET", "/go") => {
            let go = answerer.go.load(Ordering::Relaxed);
            (
                "200 OK",
                "text/plain",
                if go { "1" } else { "0" }.to_string(),
            )
        }
        ("POST", "/restart") => match answerer.restart(&body) {
            Ok(json) => ("200 OK", "application/json", json),
            Err(e) => {
                let _ = log.send(format!("offer refused: restart: {e}"));
                ("400 Bad Request", "application/json", format!("{e:?}"))
            }
        },
        ("POST", "/log") => {
            let _ = log.send(body.into_owned());
            ("200 OK", "text/plain", String::new())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    };
    let mut s = stream;
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
        out.len()
    )
}

/// The browser, killed (with its children: its own process group) on drop, and by the
/// kernel if the test thread that started it dies first (`PR_SET_PDEATHSIG`).
struct Browser {
    child: Child,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Starts `browser` on `url`; `trusted_spki` (base64 SHA-256 of a key's
/// SubjectPublicKeyInfo) is the one TLS server key Chromium accepts without a trusted CA.
fn launch(
    browser: Kind,
    bin: &str,
    ns: Option<&str>,
    url: &str,
    (mdns, trusted_spki): (bool, Option<&str>),
    name: &str,
) -> Browser {
    use std::os::unix::process::CommandExt;
    let profile = std::env::temp_dir().join(format!("icering-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    // In another namespace: `ip netns exec` execs the browser, keeping its pid.
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, bin]);
            c
        }
        None => Command::new(bin),
    };
    match browser {
        Kind::Chromium => {
            cmd.args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .args([
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-crash-reporter",
                "--disable-breakpad",
            ])
            .arg(format!("--user-data-dir={}", profile.display()));
            if !mdns {
                cmd.arg("--disable-features=WebRtcHideLocalIpsWithMdns");
            }
            // Chromium checks a TURN server's TLS certificate (with an untrusted CA the
            // handshake fails and no relayed candidate is gathered): trust exactly the
            // test certificate's key, nothing else.
            if let Some(spki) = trusted_spki {
                cmd.arg(format!("--ignore-certificate-errors-spki-list={spki}"));
            }
        }
        Kind::Firefox => {
            std::fs::create_dir_all(&profile).unwrap();
            let prefs = format!(
                "user_pref(\"media.peerconnection.ice.obfuscate_host_addresses\", {mdns});\n\
                 user_pref(\"datareporting.policy.dataSubmissionEnabled\", false);\n\
                 user_pref(\"browser.shell.checkDefaultBrowser\", false);\n"
            );
            std::fs::write(profile.join("user.js"), prefs).unwrap();
            cmd.args(["--headless", "--new-instance", "--profile"])
                .arg(&profile);
        }
    }
    // SAFETY: prctl in the forked child before exec: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the browser");
    Browser { child, profile }
}

/// The browser's report lines until `f` accepts one (returned); panics on an `error`
/// line or after `within`.
fn wait_log(log: &mpsc::Receiver<String>, within: Duration, f: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + within;
    let mut seen = std::collections::VecDeque::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(l) if l.starts_with("error") || l.starts_with("offer refused") => {
                panic!("browser: {l}")
            }
            Ok(l) if f(&l) => return l,
            Ok(l) => {
                if seen.len() == 8 {
                    seen.pop_front();
                }
                seen.push_back(l);
            }
            Err(_) => panic!("gave up waiting on the browser's report; last lines: {seen:?}"),
        }
    }
}

/// What the page reports of the browser's selected pair.
struct PairReport<'a> {
    /// -1 where the browser does not report it (then `bytes_received` counts).
    packets_received: i64,
    bytes_received: i64,
    local_port: u16,
    remote: SocketAddr,
    state: &'a str,
    local_kind: &'a str,
    /// The browser's id of the pair (a new generation's pairs have new ids).
    id: &'a str,
}

/// `pair <packetsReceived> <bytesReceived> <local port> <remote> <state> <local type> <id>`.
fn pair_report(l: &str) -> Option<PairReport<'_>> {
    let mut w = l.strip_prefix("pair ")?.split(' ');
    Some(PairReport {
        packets_received: w.next()?.parse().ok()?,
        bytes_received: w.next()?.parse().ok()?,
        local_port: w.next()?.parse().ok()?,
        remote: w.next()?.parse().ok()?,
        state: w.next()?,
        local_kind: w.next()?,
        id: w.next()?,
    })
}

/// Where the two sides are.
struct Net {
    /// The engine's address (and the signalling server's).
    here: Ipv4Addr,
    /// The browser's address as the engine sees it (its NAT's, behind one).
    browser_seen: Ipv4Addr,
    /// The namespace to start the browser in (`ip netns exec`); `None`: this thread's.
    browser_ns: Option<String>,
}

/// Both sides in this thread's own namespace, on [`HOST`].
fn run(test: &str, setup: Setup) {
    let Some(bin) = own_netns(test, setup.browser) else {
        return;
    };
    let net = Net {
        here: HOST,
        browser_seen: HOST,
        browser_ns: None,
    };
    run_in(test, setup, &bin, &net);
}

fn run_in(test: &str, setup: Setup, bin: &str, net: &Net) {
    let here = net.here;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::embedded();
    config.server.listen.clear();
    config.server.shards = 1;
    config.turn.enabled = false;
    if setup.mux {
        config.ice.listen = vec![SocketAddr::from((here, 0))];
    }
    let relayed = setup.relay != Relay::No;
    // The TLS listener's certificate, for the engine's address (read at start).
    let pki = (setup.relay == Relay::Tls).then(|| common::Pki::for_ip(&here.to_string()));
    let pki_files = pki.as_ref().map(|p| p.files(test));
    if let Some(f) = &pki_files {
        config.server.tls_listen = vec![SocketAddr::from((here, TURNS_PORT))];
        config.server.tls_cert = Some(f.cert.clone().into());
        config.server.tls_key = Some(f.key.clone().into());
    }
    if relayed {
        config.server.listen = vec![SocketAddr::from((here, TURN_PORT))];
        config.turn.enabled = true;
        config.turn.users = vec!["web:secret".into()];
        config.turn.relay_ips = vec![IpAddr::V4(here)];
        // The agent the browser reaches through the relay is on 10.77.0.1 (private).
        config.turn.allow_private_peers = true;
    }
    let engine = Engine::start(&config).unwrap();
    drop(pki_files);
    let (conn_tx, conn_rx) = mpsc::channel();
    let (up_tx, reconnected) = mpsc::channel();
    let answerer = Arc::new(Answerer {
        rt: rt.handle().clone(),
        engine: engine.clone(),
        setup,
        here,
        conn: Mutex::new(Some(conn_tx)),
        added: Mutex::new(Vec::new()),
        refused_mdns: AtomicUsize::new(0),
        go: Default::default(),
        restarts: Mutex::new(None),
        reconnected: Mutex::new(Some(up_tx)),
    });
    let listener = TcpListener::bind((here, 0)).unwrap();
    let mut query = Vec::new();
    match setup.relay {
        Relay::No => {}
        Relay::Udp => query.push(format!("turn=turn:{here}:{TURN_PORT}?transport=udp")),
        Relay::Tls => query.push(format!("turn=turns:{here}:{TURNS_PORT}?transport=tcp")),
    }
    if setup.restart {
        query.push("restart=1".to_string());
    }
    let url = format!(
        "http://{}/?{}",
        listener.local_addr().unwrap(),
        query.join("&")
    );
    let (log_tx, log) = mpsc::channel();
    {
        let answerer = answerer.clone();
        std::thread::spawn(move || serve(listener, answerer, log_tx));
    }
    let spki = pki.as_ref().map(common::Pki::spki_sha256_base64);
    let browser = launch(
        setup.browser,
        bin,
        net.browser_ns.as_deref(),
        &url,
        (setup.mdns, spki.as_deref()),
        test,
    );

    // Both sides connect.
    let mut conn = match conn_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(accepted) => accepted.unwrap_or_else(|e| {
            let tcp: Vec<_> = engine
                .shard_counters()
                .iter()
                .flat_map(|c| c.own_fields())
                .filter(|f| f.0.starts_with("tcp_"))
                .map(|f| (f.0, f.2))
                .collect();
            panic!(
                "accept: {e}; browser: {:?}; server: {:?}; streams: {tcp:?}; added: {:?}",
                log.try_iter().collect::<Vec<_>>(),
                engine.server_stats(),
                answerer.added.lock().unwrap()
            )
        }),
        Err(_) => panic!(
            "the browser did not offer, or icering did not connect; browser: {:?}; server: {:?}; ice: {:?}",
            log.try_iter().collect::<Vec<_>>(),
            engine.server_stats(),
            engine.stats().ice
        ),
    };
    wait_log(&log, Duration::from_secs(30), |l| {
        l == "ice connected" || l == "ice completed"
    });
    let stats = rt.block_on(conn.stats()).unwrap();
    let (local, remote) = stats.selected.expect("icering selected a pair");
    assert_eq!(local.ip(), IpAddr::V4(here));
    assert_eq!(
        remote.ip(),
        IpAddr::V4(if relayed { here } else { net.browser_seen }),
        "the browser's address (its relayed one, through a relay)"
    );
    let added = answerer.added.lock().unwrap().clone();
    let mdns = answerer.refused_mdns.load(Ordering::Relaxed);
    if relayed {
        // Relayed candidates only, on our relay; the browser reaches us through one.
        assert_eq!(mdns, 0);
        assert!(
            !added.is_empty() && added.iter().all(|c| c.kind == CandidateKind::Relayed),
            "{added:?}"
        );
        assert!(
            added.iter().any(|c| c.addr == remote),
            "the selected remote {remote} is one of the browser's relayed candidates {added:?}"
        );
    } else if setup.mdns {
        assert!(mdns >= 1, "Chromium hid its host address behind mDNS");
        assert!(added.is_empty(), "{added:?}");
    } else {
        assert_eq!(mdns, 0);
        assert!(
            added.iter().any(|c| c.addr == remote),
            "the selected remote {remote} is one of the browser's candidates {added:?}"
        );
    }

    // The browser's DTLS ClientHello (it is the DTLS client: our answer is passive)
    // arrives on the selected pair as data.
    let first = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), conn.recv()).await })
        .expect("the browser sent data on the selected pair")
        .expect("recv");
    assert!(
        (20..=63).contains(&first[0]),
        "a DTLS record (RFC 7983 §7), got first byte {}",
        first[0]
    );

    // icering's datagrams reach the browser's selected pair, the same 5-tuple.
    let first_report = wait_log(&log, Duration::from_secs(10), |l| pair_report(l).is_some());
    let before = pair_report(&first_report).unwrap();
    assert_eq!(before.remote, local, "the same 5-tuple");
    if net.browser_ns.is_none() {
        // No NAT between them: the browser's port is the one icering sees.
        assert_eq!(before.local_port, remote.port(), "the same 5-tuple");
    }
    // Behind a NAT the browser's local candidate is the NAT's mapping it learnt from our
    // answers' XOR-MAPPED-ADDRESS: peer-reflexive.
    let kind = match (relayed, &net.browser_ns) {
        (true, _) => "relay",
        (false, Some(_)) => "prflx",
        (false, None) => "host",
    };
    assert_eq!(before.local_kind, kind, "{first_report}");
    // 1000 bytes each (an RTP-first-byte 0x80): more than the consent traffic of the
    // same seconds, so a browser that counts bytes only cannot pass on STUN alone.
    for i in 0..5u8 {
        let mut d = vec![0u8; 1000];
        (d[0], d[1]) = (0x80, i);
        rt.block_on(conn.send(Bytes::from(d))).unwrap();
    }
    let got_five = |before: &PairReport<'_>, l: &str| {
        pair_report(l).is_some_and(|p| {
            p.id == before.id
                && match p.packets_received {
                    -1 => p.bytes_received >= before.bytes_received + 5000,
                    n => n >= before.packets_received + 5,
                }
        })
    };
    wait_log(&log, Duration::from_secs(10), |l| got_five(&before, l));

    if setup.restart {
        // ICE restart, browser first (a new offer): both sides change credentials, the
        // browser's checks with the new ones select a pair of the new generation, and
        // icering's datagrams reach the browser on it.
        answerer.go.store(true, Ordering::Relaxed);
        let l = wait_log(&log, Duration::from_secs(30), |l| {
            l.starts_with("restarted ")
        });
        let ufrags: Vec<&str> = l.split(' ').skip(1).collect();
        assert!(ufrags.len() == 2 && ufrags[0] != ufrags[1], "{l}");
        let up = reconnected
            .recv_timeout(Duration::from_secs(30))
            .expect("icering's agent connected again with the new credentials");
        assert!(matches!(
            up,
            ConnectionState::Connected | ConnectionState::Completed
        ));
        let next = wait_log(&log, Duration::from_secs(30), |l| {
            pair_report(l).is_some_and(|p| p.id != before.id && p.state == "connected")
        });
        let after = pair_report(&next).unwrap();
        assert_eq!(after.remote, local, "the same 5-tuple after the restart");
        for i in 0..5u8 {
            let mut d = vec![0u8; 1000];
            (d[0], d[1]) = (0x80, 10 + i);
            rt.block_on(conn.send(Bytes::from(d))).unwrap();
        }
        wait_log(&log, Duration::from_secs(10), |l| got_five(&after, l));
    }

    // Consent freshness (RFC 7675 §5.1): a browser drops a pair whose consent checks go
    // unanswered for 30 s; 35 s later it is still connected.
    let later = Instant::now() + Duration::from_secs(35);
    let l = wait_log(&log, Duration::from_secs(50), |l| {
        Instant::now() >= later && pair_report(l).is_some()
    });
    let state = pair_report(&l).unwrap().state;
    assert!(
        state == "connected" || state == "completed",
        "browser after 35 s: {l}"
    );
    if relayed {
        // Our relay carried it all: the checks, the ClientHello and our datagrams.
        let s = engine.server_stats();
        assert!(s.allocations_created >= 1, "{s:?}");
        assert!(s.relayed_to_peer >= 2 && s.relayed_to_client >= 7, "{s:?}");
        assert_eq!(s.auth_failures, 0, "{s:?}");
    }
    assert!(matches!(
        conn.state(),
        ConnectionState::Connected | ConnectionState::Completed
    ));

    drop(browser);
    conn.close();
    engine.shutdown().unwrap();
}

#[test]
fn chromium_controls_a_full_agent_through_its_mdns_candidates() {
    run(
        "chromium-full-mdns",
        Setup {
            browser: Kind::Chromium,
            lite: false,
            mux: false,
            mdns: true,
            relay: Relay::No,
            restart: false,
        },
    );
}

/// Also an ICE restart the browser starts (`restartIce`), answered by
/// [`Agent::restart`]: the mux port must route the new ufrag.
#[test]
fn chromium_controls_a_lite_agent_on_the_shared_port_and_restarts_ice() {
    run(
        "chromium-lite-mux",
        Setup {
            browser: Kind::Chromium,
            lite: true,
            mux: true,
            mdns: false,
            relay: Relay::No,
            restart: true,
        },
    );
}

#[test]
fn chromium_reaches_a_full_agent_through_the_engines_turn_relay() {
    run(
        "chromium-relay",
        Setup {
            browser: Kind::Chromium,
            lite: false,
            mux: false,
            mdns: true,
            relay: Relay::Udp,
            restart: false,
        },
    );
}

/// TURN over TLS (`turns:`, RFC 8656 §3.1), as browsers behind firewalls that pass only
/// TLS use it: Chromium's TURN client allocates over a TLS connection to the engine's
/// TLS listener, and every check and datagram crosses it.
#[test]
fn chromium_reaches_a_full_agent_through_the_engines_turn_relay_over_tls() {
    run(
        "chromium-relay-tls",
        Setup {
            browser: Kind::Chromium,
            lite: false,
            mux: false,
            mdns: true,
            relay: Relay::Tls,
            restart: false,
        },
    );
}

/// Also an ICE restart Firefox starts, answered by [`Agent::restart`].
#[test]
fn firefox_controls_a_lite_agent_on_the_shared_port_through_its_mdns_candidates_and_restarts_ice() {
    run(
        "firefox-lite-mux-mdns",
        Setup {
            browser: Kind::Firefox,
            lite: true,
            mux: true,
            mdns: true,
            relay: Relay::No,
            restart: true,
        },
    );
}

#[test]
fn firefox_reaches_a_full_agent_through_the_engines_turn_relay() {
    run(
        "firefox-relay",
        Setup {
            browser: Kind::Firefox,
            lite: false,
            mux: false,
            mdns: true,
            relay: Relay::Udp,
            restart: false,
        },
    );
}

/// The media-server case: Chromium as it ships on a host behind a NAT of kind `nat` (the
/// NAT lab's host A), an ICE-lite agent on the engine's shared port on a public address
/// (the lab's public namespace). The browser's host candidates are mDNS names; the pair
/// forms from its checks, which arrive from the NAT's public address: the peer-reflexive
/// candidate icering selects. The page and signalling also cross the NAT.
fn behind_nat(test: &str, nat: nat::Nat) {
    let browser = Kind::Chromium;
    let bin = browser.binary();
    if !nat::lab_or_skip(test) || !nat::tool_or_skip(test, &bin) {
        return;
    }
    let lab = nat::Lab::new(&nat::Spec {
        nat_a: nat,
        nat_b: nat::Nat::EndpointIndependent,
        impair_a: None,
        block_udp_port: None,
    })
    .unwrap();
    let setup = Setup {
        browser,
        lite: true,
        mux: true,
        mdns: true,
        relay: Relay::No,
        restart: false,
    };
    let net = Net {
        here: nat::SERVER,
        browser_seen: nat::ROUTER_A_WAN,
        browser_ns: Some(lab.host_a.clone()),
    };
    nat::in_ns(&lab.public, || run_in(test, setup, &bin, &net)).unwrap();
}

/// Behind an endpoint-independent NAT (`MASQUERADE`).
#[test]
fn chromium_behind_a_nat_reaches_a_lite_agent_on_a_public_address() {
    behind_nat(
        "chromium_behind_a_nat_reaches_a_lite_agent_on_a_public_address",
        nat::Nat::EndpointIndependent,
    );
}

/// Behind a symmetric NAT (`MASQUERADE --random-fully`: a new mapping per destination, as
/// many mobile carriers do): a lite agent on a public address still needs no relay, since
/// it only answers the browser's checks, on the mapping they came from.
#[test]
fn chromium_behind_a_symmetric_nat_reaches_a_lite_agent_on_a_public_address() {
    behind_nat(
        "chromium_behind_a_symmetric_nat_reaches_a_lite_agent_on_a_public_address",
        nat::Nat::Symmetric,
    );
}
