//! `icering-loadtest stun`: Binding requests, windowed (W outstanding per thread) or
//! open-loop (a fixed total rate), against any STUN server. Every response is validated:
//! transaction id outstanding, source = target, XOR-MAPPED-ADDRESS = our own address,
//! FINGERPRINT correct when present.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use icering::io::{self, Backend, SocketId};
use icering::stun::{Class, Message, MessageType, MessageWriter, Method};

use crate::report::{Report, Tally, backend, process_cpu};

/// Arguments of `icering-loadtest stun`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// STUN server to load.
    #[arg(long)]
    target: SocketAddr,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: total requests per second over all threads.
    #[arg(long, conflicts_with = "window")]
    rate: Option<u64>,
    /// Windowed: requests outstanding per thread (default 64 when --rate is not given).
    #[arg(long)]
    window: Option<usize>,
    /// Sending threads, each with its own socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// io backend for the load generator: auto | uring | portable.
    #[arg(long, default_value = "auto")]
    io: String,
    /// A request unanswered after this many milliseconds counts as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Send minimal 20-byte requests (no FINGERPRINT).
    #[arg(long)]
    minimal: bool,
    /// Also accept our own request echoed back (for measuring a plain UDP echo server as
    /// the raw limit); transaction id and FINGERPRINT are still checked.
    #[arg(long)]
    accept_echo: bool,
    /// Send one datagram per sendmsg (no UDP GSO) from the load generator.
    #[arg(long)]
    no_gso: bool,
    /// PID of the server process, to report its CPU time per answered request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

struct Slot {
    seq: u64,
    sent_at: Instant,
    live: bool,
}

/// Requests in flight of one thread (or, for `turn`, of one allocation): a ring indexed by
/// sequence number.
pub(crate) struct Outstanding {
    ring: Vec<Slot>,
    mask: u64,
    pub(crate) next: u64,
    oldest: u64,
    pub(crate) live: usize,
}

impl Outstanding {
    pub(crate) fn new(capacity: usize, now: Instant) -> Self {
        let cap = capacity.next_power_of_two().max(64);
        Outstanding {
            ring: (0..cap)
                .map(|_| Slot {
                    seq: 0,
                    sent_at: now,
                    live: false,
                })
                .collect(),
            mask: cap as u64 - 1,
            next: 0,
            oldest: 0,
            live: 0,
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.next - self.oldest > self.mask
    }

    pub(crate) fn push(&mut self, now: Instant) -> u64 {
        let seq = self.next;
        self.ring[(seq & self.mask) as usize] = Slot {
            seq,
            sent_at: now,
            live: true,
        };
        self.next += 1;
        self.live += 1;
        seq
    }

    /// Marks `seq` answered; returns when it was sent, or None if it is not outstanding.
    pub(crate) fn answer(&mut self, seq: u64) -> Option<Instant> {
        if seq < self.oldest || seq >= self.next {
            return None;
        }
        let s = &mut self.ring[(seq & self.mask) as usize];
        if s.seq != seq || !s.live {
            return None;
        }
        s.live = false;
        self.live -= 1;
        Some(s.sent_at)
    }

    /// Retires the oldest entries: answered ones, and live ones older than `timeout`
    /// (returned as the number lost). With `all`, every live entry counts as lost.
    pub(crate) fn expire(&mut self, now: Instant, timeout: Duration, all: bool) -> u64 {
        let mut lost = 0;
        while self.oldest < self.next {
            let s = &mut self.ring[(self.oldest & self.mask) as usize];
            if s.live {
                if !all && now.duration_since(s.sent_at) < timeout {
                    break;
                }
                s.live = false;
                self.live -= 1;
                lost += 1;
            }
            self.oldest += 1;
        }
        lost
    }
}

/// Live counters of one thread, for the progress bar.
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    answered: AtomicU64,
}

fn local_bind_for(target: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match (target.ip().is_loopback(), target) {
        (true, SocketAddr::V4(_)) => Ipv4Addr::LOCALHOST.into(),
        (true, SocketAddr::V6(_)) => Ipv6Addr::LOCALHOST.into(),
        (false, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        (false, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

fn tid(thread: u32, seq: u64) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..4].copy_from_slice(&thread.to_be_bytes());
    t[4..].copy_from_slice(&seq.to_be_bytes());
    t
}

struct Worker {
    index: u32,
    args: Arc<Args>,
    kind: io::BackendKind,
    per_thread_rate: Option<f64>,
    window: usize,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self) -> Result<Tally, String> {
        let a = &self.args;
        let timeout = Duration::from_millis(a.timeout_ms);
        let cfg = io::Config {
            batch: 64,
            buf_size: 2048,
            buf_count: 4096,
            send_slots: 4096,
            // The generator's requests all go to one target with one size: GSO lets one
            // thread offer far more load. Every server under test gets the same client.
            gso: !a.no_gso,
            // As in `turn`: no GRO, so a server's GSO replies are segmented at delivery.
            gro: false,
        };
        let mut backend = Backend::new(self.kind, &cfg).map_err(|e| e.to_string())?;
        let socket = io::bind_udp(local_bind_for(a.target), false).map_err(|e| e.to_string())?;
        let me = socket.local_addr().map_err(|e| e.to_string())?;
        let check_ip = !me.ip().is_unspecified();
        let sock: SocketId = backend.add_socket(socket).map_err(|e| e.to_string())?;

        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(a.duration);
        let capacity = match self.per_thread_rate {
            Some(r) => (r * timeout.as_secs_f64() * 2.0) as usize + 1024,
            None => self.window * 2,
        };
        let mut out = Outstanding::new(capacity, start);
        let mut t = Tally::new();
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut now = start;
        let mut draining = false;
        let check = Check {
            index: self.index,
            target: a.target,
            me,
            check_ip,
            echo: a.accept_echo,
        };
        loop {
            if !draining && now >= deadline {
                draining = true;
            }
            if draining && (out.live == 0 || now >= deadline + timeout) {
                break;
            }
            // Send what the mode allows.
            let want = if draining {
                0
            } else {
                match self.per_thread_rate {
                    Some(r) => {
                        let due = (now.duration_since(start).as_secs_f64() * r) as u64;
                        due.saturating_sub(t.sent).min(256) as usize
                    }
                    None => self.window.saturating_sub(out.live),
                }
            };
            let sendq = backend.send_queue();
            for _ in 0..want {
                if out.full() {
                    break;
                }
                let Some(slot) = sendq.slot() else { break };
                let seq = out.next;
                let n = MessageWriter::new(slot, typ, &tid(self.index, seq))
                    .and_then(|mut w| {
                        if !a.minimal {
                            w.add_fingerprint()?;
                        }
                        Ok(w.finish())
                    })
                    .map_err(|e| e.to_string())?;
                sendq.commit(sock, a.target, n);
                out.push(now);
                t.sent += 1;
            }
            backend.flush().map_err(|e| e.to_string())?;

            // Receive and validate.
            let wait = match (self.per_thread_rate, draining) {
                (Some(r), false) => Duration::from_secs_f64((1.0 / r).min(0.001)),
                _ => Duration::from_millis(1),
            };
            let received_at = &mut now;
            backend
                .poll(Some(wait), &mut |_, m, data, _| {
                    let from = m.from;
                    let at = Instant::now().max(*received_at);
                    *received_at = at;
                    validate(&mut t, &mut out, &check, from, data, at)
                })
                .map_err(|e| e.to_string())?;
            now = Instant::now();
            t.lost += out.expire(now, timeout, false);
            self.shared.sent.store(t.sent, Relaxed);
            self.shared.answered.store(t.answered, Relaxed);
        }
        t.lost += out.expire(now, timeout, true);
        t.send_failed = backend.stats().send_errors;
        Ok(t)
    }
}

/// What a valid answer must match.
struct Check {
    index: u32,
    target: SocketAddr,
    me: SocketAddr,
    check_ip: bool,
    echo: bool,
}

fn validate(
    t: &mut Tally,
    out: &mut Outstanding,
    c: &Check,
    from: SocketAddr,
    data: &[u8],
    now: Instant,
) {
    let index = c.index;
    let ok = (|| {
        if from != c.target {
            return None;
        }
        let m = Message::parse(data).ok()?;
        if m.fingerprint_offset().is_some() && m.verify_fingerprint().is_err() {
            return None;
        }
        let is_echo =
            c.echo && m.message_type() == MessageType::new(Method::BINDING, Class::Request);
        if !is_echo {
            if m.message_type() != MessageType::new(Method::BINDING, Class::Success) {
                return None;
            }
            let mapped = m.xor_mapped_address()?.ok()?;
            if mapped.port() != c.me.port() || (c.check_ip && mapped.ip() != c.me.ip()) {
                return None;
            }
        }
        let tid = m.transaction_id();
        let thread = u32::from_be_bytes(tid[..4].try_into().ok()?);
        let seq = u64::from_be_bytes(tid[4..].try_into().ok()?);
        Some((thread, seq))
    })();
    match ok {
        None => t.invalid += 1,
        Some((thread, seq)) if thread == index => match out.answer(seq) {
            Some(sent_at) => {
                t.answered += 1;
                let us = now.duration_since(sent_at).as_micros().max(1) as u64;
                let _ = t.latency_us.record(us.min(60_000_000));
            }
            None => t.late_or_duplicate += 1,
        },
        Some(_) => t.invalid += 1,
    }
}

/// Runs the load and prints the report.
pub fn run(args: Args) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    let kind = backend(&args.io, args.json)?;
    let per_thread_rate = args.rate.map(|r| r as f64 / args.threads as f64);
    if per_thread_rate == Some(0.0) {
        return Err("--rate must be positive".into());
    }
    let window = args.window.unwrap_or(64).max(1);
    let mode = match args.rate {
        Some(r) => format!("open loop {r}/s"),
        None => format!("window {window}/thread"),
    };
    let args = Arc::new(args);
    let shared: Vec<Arc<Shared>> = (0..args.threads).map(|_| Arc::default()).collect();
    let cpu_before = args.server_pid.map(process_cpu).transpose()?;
    let start = Instant::now();
    let handles: Vec<_> = (0..args.threads)
        .map(|i| {
            let w = Worker {
                index: i as u32,
                args: args.clone(),
                kind,
                per_thread_rate,
                window,
                shared: shared[i].clone(),
            };
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || w.run())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    progress(&args, &shared, start, &handles);
    let mut total = Tally::new();
    for h in handles {
        let t = h.join().map_err(|_| "load thread panicked".to_string())??;
        total.merge(&t);
    }
    let elapsed = start
        .elapsed()
        .min(Duration::from_secs_f64(args.duration))
        .max(Duration::from_millis(1));
    let server = match (args.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some((pid, process_cpu(pid)?.saturating_sub(before))),
        _ => None,
    };
    let report = Report::new(
        &total,
        elapsed,
        (
            args.target.to_string(),
            mode,
            args.threads,
            kind.to_string(),
        ),
        server,
    );
    report.print(args.json);
    Ok(())
}

/// A progress bar on a terminal, nothing otherwise.
fn progress(
    args: &Args,
    shared: &[Arc<Shared>],
    start: Instant,
    handles: &[std::thread::JoinHandle<Result<Tally, String>>],
) {
    use std::io::IsTerminal;
    if args.json || !std::io::stderr().is_terminal() {
        return;
    }
    let total_ms = (args.duration * 1000.0) as u64;
    let bar = indicatif::ProgressBar::new(total_ms);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while handles.iter().any(|h| !h.is_finished()) {
        let ms = start.elapsed().as_millis() as u64;
        bar.set_position(ms.min(total_ms));
        let answered: u64 = shared.iter().map(|s| s.answered.load(Relaxed)).sum();
        let rate = answered as f64 / start.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("~{rate:.0} answered/s"));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}
