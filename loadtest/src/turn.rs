//! `icering-loadtest turn`: N allocations against any TURN server (icering, coturn, ...),
//! each with a permission and a channel (or Send indications) to a local echo peer; every
//! allocation keeps a window of datagrams in flight through client → relay → peer → relay
//! → client. Reports round trips per second (each is two relayed datagrams, one each way),
//! loss and RTT percentiles.
//!
//! Setup (Allocate 401 → signed, ChannelBind or CreatePermission) runs one allocation at a
//! time on its blocking std socket. The data path is batched: one driver thread
//! (`--threads` of them, each with a share of the allocations) moves every client socket
//! of its share *and* its own echo peer socket into one icering [`Backend`] (io_uring or
//! epoll + `recvmmsg`/`sendmmsg`, UDP GSO on), so a window refill of many allocations is
//! one flush and a burst of answers one receive batch. The peer echoes inside the receive
//! callback: per round trip the driver does what the server does (two datagrams in, two
//! out), batched the same way. The drivers start and end the measured phase together
//! (barriers), then delete their allocations through the same backend (Refresh 0, all at
//! once), so each allocation holds one file descriptor.
//!
//! `--transport tcp|tls`: each allocation on its own TCP (or TLS) connection instead, the
//! connections in one `StreamSet` per driver (see [`stream`]).
//!
//! `--raw-echo`: the same load shape (flows = allocations, window, datagram bytes) sent
//! straight to a plain UDP echo server (e.g. `examples/udp_echo`) without TURN, to measure
//! the raw echo limit the relay is compared with.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use icering::io::{self, Backend, BackendKind, Lend, RecvMeta, SendQueue, SocketId};
use icering::stun::{
    Class, IntegrityKey, Message, MessageType, MessageWriter, Method, attr, long_term_key_md5,
};

use crate::report::{Report, Tally, backend, process_cpu};
use crate::stun::Outstanding;

mod stream;

/// How the load reaches the server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// UDP, one socket per allocation.
    Udp,
    /// TCP, one connection per allocation (RFC 8656 §3.1).
    Tcp,
    /// TLS over TCP, one connection per allocation (`turns:`).
    Tls,
}

/// Arguments of `icering-loadtest turn`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TURN server.
    #[arg(long)]
    target: SocketAddr,
    /// Transport to the server: udp, tcp or tls (one connection per allocation; closing
    /// it at the end deletes the allocation).
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// PEM file of the CA that signed the server's certificate (`--transport tls`).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry (`--transport tls`; default: the
    /// target's IP, which then needs an IP subjectAltName).
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
    /// User name (for REST credentials: the user part; see --secret).
    #[arg(long, default_value = "user")]
    user: String,
    /// Password.
    #[arg(long, default_value = "pass")]
    pass: String,
    /// TURN REST shared secret: derive `expiry:user` / HMAC password instead of --pass.
    #[arg(long)]
    secret: Option<String>,
    /// Allocations.
    #[arg(long, default_value_t = 16)]
    allocations: usize,
    /// Datagrams in flight per allocation.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Payload bytes per datagram (at least 16).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Use Send/Data indications instead of a channel.
    #[arg(long)]
    indications: bool,
    /// Address of the local echo peer (the server must be allowed to relay to it).
    #[arg(long, default_value = "127.0.0.1")]
    peer_ip: IpAddr,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Driver threads; each drives its share of the allocations and its own echo peer
    /// socket through one batched io backend.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// io backend for the load generator: auto | uring | portable.
    #[arg(long, default_value = "auto")]
    io: String,
    /// `--target` is a plain UDP echo server, not TURN: no allocations, the same datagrams
    /// (ChannelData or Send indications, `--size` payload) from `--allocations` sockets with
    /// `--window` in flight each, checked when they come back. Measures the raw echo limit.
    #[arg(long)]
    raw_echo: bool,
    /// A datagram not back after this many milliseconds counts as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// PID of the server process, to report its CPU time per round trip.
    #[arg(long)]
    server_pid: Option<u32>,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Send one datagram per sendmsg (no UDP GSO) from the generator, as clients without
    /// GSO do: a server's UDP GRO then has no bursts to receive merged over loopback.
    #[arg(long)]
    no_gso: bool,
    /// Local IPs for the allocations' client sockets, comma-separated: allocation i binds
    /// `IP[i % len]:0` (default: the wildcard address). Each IP has its own ephemeral
    /// ports (~28k with the default `ip_local_port_range`), so many allocations need
    /// several (any 127.x.y.z on loopback).
    #[arg(long, value_name = "IP,..", value_delimiter = ',')]
    client_ips: Vec<IpAddr>,
    /// Hold the allocations after setup until this file exists, then run the load (to
    /// line up several load processes, or measure the server with every allocation live).
    #[arg(long, value_name = "PATH")]
    hold_file: Option<std::path::PathBuf>,
    /// Only every K-th allocation carries data in the load phase (the others are held
    /// idle and deleted at the end): a sample of many allocations, without a window's
    /// worth of datagrams for each of them in flight at once.
    #[arg(long, value_name = "K", default_value_t = 1)]
    data_every: usize,
}

const CHANNEL: u16 = 0x4000;

/// One allocation (or, with `--raw-echo`, one flow): its socket and the auth state.
struct Alloc {
    /// Blocking socket of the setup; moved into a driver's backend for the load and the
    /// teardown (one file descriptor per allocation).
    sock: Option<UdpSocket>,
    id: u32,
    /// REALM and NONCE learnt at setup, so the final Refresh is signed at once.
    auth: Option<(String, String)>,
}

/// A blocking UDP socket with 4 MiB receive and send buffers (as root beyond `rmem_max`),
/// like the server's: the echo peer receives every allocation's window. No `SO_REUSEADDR`
/// (unlike `io::bind_udp`): with it, Linux may give two port-0 binds the same port, i.e.
/// two allocations one 5-tuple (437).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind(addr)?;
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt with a valid c_int value on a socket we own.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break; // best effort: the plain option is capped at rmem_max/wmem_max
            }
        }
    }
    Ok(sock)
}

fn tid(n: u64) -> [u8; 12] {
    let mut t = [0x5Au8; 12];
    t[4..].copy_from_slice(&n.to_be_bytes());
    t
}

struct Creds {
    user: String,
    pass: String,
}

/// Writes a request into `buf`, signed (USERNAME, REALM, NONCE, MESSAGE-INTEGRITY; RFC 8656
/// §5 long-term credentials) once `auth` holds the realm and nonce; returns its length.
fn write_request(
    buf: &mut [u8],
    method: Method,
    t: &[u8; 12],
    creds: &Creds,
    auth: Option<&(String, String)>,
    attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), icering::stun::StunError>,
) -> Result<usize, String> {
    let mut w = MessageWriter::new(buf, MessageType::new(method, Class::Request), t)
        .map_err(|e| e.to_string())?;
    attrs(&mut w).map_err(|e| e.to_string())?;
    if let Some((realm, nonce)) = auth {
        let key = long_term_key_md5(&creds.user, realm, &creds.pass);
        let add = |w: &mut MessageWriter<'_>| -> Result<(), icering::stun::StunError> {
            w.add_raw(attr::USERNAME, creds.user.as_bytes())?;
            w.add_raw(attr::REALM, realm.as_bytes())?;
            w.add_raw(attr::NONCE, nonce.as_bytes())?;
            w.add_message_integrity(&IntegrityKey::new(&key))
        };
        add(&mut w).map_err(|e| e.to_string())?;
    }
    w.add_fingerprint().map_err(|e| e.to_string())?;
    Ok(w.finish())
}

/// A request/answer exchange with the 401 → signed retry; returns the answer bytes.
fn request(
    sock: &UdpSocket,
    server: SocketAddr,
    creds: &Creds,
    auth: &mut Option<(String, String)>,
    method: Method,
    seq: &mut u64,
    attrs: &dyn Fn(&mut MessageWriter<'_>) -> Result<(), icering::stun::StunError>,
) -> Result<Vec<u8>, String> {
    for _ in 0..3 {
        *seq += 1;
        let t = tid(*seq);
        let mut buf = [0u8; 1024];
        let n = write_request(&mut buf, method, &t, creds, auth.as_ref(), attrs)?;
        let mut answer = None;
        // Retransmit with a doubling timeout, 300 ms to 3 s, 7 sends (~13 s): a server
        // (or this process) starved on a busy machine is waited for, not given up on.
        let mut rto = Duration::from_millis(300);
        for _ in 0..7 {
            sock.set_read_timeout(Some(rto))
                .map_err(|e| e.to_string())?;
            rto = (rto * 2).min(Duration::from_secs(3));
            sock.send_to(&buf[..n], server).map_err(|e| e.to_string())?;
            let mut r = [0u8; 2048];
            while let Ok((len, _)) = sock.recv_from(&mut r) {
                if let Ok(m) = Message::parse(&r[..len])
                    && m.transaction_id() == &t
                {
                    answer = Some(r[..len].to_vec());
                    break;
                }
            }
            if answer.is_some() {
                break;
            }
        }
        let a = answer.ok_or_else(|| format!("{method:?}: no answer from {server}"))?;
        if settle(&a, auth, method)? {
            return Ok(a);
        }
    }
    Err(format!("{method:?}: no success after retries"))
}

/// What an answer to `method` means: `Ok(true)` success, `Ok(false)` sign (again) and
/// retry (a 401 or 438 that brought the realm and nonce, now in `auth`), `Err` a failure
/// (an error code, or a 401 to a signed request: wrong credentials).
fn settle(
    answer: &[u8],
    auth: &mut Option<(String, String)>,
    method: Method,
) -> Result<bool, String> {
    let m = Message::parse(answer).map_err(|e| e.to_string())?;
    match m.error_code().map(|e| e.code) {
        None => Ok(true),
        Some(code @ (401 | 438)) if m.nonce().is_some() => {
            let first = auth.is_none();
            *auth = Some((
                m.realm().unwrap_or_default().to_string(),
                m.nonce().unwrap_or_default().to_string(),
            ));
            if !first && code == 401 {
                return Err(format!("{method:?}: 401, wrong credentials"));
            }
            Ok(false)
        }
        Some(code) => Err(format!("{method:?}: error {code}")),
    }
}

fn setup(args: &Args, creds: &Creds, peer: SocketAddr, id: u32) -> Result<Alloc, String> {
    let bind: SocketAddr = match args.client_ips.as_slice() {
        [] if args.target.is_ipv6() => "[::]:0".parse().expect("literal"),
        [] => "0.0.0.0:0".parse().expect("literal"),
        ips => SocketAddr::new(ips[id as usize % ips.len()], 0),
    };
    let sock = bind_udp(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| e.to_string())?;
    if args.raw_echo {
        return Ok(Alloc {
            sock: Some(sock),
            id,
            auth: None,
        });
    }
    let mut auth = None;
    let mut seq = u64::from(id) << 32;
    setup_requests(args.indications, peer, &mut |method, attrs| {
        request(
            &sock,
            args.target,
            creds,
            &mut auth,
            method,
            &mut seq,
            attrs,
        )
    })?;
    Ok(Alloc {
        sock: Some(sock),
        id,
        auth,
    })
}

/// Extra attributes of a request.
type Attrs<'a> = &'a dyn Fn(&mut MessageWriter<'_>) -> Result<(), icering::stun::StunError>;

/// Sends one setup request (signing it, retrying after a 401/438) and returns the answer.
type Request<'a> = dyn FnMut(Method, Attrs<'_>) -> Result<Vec<u8>, String> + 'a;

/// One allocation's setup (Allocate, then ChannelBind to `peer`, or CreatePermission for
/// `indications`), each request through `request` (which signs and retries).
fn setup_requests(
    indications: bool,
    peer: SocketAddr,
    request: &mut Request<'_>,
) -> Result<(), String> {
    request(Method::ALLOCATE, &|w| {
        w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    })?;
    if indications {
        request(Method::CREATE_PERMISSION, &|w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        })?;
    } else {
        request(Method::CHANNEL_BIND, &|w| {
            w.add_raw(attr::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, 0, 0, 0])?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        })?;
    }
    Ok(())
}

/// Deletes this driver's allocations (Refresh with LIFETIME 0, RFC 8656 §7.2) through its
/// backend, from each allocation's own socket: signed with the realm and nonce learnt at
/// setup, signed again with the new nonce after a 438 (or after a 401 if setup needed no
/// credentials), retransmitted after 300 ms, 5 sends at most each. At most
/// `REFRESH_WINDOW` are outstanding at once, so deleting tens of thousands of allocations
/// is not one burst that overflows the server's socket buffer. Returns how many were not
/// confirmed. The exchange of `request`, batched: a serial one would need the sockets
/// back, i.e. a second file descriptor per allocation.
fn refresh_zero(
    backend: &mut Backend,
    target: SocketAddr,
    creds: &Creds,
    allocs: &[Alloc],
    flows: &[Flow],
) -> Result<u64, String> {
    const REFRESH_WINDOW: usize = 1024;
    const RTO: Duration = Duration::from_millis(300);
    const SENDS: u64 = 5;
    let n = allocs.len();
    let Some(first) = allocs.first().map(|a| a.id) else {
        return Ok(0);
    };
    let mut auth: Vec<Option<(String, String)>> = allocs.iter().map(|a| a.auth.clone()).collect();
    // 0 pending, 1 deleted, 2 failed; sends so far and the last send's time.
    let mut state = vec![0u8; n];
    let mut sends = vec![0u64; n];
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut inflight: Vec<usize> = Vec::with_capacity(REFRESH_WINDOW);
    let mut next = 0usize;
    let mut left = n;
    let lifetime0 = |w: &mut MessageWriter<'_>| w.add_u32(attr::LIFETIME, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 1024];
    while left > 0 && Instant::now() < deadline {
        let now = Instant::now();
        // Settle what is done, retransmit what timed out, top the window up.
        inflight.retain(|&k| state[k] == 0);
        for &k in &inflight {
            if sent_at[k].is_some_and(|t| now.duration_since(t) >= RTO) && sends[k] >= SENDS {
                state[k] = 2;
                left -= 1;
            }
        }
        inflight.retain(|&k| state[k] == 0);
        while inflight.len() < REFRESH_WINDOW && next < n {
            inflight.push(next);
            next += 1;
        }
        for &k in &inflight {
            if sent_at[k].is_some_and(|t| now.duration_since(t) < RTO) {
                continue;
            }
            let seq = (u64::from(allocs[k].id) << 32) | 0x8000_0000 | sends[k];
            let len = write_request(
                &mut buf,
                Method::REFRESH,
                &tid(seq),
                creds,
                auth[k].as_ref(),
                &lifetime0,
            )?;
            backend
                .send_to(flows[k].sock, target, &buf[..len])
                .map_err(|e| e.to_string())?;
            sends[k] += 1;
            sent_at[k] = Some(now);
        }
        backend
            .poll(Some(Duration::from_millis(10)), &mut |_, m, data, _| {
                let from = m.from;
                let Ok(msg) = Message::parse(data) else {
                    return;
                };
                let t = msg.transaction_id();
                if from != target || msg.method() != Method::REFRESH || t[..4] != [0x5A; 4] {
                    return; // a late relayed datagram, or a stale answer
                }
                let seq = u64::from_be_bytes(t[4..].try_into().expect("8 bytes"));
                let k = ((seq >> 32) as u32).wrapping_sub(first) as usize;
                let sent_in = seq & 0xFFFF_FFFF;
                if k >= n
                    || state[k] != 0
                    || !(0x8000_0000..0x8000_0000 | sends[k]).contains(&sent_in)
                {
                    return;
                }
                match msg.error_code().map(|e| e.code) {
                    // 437: no allocation for this 5-tuple any more, i.e. an earlier
                    // transmission (answered late) deleted it (RFC 8656 §7.3).
                    None | Some(437) => {
                        state[k] = 1;
                        left -= 1;
                    }
                    Some(code @ (401 | 438)) if msg.nonce().is_some() => {
                        let unsigned = auth[k].is_none();
                        if code == 401 && !unsigned {
                            state[k] = 2; // wrong credentials
                            left -= 1;
                        } else {
                            auth[k] = Some((
                                msg.realm().unwrap_or_default().to_string(),
                                msg.nonce().unwrap_or_default().to_string(),
                            ));
                            sent_at[k] = None; // signed again at once
                        }
                    }
                    Some(_) => {
                        state[k] = 2;
                        left -= 1;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(state.iter().filter(|&&s| s != 1).count() as u64)
}

/// Builds one relayed datagram carrying (allocation id, seq) into `out`.
fn build(
    indications: bool,
    peer: SocketAddr,
    id: u32,
    seq: u64,
    size: usize,
    out: &mut [u8],
) -> usize {
    let mut payload = [0u8; 2048];
    let size = size.clamp(16, 1400);
    payload[..4].copy_from_slice(&id.to_be_bytes());
    payload[4..12].copy_from_slice(&seq.to_be_bytes());
    if indications {
        let mut w = MessageWriter::new(
            out,
            MessageType::new(Method::SEND, Class::Indication),
            &tid(seq),
        )
        .expect("room");
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .expect("room");
        w.add_raw(attr::DATA, &payload[..size]).expect("room");
        w.finish()
    } else {
        out[..2].copy_from_slice(&CHANNEL.to_be_bytes());
        out[2..4].copy_from_slice(&(size as u16).to_be_bytes());
        out[4..4 + size].copy_from_slice(&payload[..size]);
        4 + size
    }
}

/// The (id, seq) of a datagram relayed back, from ChannelData or a Data indication (or, from
/// a raw echo server, our own Send indication).
fn parse_back(d: &[u8], raw_echo: bool) -> Option<(u32, u64)> {
    let payload = if let Ok(m) = Message::parse(d) {
        let want = if raw_echo { Method::SEND } else { Method::DATA };
        (m.method() == want && m.class() == Class::Indication).then(|| m.data())??
    } else if d.len() >= 4 && (0x40..=0x7F).contains(&d[0]) {
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        d.get(4..4 + len)?
    } else {
        return None;
    };
    let id = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    Some((id, seq))
}

/// What every flow carries in the load, whatever its transport: its window of
/// datagrams in flight.
struct Window {
    out: Outstanding,
    id: u32,
    answered: u64,
    /// Listed in `Counts::ready` (its window may have room). Inactive flows count as
    /// listed, so they never are.
    ready: bool,
    /// Carries data in the load phase (`--data-every`).
    active: bool,
}

impl Window {
    fn new(args: &Args, id: u32, now: Instant) -> Self {
        Window {
            out: Outstanding::new(args.window * 2, now),
            id,
            answered: 0,
            ready: true,
            active: (id as usize).is_multiple_of(args.data_every.max(1)),
        }
    }
}

/// A driver's tallies during the load, the flows whose windows may have room, and the
/// load's clock (refill until `until`, then drain for up to `timeout`).
struct Counts {
    t: Tally,
    /// Datagrams in flight over all flows.
    live: usize,
    /// Flows (by index) whose windows may have room.
    ready: Vec<u32>,
    stray: u64,
    echo_dropped: u64,
    until: Instant,
    /// A datagram not back after this long is lost (`--timeout-ms`).
    timeout: Duration,
    /// Datagrams in flight per flow (`--window`).
    window: usize,
    draining: bool,
    last_sweep: Instant,
}

impl Counts {
    fn new<'a>(args: &Args, until: Instant, windows: impl Iterator<Item = &'a Window>) -> Self {
        Counts {
            t: Tally::new(),
            live: 0,
            ready: (0u32..)
                .zip(windows)
                .filter(|(_, w)| w.active)
                .map(|(k, _)| k)
                .collect(),
            stray: 0,
            echo_dropped: 0,
            until,
            timeout: Duration::from_millis(args.timeout_ms),
            window: args.window,
            draining: false,
            last_sweep: Instant::now(),
        }
    }

    /// Whether the load is over at `now`: past `until` nothing more is sent, and the
    /// load ends once every datagram is back or `timeout` later.
    fn over(&mut self, now: Instant) -> bool {
        self.draining |= now >= self.until;
        self.draining && (self.live == 0 || now >= self.until + self.timeout)
    }

    /// Whether windows are still refilled.
    fn refilling(&self) -> bool {
        !self.draining
    }

    /// Whether `w` has room for one more datagram.
    fn has_room(&self, w: &Window) -> bool {
        w.out.live < self.window && !w.out.full()
    }

    /// Counts what `w` has had out longer than the timeout as lost.
    fn expire(&mut self, w: &mut Window, now: Instant) {
        let lost = w.out.expire(now, self.timeout, false);
        self.t.lost += lost;
        self.live -= lost as usize;
    }

    /// One more datagram out on `w`, sent at `now`.
    fn sent(&mut self, w: &mut Window, now: Instant) {
        w.out.push(now);
        self.live += 1;
        self.t.sent += 1;
    }

    /// A datagram (or frame) `d` back for flow `k` at `at`: an answer (its round trip
    /// recorded, the flow listed for a refill), a late or duplicate one, a late answer to
    /// a retransmitted setup request (stray), or invalid.
    fn came_back(&mut self, k: u32, w: &mut Window, d: &[u8], raw: bool, at: Instant) {
        match parse_back(d, raw) {
            Some((id, seq)) if id == w.id => match w.out.answer(seq) {
                Some(sent_at) => {
                    self.t.answered += 1;
                    w.answered += 1;
                    self.live -= 1;
                    let us = at.duration_since(sent_at).as_micros().max(1) as u64;
                    let _ = self.t.latency_us.record(us.min(60_000_000));
                    if !w.ready {
                        w.ready = true;
                        self.ready.push(k);
                    }
                }
                None => self.t.late_or_duplicate += 1,
            },
            _ if Message::parse(d)
                .is_ok_and(|m| matches!(m.class(), Class::Success | Class::Error)) =>
            {
                self.stray += 1
            }
            _ => self.t.invalid += 1,
        }
    }

    /// Every 20 ms, windows stalled on lost datagrams: expired, and listed again if they
    /// have room.
    fn sweep<'a>(&mut self, windows: impl Iterator<Item = &'a mut Window>, now: Instant) {
        if now.duration_since(self.last_sweep) < Duration::from_millis(20) {
            return;
        }
        self.last_sweep = now;
        for (k, w) in (0u32..).zip(windows) {
            self.expire(w, now);
            if w.active && !w.ready && w.out.live < self.window {
                w.ready = true;
                self.ready.push(k);
            }
        }
    }

    /// The driver's result once the load is over: what is still out counts as lost.
    fn finish<'a>(
        mut self,
        windows: impl Iterator<Item = &'a mut Window>,
        now: Instant,
        send_errors: u64,
    ) -> Driven {
        let mut idle = 0;
        for w in windows {
            self.t.lost += w.out.expire(now, self.timeout, true);
            idle += u64::from(w.active && w.answered == 0);
        }
        self.t.send_failed += send_errors;
        Driven {
            tally: self.t,
            flows_without_answer: idle,
            peer_echo_dropped: self.echo_dropped,
            stray: self.stray,
            not_deleted: 0,
        }
    }
}

/// Data-path state of one allocation inside a driver thread.
struct Flow {
    win: Window,
    sock: SocketId,
}

/// What one driver thread hands back.
struct Driven {
    tally: Tally,
    flows_without_answer: u64,
    peer_echo_dropped: u64,
    /// Datagrams that are not answers: from a source other than the target (e.g. leftovers
    /// for a port another process used just before, on a busy shared machine), or STUN
    /// responses from the target (late answers to retransmitted setup requests).
    stray: u64,
    /// Allocations whose Refresh 0 was not confirmed.
    not_deleted: u64,
}

/// A driver's backend with every client socket of its share and its echo peer.
struct Prepared {
    backend: Backend,
    flows: Vec<Flow>,
    /// Socket id → flow index (`u32::MAX`: none).
    by_sock: Vec<u32>,
    peer: Option<SocketId>,
}

/// The measured phase, shared by the driver threads and `run`: everyone waits at `start`
/// once the backends are ready, and at `end` once the last datagram is in (before the
/// teardown), so rates and CPU cover exactly the load.
pub(crate) struct Phase {
    start: Barrier,
    end: Barrier,
}

impl Phase {
    /// One driver's part: `prepare`, wait for the others, `load` until `--duration` from
    /// the common start, wait again. Whatever happens (an error, a panic) both barriers
    /// are passed once, or `run` would wait forever. Returns the prepared state (for the
    /// teardown) and the load's result.
    fn drive<P>(
        &self,
        args: &Args,
        prepare: impl FnOnce() -> Result<P, String>,
        load: impl FnOnce(&mut P, Instant) -> Result<Driven, String>,
    ) -> Result<(P, Driven), String> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        fn panicked<T>(_: Box<dyn std::any::Any + Send>) -> Result<T, String> {
            Err("driver thread panicked".into())
        }
        let prepared = catch_unwind(AssertUnwindSafe(prepare)).unwrap_or_else(panicked);
        self.start.wait();
        let until = Instant::now() + Duration::from_secs_f64(args.duration);
        let loaded = prepared.and_then(|mut p| {
            catch_unwind(AssertUnwindSafe(|| load(&mut p, until)))
                .unwrap_or_else(panicked)
                .map(|d| (p, d))
        });
        self.end.wait();
        loaded
    }
}

/// A driver's io backend for `flows` flows: send slots for every window twice over.
fn driver_backend(args: &Args, kind: BackendKind, flows: usize) -> Result<Backend, String> {
    let cfg = io::Config {
        batch: 64,
        buf_size: 2048,
        buf_count: 4096,
        send_slots: (flows * args.window * 2 + 256)
            .next_power_of_two()
            .clamp(1024, 16384),
        gso: !args.no_gso,
        // No GRO on the generator's sockets: a GSO burst a server sends over loopback would
        // then reach them unsegmented, sparing the server the segmentation a real network
        // path (or a client without GRO, or coturn's plain sends) makes it pay.
        gro: false,
    };
    Backend::new(kind, &cfg).map_err(|e| e.to_string())
}

fn prepare(
    args: &Args,
    kind: BackendKind,
    peer: Option<UdpSocket>,
    allocs: &mut [Alloc],
) -> Result<Prepared, String> {
    let e = |e: io::IoError| e.to_string();
    let mut backend = driver_backend(args, kind, allocs.len())?;
    let mut by_sock: Vec<u32> = Vec::new();
    let mut flows = Vec::with_capacity(allocs.len());
    let now = Instant::now();
    for (k, a) in allocs.iter_mut().enumerate() {
        let s = a.sock.take().ok_or("allocation without a socket")?;
        let sock = backend.add_socket(s).map_err(e)?;
        let i = sock.0 as usize;
        if by_sock.len() <= i {
            by_sock.resize(i + 1, u32::MAX);
        }
        by_sock[i] = k as u32;
        flows.push(Flow {
            win: Window::new(args, a.id, now),
            sock,
        });
    }
    let peer = match peer {
        Some(p) => Some(backend.add_socket(p).map_err(e)?),
        None => None,
    };
    Ok(Prepared {
        backend,
        flows,
        by_sock,
        peer,
    })
}

/// Drives `allocs` (and the echo peer, unless `--raw-echo`) through one batched backend for
/// `--duration` from the common start, waits up to the timeout for the datagrams still in
/// flight, then deletes the allocations.
fn drive(
    args: &Args,
    kind: BackendKind,
    creds: &Creds,
    peer: Option<UdpSocket>,
    dest_for_send: SocketAddr,
    allocs: &mut [Alloc],
    phase: &Phase,
) -> Result<Driven, String> {
    let (mut p, mut d) = phase.drive(
        args,
        || prepare(args, kind, peer, allocs),
        |p, until| load(args, p, dest_for_send, until),
    )?;
    if !args.raw_echo {
        d.not_deleted = refresh_zero(&mut p.backend, args.target, creds, allocs, &p.flows)?;
    }
    Ok(d)
}

/// The measured load of one driver.
fn load(
    args: &Args,
    p: &mut Prepared,
    dest_for_send: SocketAddr,
    until: Instant,
) -> Result<Driven, String> {
    let Prepared {
        backend,
        flows,
        by_sock,
        peer,
    } = p;
    let peer_id = *peer;
    let mut c = Counts::new(args, until, flows.iter().map(|f| &f.win));
    let mut now = Instant::now();
    let (target, size, indications, raw) =
        (args.target, args.size, args.indications, args.raw_echo);
    while !c.over(now) {
        // Refill the windows that may have room, as one batch.
        if c.refilling() {
            let sendq = backend.send_queue();
            let mut done = 0;
            let mut ready = std::mem::take(&mut c.ready);
            'fill: for &k in ready.iter() {
                let f = &mut flows[k as usize];
                c.expire(&mut f.win, now);
                while c.has_room(&f.win) {
                    let Some(slot) = sendq.slot() else {
                        break 'fill;
                    };
                    let n = build(
                        indications,
                        dest_for_send,
                        f.win.id,
                        f.win.out.next,
                        size,
                        slot,
                    );
                    sendq.commit(f.sock, target, n);
                    c.sent(&mut f.win, now);
                }
                f.win.ready = false;
                done += 1;
            }
            ready.drain(..done);
            c.ready = ready;
        }
        // Flush, wait for answers; echo what reaches the peer.
        let mut received_at = now;
        backend
            .poll(
                Some(Duration::from_millis(1)),
                &mut |sq: &mut SendQueue, m: RecvMeta, data: &[u8], _: &mut Lend| {
                    let (sock, from) = (m.sock, m.from);
                    if Some(sock) == peer_id {
                        if sq.send_to(sock, from, data).is_err() {
                            c.echo_dropped += 1;
                        }
                        return;
                    }
                    let Some(&k) = by_sock.get(sock.0 as usize).filter(|&&k| k != u32::MAX) else {
                        c.stray += 1;
                        return;
                    };
                    if from != target {
                        c.stray += 1;
                        return;
                    }
                    let at = Instant::now().max(received_at);
                    received_at = at;
                    c.came_back(k, &mut flows[k as usize].win, data, raw, at);
                },
            )
            .map_err(|e| e.to_string())?;
        now = Instant::now();
        c.sweep(flows.iter_mut().map(|f| &mut f.win), now);
    }
    let errors = backend.stats().send_errors;
    Ok(c.finish(flows.iter_mut().map(|f| &mut f.win), now, errors))
}

/// Runs the load.
pub fn run(args: Args) -> Result<(), String> {
    if args.allocations == 0 || args.window == 0 || args.threads == 0 || args.data_every == 0 {
        return Err(
            "--allocations, --window, --threads and --data-every must be at least 1".into(),
        );
    }
    if args.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    let streams = args.transport != Transport::Udp;
    if streams && (args.raw_echo || args.hold_file.is_some() || !args.client_ips.is_empty()) {
        return Err("--raw-echo, --hold-file and --client-ips go with --transport udp only".into());
    }
    let tls = stream::Tls::new(&args)?;
    let kind = backend(&args.io, args.json)?;
    let creds = match &args.secret {
        None => Creds {
            user: args.user.clone(),
            pass: args.pass.clone(),
        },
        Some(secret) => {
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs()
                + 3600;
            let user = format!("{expiry}:{}", args.user);
            let pass = icering::turn::server::auth::rest_password(secret.as_bytes(), &user);
            Creds { user, pass }
        }
    };
    let threads = args.threads.min(args.allocations);
    let per = args.allocations.div_ceil(threads);
    // One echo peer socket per driver thread (none against a raw echo server); the
    // allocations of thread j relay to peer j.
    let mut peers = Vec::with_capacity(threads);
    let mut peer_addrs = Vec::with_capacity(threads);
    for _ in 0..threads {
        if args.raw_echo {
            peer_addrs.push(args.target);
        } else {
            // 4 MiB receive buffer: every allocation's window arrives here.
            let p = bind_udp(SocketAddr::new(args.peer_ip, 0)).map_err(|e| e.to_string())?;
            peer_addrs.push(p.local_addr().map_err(|e| e.to_string())?);
            peers.push(Some(p));
        }
    }
    if args.raw_echo {
        peers.resize_with(threads, || None);
    }

    let mut allocs = Vec::with_capacity(args.allocations);
    let t0 = Instant::now();
    // Over streams, each driver sets its allocations up on its own connections.
    for i in (0..args.allocations).filter(|_| !streams) {
        allocs.push(
            setup(&args, &creds, peer_addrs[i / per], i as u32)
                .map_err(|e| format!("allocation {i}: {e}"))?,
        );
    }
    if let Some(path) = &args.hold_file {
        eprintln!(
            "setup done: {} allocations in {:.1} s; holding until {} exists",
            allocs.len(),
            t0.elapsed().as_secs_f64(),
            path.display()
        );
        while !path.exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let me = std::process::id();
    let phase = Phase {
        start: Barrier::new(threads + 1),
        end: Barrier::new(threads + 1),
    };
    let mut total = Tally::new();
    let (mut idle, mut echo_dropped, mut stray, mut not_deleted) = (0, 0, 0, 0);
    // CPU of the server and of this process, and the start time, sampled at the barriers.
    let cpu = |pid: Option<u32>| pid.map(process_cpu).transpose();
    type Sample = (Option<Duration>, Duration, Instant);
    let sample = || -> Result<Sample, String> {
        Ok((cpu(args.server_pid)?, process_cpu(me)?, Instant::now()))
    };
    let (results, before, after): (Vec<Result<Driven, String>>, Result<Sample, String>, _) =
        std::thread::scope(|s| {
            let (args, creds, phase, tls) = (&args, &creds, &phase, tls.as_ref());
            let handles: Vec<_> = if streams {
                peers
                    .into_iter()
                    .enumerate()
                    .map(|(j, peer)| {
                        let ids = (j * per) as u32..((j + 1) * per).min(args.allocations) as u32;
                        s.spawn(move || {
                            let peer = peer.ok_or("no echo peer")?;
                            stream::drive(args, kind, tls, creds, peer, ids, phase)
                        })
                    })
                    .collect()
            } else {
                allocs
                    .chunks_mut(per)
                    .zip(peers.into_iter().zip(peer_addrs.iter().copied()))
                    .map(|(chunk, (peer, paddr))| {
                        s.spawn(move || drive(args, kind, creds, peer, paddr, chunk, phase))
                    })
                    .collect()
            };
            phase.start.wait();
            let before = sample();
            phase.end.wait();
            let after = sample();
            let results = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("driver thread panicked".into()))
                })
                .collect();
            (results, before, after)
        });
    let (server0, own0, start) = before?;
    let (server1, own1, end): Sample = after?;
    let own = own1.saturating_sub(own0);
    let elapsed = end
        .duration_since(start)
        .min(Duration::from_secs_f64(args.duration));
    let server = match (args.server_pid, server0, server1) {
        (Some(pid), Some(c0), Some(c1)) => Some((pid, c1.saturating_sub(c0))),
        _ => None,
    };
    for r in results {
        let d = r?;
        total.merge(&d.tally);
        idle += d.flows_without_answer;
        echo_dropped += d.peer_echo_dropped;
        stray += d.stray;
        not_deleted += d.not_deleted;
    }
    let mode = format!(
        "{}{} {} {}, {}, window {}, {} B",
        if args.raw_echo { "raw echo" } else { "turn" },
        match args.transport {
            Transport::Udp => "",
            Transport::Tcp => " over TCP",
            Transport::Tls => " over TLS",
        },
        args.allocations,
        if args.raw_echo {
            "flows"
        } else {
            "allocations"
        },
        if args.indications {
            "Send/Data indications"
        } else {
            "ChannelData"
        },
        args.window,
        args.size
    );
    let mut report = Report::new(
        &total,
        elapsed,
        (args.target.to_string(), mode, threads, kind.to_string()),
        server,
    );
    report.flows_without_answer = Some(idle);
    report.peer_echo_dropped = (!args.raw_echo).then_some(echo_dropped);
    report.load_cpu_s = Some(own.as_secs_f64());
    report.stray = Some(stray);
    report.not_deleted = (!args.raw_echo && !streams).then_some(not_deleted);
    report.print(args.json);
    if !args.json {
        println!(
            "load generator  cpu {:.3} s ({:.0} % of the load phase)",
            own.as_secs_f64(),
            100.0 * own.as_secs_f64() / end.duration_since(start).as_secs_f64().max(1e-9)
        );
        println!("stray           {stray} (not answers: other sources, late setup responses)");
        if !args.raw_echo && !streams {
            println!("not deleted     {not_deleted} (Refresh 0 unconfirmed)");
        }
        println!(
            "flows idle      {idle} of {} carrying data (no datagram back)",
            args.allocations.div_ceil(args.data_every.max(1))
        );
        if args.raw_echo {
            println!(
                "echoed          {:.0} datagrams/s (each in and out of the echo server once)",
                report.answered_per_s
            );
        } else {
            println!("peer echo drops {echo_dropped}");
            println!(
                "relayed         {:.0} datagrams/s in total, {:.0} each way (a round trip is one relayed datagram each way)",
                2.0 * report.answered_per_s,
                report.answered_per_s
            );
        }
    }
    Ok(())
}
