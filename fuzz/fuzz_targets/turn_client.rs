#![no_main]
//! The sans-IO TURN client against our sans-IO server, with the fuzzer choosing, for
//! every datagram the server sends back, whether it arrives intact, is dropped,
//! truncated, has a byte changed, or is replaced by fuzzer bytes — and between
//! exchanges, which client action runs (permission, channel, data, time passing, close).
//! Nothing may panic; an allocated client always knows its relayed address.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use icering::turn::client::{Client, ClientConfig, Handled};
use icering::turn::server::{
    OpenError, Outcome, PortWish, RelayPorts, Server, ServerConfig, Sock, TurnConfig,
};

struct Ports(u32);

impl RelayPorts for Ports {
    fn open(&mut self, ip: IpAddr, _: PortWish) -> Result<(Sock, SocketAddr), OpenError> {
        self.0 += 1;
        Ok((Sock(100 + self.0), SocketAddr::new(ip, 50000 + self.0 as u16)))
    }
    fn close(&mut self, _: Sock) {}
    fn claim(&mut self, _: SocketAddr) -> Result<(Sock, SocketAddr), OpenError> {
        Err(OpenError::Exhausted)
    }
    fn release(&mut self, _: SocketAddr) {}
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut cfg = TurnConfig::new(t0, 1_700_000_000, [5; 32]);
    cfg.users = vec![("alice".into(), "secret".into())];
    cfg.relay_ips = vec!["192.0.2.1".parse().unwrap()];
    cfg.policy.allow_private = true;
    let mut server = Server::new(ServerConfig {
        software: String::new(),
        turn: Some(cfg),
    });
    let mut ports = Ports(0);
    let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let local: SocketAddr = "198.51.100.7:5000".parse().unwrap();
    let peers: [SocketAddr; 3] = [
        "10.1.2.3:7000".parse().unwrap(),
        "10.1.2.4:7001".parse().unwrap(),
        "[fd00::1]:7002".parse().unwrap(),
    ];
    let mut ccfg = ClientConfig::new(server_addr, local, "alice", "secret");
    ccfg.seed = 7;
    let mut client = Client::new(ccfg, t0);
    let mut buf = [0u8; 1500];
    let mut out = [0u8; 2048];
    for _round in 0..64 {
        // Client → server, server → client through the fuzzer's filter.
        for _ in 0..16 {
            if client.poll_timeout().is_some_and(|t| t <= now) {
                client.handle_timeout(now);
            }
            let Some(t) = client.poll_transmit(now, &mut buf) else {
                break;
            };
            let answer = match server.handle(now, Sock(0), local, &buf[..t.size], &mut out, &mut ports)
            {
                Outcome::Reply(n) => n,
                Outcome::Send { .. } | Outcome::Later | Outcome::Drop(_) => continue,
            };
            let mut msg = out[..answer].to_vec();
            match input.byte().unwrap_or(0) % 6 {
                0 | 1 => {}
                2 => continue, // lost
                3 => {
                    let at = usize::from(input.byte().unwrap_or(0)) % (msg.len() + 1);
                    msg.truncate(at);
                }
                4 => {
                    if !msg.is_empty() {
                        let at = usize::from(input.byte().unwrap_or(0)) % msg.len();
                        msg[at] ^= input.byte().unwrap_or(1) | 1;
                    }
                }
                _ => {
                    let n = usize::from(input.byte().unwrap_or(0));
                    msg = input.bytes(n).to_vec();
                }
            }
            let _ = client.handle_packet(now, server_addr, &msg);
        }
        while client.poll_event().is_some() {}
        if client.is_allocated() {
            assert!(client.relayed().is_some());
        }
        // A client action chosen by the fuzzer.
        let Some(op) = input.byte() else {
            break;
        };
        let peer = peers[usize::from(op >> 4) % peers.len()];
        match op % 7 {
            0 => client.create_permission(peer, now),
            1 => {
                let _ = client.bind_channel(peer, now);
            }
            2 => {
                let payload = input.bytes(usize::from(op >> 3)).to_vec();
                if let Ok(Some(t)) = client.send_to(peer, &payload, &mut buf, now) {
                    assert!(t.size <= buf.len());
                    assert_eq!(t.destination, server_addr);
                }
            }
            3 => now += Duration::from_millis(u64::from(op) * 97),
            4 => now += Duration::from_secs(u64::from(op) * 7),
            5 => {
                // Raw bytes from a stranger and from the server.
                let n = usize::from(input.byte().unwrap_or(0));
                let junk = input.bytes(n).to_vec();
                let stranger: SocketAddr = "203.0.113.9:1".parse().unwrap();
                assert!(matches!(
                    client.handle_packet(now, stranger, &junk),
                    Handled::NotOurs
                ));
                let _ = client.handle_packet(now, server_addr, &junk);
            }
            _ => client.close(now),
        }
    }
});
