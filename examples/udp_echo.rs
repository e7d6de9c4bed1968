//! Plain UDP echo server: the "raw limit" baseline for benchmarks. No protocol, one thread.
//!
//! ```text
//! cargo run --release --example udp_echo -- 127.0.0.1:3479 [--seconds N] [--backend portable|uring|auto]
//! ```
//!
//! Default backend is `portable` (epoll + recvmmsg/sendmmsg). Runs until SIGINT/SIGTERM or
//! for `--seconds N`, then prints the I/O counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use icering::io::{
    Backend, BackendChoice, Config, Lend, RecvMeta, SendQueue, bind_udp, select_backend,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn usage() -> ! {
    eprintln!("usage: udp_echo ADDR [--seconds N] [--backend portable|uring|auto]");
    std::process::exit(2);
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: Option<SocketAddr> = None;
    let mut seconds: Option<u64> = None;
    let mut choice = BackendChoice::Portable;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = Some(args.next().unwrap_or_else(|| usage()).parse()?),
            "--backend" => choice = args.next().unwrap_or_else(|| usage()).parse()?,
            "-h" | "--help" => usage(),
            _ if addr.is_none() => addr = Some(a.parse()?),
            _ => usage(),
        }
    }
    let addr = addr.unwrap_or_else(|| usage());

    // SAFETY: installing an async-signal-safe handler (a single atomic store).
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    let (kind, why) = select_backend(choice)?;
    eprintln!("{why}");
    let mut backend = Backend::new(kind, &Config::default())?;
    let id = backend.add_socket(bind_udp(addr, false)?)?;
    eprintln!("echoing on {}", backend.local_addr(id));

    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut echo = |sq: &mut SendQueue, m: RecvMeta, p: &[u8], _: &mut Lend| {
        // Dropped (not counted as sent) if every send slot is busy.
        let _ = sq.send_to(m.sock, m.from, p);
    };
    while !STOP.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        backend.poll(Some(Duration::from_millis(100)), &mut echo)?;
        backend.flush()?;
    }
    eprintln!("{:?}", backend.stats());
    Ok(())
}
