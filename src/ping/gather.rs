//! Server-reflexive and relayed gathering for `icering ping`: one [`BindingClient`] per
//! `--stun` URL and one TURN [`Client`] per `--turn` URL, all on the ping's UDP socket
//! (TURN over TCP or TLS on its own stream), driven with the same clock as the agent.
//!
//! Relaying is transparent to the agent: a transmit whose source is a relayed address is
//! wrapped by that TURN client (Send indication, ChannelData once bound), and data the
//! client unwraps is fed to the agent as arriving on the relayed address from the peer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ice::{Candidate, IceUrl};
use crate::net::Protocol;
use crate::shard::{TlsLink, TlsTarget};
use crate::turn::client::stream::StreamDecoder;
use crate::turn::client::{
    BindingClient, BindingEvent, Client, ClientConfig, ClientEvent, Handled, Retransmit,
    bind_selected, permit_everywhere,
};

pub use crate::api::{CandidateTypes, TlsRoots};

/// TURN credentials and the servers to use.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    /// `stun:` URLs (a `turn:` URL here is used for its Binding service).
    pub stun: Vec<IceUrl>,
    /// `turn:` URLs.
    pub turn: Vec<IceUrl>,
    /// Long-term credential user for every TURN server.
    pub user: String,
    /// Password for every TURN server.
    pub pass: String,
    /// Trust anchors for `turns:` servers.
    pub tls_roots: TlsRoots,
}

/// Resolves a URL's host to an address of `local`'s family.
fn resolve(url: &IceUrl, local: SocketAddr) -> Result<SocketAddr, String> {
    url.host_port()
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve: {e}"))?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| format!("{url}: no address of the socket's family"))
}

/// A TURN-over-TCP (or TLS) connection: the write half here, a reader thread cutting
/// frames. With TLS the reader decrypts through the shared session and never writes: only
/// this thread seals and writes records (the handshake's answers when it polls the link),
/// so records reach the stream in the order they were sealed and no lock is held across
/// a blocking write.
struct TcpLink {
    stream: TcpStream,
    tls: Option<Arc<Mutex<TlsLink>>>,
    frames: Receiver<io::Result<Vec<u8>>>,
}

/// Encrypts `frames` (may be empty: the handshake's own records) and writes the records.
fn write_tls(tls: &Mutex<TlsLink>, mut stream: &TcpStream, frames: &[u8]) -> io::Result<()> {
    let mut out = Vec::new();
    tls.lock()
        .unwrap_or_else(|e| e.into_inner())
        .output(frames, &mut out);
    if out.is_empty() {
        return Ok(());
    }
    stream.write_all(&out)
}

impl TcpLink {
    fn connect(server: SocketAddr, tls: Option<&TlsTarget>) -> io::Result<(TcpLink, SocketAddr)> {
        let tls = match tls.map(TlsLink::new).transpose() {
            Ok(t) => t.map(|t| Arc::new(Mutex::new(t))),
            Err(e) => return Err(io::Error::other(e)),
        };
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        if let Some(t) = &tls {
            write_tls(t, &stream, &[])?; // the ClientHello
        }
        let mut reader = stream.try_clone()?;
        let session = tls.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("ping-turn-tcp".into())
            .spawn(move || {
                let mut dec = StreamDecoder::default();
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => {
                            let _ = tx.send(Err(io::ErrorKind::UnexpectedEof.into()));
                            return;
                        }
                        Ok(n) => {
                            if let Some(t) = &session {
                                let fed = t
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .input(&buf[..n], &mut dec);
                                if let Err(e) = fed {
                                    let _ = tx.send(Err(io::Error::other(e)));
                                    return;
                                }
                            } else {
                                dec.push(&buf[..n]);
                            }
                            while let Some(f) = dec.next_frame() {
                                let msg = f
                                    .map(<[u8]>::to_vec)
                                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
                                let bad = msg.is_err();
                                if tx.send(msg).is_err() || bad {
                                    return;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        let link = TcpLink {
            stream,
            tls,
            frames: rx,
        };
        Ok((link, local))
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &self.tls {
            Some(t) => write_tls(t, &self.stream, bytes),
            None => self.stream.write_all(bytes),
        }
    }
}

/// One TURN server: its client and its transport.
struct Relay {
    url: IceUrl,
    client: Client,
    tcp: Option<TcpLink>,
    done: bool,
}

/// Data relayed from a peer: deliver to the agent as `(peer → relayed)`.
#[derive(Debug)]
pub struct Relayed {
    /// The peer.
    pub peer: SocketAddr,
    /// The relayed address it was sent to.
    pub relayed: SocketAddr,
    /// Payload.
    pub data: Vec<u8>,
}

/// All gatherers of one ping run.
pub struct Gatherer {
    /// A handle on the ping's socket, for the deallocation on drop.
    socket: Option<UdpSocket>,
    types: CandidateTypes,
    local: SocketAddr,
    bindings: Vec<(IceUrl, BindingClient)>,
    relays: Vec<Relay>,
    complete: bool,
}

impl std::fmt::Debug for Gatherer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatherer")
            .field("bindings", &self.bindings.len())
            .field("relays", &self.relays.len())
            .finish()
    }
}

fn say(msg: std::fmt::Arguments<'_>) {
    println!("{msg}");
}

impl Gatherer {
    /// Starts a Binding transaction per STUN URL and an allocation per TURN URL. Servers
    /// that cannot be resolved or connected are reported and skipped.
    pub fn start(
        socket: &UdpSocket,
        servers: &Servers,
        types: CandidateTypes,
        local: SocketAddr,
        seed: u64,
        now: Instant,
    ) -> Gatherer {
        let mut g = Gatherer {
            socket: socket.try_clone().ok(),
            types,
            local,
            bindings: Vec::new(),
            relays: Vec::new(),
            complete: false,
        };
        if types.srflx {
            for (i, url) in servers.stun.iter().enumerate() {
                if url.scheme.is_secure() || url.transport == Protocol::Tcp {
                    say(format_args!(
                        "stun {url}: skipped: only STUN over UDP is supported"
                    ));
                    continue;
                }
                match resolve(url, local) {
                    Ok(server) => {
                        let b = BindingClient::new(
                            server,
                            local,
                            Retransmit::default(),
                            seed ^ (i as u64 + 1),
                            now,
                        );
                        g.bindings.push((url.clone(), b));
                    }
                    Err(e) => say(format_args!("stun {url}: skipped: {e}")),
                }
            }
        }
        if types.relay {
            for (i, url) in servers.turn.iter().enumerate() {
                match Self::relay(url, servers, local, seed ^ ((i as u64 + 1) << 32), now) {
                    Ok(r) => g.relays.push(r),
                    Err(e) => say(format_args!("turn {url}: skipped: {e}")),
                }
            }
        }
        g
    }

    fn relay(
        url: &IceUrl,
        servers: &Servers,
        local: SocketAddr,
        seed: u64,
        now: Instant,
    ) -> Result<Relay, String> {
        let tls = if url.scheme.is_secure() {
            let config = servers.tls_roots.client_config()?;
            Some(TlsTarget::new(config, &url.host)?)
        } else {
            None
        };
        let server = resolve(url, local)?;
        let (tcp, client_local) = match url.transport {
            Protocol::Udp => (None, local),
            Protocol::Tcp => {
                let (link, l) = TcpLink::connect(server, tls.as_ref())
                    .map_err(|e| format!("cannot connect over TCP to {server}: {e}"))?;
                (Some(link), l)
            }
        };
        let mut cfg = ClientConfig::new(server, client_local, &servers.user, &servers.pass);
        cfg.transport = url.transport;
        cfg.seed = seed;
        Ok(Relay {
            url: url.clone(),
            client: Client::new(cfg, now),
            tcp,
            done: false,
        })
    }

    /// Whether every server has answered or given up.
    pub fn is_complete(&self) -> bool {
        self.bindings.iter().all(|(_, b)| b.is_done()) && self.relays.iter().all(|r| r.done)
    }

    /// Whether TURN over TCP is in use (the runtime then polls its frames often).
    pub fn has_tcp(&self) -> bool {
        self.relays.iter().any(|r| r.tcp.is_some())
    }

    /// Earliest timer of any gatherer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let b = self.bindings.iter().filter_map(|(_, b)| b.poll_timeout());
        let r = self.relays.iter().filter_map(|r| r.client.poll_timeout());
        b.chain(r).min()
    }

    /// Whether `addr` is one of our relayed addresses.
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relays.iter().any(|r| r.client.relayed() == Some(addr))
    }

    /// Runs timers, sends what is due, takes events: new candidates go to `add` (already
    /// filtered by type), and the end of gathering is reported once through the returned
    /// flag.
    pub fn drive(
        &mut self,
        socket: &UdpSocket,
        now: Instant,
        buf: &mut [u8],
        add: &mut dyn FnMut(Candidate),
    ) -> bool {
        for (url, b) in &mut self.bindings {
            b.handle_timeout(now);
            while let Some(t) = b.poll_transmit(now, buf) {
                let _ = socket.send_to(&buf[..t.size], t.destination);
            }
            match b.poll_event() {
                Some(BindingEvent::Mapped(a)) if a == self.local && self.types.host => {
                    say(format_args!(
                        "stun {url}: mapped address {a} equals the host candidate; dropped"
                    ));
                }
                Some(BindingEvent::Mapped(a)) => {
                    say(format_args!("stun {url}: mapped address {a}"));
                    add(Candidate::server_reflexive(a, self.local));
                }
                Some(BindingEvent::Failed(e)) => say(format_args!("stun {url}: {e}")),
                None => {}
            }
        }
        for r in &mut self.relays {
            if r.client.poll_timeout().is_some_and(|t| t <= now) {
                r.client.handle_timeout(now);
            }
            while let Some(t) = r.client.poll_transmit(now, buf) {
                send(socket, r.tcp.as_mut(), t.destination, &buf[..t.size]);
            }
            while let Some(ev) = r.client.poll_event() {
                match ev {
                    ClientEvent::Allocated {
                        relayed, mapped, ..
                    } => {
                        say(format_args!(
                            "turn {}: relayed address {relayed} (mapped {mapped})",
                            r.url
                        ));
                        r.done = true;
                        add(Candidate::relayed(relayed, mapped));
                    }
                    ClientEvent::Failed(e) => {
                        say(format_args!("turn {}: {e}", r.url));
                        r.done = true;
                    }
                    ClientEvent::RequestFailed(e) => say(format_args!("turn {}: {e}", r.url)),
                    ClientEvent::ChannelBound { peer, channel } => say(format_args!(
                        "turn {}: channel 0x{channel:04x} bound to {peer}",
                        r.url
                    )),
                    ClientEvent::PermissionCreated(_)
                    | ClientEvent::Refreshed { .. }
                    | ClientEvent::Closed => {}
                }
            }
        }
        if !self.complete && self.is_complete() {
            self.complete = true;
            return true;
        }
        false
    }

    /// A remote candidate became known: every relay installs a permission for it.
    pub fn add_remote(&mut self, remote: SocketAddr, now: Instant) {
        permit_everywhere(self.relays.iter_mut().map(|r| &mut r.client), remote, now);
    }

    /// The selected pair uses `relayed`: bind a channel to `remote` on that relay.
    pub fn selected(&mut self, relayed: SocketAddr, remote: SocketAddr, now: Instant) {
        let relays = self.relays.iter_mut().map(|r| &mut r.client);
        bind_selected(relays, relayed, remote, now);
    }

    /// Sends `data` from the relayed address `relayed` to `peer` through its TURN client.
    /// Returns false if `relayed` is not ours.
    pub fn send_relayed(
        &mut self,
        socket: &UdpSocket,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        buf: &mut [u8],
        now: Instant,
    ) -> bool {
        let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.client.relayed() == Some(relayed))
        else {
            return false;
        };
        match r.client.send_to(peer, data, buf, now) {
            Ok(Some(t)) => send(socket, r.tcp.as_mut(), t.destination, &buf[..t.size]),
            Ok(None) => {}
            Err(e) => say(format_args!("turn {}: cannot send to {peer}: {e}", r.url)),
        }
        true
    }

    /// Offers a UDP datagram to the gatherers. `Ok(true)`: consumed; relayed data is
    /// pushed to `out`.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<Relayed>,
    ) -> bool {
        for (_, b) in &mut self.bindings {
            if b.handle_packet(from, data) {
                return true;
            }
        }
        for r in self.relays.iter_mut().filter(|r| r.tcp.is_none()) {
            if consume(r, now, from, data, out) {
                return true;
            }
        }
        false
    }

    /// Writes the TLS sessions' handshake records, then drains frames received on TURN TCP
    /// connections.
    pub fn poll_tcp(&mut self, now: Instant, out: &mut Vec<Relayed>) {
        for r in &mut self.relays {
            if let Some(Err(e)) = r.tcp.as_ref().and_then(|l| {
                let tls = l.tls.as_ref()?;
                Some(write_tls(tls, &l.stream, &[]))
            }) {
                say(format_args!("turn {}: TLS write failed: {e}", r.url));
                r.tcp = None;
                r.done = true;
                continue;
            }
            while let Some(link) = &r.tcp {
                match link.frames.try_recv() {
                    Ok(Ok(frame)) => {
                        let server = r.client.server();
                        consume(r, now, server, &frame, out);
                    }
                    Ok(Err(e)) => {
                        say(format_args!("turn {}: TCP connection lost: {e}", r.url));
                        r.tcp = None;
                        r.done = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        r.tcp = None;
                        break;
                    }
                }
            }
        }
    }

    /// Deletes every allocation (Refresh with lifetime 0), without waiting for answers.
    /// Also done on drop, so allocations are freed however the run ends.
    pub fn close(&mut self, socket: &UdpSocket, now: Instant, buf: &mut [u8]) {
        for r in &mut self.relays {
            if r.client.is_finished() {
                continue;
            }
            r.client.close(now);
            while let Some(t) = r.client.poll_transmit(now, buf) {
                send(socket, r.tcp.as_mut(), t.destination, &buf[..t.size]);
            }
        }
    }

    /// Candidate types the agent gets.
    pub fn types(&self) -> CandidateTypes {
        self.types
    }
}

impl Drop for Gatherer {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            let mut buf = [0u8; 512];
            self.close(&socket, Instant::now(), &mut buf);
        }
    }
}

fn consume(
    r: &mut Relay,
    now: Instant,
    from: SocketAddr,
    data: &[u8],
    out: &mut Vec<Relayed>,
) -> bool {
    match r.client.handle_packet(now, from, data) {
        Handled::Data { peer, data } => {
            if let Some(relayed) = r.client.relayed() {
                out.push(Relayed {
                    peer,
                    relayed,
                    data: data.to_vec(),
                });
            }
            true
        }
        Handled::Consumed => true,
        Handled::NotOurs => false,
    }
}

fn send(socket: &UdpSocket, tcp: Option<&mut TcpLink>, to: SocketAddr, bytes: &[u8]) {
    let r = match tcp {
        Some(link) => link.send(bytes),
        None => socket.send_to(bytes, to).map(|_| ()),
    };
    if let Err(e) = r {
        say(format_args!("send to TURN server {to} failed: {e}"));
    }
}
