//! Both sides of pion/ice's ping-pong example in one process: two threads run
//! [`icering::ping::run`] against each other on loopback with HTTP signalling on free
//! ports, three messages each way.
//!
//! ```text
//! cargo run --example ping_pong
//! ```
//!
//! Against pion's example or another process use the binary instead:
//! `icering ping --controlling` and `icering ping --controlled` (docs/ping.md).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use icering::ping::{PingConfig, run};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
}

fn main() {
    let (a, b) = (free_addr(), free_addr());
    let side = |controlling: bool, listen: SocketAddr, remote: SocketAddr| PingConfig {
        controlling,
        bind: "127.0.0.1:0".parse().unwrap(),
        signal_listen: listen,
        signal_remote: format!("http://{remote}"),
        interval: Duration::from_millis(200),
        count: Some(3),
        timeout: Duration::from_secs(20),
        servers: Default::default(),
        candidate_types: Default::default(),
    };
    let controlling = side(true, a, b);
    let controlled = side(false, b, a);
    let t = std::thread::spawn(move || run(&controlled));
    let r1 = run(&controlling);
    let r2 = t.join().expect("controlled thread");
    println!("controlling: {r1:?}, controlled: {r2:?}");
    if r1.is_err() || r2.is_err() {
        std::process::exit(1);
    }
}
