//! The session API serves many keep-alive connections at once: a signalling tier opens a
//! pool of connections in a burst and keeps them. With a thread per connection from a
//! pool that under-counts its idle threads (tiny_http 0.12, which the API used before),
//! every connection beyond the first four got no answer until another closed: about 28 of
//! 32 lanes' first `POST /sessions` hung in the ICE load test. Here 64 connections are
//! opened before any request, each sends a `POST /sessions` on its kept connection, and
//! every one must be answered, then answered again on the same connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use icering::serve::AdminServer;
use icering::{Config, Engine};

/// Reads one response (status line, headers, Content-Length body); its status.
fn response(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line)
        .expect("status line (no answer in 30 s?)");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    status
}

/// Starts a non-blocking connect to `at` (completed by the kernel on loopback).
fn burst_connect(at: SocketAddr) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    match s.connect(&at.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect: {e}"),
    }
    s
}

#[test]
fn a_burst_of_keep_alive_connections_is_served() {
    let mut c = Config::embedded();
    c.server.listen.clear();
    c.server.shards = 1;
    c.ice.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let engine = Engine::start(&c).unwrap();
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), engine.clone(), true).unwrap();
    let at = admin.local_addr();
    // All 64 connects in flight at once (non-blocking), as a client pool opens them: the
    // server sees them as one burst in its accept queue.
    let socks: Vec<Socket> = (0..64).map(|_| burst_connect(at)).collect();
    let mut conns: Vec<BufReader<TcpStream>> = socks
        .into_iter()
        .map(|s| {
            s.set_nonblocking(false).unwrap();
            let s: TcpStream = s.into();
            // A bound on a hang, not a timing assertion: an answer takes milliseconds.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            BufReader::new(s)
        })
        .collect();
    let body = r#"{"data":"echo"}"#;
    let req = format!(
        "POST /sessions HTTP/1.1\r\nHost: {at}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for round in 0..2 {
        for c in conns.iter_mut() {
            c.get_mut().write_all(req.as_bytes()).unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(response(c), 201, "connection {i}, round {round}");
        }
    }
    assert_eq!(admin.sessions(), 128);
    admin.shutdown();
    engine.shutdown().unwrap();
}
