//! [`Agent`] and [`Conn`]: handles that talk to the owning shard over its control channel.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::Sender;
use tokio::sync::oneshot;

use super::engine::{Inner, PWD_LEN, UFRAG_LEN, fresh_credentials, secure_random};
use super::link::{DataRx, Link};
use super::netmon::Watch;
use super::{AgentEvent, AgentOptions, ApiError, ConnStats, Events, StateWatch};
use crate::ice::{Candidate, ConnectionState};
use crate::io::Waker;
use crate::shard::gather::usable;
use crate::shard::{Control, IceCmd};
use crate::shard::{ServerSpec, UrlSpec};

/// The shard's address of one agent. Dropped with the last `Agent`/`Conn` of the agent,
/// which closes it (frees the slot, its sockets and routes).
#[derive(Debug)]
pub(crate) struct Handle {
    pub key: u64,
    pub tx: Sender<Control>,
    pub waker: Waker,
    /// The hosting shard's index: the first character of every ufrag the agent gets.
    pub shard: u8,
}

impl Handle {
    pub fn send(&self, cmd: IceCmd) -> Result<(), ApiError> {
        self.tx
            .send(Control::Ice(cmd))
            .map_err(|_| ApiError::EngineStopped)?;
        // The shard drains its whole channel every turn, so only a sender that found it
        // empty must ring the waker: one eventfd write per burst of sends, not per send.
        if self.tx.len() <= 1 {
            self.waker.wake();
        }
        Ok(())
    }
}

impl Handle {
    /// The commands [`Agent`], [`SessionHandle`] and [`Conn`] share.
    fn close(&self) {
        let _ = self.send(IceCmd::Close { key: self.key });
    }

    fn remote_credentials(&self, ufrag: &str, pwd: &str) -> Result<(), ApiError> {
        check_credentials(ufrag, pwd)?;
        self.send(IceCmd::RemoteCredentials {
            key: self.key,
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        })
    }

    fn remote_candidate(&self, c: Candidate) -> Result<(), ApiError> {
        self.send(IceCmd::RemoteCandidate {
            key: self.key,
            candidate: Box::new(c),
        })
    }

    fn end_of_remote_candidates(&self) {
        let _ = self.send(IceCmd::EndOfRemoteCandidates { key: self.key });
    }

    /// Sends the restart with new credentials (the ufrag's first character keeps naming
    /// the shard) and gives them to `keep` at once, so a caller that stops waiting for
    /// the candidates still has the credentials the shard now uses.
    fn restart(
        &self,
        keep: impl FnOnce(&str, &str),
    ) -> Result<oneshot::Receiver<Restarted>, ApiError> {
        let (ufrag, pwd) = fresh_credentials(usize::from(self.shard));
        let (reply, rx) = oneshot::channel();
        self.send(IceCmd::Restart {
            key: self.key,
            ufrag: ufrag.clone(),
            pwd: pwd.clone(),
            reply,
        })?;
        keep(&ufrag, &pwd);
        Ok(rx)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

/// What gathering needs; dropped by it (a gathered agent keeps none of its options).
struct Gather {
    engine: Arc<Inner>,
    opts: AgentOptions,
    /// Parsed [`AgentOptions::urls`].
    servers: Vec<UrlSpec>,
}

/// One ICE agent hosted on a shard (pion/ice's `Agent`).
pub struct Agent {
    handle: Arc<Handle>,
    /// ufrag then pwd, inline: the engine makes them [`UFRAG_LEN`] and [`PWD_LEN`]
    /// ice-chars long (no allocation of their own); replaced by [`restart`](Self::restart).
    creds: Mutex<[u8; UFRAG_LEN + PWD_LEN]>,
    /// Until [`gather_candidates`](Self::gather_candidates), which takes it (boxed: one
    /// pointer, not ~250 B of options, in every handle).
    gather: Mutex<Option<Box<Gather>>>,
    /// State, events and data of an app-owned agent, shared with its shard.
    link: Option<Arc<Link>>,
    events: Option<Events>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("key", &self.handle.key)
            .field("ufrag", &self.local_credentials().0)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

fn check_credentials(ufrag: &str, pwd: &str) -> Result<(), ApiError> {
    let ok = |s: &str, min: usize| {
        (min..=256).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    if !ok(ufrag, 4) || !ok(pwd, 22) {
        return Err(ApiError::Invalid(
            "ufrag must be 4..=256 and pwd 22..=256 ice-chars (RFC 8445 §5.3)".into(),
        ));
    }
    Ok(())
}

/// Binds a UDP socket on `ip`, from `range` (inclusive; starting at a random port so
/// agents spread over it) or any ephemeral port.
pub(crate) fn bind_dedicated(ip: IpAddr, range: Option<(u16, u16)>) -> Result<UdpSocket, ApiError> {
    let bind_err = |source| ApiError::Bind { ip, source };
    let Some((lo, hi)) = range.filter(|r| r.1 != 0) else {
        return UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(bind_err);
    };
    let span = u32::from(hi.saturating_sub(lo)) + 1;
    let mut r = [0u8; 4];
    secure_random(&mut r);
    let start = u32::from_le_bytes(r) % span;
    let mut last = None;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        match UdpSocket::bind(SocketAddr::new(ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "port range exhausted")
    })))
}

/// The host candidate of a socket bound to `base`, as NAT 1:1 options show it.
pub(crate) fn host_candidate(o: &AgentOptions, base: SocketAddr) -> Candidate {
    let mut c = Candidate::host(base);
    if let Some(public) = o
        .nat_1to1_ips
        .iter()
        .find(|p| p.is_ipv4() == base.is_ipv4())
    {
        c.addr = SocketAddr::new(*public, base.port());
    }
    c
}

impl Agent {
    pub(crate) fn new(
        engine: Arc<Inner>,
        handle: Arc<Handle>,
        (ufrag, pwd): (&str, &str),
        opts: AgentOptions,
        servers: Vec<UrlSpec>,
        link: Option<Arc<Link>>,
    ) -> Self {
        let mut creds = [0u8; UFRAG_LEN + PWD_LEN];
        creds[..UFRAG_LEN].copy_from_slice(ufrag.as_bytes());
        creds[UFRAG_LEN..].copy_from_slice(pwd.as_bytes());
        Agent {
            handle,
            creds: Mutex::new(creds),
            gather: Mutex::new(Some(Box::new(Gather {
                engine,
                opts,
                servers,
            }))),
            events: link.as_ref().map(|l| l.events()),
            link,
        }
    }

    /// Local `(ufrag, pwd)` to signal to the peer.
    pub fn local_credentials(&self) -> (String, String) {
        let s = |b: &[u8]| b.iter().map(|&c| char::from(c)).collect();
        let c = *self.creds.lock().unwrap_or_else(|e| e.into_inner());
        (s(&c[..UFRAG_LEN]), s(&c[UFRAG_LEN..]))
    }

    /// The peer's credentials. Checks start once a role is chosen too
    /// ([`dial`](Self::dial), [`accept`](Self::accept), [`start`](Self::start); a lite
    /// agent needs none).
    pub fn set_remote_credentials(&self, ufrag: &str, pwd: &str) -> Result<(), ApiError> {
        self.handle.remote_credentials(ufrag, pwd)
    }

    /// A remote candidate (trickle: any time, before or after dial/accept).
    pub fn add_remote_candidate(&self, c: Candidate) -> Result<(), ApiError> {
        self.handle.remote_candidate(c)
    }

    /// The peer will send no more candidates (RFC 8838): the agent can then fail.
    pub fn end_of_remote_candidates(&self) {
        self.handle.end_of_remote_candidates();
    }

    /// Gathers host candidates (RFC 8445 §5.1.1.1): on the mux sockets (`mux`), or on one
    /// dedicated socket per interface address, bound here from the port range. With
    /// [`AgentOptions::urls`], the shard then asks each STUN server from each dedicated
    /// socket of its family (server-reflexive, §5.1.1.2; dropped when equal to the host
    /// candidate) and allocates on each TURN server (relayed, RFC 8656); server names are
    /// resolved here. Every candidate is emitted as [`AgentEvent::Candidate`] as it
    /// appears, then `Candidate(None)` once every server answered or timed out (a failed
    /// server is reported as [`AgentEvent::GatherError`]).
    /// Returns the host candidates (for agents without events). Once per agent (pion:
    /// `ErrMultipleGatherAttempted`): a second call is [`ApiError::AlreadyStarted`].
    pub fn gather_candidates(&self) -> Result<Vec<Candidate>, ApiError> {
        let Some(g) = self.gather.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(ApiError::AlreadyStarted);
        };
        let Gather {
            engine,
            opts,
            servers,
        } = *g;
        let (o, engine) = (&opts, &engine);
        let ifaces = || -> Result<Vec<(String, IpAddr)>, ApiError> {
            let all = engine.interface_addrs().map_err(|source| ApiError::Bind {
                ip: IpAddr::from([0, 0, 0, 0]),
                source,
            })?;
            Ok(all
                .iter()
                .filter(|a| usable(a.ip, o.include_loopback) && o.allows(Some(&a.name), a.ip))
                .map(|a| (a.name.clone(), a.ip))
                .collect())
        };
        let mut bases: Vec<SocketAddr> = Vec::new();
        let mut sockets = Vec::new();
        let range = o
            .port_range
            .or((engine.ice.max_port != 0).then_some((engine.ice.min_port, engine.ice.max_port)));
        if o.mux {
            for m in &engine.mux_addrs {
                if m.ip().is_unspecified() {
                    for (_, ip) in ifaces()? {
                        if ip.is_ipv4() == m.is_ipv4() {
                            bases.push(SocketAddr::new(ip, m.port()));
                        }
                    }
                } else if o.allows(None, m.ip()) {
                    bases.push(*m);
                }
            }
        } else {
            for (_, ip) in ifaces()? {
                let s = bind_dedicated(ip, range)?;
                let addr = s
                    .local_addr()
                    .map_err(|source| ApiError::Bind { ip, source })?;
                bases.push(addr);
                sockets.push((s, addr));
            }
        }
        let servers = servers
            .iter()
            .map(|s| ServerSpec {
                addrs: s
                    .url
                    .host_port()
                    .to_socket_addrs()
                    .map(Iterator::collect)
                    .map_err(|e| format!("cannot resolve: {e}")),
                server: s.clone(),
            })
            .collect();
        let candidates: Vec<Candidate> = bases.iter().map(|b| host_candidate(o, *b)).collect();
        let continual = o.continual_gathering && !o.mux;
        let host = o.candidate_types.host;
        self.handle.send(IceCmd::Gather {
            key: self.handle.key,
            sockets,
            candidates: candidates.clone(),
            servers,
            types: o.candidate_types,
            seed: {
                let mut b = [0u8; 8];
                secure_random(&mut b);
                u64::from_le_bytes(b)
            },
            continual,
        })?;
        if continual {
            engine.netmon.watch(
                engine,
                Watch {
                    handle: Arc::downgrade(&self.handle),
                    next: std::time::Instant::now() + opts.network_monitor_interval,
                    opts,
                    range,
                    bases,
                },
            );
        }
        Ok(if host { candidates } else { Vec::new() })
    }

    /// The next event; `None` once the agent is gone (or for agents without channels,
    /// or after [`take_events`](Self::take_events)).
    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.as_mut()?.recv().await
    }

    /// Takes the event receiver, so events can be read in another task while
    /// [`dial`](Self::dial)/[`accept`](Self::accept) wait.
    pub fn take_events(&mut self) -> Option<Events> {
        self.events.take()
    }

    /// A watcher of the connection state (agents with
    /// [`DataMode::App`](super::DataMode::App); any number of them).
    pub fn state(&self) -> Option<StateWatch> {
        self.link.as_ref().map(|l| l.watch())
    }

    /// Chooses the role and lets checks start without waiting (for agents whose data the
    /// shard handles, or apps that watch [`state`](Self::state) themselves).
    pub fn start(&self, controlling: bool) -> Result<(), ApiError> {
        self.handle.send(IceCmd::Start {
            key: self.handle.key,
            controlling,
        })
    }

    /// Controlling side (pion: `Dial`): sets the peer's credentials, starts checks and
    /// resolves once Connected; fails on Failed or Closed. A call that failed or was
    /// cancelled (its future dropped, e.g. by a timeout) can be made again; received data
    /// is queued only while a call or its `Conn` holds the receiver.
    pub async fn dial(&self, ufrag: &str, pwd: &str) -> Result<Conn, ApiError> {
        self.connect(true, ufrag, pwd).await
    }

    /// Controlled side (pion: `Accept`); see [`dial`](Self::dial).
    pub async fn accept(&self, ufrag: &str, pwd: &str) -> Result<Conn, ApiError> {
        self.connect(false, ufrag, pwd).await
    }

    async fn connect(&self, controlling: bool, ufrag: &str, pwd: &str) -> Result<Conn, ApiError> {
        let link = self.link.as_ref().ok_or(ApiError::NotApp)?;
        check_credentials(ufrag, pwd)?;
        // Taken before the role is set so no datagram of the new connection is missed;
        // given back if this dial fails or is cancelled (its future dropped), so a later
        // one can take it.
        struct Held(Option<DataRx>);
        impl Drop for Held {
            fn drop(&mut self) {
                if let Some(rx) = self.0.take() {
                    rx.give_back();
                }
            }
        }
        let mut data = Held(Some(link.take_data().ok_or(ApiError::AlreadyStarted)?));
        let mut state = link.watch();
        self.set_remote_credentials(ufrag, pwd)?;
        self.start(controlling)?;
        let mut s = state.get();
        loop {
            match s {
                ConnectionState::Connected | ConnectionState::Completed => break,
                ConnectionState::Failed => return Err(ApiError::Failed),
                ConnectionState::Closed => return Err(ApiError::Closed),
                _ => {}
            }
            s = state.changed().await?;
        }
        Ok(Conn {
            handle: self.handle.clone(),
            data: data.0.take().expect("held until here"),
        })
    }

    /// ICE restart (RFC 8445 §9; pion: `Restart`): returns new local credentials and the
    /// local candidates, to signal. The peer's credentials and candidates are forgotten,
    /// so give its new ones *after* this call, with
    /// [`set_remote_credentials`](Self::set_remote_credentials) and
    /// [`add_remote_candidate`](Self::add_remote_candidate) (when the peer restarted first,
    /// keep its offer until then). The local candidates are kept and announced again as
    /// events, `Candidate(Some(..))` each, then `Candidate(None)` once gathering has ended
    /// (pion asks for a new `GatherCandidates` instead). The state turns Checking (New
    /// stays New) and the role is kept; data keeps flowing on the selected pair until the
    /// checks select a new one, and an existing [`Conn`] carries on over it. The new
    /// credentials take effect (and [`local_credentials`](Self::local_credentials) shows
    /// them) as soon as the call starts, even if its future is dropped before the
    /// candidates come back. On an agent already closed the call ends in
    /// [`ApiError::Closed`], and `local_credentials` then shows credentials never used.
    /// See docs/agents.md ("ICE restart").
    pub async fn restart(&self) -> Result<Restarted, ApiError> {
        let rx = {
            // Held across send and store: concurrent restarts reach the shard in the
            // order their credentials are stored, so the last one stored is the one used.
            let mut c = self.creds.lock().unwrap_or_else(|e| e.into_inner());
            self.handle.restart(|u, p| {
                c[..UFRAG_LEN].copy_from_slice(u.as_bytes());
                c[UFRAG_LEN..].copy_from_slice(p.as_bytes());
            })?
        };
        rx.await.map_err(|_| ApiError::Closed)
    }

    /// Connection counters (works for every data mode).
    pub async fn stats(&self) -> Result<ConnStats, ApiError> {
        stats(&self.handle).await
    }

    /// Closes the agent: the shard frees its slot, sockets and routes.
    pub fn close(&self) {
        self.handle.close();
    }

    /// Keeps only what signalling needs once candidates are gathered and the role is
    /// chosen: a [`SessionHandle`], one pointer, instead of this 72-byte handle with its
    /// credentials (and, before gathering, options) (what `icering serve` keeps per session). The agent stays
    /// hosted; its channels, if any, are dropped.
    pub fn into_session_handle(self) -> SessionHandle {
        SessionHandle {
            handle: self.handle,
        }
    }
}

/// What an ICE restart gives to signal to the peer ([`Agent::restart`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The new local ufrag.
    pub ufrag: String,
    /// The new local pwd.
    pub pwd: String,
    /// The local candidates, kept from before (host, server-reflexive, relayed).
    pub candidates: Vec<Candidate>,
    /// Gathering had ended: `candidates` are all there will be (else more follow as
    /// events, as they come).
    pub complete: bool,
}

/// The signalling half of an [`Agent`] (from [`Agent::into_session_handle`]): remote
/// credentials and candidates (trickle), stats, close. Cloning shares the agent; the agent
/// is closed when the last clone (and every `Agent`/`Conn` of it) is dropped.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    handle: Arc<Handle>,
}

impl SessionHandle {
    /// See [`Agent::set_remote_credentials`].
    pub fn set_remote_credentials(&self, ufrag: &str, pwd: &str) -> Result<(), ApiError> {
        self.handle.remote_credentials(ufrag, pwd)
    }

    /// See [`Agent::add_remote_candidate`].
    pub fn add_remote_candidate(&self, c: Candidate) -> Result<(), ApiError> {
        self.handle.remote_candidate(c)
    }

    /// See [`Agent::end_of_remote_candidates`].
    pub fn end_of_remote_candidates(&self) {
        self.handle.end_of_remote_candidates();
    }

    /// See [`Agent::restart`].
    pub async fn restart(&self) -> Result<Restarted, ApiError> {
        let rx = self.handle.restart(|_, _| {})?;
        rx.await.map_err(|_| ApiError::Closed)
    }

    /// See [`Agent::stats`].
    pub async fn stats(&self) -> Result<ConnStats, ApiError> {
        stats(&self.handle).await
    }

    /// See [`Agent::close`].
    pub fn close(&self) {
        self.handle.close();
    }
}

async fn stats(handle: &Handle) -> Result<ConnStats, ApiError> {
    let (tx, rx) = oneshot::channel();
    handle.send(IceCmd::Stats {
        key: handle.key,
        reply: tx,
    })?;
    rx.await.map_err(|_| ApiError::Closed)
}

/// A connected agent's datagram path (pion: `ice.Conn`). Datagrams are not framed: each
/// `send` is one UDP datagram on the selected pair. Two pointers: the agent's command
/// address and its link (state, received data).
#[derive(Debug)]
pub struct Conn {
    handle: Arc<Handle>,
    data: DataRx,
}

impl Conn {
    /// Sends one datagram on the selected pair. Like UDP, delivery is not guaranteed; a
    /// datagram with no selected pair or no free send slot is dropped and counted.
    pub async fn send(&self, data: Bytes) -> Result<(), ApiError> {
        match self.state() {
            ConnectionState::Closed => return Err(ApiError::Closed),
            ConnectionState::Failed => return Err(ApiError::Failed),
            _ => {}
        }
        self.handle.send(IceCmd::Send {
            key: self.handle.key,
            data,
        })
    }

    /// The next received datagram, without a copy: the `Bytes` points into the shard's io
    /// receive buffer (the io_uring provided-buffer ring or the `recvmmsg` buffers), which
    /// goes back to the kernel once every `Bytes` into it is dropped (on any thread). Drop
    /// or copy data you keep for long: each shard lends at most half its receive ring
    /// (portable backend: `batch` buffers) at once; past that, and for data that reached
    /// the shard another way (from another shard, over TURN-over-TCP), the datagram is
    /// copied once instead ([`IceStats::data_lent`](crate::IceStats::data_lent) /
    /// [`data_copied`](crate::IceStats::data_copied)). Sub-slices keep the whole receive
    /// buffer (with GRO: the whole burst) lent.
    ///
    /// Datagrams wait in a queue of at most `[ice] recv_queue` (a full queue drops, counted
    /// in [`IceStats::drop_app_full`](crate::IceStats::drop_app_full)); it allocates
    /// nothing before the first datagram and then only as much as the backlog needs.
    /// Dropping the `Conn` drops what is queued (and stops the queuing).
    pub async fn recv(&mut self) -> Result<Bytes, ApiError> {
        self.data.recv().await.ok_or(ApiError::Closed)
    }

    /// Slots the receive queue has allocated (0 until the first datagram). For tests.
    #[doc(hidden)]
    pub fn recv_queue_slots(&self) -> usize {
        self.data.slots()
    }

    /// Bytes and packets each way, RTT, selected pair.
    pub async fn stats(&self) -> Result<ConnStats, ApiError> {
        stats(&self.handle).await
    }

    /// Current connection state.
    pub fn state(&self) -> ConnectionState {
        self.data.link().state()
    }

    /// Closes the agent (same as [`Agent::close`]).
    pub fn close(&self) {
        self.handle.close();
    }
}
