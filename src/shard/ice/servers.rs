//! Server-reflexive and relayed candidates of one hosted agent (RFC 8445 §5.1.1.2,
//! RFC 8656): a [`BindingClient`] per STUN server per dedicated socket of the server's
//! family, and a TURN [`Client`] per TURN server on the first such socket, all driven by
//! the shard like the agent itself (same timer entry, same flush).
//!
//! Relaying is transparent to the agent (as in `icering ping`): a transmit whose source is
//! a relayed address is wrapped by that relay's client (Send indication, then ChannelData
//! once the selected pair's channel is bound), and data the client unwraps is fed to the
//! agent as arriving from the peer on the relayed address.
//!
//! TURN over TCP (`turn:...?transport=tcp`, RFC 8656 §3.1): the relay's client runs with
//! `Protocol::Tcp` (no retransmissions, padded ChannelData) over a stream the shard's ICE
//! [`StreamSet`] connects. Its transmits are collected in the relay's `tx` and written to
//! the stream at the end of the turn ([`Servers::flush_streams`]); received bytes are cut
//! into frames by a [`StreamDecoder`] and fed to the client as from the server. A closed
//! stream ends the relay (a `GatherError` while it had no allocation yet).
//!
//! TURN over TLS (`turns:`): the same, with a [`TlsLink`] between the client's frames
//! and the stream (the handshake runs as the first bytes flow).

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use crate::api::{AgentEvent, CandidateTypes};
use crate::ice::{Candidate, IceAgent, IceUrl};
use crate::io::{SendQueue, SocketId, StreamId, StreamSet};
use crate::net::Protocol;
use crate::turn::client::stream::StreamDecoder;
use crate::turn::client::{
    BindingClient, BindingEvent, Client, ClientConfig, ClientEvent, Handled, Retransmit,
    bind_selected, permit_everywhere,
};

use crate::api::LinkTx;
use crate::shard::tls::{TlsLink, TlsTarget};

/// A checked STUN/TURN URL with its credentials (an `AgentOptions::urls` entry).
#[derive(Debug, Clone)]
pub(crate) struct UrlSpec {
    pub url: IceUrl,
    pub username: String,
    pub password: String,
    /// `turns:`: the trust anchors and the name the certificate must carry.
    pub tls: Option<TlsTarget>,
}

/// One STUN/TURN server as the application handle resolved it (DNS runs on the caller's
/// thread, never on the shard).
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    pub server: UrlSpec,
    /// Resolved addresses, or why resolution failed.
    pub addrs: Result<Vec<SocketAddr>, String>,
}

#[derive(Debug)]
struct Binding {
    url: IceUrl,
    sock: SocketId,
    base: SocketAddr,
    client: BindingClient,
    /// On a mux socket: its answer is learned for the shard's other agents.
    shared: bool,
}

#[derive(Debug)]
struct Relay {
    url: IceUrl,
    sock: SocketId,
    client: Client,
    done: bool,
    /// TURN over TCP: the stream to the server (`None` once closed).
    tcp: Option<TcpLink>,
}

/// The stream of a TURN-over-TCP (or TLS) relay.
#[derive(Debug)]
struct TcpLink {
    stream: StreamId,
    /// Frames cut from the bytes received.
    decoder: StreamDecoder,
    /// Frames to write to the stream at the end of the turn.
    tx: Vec<u8>,
    /// `turns:`: the TLS session the frames go through (boxed: ~1 KB, rare).
    tls: Option<Box<TlsLink>>,
    /// TLS records to write (reused).
    records: Vec<u8>,
}

/// Where a wrapped relay transmit goes.
#[derive(Debug)]
pub(crate) enum Wrapped {
    /// Commit the slot: (socket, server, size).
    Datagram(SocketId, SocketAddr, usize),
    /// Queued for the relay's TCP stream (the slot stays free).
    Stream,
}

/// What a datagram from a server was.
#[derive(Debug)]
pub(crate) enum FromServer<'a> {
    /// Not from one of our servers (or not an answer to us): the agent's.
    NotOurs,
    /// A response or a message consumed by a client.
    Consumed,
    /// Relayed data from `peer` to our relayed address `relayed`.
    Data {
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &'a [u8],
    },
}

/// The STUN/TURN clients of one agent.
#[derive(Debug)]
pub(crate) struct Servers {
    bindings: Vec<Binding>,
    relays: Vec<Relay>,
    /// Duplicates of the sockets relays use, to delete the allocations after the io
    /// backend closed its copy (close).
    ctl: Vec<(SocketId, UdpSocket)>,
    types: CandidateTypes,
    /// Host candidate addresses (a srflx equal to one of them is redundant).
    hosts: Vec<SocketAddr>,
    /// Resolution and server failures to report as events (drained by `events`).
    errors: Vec<(String, String)>,
    /// End of gathering is held back until every client is done.
    end_pending: bool,
    /// Mapped addresses the shard already knew (mux sockets), as (mapped, base): added
    /// as srflx candidates by the first `events`.
    known: Vec<(SocketAddr, SocketAddr)>,
    /// Answers on mux sockets as (socket, server, mapped), for the shard's cache.
    learned: Vec<(SocketId, SocketAddr, SocketAddr)>,
    /// Seed of the clients' transaction ids, and how many clients drew from it.
    seed: u64,
    drawn: u64,
    /// Continual gathering: the servers, asked again from every new local address.
    specs: Vec<ServerSpec>,
}

impl Servers {
    /// Starts the clients. `socks` are the agent's dedicated sockets as (base, id, a
    /// duplicate of the socket); `mux` the shared sockets it has host candidates on, as
    /// (base, id). A mux socket gets Binding clients only (an allocation belongs to a
    /// 5-tuple, which the socket's other agents share), with transaction ids starting
    /// with the agent's `tid_prefix` so that the demultiplexer routes the answers here,
    /// unless `known` already has the socket's mapped address for that server.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        specs: &[ServerSpec],
        mut socks: Vec<(SocketAddr, SocketId, Option<UdpSocket>)>,
        mux: Vec<(SocketAddr, SocketId)>,
        tid_prefix: [u8; 6],
        known: &dyn Fn(SocketId, SocketAddr) -> Option<SocketAddr>,
        types: CandidateTypes,
        seed: u64,
        now: Instant,
        mut streams: Option<&mut StreamSet>,
    ) -> Servers {
        let mut s = Servers {
            bindings: Vec::new(),
            relays: Vec::new(),
            ctl: Vec::new(),
            types,
            hosts: socks
                .iter()
                .map(|(b, _, _)| *b)
                .chain(mux.iter().map(|(b, _)| *b))
                .collect(),
            errors: Vec::new(),
            end_pending: true,
            known: Vec::new(),
            learned: Vec::new(),
            seed,
            drawn: 0,
            specs: Vec::new(),
        };
        for spec in specs {
            let turn = spec.server.url.scheme.is_turn();
            let Some(addrs) = s.servers_of(spec) else {
                continue;
            };
            // Every socket whose family the server has (TURN: the first such socket).
            let mut used = false;
            for (base, id, dup) in &mut socks {
                let Some(server) = addrs.iter().find(|a| a.is_ipv4() == base.is_ipv4()) else {
                    continue;
                };
                used = true;
                if turn {
                    let streams = streams.as_deref_mut();
                    s.relay_on(spec, *server, *base, *id, dup.take(), now, streams);
                    break;
                }
                s.binding_on(spec, *server, *base, *id, now, None);
            }
            if !turn {
                for (base, id) in &mux {
                    let Some(server) = addrs.iter().find(|a| a.is_ipv4() == base.is_ipv4()) else {
                        continue;
                    };
                    used = true;
                    if let Some(mapped) = known(*id, *server) {
                        s.known.push((mapped, *base));
                        continue;
                    }
                    s.binding_on(spec, *server, *base, *id, now, Some(tid_prefix));
                }
            }
            if !used {
                s.errors.push((
                    spec.server.url.to_string(),
                    "no local socket of the server's address family".into(),
                ));
            }
        }
        s
    }

    /// Continual gathering: never end the agent's gathering, and keep `specs` to ask
    /// them again from each new local address ([`add_socket`](Self::add_socket)).
    pub fn keep_gathering(&mut self, specs: Vec<ServerSpec>) {
        self.end_pending = false;
        self.specs = specs;
    }

    /// Whether a later [`add_socket`](Self::add_socket) may start a TURN client (which
    /// needs a duplicate of the socket to delete its allocation on close).
    pub fn has_turn(&self) -> bool {
        self.specs.iter().any(|s| s.server.url.scheme.is_turn())
    }

    /// Continual gathering, a new dedicated socket on a new local address: a Binding
    /// client per STUN server and an allocation per TURN server of its family, as the
    /// first gathering made them (RFC 8445 §5.1.1: candidates are gathered per base).
    pub fn add_socket(
        &mut self,
        base: SocketAddr,
        id: SocketId,
        dup: Option<UdpSocket>,
        now: Instant,
        mut streams: Option<&mut StreamSet>,
    ) {
        self.hosts.push(base);
        let specs = std::mem::take(&mut self.specs);
        let mut dup = dup;
        for spec in &specs {
            let Some(addrs) = self.servers_of(spec) else {
                continue;
            };
            let Some(server) = addrs.iter().find(|a| a.is_ipv4() == base.is_ipv4()) else {
                continue;
            };
            if spec.server.url.scheme.is_turn() {
                let streams = streams.as_deref_mut();
                self.relay_on(spec, *server, base, id, dup.take(), now, streams);
            } else {
                self.binding_on(spec, *server, base, id, now, None);
            }
        }
        self.specs = specs;
    }

    /// Continual gathering: the local address `base` (socket `id`) is gone. Its clients
    /// are dropped (an allocation made through it is left to expire: its 5-tuple no longer
    /// exists); returns the relayed addresses that went with it, whose candidates the
    /// caller removes.
    pub fn remove_socket(&mut self, base: SocketAddr, id: SocketId) -> Vec<SocketAddr> {
        self.hosts.retain(|h| *h != base);
        self.bindings.retain(|b| b.sock != id);
        self.ctl.retain(|(s, _)| *s != id);
        let mut relayed = Vec::new();
        self.relays.retain(|r| {
            let ours = r.sock == id && r.tcp.is_none();
            if ours && let Some(a) = r.client.relayed() {
                relayed.push(a);
            }
            !ours
        });
        relayed
    }

    /// The next client's transaction-id seed.
    fn next_seed(&mut self) -> u64 {
        self.drawn += 1;
        self.seed ^ self.drawn.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// `spec`'s addresses if its candidate type is wanted and its name resolved (else
    /// `None`, and a resolution failure is reported).
    fn servers_of<'s>(&mut self, spec: &'s ServerSpec) -> Option<&'s [SocketAddr]> {
        let turn = spec.server.url.scheme.is_turn();
        if (turn && !self.types.relay) || (!turn && !self.types.srflx) {
            return None;
        }
        match &spec.addrs {
            Ok(a) => Some(a),
            Err(e) => {
                self.errors.push((spec.server.url.to_string(), e.clone()));
                None
            }
        }
    }

    /// A Binding client for `spec` at `server` from socket `id` (`base`): a dedicated
    /// socket, or with `shared` (the agent's transaction-id prefix) a mux socket, whose
    /// answers the demultiplexer routes by that prefix.
    fn binding_on(
        &mut self,
        spec: &ServerSpec,
        server: SocketAddr,
        base: SocketAddr,
        id: SocketId,
        now: Instant,
        shared: Option<[u8; 6]>,
    ) {
        let seed = self.next_seed();
        let mut client = BindingClient::new(server, base, Retransmit::default(), seed, now);
        if let Some(prefix) = shared {
            client = client.with_tid_prefix(prefix);
        }
        self.bindings.push(Binding {
            url: spec.server.url.clone(),
            sock: id,
            base,
            client,
            shared: shared.is_some(),
        });
    }

    /// A TURN client for `spec` at `server` from socket `id` (`base`), over a new TCP
    /// stream for `?transport=tcp`; `dup` (a duplicate of the socket) deletes the
    /// allocation on close.
    #[allow(clippy::too_many_arguments)]
    fn relay_on(
        &mut self,
        spec: &ServerSpec,
        server: SocketAddr,
        base: SocketAddr,
        id: SocketId,
        dup: Option<UdpSocket>,
        now: Instant,
        streams: Option<&mut StreamSet>,
    ) {
        let mut local = base;
        let mut tcp = None;
        if spec.server.url.transport == Protocol::Tcp {
            let tls = match (&spec.server.tls, spec.server.url.scheme.is_secure()) {
                (Some(target), _) => TlsLink::new(target).map(|t| Some(Box::new(t))),
                // Never plain TCP for a turns: URL.
                (None, true) => Err("TLS: no trust anchors for a turns: URL".into()),
                (None, false) => Ok(None),
            };
            let tls = match tls {
                Ok(tls) => tls,
                Err(e) => {
                    self.errors.push((spec.server.url.to_string(), e));
                    return;
                }
            };
            let opened = match streams {
                Some(set) => set.connect(server).map(|id| (id, set.local_addr(id))),
                None => Err(std::io::Error::other("no TCP stream set")),
            };
            match opened {
                Ok((stream, addr)) => {
                    local = addr.unwrap_or(local);
                    tcp = Some(TcpLink {
                        stream,
                        decoder: StreamDecoder::default(),
                        tx: Vec::new(),
                        tls,
                        records: Vec::new(),
                    });
                }
                Err(e) => {
                    self.errors
                        .push((spec.server.url.to_string(), format!("TCP connect: {e}")));
                    return;
                }
            }
        }
        let mut cfg =
            ClientConfig::new(server, local, &spec.server.username, &spec.server.password);
        cfg.seed = self.next_seed();
        if tcp.is_some() {
            cfg.transport = Protocol::Tcp;
        }
        self.relays.push(Relay {
            url: spec.server.url.clone(),
            sock: id,
            client: Client::new(cfg, now),
            done: false,
            tcp,
        });
        if let Some(sock) = dup {
            self.ctl.push((id, sock));
        }
    }

    /// Mapped addresses learned on mux sockets since the last call.
    pub fn take_learned(&mut self) -> std::vec::Drain<'_, (SocketId, SocketAddr, SocketAddr)> {
        self.learned.drain(..)
    }

    /// Whether every server answered or gave up.
    fn complete(&self) -> bool {
        self.bindings.iter().all(|b| b.client.is_done()) && self.relays.iter().all(|r| r.done)
    }

    /// Earliest timer of any client.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let b = self.bindings.iter().filter_map(|b| b.client.poll_timeout());
        let r = self.relays.iter().filter_map(|r| r.client.poll_timeout());
        b.chain(r).min()
    }

    /// Retransmissions, timeouts, refreshes.
    pub fn handle_timeout(&mut self, now: Instant) {
        for b in &mut self.bindings {
            b.client.handle_timeout(now);
        }
        for r in &mut self.relays {
            if r.client.poll_timeout().is_some_and(|t| t <= now) {
                r.client.handle_timeout(now);
            }
        }
    }

    /// Writes every due request into send slots. Returns false if the slots ran out.
    pub fn transmit(&mut self, now: Instant, sendq: &mut SendQueue) -> bool {
        for b in &mut self.bindings {
            loop {
                let Some(buf) = sendq.slot() else {
                    return false;
                };
                let Some(t) = b.client.poll_transmit(now, buf) else {
                    break;
                };
                sendq.commit(b.sock, t.destination, t.size);
            }
        }
        for r in &mut self.relays {
            loop {
                let Some(buf) = sendq.slot() else {
                    return false;
                };
                let Some(t) = r.client.poll_transmit(now, buf) else {
                    break;
                };
                match r.tcp.as_mut() {
                    // The slot was scratch: the frame (padded by the client) is queued.
                    Some(l) => l.tx.extend_from_slice(&buf[..t.size]),
                    // The stream closed: nothing to send it on.
                    None if r.client.transport() == Protocol::Tcp => {}
                    None => sendq.commit(r.sock, t.destination, t.size),
                }
            }
        }
        true
    }

    /// The TCP streams of this agent's relays.
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.relays
            .iter()
            .filter_map(|r| r.tcp.as_ref().map(|l| l.stream))
    }

    /// Closes the TCP relays' streams (their allocations end with them, RFC 8656 §3.1),
    /// a `turns:` one after its close_notify; returns their ids.
    pub fn close_streams(&mut self, set: &mut StreamSet) -> Vec<StreamId> {
        // Listed first: a stream whose last write fails leaves its relay in the flush.
        let ids: Vec<StreamId> = self.streams().collect();
        self.flush_streams(set);
        for l in self.relays.iter_mut().filter_map(|r| r.tcp.as_mut()) {
            if let Some(tls) = l.tls.as_mut() {
                l.records.clear();
                tls.close(&mut l.records);
                set.send(l.stream, &[&l.records]);
            }
        }
        for &id in &ids {
            set.close(id);
        }
        ids
    }

    /// Writes what the TCP relays queued to their streams (through TLS for `turns:`,
    /// with the handshake's own records). A stream the set refuses (backlog full, write
    /// error) ends its relay at once.
    pub fn flush_streams(&mut self, set: &mut StreamSet) {
        let mut failed = Vec::new();
        for r in &mut self.relays {
            let Some(l) = r.tcp.as_mut() else {
                continue;
            };
            let out = match l.tls.as_mut() {
                Some(tls) => {
                    tls.output(&l.tx, &mut l.records);
                    l.tx.clear();
                    &mut l.records
                }
                None => &mut l.tx,
            };
            if !out.is_empty() {
                if !set.send(l.stream, &[out]) {
                    failed.push(l.stream);
                }
                out.clear();
            }
        }
        for stream in failed {
            self.stream_closed(stream, "TCP stream to the server failed (write)");
        }
    }

    /// Bytes read from `stream`, into its relay's `decoder` (taken out by
    /// [`take_decoder`](Self::take_decoder)): decrypted first for `turns:`. An error
    /// ends the relay as [`stream_closed`](Self::stream_closed) does; the caller closes
    /// the stream.
    pub fn stream_input(
        &mut self,
        stream: StreamId,
        bytes: &[u8],
        decoder: &mut StreamDecoder,
    ) -> Result<(), ()> {
        let Some(tls) = self.link(stream).and_then(|l| l.tls.as_mut()) else {
            decoder.push(bytes);
            return Ok(());
        };
        tls.input(bytes, decoder).map_err(|e| {
            self.stream_closed(stream, &e);
        })
    }

    /// The TCP (or TLS) link of the relay on `stream`.
    fn link(&mut self, stream: StreamId) -> Option<&mut TcpLink> {
        self.relays
            .iter_mut()
            .find_map(|r| r.tcp.as_mut().filter(|l| l.stream == stream))
    }

    /// Takes the decoder of `stream` out (to lend its frames while the clients are
    /// borrowed); [`put_decoder`](Self::put_decoder) returns it.
    pub fn take_decoder(&mut self, stream: StreamId) -> Option<StreamDecoder> {
        let l = self.link(stream)?;
        Some(std::mem::replace(&mut l.decoder, StreamDecoder::new(0)))
    }

    /// Returns a decoder taken by [`take_decoder`](Self::take_decoder).
    pub fn put_decoder(&mut self, stream: StreamId, decoder: StreamDecoder) {
        if let Some(l) = self.link(stream) {
            l.decoder = decoder;
        }
    }

    /// One frame received on `stream` (from its TURN server), to that relay's client.
    pub fn on_frame<'a>(
        &mut self,
        now: Instant,
        stream: StreamId,
        frame: &'a [u8],
    ) -> FromServer<'a> {
        let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.tcp.as_ref().is_some_and(|l| l.stream == stream))
        else {
            return FromServer::NotOurs;
        };
        let server = r.client.server();
        match r.client.handle_packet(now, server, frame) {
            Handled::Data { peer, data } => match r.client.relayed() {
                Some(relayed) => FromServer::Data {
                    relayed,
                    peer,
                    data,
                },
                None => FromServer::Consumed,
            },
            Handled::Consumed => FromServer::Consumed,
            Handled::NotOurs => FromServer::NotOurs,
        }
    }

    /// `stream` ended (`why`: closed by the server, an error, a framing or TLS error):
    /// its relay ends; a gathering failure if it had no allocation yet.
    pub fn stream_closed(&mut self, stream: StreamId, why: &str) {
        for r in &mut self.relays {
            if r.tcp.as_ref().is_none_or(|l| l.stream != stream) {
                continue;
            }
            r.tcp = None;
            if r.done {
                tracing::warn!(url = %r.url, "relay lost: {why}");
            } else {
                r.done = true;
                self.errors.push((r.url.to_string(), why.to_owned()));
            }
        }
    }

    /// Client outcomes: new local candidates go to the agent, failures to the application
    /// (and the log); once every client is done, the agent's end of gathering.
    pub fn events(&mut self, agent: &mut IceAgent, link: Option<&LinkTx>) {
        let report = |url: &IceUrl, e: String| {
            tracing::warn!(%url, "gathering: {e}");
            if let Some(l) = link {
                l.event(AgentEvent::GatherError {
                    url: url.to_string(),
                    error: e,
                });
            }
        };
        for (url, e) in self.errors.drain(..) {
            tracing::warn!(%url, "gathering: {e}");
            if let Some(l) = link {
                l.event(AgentEvent::GatherError { url, error: e });
            }
        }
        let redundant = |a: &SocketAddr| self.types.host && self.hosts.contains(a);
        for (mapped, base) in self.known.drain(..) {
            if !redundant(&mapped) {
                let _ = agent.add_local_candidate(Candidate::server_reflexive(mapped, base));
            }
        }
        for b in &mut self.bindings {
            let ev = b.client.poll_event();
            if let (Some(BindingEvent::Mapped(a)), true) = (&ev, b.shared) {
                self.learned.push((b.sock, b.client.server(), *a));
            }
            match ev {
                // RFC 8445 §5.1.3: a srflx equal to a host candidate is redundant.
                Some(BindingEvent::Mapped(a)) if redundant(&a) => {
                    tracing::debug!(url = %b.url, "mapped address {a} equals the host candidate");
                }
                Some(BindingEvent::Mapped(a)) => {
                    let _ = agent.add_local_candidate(Candidate::server_reflexive(a, b.base));
                }
                Some(BindingEvent::Failed(e)) => report(&b.url, e.to_string()),
                None => {}
            }
        }
        for r in &mut self.relays {
            while let Some(ev) = r.client.poll_event() {
                match ev {
                    ClientEvent::Allocated {
                        relayed, mapped, ..
                    } => {
                        r.done = true;
                        let _ = agent.add_local_candidate(Candidate::relayed(relayed, mapped));
                    }
                    ClientEvent::Failed(e) => {
                        if !r.done {
                            r.done = true;
                            report(&r.url, e.to_string());
                        } else {
                            tracing::warn!(url = %r.url, "relay lost: {e}");
                        }
                    }
                    ClientEvent::RequestFailed(e) => {
                        tracing::debug!(url = %r.url, "TURN request failed: {e}");
                    }
                    ClientEvent::ChannelBound { .. }
                    | ClientEvent::PermissionCreated(_)
                    | ClientEvent::Refreshed { .. }
                    | ClientEvent::Closed => {}
                }
            }
        }
        if self.end_pending && self.complete() {
            self.end_pending = false;
            agent.end_of_local_candidates();
        }
    }

    /// Offers a datagram that arrived on `sock` from `from` to the clients.
    pub fn on_datagram<'a>(
        &mut self,
        now: Instant,
        sock: SocketId,
        from: SocketAddr,
        data: &'a [u8],
    ) -> FromServer<'a> {
        for b in self.bindings.iter_mut().filter(|b| b.sock == sock) {
            if b.client.handle_packet(from, data) {
                return FromServer::Consumed;
            }
        }
        // TCP relays hear only their stream (`on_frame`).
        let udp = |r: &&mut Relay| r.sock == sock && r.client.transport() == Protocol::Udp;
        for r in self.relays.iter_mut().filter(udp) {
            match r.client.handle_packet(now, from, data) {
                Handled::Data { peer, data } => {
                    return match r.client.relayed() {
                        Some(relayed) => FromServer::Data {
                            relayed,
                            peer,
                            data,
                        },
                        None => FromServer::Consumed,
                    };
                }
                Handled::Consumed => return FromServer::Consumed,
                Handled::NotOurs => {}
            }
        }
        FromServer::NotOurs
    }

    /// Whether `addr` is one of our relayed addresses.
    #[inline]
    pub fn is_relayed(&self, addr: SocketAddr) -> bool {
        self.relays.iter().any(|r| r.client.relayed() == Some(addr))
    }

    /// Writes `data` from our relayed address `relayed` to `peer` into `out` (Send
    /// indication or ChannelData). `Some` to commit or queued for a TCP stream; `None` if
    /// nothing is to be sent (no permission yet: one is being created; or an error).
    pub fn wrap(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Option<Wrapped> {
        let r = self
            .relays
            .iter_mut()
            .find(|r| r.client.relayed() == Some(relayed))?;
        if r.client.transport() == Protocol::Tcp && r.tcp.is_none() {
            return None; // the stream is gone
        }
        match r.client.send_to(peer, data, out, now) {
            Ok(Some(t)) => Some(match r.tcp.as_mut() {
                Some(l) => {
                    l.tx.extend_from_slice(&out[..t.size]);
                    Wrapped::Stream
                }
                None => Wrapped::Datagram(r.sock, t.destination, t.size),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(url = %r.url, "cannot relay to {peer}: {e}");
                None
            }
        }
    }

    /// A remote candidate: every relay of its family installs a permission for it
    /// (RFC 8656 §9).
    pub fn add_remote(&mut self, remote: SocketAddr, now: Instant) {
        permit_everywhere(self.relays.iter_mut().map(|r| &mut r.client), remote, now);
    }

    /// The selected pair is (`relayed`, `remote`): bind a channel (RFC 8656 §12).
    pub fn selected(&mut self, relayed: SocketAddr, remote: SocketAddr, now: Instant) {
        let relays = self.relays.iter_mut().map(|r| &mut r.client);
        bind_selected(relays, relayed, remote, now);
    }

    /// Deletes every allocation (Refresh with LIFETIME 0, RFC 8656 §7), sent at once on
    /// the socket duplicates: the agent's sockets are closed right after, so answers and
    /// retransmissions are not waited for (a lost request leaves the allocation to expire).
    /// A TCP relay's allocation ends with its connection (RFC 8656 §3.1), which the caller
    /// closes (listed by [`streams`](Self::streams)).
    pub fn close(&mut self, now: Instant, buf: &mut [u8]) {
        for r in &mut self.relays {
            if r.client.is_finished() || r.client.transport() == Protocol::Tcp {
                continue;
            }
            r.client.close(now);
            let Some((_, sock)) = self.ctl.iter().find(|(id, _)| *id == r.sock) else {
                continue;
            };
            while let Some(t) = r.client.poll_transmit(now, buf) {
                if let Err(e) = sock.send_to(&buf[..t.size], t.destination) {
                    tracing::debug!(url = %r.url, "cannot delete the allocation: {e}");
                }
            }
        }
    }
}
