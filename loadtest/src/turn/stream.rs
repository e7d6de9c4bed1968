//! `icering-loadtest turn --transport tcp|tls`: the same relaying load with each
//! allocation on its own TCP connection to the server (RFC 8656 §3.1), through TLS for
//! `tls` (`turns:`). ChannelData on a stream is padded to 4 bytes (§12.5).
//!
//! Setup runs in the driver thread before the common start, one allocation at a time on
//! a blocking stream (TLS handshake, then the requests of `setup_requests`). For the load
//! the streams move into one icering `StreamSet` whose fd the driver's io backend watches
//! beside its echo peer socket, as a shard does: a refill of many windows is one write
//! per connection (one TLS record batch), the echoes one batched flush. At the end the
//! connections close, which ends their allocations (§3.1): no Refresh is sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use icering::io::{self, Backend, BackendKind, Lend, RecvMeta, SendQueue, StreamId, StreamSet};
use icering::stun::stream::frame_len;
use icering::stun::{Message, Method};

use super::{
    Args, Attrs, Counts, Creds, Driven, Phase, Transport, Window, build, driver_backend, settle,
    setup_requests, tid, write_request,
};

/// The TLS client configuration (`--tls-ca`) and the name the server's certificate must
/// carry (`--tls-name`, else the target's IP).
pub(super) struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    pub(super) fn new(args: &Args) -> Result<Option<Self>, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        if args.transport != Transport::Tls {
            return Ok(None);
        }
        let path = args
            .tls_ca
            .as_ref()
            .ok_or("--transport tls needs --tls-ca FILE (the CA of the server's certificate)")?;
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.map_err(|e| format!("{}: {e}", path.display()))?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = match &args.tls_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|e| format!("--tls-name {n}: {e}"))?,
            None => args.target.ip().into(),
        };
        Ok(Some(Tls {
            config: Arc::new(config),
            name,
        }))
    }
}

/// One allocation's connection in the load: its stream, TLS session, window and the
/// bytes of a frame not yet complete.
struct Flow {
    win: Window,
    stream: StreamId,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Plaintext read and not yet cut into frames.
    rx: Vec<u8>,
    /// The TLS session failed or the frames went wrong: no more data on it.
    broken: bool,
}

/// A blocking stream with its TLS session, if any, for the setup.
enum Setup {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Setup {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Setup::Tcp(s) => s,
            Setup::Tls(s) => s.as_mut(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A request on a blocking stream, signed and retried after a 401/438 (`settle`); the
/// answer is the frame with its transaction id (other frames are skipped).
#[allow(clippy::too_many_arguments)]
fn stream_request(
    io: &mut dyn ReadWrite,
    rx: &mut Vec<u8>,
    creds: &Creds,
    auth: &mut Option<(String, String)>,
    method: Method,
    seq: &mut u64,
    attrs: Attrs<'_>,
) -> Result<Vec<u8>, String> {
    let e = |e: std::io::Error| format!("{method:?}: {e}");
    for _ in 0..3 {
        *seq += 1;
        let t = tid(*seq);
        let mut buf = [0u8; 1024];
        let n = write_request(&mut buf, method, &t, creds, auth.as_ref(), attrs)?;
        io.write_all(&buf[..n]).map_err(e)?;
        io.flush().map_err(e)?;
        let answer = loop {
            match frame_len(rx).map_err(|err| format!("{method:?}: {err}"))? {
                Some(len) => {
                    let frame: Vec<u8> = rx.drain(..len).collect();
                    if Message::parse(&frame).is_ok_and(|m| m.transaction_id() == &t) {
                        break frame;
                    }
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let k = io.read(&mut chunk).map_err(e)?;
                    if k == 0 {
                        return Err(format!("{method:?}: the server closed the connection"));
                    }
                    rx.extend_from_slice(&chunk[..k]);
                }
            }
        };
        if settle(&answer, auth, method)? {
            return Ok(answer);
        }
    }
    Err(format!("{method:?}: no success after retries"))
}

/// Connects and sets up allocation `id` on its own connection.
fn connect(
    args: &Args,
    tls: Option<&Tls>,
    creds: &Creds,
    peer: SocketAddr,
    id: u32,
) -> Result<(TcpStream, Option<Box<rustls::ClientConnection>>), String> {
    let sock = TcpStream::connect(args.target).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut io = match tls {
        None => Setup::Tcp(sock),
        Some(t) => {
            let conn = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                .map_err(|e| format!("TLS: {e}"))?;
            Setup::Tls(Box::new(rustls::StreamOwned::new(conn, sock)))
        }
    };
    let (mut rx, mut auth) = (Vec::new(), None);
    let mut seq = u64::from(id) << 32;
    setup_requests(args.indications, peer, &mut |method, attrs| {
        stream_request(io.io(), &mut rx, creds, &mut auth, method, &mut seq, attrs)
    })?;
    Ok(match io {
        Setup::Tcp(s) => (s, None),
        Setup::Tls(s) => {
            let rustls::StreamOwned { mut conn, sock } = *s;
            // No limit of rustls' own (64 KiB by default): a refill larger than that
            // would be cut in the middle of a frame.
            conn.set_buffer_limit(None);
            (sock, Some(Box::new(conn)))
        }
    })
}

/// The connections of one driver, in its stream set, and its echo peer in its backend.
struct Prepared {
    backend: Backend,
    set: StreamSet,
    flows: Vec<Flow>,
    /// Stream id → flow index.
    by_stream: Vec<u32>,
    peer: io::SocketId,
}

fn prepare(
    args: &Args,
    kind: BackendKind,
    tls: Option<&Tls>,
    creds: &Creds,
    peer: UdpSocket,
    ids: Range<u32>,
) -> Result<Prepared, String> {
    let e = |e: io::IoError| e.to_string();
    let paddr = peer.local_addr().map_err(|e| e.to_string())?;
    let mut backend = driver_backend(args, kind, ids.len())?;
    let peer = backend.add_socket(peer).map_err(e)?;
    let mut set =
        StreamSet::new(ids.len().max(1), 4 << 20, 64 * 1024).map_err(|e| e.to_string())?;
    backend.watch_fd(set.fd()).map_err(e)?;
    let (mut flows, mut by_stream) = (Vec::with_capacity(ids.len()), Vec::new());
    let now = Instant::now();
    for id in ids {
        let (sock, tls) = connect(args, tls, creds, paddr, id)
            .map_err(|err| format!("allocation {id}: {err}"))?;
        let stream = set.adopt(sock).map_err(|e| e.to_string())?;
        let i = stream.0 as usize;
        if by_stream.len() <= i {
            by_stream.resize(i + 1, u32::MAX);
        }
        by_stream[i] = flows.len() as u32;
        flows.push(Flow {
            win: Window::new(args, id, now),
            stream,
            tls,
            rx: Vec::new(),
            broken: false,
        });
    }
    Ok(Prepared {
        backend,
        set,
        flows,
        by_stream,
        peer,
    })
}

/// Sets up this driver's allocations `ids` (each on its own connection), runs the load
/// from the common start for `--duration`, waits for what is in flight, then closes the
/// connections (ending the allocations).
pub(super) fn drive(
    args: &Args,
    kind: BackendKind,
    tls: Option<&Tls>,
    creds: &Creds,
    peer: UdpSocket,
    ids: Range<u32>,
    phase: &Phase,
) -> Result<Driven, String> {
    let prepare = || prepare(args, kind, tls, creds, peer, ids);
    // Closing the connections (dropping the prepared state) ends the allocations.
    let (_, driven) = phase.drive(args, prepare, |p, until| load(args, p, until))?;
    Ok(driven)
}

/// Appends `frame` zero-padded to a multiple of 4 (RFC 8656 §12.5).
fn push_padded(tx: &mut Vec<u8>, frame: &[u8]) {
    tx.extend_from_slice(frame);
    tx.resize(tx.len() + (4 - frame.len() % 4) % 4, 0);
}

/// The measured load of one driver.
fn load(args: &Args, p: &mut Prepared, until: Instant) -> Result<Driven, String> {
    let Prepared {
        backend,
        set,
        flows,
        by_stream,
        peer,
    } = p;
    let peer = *peer;
    let mut c = Counts::new(args, until, flows.iter().map(|f| &f.win));
    let mut now = Instant::now();
    let (mut tx, mut records, mut frame) = (Vec::new(), Vec::new(), [0u8; 2048]);
    let mut plain = [0u8; 16 * 1024];
    let paddr = backend.local_addr(peer);
    while !c.over(now) {
        // Refill the windows that may have room: one write per connection.
        if c.refilling() {
            for k in std::mem::take(&mut c.ready) {
                let f = &mut flows[k as usize];
                c.expire(&mut f.win, now);
                tx.clear();
                while !f.broken && c.has_room(&f.win) {
                    let (id, seq) = (f.win.id, f.win.out.next);
                    let n = build(args.indications, paddr, id, seq, args.size, &mut frame);
                    push_padded(&mut tx, &frame[..n]);
                    c.sent(&mut f.win, now);
                }
                f.win.ready = false;
                if tx.is_empty() {
                    continue;
                }
                let sent = match f.tls.as_mut() {
                    None => set.send(f.stream, &[&tx]),
                    Some(conn) => {
                        records.clear();
                        let sealed = conn.writer().write_all(&tx).is_ok();
                        while conn.wants_write() && conn.write_tls(&mut records).is_ok() {}
                        sealed && set.send(f.stream, &[&records])
                    }
                };
                if !sent {
                    c.t.send_failed += 1;
                    f.broken = true;
                }
            }
        }
        // Flush the echoes, wait for the peer's datagrams or the streams' bytes.
        backend
            .poll(
                Some(Duration::from_millis(1)),
                &mut |sq: &mut SendQueue, m: RecvMeta, data: &[u8], _: &mut Lend| {
                    if m.sock == peer && sq.send_to(peer, m.from, data).is_err() {
                        c.echo_dropped += 1;
                    }
                },
            )
            .map_err(|e| e.to_string())?;
        if backend.take_watch_ready() {
            set.poll(&mut |_, id, _, bytes| {
                let Some(&k) = by_stream.get(id.0 as usize).filter(|&&k| k != u32::MAX) else {
                    c.stray += 1;
                    return;
                };
                let f = &mut flows[k as usize];
                if f.broken {
                    return;
                }
                match f.tls.as_mut() {
                    None => f.rx.extend_from_slice(bytes),
                    Some(conn) => {
                        let mut rest = bytes;
                        while !rest.is_empty() {
                            let ok = conn.read_tls(&mut rest).is_ok_and(|n| n > 0)
                                && conn.process_new_packets().is_ok();
                            if !ok {
                                f.broken = true;
                                c.t.invalid += 1;
                                return;
                            }
                            while let Ok(n) = conn.reader().read(&mut plain) {
                                if n == 0 {
                                    break;
                                }
                                f.rx.extend_from_slice(&plain[..n]);
                            }
                        }
                    }
                }
                let at = Instant::now();
                let mut used = 0;
                loop {
                    let n = match frame_len(&f.rx[used..]) {
                        Ok(Some(n)) => n,
                        Ok(None) => break,
                        Err(_) => {
                            f.broken = true;
                            c.t.invalid += 1;
                            break;
                        }
                    };
                    c.came_back(k, &mut f.win, &f.rx[used..used + n], false, at);
                    used += n;
                }
                f.rx.drain(..used);
            });
            let mut closed = Vec::new();
            set.take_closed(&mut closed);
            for (id, _) in closed {
                if let Some(&k) = by_stream.get(id.0 as usize).filter(|&&k| k != u32::MAX) {
                    flows[k as usize].broken = true;
                }
            }
        }
        now = Instant::now();
        c.sweep(flows.iter_mut().map(|f| &mut f.win), now);
    }
    let errors = backend.stats().send_errors;
    Ok(c.finish(flows.iter_mut().map(|f| &mut f.win), now, errors))
}
