//! `icering-loadtest udp-floor`: the kernel and io work under one ICE pair's setup and
//! nothing else, the lower bound of `ice pairs`' CPU per connection.
//!
//! Per pair, as `ice pairs` (mux-dedicated) does it: one UDP socket bound on 127.0.0.1 and
//! registered with an io backend (the controlling agent's dedicated socket), and between
//! it and one shared socket (the controlled side's mux) the six datagrams of a setup with
//! regular nomination (RFC 8445 §7.2.5, §8.1.1), each of the size icering sends: the
//! check, its response and the triggered check, the triggered check's response and the
//! nomination, the nomination's response. Sockets stay open, as connected agents keep
//! theirs. No STUN is built or parsed, no agent, runtime or second thread is involved:
//! one thread drives one backend with the engine's io settings, and each datagram
//! carries its pair and step. What `ice pairs` costs above this per connection is ICE,
//! the shard and the application API.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use icering::io::{self, Backend, SendQueue, SocketId};

use crate::report::{backend, process_cpu};

/// Arguments of `icering-loadtest udp-floor`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pairs to set up.
    #[arg(long, default_value_t = 18_000)]
    n: usize,
    /// Setups in flight.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// io backend: auto | uring | portable.
    #[arg(long, default_value = "auto")]
    io: String,
    /// One JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

/// Bytes of icering's six setup messages, in order (`cargo bench --bench ice_agent`
/// prints them): Binding requests with USERNAME, PRIORITY, ICE-CONTROLLING/-CONTROLLED,
/// MESSAGE-INTEGRITY and FINGERPRINT (96), the nomination adding USE-CANDIDATE and
/// NOMINATION (108), success responses with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY and
/// FINGERPRINT (64).
const SIZES: [usize; 6] = [96, 64, 96, 64, 108, 64];

/// Who sends each step: `true` the dedicated socket, `false` the shared one.
const FROM_DEDICATED: [bool; 6] = [true, false, false, true, true, false];

/// A pair with nothing received for this long counts as failed (a lost datagram).
const STALL: Duration = Duration::from_secs(2);

fn send(q: &mut SendQueue, sock: SocketId, to: SocketAddr, pair: u32, step: u8) -> bool {
    let Some(slot) = q.slot() else {
        return false;
    };
    let len = SIZES[usize::from(step)];
    slot[..4].copy_from_slice(&pair.to_be_bytes());
    slot[4] = step;
    slot[5..len].fill(0);
    q.commit(sock, to, len);
    true
}

pub fn run(args: Args) -> Result<(), String> {
    if args.n == 0 || args.concurrency == 0 {
        return Err("--n and --concurrency must be positive".into());
    }
    let kind = backend(&args.io, args.json)?;
    let cfg = icering::config::Config::embedded().io.backend_config();
    let mut b = Backend::new(kind, &cfg).map_err(|e| e.to_string())?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let shared = io::bind_udp(loopback, false).map_err(|e| e.to_string())?;
    let shared_addr = shared.local_addr().map_err(|e| e.to_string())?;
    let shared = b.add_socket(shared).map_err(|e| e.to_string())?;

    let pid = std::process::id();
    let (cpu0, t0) = (process_cpu(pid)?, Instant::now());
    let mut sockets = Vec::with_capacity(args.n);
    let (mut done, mut unsent, mut received) = (0usize, 0u64, 0u64);
    let mut last_progress = Instant::now();
    while done < args.n {
        // New setups: one dedicated socket each (bound as the API binds an agent's), and
        // the first check.
        while sockets.len() < args.n && sockets.len() - done < args.concurrency {
            let s = UdpSocket::bind(loopback).map_err(|e| format!("bind: {e}"))?;
            let local = s.local_addr().map_err(|e| e.to_string())?;
            let id = b.add_bound_socket(s, local).map_err(|e| e.to_string())?;
            let pair = sockets.len() as u32;
            sockets.push(id);
            if !send(b.send_queue(), id, shared_addr, pair, 0) {
                unsent += 1;
            }
        }
        let mut finished = 0;
        b.poll(Some(Duration::from_millis(100)), &mut |q, meta, data, _| {
            let (Some(pair), Some(&step)) = (data.get(..4), data.get(4)) else {
                return;
            };
            let pair = u32::from_be_bytes(pair.try_into().expect("4 bytes"));
            let at_shared = meta.sock == shared;
            if usize::from(step) >= SIZES.len() || FROM_DEDICATED[usize::from(step)] != at_shared {
                return;
            }
            received += 1;
            // The receiver's answers: the datagrams the next steps send from its side.
            let mut ok = true;
            let mut next = step + 1;
            while usize::from(next) < SIZES.len() && FROM_DEDICATED[usize::from(next)] != at_shared
            {
                ok &= send(q, meta.sock, meta.from, pair, next);
                next += 1;
            }
            if !ok {
                unsent += 1;
            }
            if usize::from(step) == SIZES.len() - 1 {
                finished += 1;
            }
        })
        .map_err(|e| e.to_string())?;
        if finished > 0 {
            done += finished;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Err(format!(
                "{} of {} pairs stalled (a datagram was lost; {unsent} sends found the queue full)",
                sockets.len() - done,
                args.n
            ));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = process_cpu(pid)?.saturating_sub(cpu0).as_secs_f64();
    let per_s = args.n as f64 / elapsed;
    let cpu_us = cpu * 1e6 / args.n as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "pairs": args.n,
                "concurrency": args.concurrency,
                "elapsed_s": elapsed,
                "pairs_per_s": per_s,
                "cpu_us_per_pair": cpu_us,
                "datagrams_per_pair": SIZES.len(),
                "datagrams_received": received,
            })
        );
    } else {
        println!("udp floor ({} in flight, one thread)", args.concurrency);
        println!(
            "  set up          {}/{} pairs in {elapsed:.2} s = {per_s:.0} pairs/s  ({cpu_us:.0} us CPU per pair: one socket, {} datagrams)",
            args.n,
            args.n,
            SIZES.len()
        );
    }
    Ok(())
}
