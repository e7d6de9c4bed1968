//! `icering-loadtest turn`: N allocations against any TURN server (icering, coturn, ...),
//! each with a permission and a channel (or Send indications) to a local echo peer; every
//! allocation keeps a window of datagrams in flight through client → relay → peer → relay
//! → client. Reports round trips per second (each is two relayed datagrams, one each way),
//! loss and RTT percentiles.
//!
//! Plain std sockets (one per allocation, polled non-blocking by `--threads` threads) and
//! icering's public STUN codec; the peer is an echo thread on `--peer-ip`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::stun::{
    Class, IntegrityKey, Message, MessageType, MessageWriter, Method, attr, long_term_key_md5,
};

use crate::report::{Report, Tally, process_cpu};

/// Arguments of `icering-loadtest turn`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TURN server (UDP).
    #[arg(long)]
    target: SocketAddr,
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
    /// Threads driving the allocations.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A datagram not back after this many milliseconds counts as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// PID of the server process, to report its CPU time per round trip.
    #[arg(long)]
    server_pid: Option<u32>,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

const CHANNEL: u16 = 0x4000;

/// One allocation: its socket, relayed address, and datagrams in flight.
struct Alloc {
    sock: UdpSocket,
    inflight: HashMap<u64, Instant>,
    next_seq: u64,
    id: u32,
    /// REALM and NONCE learnt at setup, so the final Refresh is signed at once.
    auth: Option<(String, String)>,
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
        let mut w = MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), &t)
            .map_err(|e| e.to_string())?;
        attrs(&mut w).map_err(|e| e.to_string())?;
        if let Some((realm, nonce)) = auth.as_ref() {
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
        let n = w.finish();
        let mut answer = None;
        for _ in 0..5 {
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
        let m = Message::parse(&a).map_err(|e| e.to_string())?;
        match m.error_code().map(|e| e.code) {
            None => return Ok(a),
            Some(401 | 438) if m.nonce().is_some() => {
                let first = auth.is_none();
                *auth = Some((
                    m.realm().unwrap_or_default().to_string(),
                    m.nonce().unwrap_or_default().to_string(),
                ));
                if !first && m.error_code().map(|e| e.code) == Some(401) {
                    return Err(format!("{method:?}: 401, wrong credentials"));
                }
            }
            Some(code) => return Err(format!("{method:?}: error {code}")),
        }
    }
    Err(format!("{method:?}: no success after retries"))
}

fn setup(args: &Args, creds: &Creds, peer: SocketAddr, id: u32) -> Result<Alloc, String> {
    let bind: SocketAddr = if args.target.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(|e| e.to_string())?;
    let mut auth = None;
    let mut seq = u64::from(id) << 32;
    let t = args.target;
    request(
        &sock,
        t,
        creds,
        &mut auth,
        Method::ALLOCATE,
        &mut seq,
        &|w| w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
    )?;
    if args.indications {
        request(
            &sock,
            t,
            creds,
            &mut auth,
            Method::CREATE_PERMISSION,
            &mut seq,
            &|w| w.add_xor_address(attr::XOR_PEER_ADDRESS, peer),
        )?;
    } else {
        request(
            &sock,
            t,
            creds,
            &mut auth,
            Method::CHANNEL_BIND,
            &mut seq,
            &|w| {
                w.add_raw(attr::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, 0, 0, 0])?;
                w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            },
        )?;
    }
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Alloc {
        sock,
        inflight: HashMap::new(),
        next_seq: 0,
        id,
        auth,
    })
}

fn teardown(args: &Args, creds: &Creds, a: &Alloc) {
    let _ = a.sock.set_nonblocking(false);
    let mut auth = a.auth.clone();
    let mut seq = (u64::from(a.id) << 32) | 0x8000_0000;
    let _ = request(
        &a.sock,
        args.target,
        creds,
        &mut auth,
        Method::REFRESH,
        &mut seq,
        &|w| w.add_u32(attr::LIFETIME, 0),
    );
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

/// The (id, seq) of a datagram relayed back, from ChannelData or a Data indication.
fn parse_back(d: &[u8]) -> Option<(u32, u64)> {
    let payload = if let Ok(m) = Message::parse(d) {
        (m.method() == Method::DATA).then(|| m.data())??
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

fn drive(args: &Args, peer: SocketAddr, allocs: &mut [Alloc], until: Instant) -> Tally {
    let mut t = Tally::new();
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut out = [0u8; 2048];
    let mut r = [0u8; 2048];
    let mut last_expire = Instant::now();
    loop {
        let now = Instant::now();
        let sending = now < until;
        if !sending && allocs.iter().all(|a| a.inflight.is_empty()) {
            break;
        }
        if now > until + timeout {
            break;
        }
        for a in allocs.iter_mut() {
            while let Ok((n, from)) = a.sock.recv_from(&mut r) {
                if from != args.target {
                    t.invalid += 1;
                    continue;
                }
                match parse_back(&r[..n]) {
                    Some((id, seq)) if id == a.id => match a.inflight.remove(&seq) {
                        Some(at) => {
                            t.answered += 1;
                            let us = at.elapsed().as_micros().max(1) as u64;
                            let _ = t.latency_us.record(us);
                        }
                        None => t.late_or_duplicate += 1,
                    },
                    _ => t.invalid += 1,
                }
            }
            while sending && a.inflight.len() < args.window {
                let seq = a.next_seq;
                a.next_seq += 1;
                let n = build(args.indications, peer, a.id, seq, args.size, &mut out);
                match a.sock.send_to(&out[..n], args.target) {
                    Ok(_) => {
                        t.sent += 1;
                        a.inflight.insert(seq, Instant::now());
                    }
                    Err(_) => {
                        t.send_failed += 1;
                        break;
                    }
                }
            }
        }
        if now.duration_since(last_expire) > Duration::from_millis(50) {
            last_expire = now;
            for a in allocs.iter_mut() {
                let before = a.inflight.len();
                a.inflight.retain(|_, at| now.duration_since(*at) < timeout);
                t.lost += (before - a.inflight.len()) as u64;
            }
        }
    }
    for a in allocs.iter_mut() {
        t.lost += a.inflight.len() as u64;
        a.inflight.clear();
    }
    t
}

/// Runs the load.
pub fn run(args: Args) -> Result<(), String> {
    if args.allocations == 0 || args.window == 0 || args.threads == 0 {
        return Err("--allocations, --window and --threads must be at least 1".into());
    }
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
    // The echo peer.
    let peer_sock = UdpSocket::bind(SocketAddr::new(args.peer_ip, 0)).map_err(|e| e.to_string())?;
    peer_sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let peer = peer_sock.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Relaxed) {
                if let Ok((n, from)) = peer_sock.recv_from(&mut buf) {
                    let _ = peer_sock.send_to(&buf[..n], from);
                }
            }
        })
    };

    let mut allocs = Vec::with_capacity(args.allocations);
    for i in 0..args.allocations {
        allocs.push(setup(&args, &creds, peer, i as u32)?);
    }
    let cpu0 = args.server_pid.map(process_cpu).transpose()?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration);
    let per = args.allocations.div_ceil(args.threads);
    let mut total = Tally::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = allocs
            .chunks_mut(per)
            .map(|chunk| s.spawn(|| drive(&args, peer, chunk, until)))
            .collect();
        for h in handles {
            total.merge(&h.join().expect("driver thread"));
        }
    });
    let elapsed = start.elapsed().min(Duration::from_secs_f64(args.duration));
    let server = match (args.server_pid, cpu0) {
        (Some(pid), Some(c0)) => Some((pid, process_cpu(pid)?.saturating_sub(c0))),
        _ => None,
    };
    for a in &allocs {
        teardown(&args, &creds, a);
    }
    stop.store(true, Relaxed);
    let _ = echo.join();
    let mode = format!(
        "turn {} allocations, {}, window {}, {} B",
        args.allocations,
        if args.indications {
            "Send/Data indications"
        } else {
            "ChannelData"
        },
        args.window,
        args.size
    );
    let report = Report::new(
        &total,
        elapsed,
        (args.target.to_string(), mode, args.threads, "std".into()),
        server,
    );
    report.print(args.json);
    if !args.json {
        println!(
            "relayed         {:.0} datagrams/s each way (a round trip is one relayed datagram each way)",
            report.answered_per_s
        );
    }
    Ok(())
}
