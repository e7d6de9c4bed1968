//! Deterministic network simulator for the sans-IO ICE agent: virtual clock, lossy /
//! jittery / duplicating / reordering links, NATs with RFC 4787 mapping and filtering
//! behaviours, multi-homed dual-stack hosts, a STUN server for srflx gathering, and a
//! signalling channel. Everything is reproducible from a seed.
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use icering::ice::{Candidate, ConnectionState, Handled, IceAgent, IceConfig, IceEvent};
use icering::net::Received;
use icering::stun::{Class, Message, MessageType, MessageWriter, Method, attr};

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }
    pub fn dur(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.f64())
    }
}

/// RFC 4787 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// RFC 4787 filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatType {
    pub mapping: Mapping,
    pub filtering: Filtering,
}

impl NatType {
    pub const FULL_CONE: NatType = NatType {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::EndpointIndependent,
    };
    pub const RESTRICTED: NatType = NatType {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressDependent,
    };
    pub const PORT_RESTRICTED: NatType = NatType {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressAndPortDependent,
    };
    pub const SYMMETRIC: NatType = NatType {
        mapping: Mapping::AddressAndPortDependent,
        filtering: Filtering::AddressAndPortDependent,
    };
    /// Address-dependent mapping with address-dependent filtering.
    pub const ADDRESS_DEPENDENT: NatType = NatType {
        mapping: Mapping::AddressDependent,
        filtering: Filtering::AddressDependent,
    };
}

#[derive(Debug)]
struct Nat {
    public_ip: IpAddr,
    kind: NatType,
    next_port: u16,
    map: HashMap<(SocketAddr, Option<IpAddr>, u16), u16>,
    /// external port → (internal address, destinations sent to)
    reverse: HashMap<u16, (SocketAddr, HashSet<SocketAddr>)>,
}

impl Nat {
    fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr) -> SocketAddr {
        let key = match self.kind.mapping {
            Mapping::EndpointIndependent => (internal, None, 0),
            Mapping::AddressDependent => (internal, Some(dst.ip()), 0),
            Mapping::AddressAndPortDependent => (internal, Some(dst.ip()), dst.port()),
        };
        let port = match self.map.get(&key) {
            Some(p) => *p,
            None => {
                let p = self.next_port;
                self.next_port += 1;
                self.map.insert(key, p);
                self.reverse.insert(p, (internal, HashSet::new()));
                p
            }
        };
        self.reverse.get_mut(&port).unwrap().1.insert(dst);
        SocketAddr::new(self.public_ip, port)
    }

    fn inbound(&self, src: SocketAddr, port: u16) -> Option<SocketAddr> {
        let (internal, sent) = self.reverse.get(&port)?;
        let ok = match self.kind.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => sent.iter().any(|d| d.ip() == src.ip()),
            Filtering::AddressAndPortDependent => sent.contains(&src),
        };
        ok.then_some(*internal)
    }
}

/// Where an interface sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Public,
    /// Behind NAT number n.
    Lan(usize),
}

/// Link impairments, applied per datagram.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability of an extra delay of up to 4× `delay` (reordering).
    pub reorder: f64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// How a peer is attached.
#[derive(Debug, Clone, Copy)]
pub struct HostSpec {
    /// NAT in front of the IPv4 interfaces; `None` = public IPv4.
    pub nat: Option<NatType>,
    /// Number of IPv4 interfaces (each on its own LAN behind its own NAT of `nat` type).
    pub v4_ifaces: usize,
    /// A public IPv6 interface too.
    pub ipv6: bool,
    /// Gather srflx through the STUN server.
    pub srflx: bool,
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            nat: None,
            v4_ifaces: 1,
            ipv6: false,
            srflx: true,
        }
    }
}

#[derive(Debug)]
enum Signal {
    Candidate(Box<Candidate>),
    End,
}

pub struct Peer {
    pub agent: IceAgent,
    pub ifaces: Vec<(SocketAddr, Net)>,
    /// Data datagrams delivered as `(local, remote, payload)`.
    pub data: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    pub events: Vec<IceEvent>,
    gathering: Vec<([u8; 12], SocketAddr, u8, Instant)>,
    gather_done_at: Option<Instant>,
    local_end_sent: bool,
    /// Withhold LocalCandidate signals until this instant (late trickle).
    pub signal_delay: Duration,
    /// Its candidates never reach the peer, only its end-of-candidates does (as a
    /// browser's mDNS host names reach an agent that does not resolve them).
    pub hide_candidates: bool,
}

#[derive(Debug)]
struct InFlight {
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

pub const STUN_SERVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub rng: SimRng,
    pub link: Link,
    nats: Vec<Nat>,
    pub peers: Vec<Peer>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: HashMap<u64, InFlight>,
    signals: VecDeque<(Instant, usize, Signal)>,
    seq: u64,
    /// Datagrams sent / dropped by loss / dropped by NAT or routing.
    pub sent: u64,
    pub lost: u64,
    pub filtered: u64,
    pub signal_latency: Duration,
}

impl Sim {
    pub fn new(seed: u64, link: Link) -> Self {
        let start = Instant::now();
        Sim {
            now: start,
            start,
            rng: SimRng::new(seed),
            link,
            nats: Vec::new(),
            peers: Vec::new(),
            queue: BinaryHeap::new(),
            packets: HashMap::new(),
            signals: VecDeque::new(),
            seq: 0,
            sent: 0,
            lost: 0,
            filtered: 0,
            signal_latency: Duration::from_millis(30),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Adds a peer; host candidates are added at once, srflx ones as the STUN server
    /// answers. Returns its index.
    pub fn add_peer(&mut self, cfg: IceConfig, spec: HostSpec) -> usize {
        let i = self.peers.len();
        let mut agent = IceAgent::new(cfg).expect("config");
        let mut ifaces = Vec::new();
        for k in 0..spec.v4_ifaces {
            let port = 5000 + k as u16;
            match spec.nat {
                Some(kind) => {
                    let n = self.nats.len();
                    self.nats.push(Nat {
                        public_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, (10 + n) as u8)),
                        kind,
                        next_port: 40000 + (self.rng.next_u64() % 1000) as u16,
                        map: HashMap::new(),
                        reverse: HashMap::new(),
                    });
                    let ip = Ipv4Addr::new(10, i as u8, k as u8, 2);
                    ifaces.push((SocketAddr::new(ip.into(), port), Net::Lan(n)));
                }
                None => {
                    let ip = Ipv4Addr::new(198, 18, i as u8, 2 + k as u8);
                    ifaces.push((SocketAddr::new(ip.into(), port), Net::Public));
                }
            }
        }
        if spec.ipv6 {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 2);
            ifaces.push((SocketAddr::new(ip.into(), 6000), Net::Public));
        }
        for (a, _) in &ifaces {
            agent.add_local_candidate(Candidate::host(*a)).unwrap();
        }
        let mut gathering = Vec::new();
        if spec.srflx {
            for (a, _) in &ifaces {
                if a.is_ipv4() {
                    let mut tid = [0u8; 12];
                    tid[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                    gathering.push((tid, *a, 0, self.now));
                }
            }
        }
        agent.handle_timeout(self.now);
        self.peers.push(Peer {
            agent,
            ifaces,
            data: Vec::new(),
            events: Vec::new(),
            gathering,
            gather_done_at: None,
            local_end_sent: false,
            signal_delay: Duration::ZERO,
            hide_candidates: false,
        });
        i
    }

    /// Gives peer `i` a relayed candidate at the public address `relay`: a forwarding
    /// host standing in for a TURN allocation. Datagrams anyone sends to `relay` reach the
    /// agent as received on that candidate's base (`relay` itself), and the agent's
    /// transmits from that base leave from `relay` — no NAT, no filtering, no extra hop.
    /// `mapped` is only the candidate's `raddr`.
    pub fn add_relay(&mut self, i: usize, relay: SocketAddr, mapped: SocketAddr) {
        assert!(
            self.net_of(relay).is_none() && self.nats.iter().all(|n| n.public_ip != relay.ip()),
            "relay address {relay} already in use"
        );
        self.peers[i].ifaces.push((relay, Net::Public));
        self.peers[i]
            .agent
            .add_local_candidate(Candidate::relayed(relay, mapped))
            .unwrap();
        let now = self.now;
        self.peers[i].agent.handle_timeout(now);
    }

    /// Exchanges credentials between peers `a` and `b` (signalling is instantaneous here;
    /// candidates trickle through [`Sim::signal_latency`]).
    pub fn exchange_credentials(&mut self, a: usize, b: usize) {
        let (u, p) = {
            let (u, p) = self.peers[a].agent.local_credentials();
            (u.to_owned(), p.to_owned())
        };
        self.peers[b].agent.set_remote_credentials(&u, &p).unwrap();
        let (u, p) = {
            let (u, p) = self.peers[b].agent.local_credentials();
            (u.to_owned(), p.to_owned())
        };
        self.peers[a].agent.set_remote_credentials(&u, &p).unwrap();
    }

    fn net_of(&self, addr: SocketAddr) -> Option<(usize, Net)> {
        self.peers.iter().enumerate().find_map(|(i, p)| {
            p.ifaces
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, n)| (i, *n))
        })
    }

    /// Sends a datagram from `src` (an interface address or the STUN server).
    pub fn send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.sent += 1;
        let mut src = src;
        if let Some((_, Net::Lan(n))) = self.net_of(src) {
            // Same LAN: delivered directly. Otherwise through the NAT.
            let same_lan = matches!(self.net_of(dst), Some((_, Net::Lan(m))) if m == n);
            if !same_lan {
                if dst.is_ipv6() {
                    self.filtered += 1;
                    return;
                }
                src = self.nats[n].outbound(src, dst);
            }
        }
        if self.rng.chance(self.link.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut d = self.link.delay + self.rng.dur(self.link.jitter);
            if self.rng.chance(self.link.reorder) {
                d += self.rng.dur(self.link.delay * 4);
            }
            self.seq += 1;
            self.queue.push(Reverse((self.now + d, self.seq)));
            self.packets.insert(
                self.seq,
                InFlight {
                    src,
                    dst,
                    data: data.clone(),
                },
            );
        }
    }

    fn arrive(&mut self, pkt: InFlight) {
        let InFlight { src, mut dst, data } = pkt;
        if dst == STUN_SERVER {
            return self.stun_server(src, &data);
        }
        if let Some(n) = self.nats.iter().position(|n| n.public_ip == dst.ip()) {
            match self.nats[n].inbound(src, dst.port()) {
                Some(internal) => dst = internal,
                None => {
                    self.filtered += 1;
                    return;
                }
            }
        } else if let Some((_, Net::Lan(n))) = self.net_of(dst) {
            // A private address is reachable only from its own LAN.
            let from_lan = matches!(self.net_of(src), Some((_, Net::Lan(m))) if m == n);
            if !from_lan {
                self.filtered += 1;
                return;
            }
        }
        let Some((pi, _)) = self.net_of(dst) else {
            self.filtered += 1;
            return;
        };
        let now = self.now;
        let peer = &mut self.peers[pi];
        // Answers to our own srflx gathering.
        if let Ok(m) = Message::parse(&data)
            && m.class() == Class::Success
            && let Some(g) = peer
                .gathering
                .iter()
                .position(|g| &g.0 == m.transaction_id())
        {
            let (_, base, _, _) = peer.gathering.swap_remove(g);
            if let Some(Ok(mapped)) = m.xor_mapped_address()
                && mapped != base
            {
                peer.agent
                    .add_local_candidate(Candidate::server_reflexive(mapped, base))
                    .unwrap();
            }
            return;
        }
        let rx = Received {
            source: src,
            destination: dst,
            contents: &data,
        };
        if peer.agent.handle_packet(now, rx) == Handled::Data {
            peer.data.push((dst, src, data));
        }
    }

    fn stun_server(&mut self, src: SocketAddr, data: &[u8]) {
        let Ok(m) = Message::parse(data) else { return };
        if m.class() != Class::Request {
            return;
        }
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::BINDING, Class::Success),
            m.transaction_id(),
        )
        .unwrap();
        w.add_xor_address(attr::XOR_MAPPED_ADDRESS, src).unwrap();
        let n = w.finish();
        self.send(STUN_SERVER, src, buf[..n].to_vec());
    }

    /// Sends `payload` (first byte ≥ 128, i.e. not STUN) from peer `i`'s selected pair.
    pub fn send_data(&mut self, i: usize, payload: &[u8]) -> bool {
        match self.peers[i].agent.selected_pair() {
            Some((l, r)) => {
                self.send(l, r, payload.to_vec());
                true
            }
            None => false,
        }
    }

    /// Runs until `stop` holds or `limit` of virtual time passed. Returns whether `stop`.
    pub fn run(&mut self, limit: Duration, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        let mut buf = vec![0u8; 1500];
        let mut spins = 0u32;
        let mut last = self.now;
        loop {
            // Flush every peer: timers, transmits, events → signals, gathering.
            for i in 0..self.peers.len() {
                self.service_peer(i, &mut buf);
            }
            if stop(self) {
                return true;
            }
            let mut next = deadline;
            if let Some(Reverse((t, _))) = self.queue.peek() {
                next = next.min(*t);
            }
            if let Some((t, _, _)) = self.signals.front() {
                next = next.min(*t);
            }
            for p in &self.peers {
                if let Some(t) = p.agent.poll_timeout() {
                    next = next.min(t);
                }
                for g in &p.gathering {
                    next = next.min(g.3);
                }
                if let Some(t) = p.gather_done_at
                    && !p.local_end_sent
                {
                    next = next.min(t);
                }
            }
            if next >= deadline && self.now >= deadline {
                return false;
            }
            if next <= self.now {
                spins += 1;
                assert!(spins < 100_000, "simulation stuck at {:?}", self.elapsed());
            } else {
                spins = 0;
            }
            self.now = next.max(self.now);
            if self.now != last {
                last = self.now;
            }
            while let Some(Reverse((t, s))) = self.queue.peek().copied() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                let pkt = self.packets.remove(&s).unwrap();
                self.arrive(pkt);
            }
            while self.signals.front().is_some_and(|s| s.0 <= self.now) {
                let (_, to, sig) = self.signals.pop_front().unwrap();
                let a = &mut self.peers[to].agent;
                match sig {
                    Signal::Candidate(c) => a.add_remote_candidate(*c).unwrap(),
                    Signal::End => a.end_of_remote_candidates(),
                }
            }
            if self.now >= deadline {
                for i in 0..self.peers.len() {
                    self.service_peer(i, &mut buf);
                }
                return stop(self);
            }
        }
    }

    fn service_peer(&mut self, i: usize, buf: &mut [u8]) {
        let now = self.now;
        // srflx gathering with retransmissions (250 ms, 10 tries).
        let mut out = Vec::new();
        {
            let p = &mut self.peers[i];
            for g in &mut p.gathering {
                if g.3 <= now {
                    if g.2 >= 10 {
                        g.2 = u8::MAX;
                        continue;
                    }
                    g.2 += 1;
                    g.3 = now + Duration::from_millis(250);
                    let mut b = [0u8; 20];
                    let w = MessageWriter::new(
                        &mut b,
                        MessageType::new(Method::BINDING, Class::Request),
                        &g.0,
                    )
                    .unwrap();
                    let n = w.finish();
                    out.push((g.1, b[..n].to_vec()));
                }
            }
            p.gathering.retain(|g| g.2 != u8::MAX);
            if p.gathering.is_empty() && p.gather_done_at.is_none() {
                p.gather_done_at = Some(now);
            }
            if !p.local_end_sent && p.gather_done_at.is_some_and(|t| t <= now) {
                p.local_end_sent = true;
                p.agent.end_of_local_candidates();
            }
            if p.agent.poll_timeout().is_some_and(|t| t <= now) {
                p.agent.handle_timeout(now);
            }
        }
        for (src, data) in out {
            self.send(src, STUN_SERVER, data);
        }
        while let Some(t) = self.peers[i].agent.poll_transmit(now, buf) {
            let data = buf[..t.size].to_vec();
            self.send(t.source, t.destination, data);
        }
        let other = if i.is_multiple_of(2) { i + 1 } else { i - 1 };
        while let Some(e) = self.peers[i].agent.poll_event() {
            if other < self.peers.len() {
                let lat = self.signal_latency + self.peers[i].signal_delay;
                match &e {
                    IceEvent::LocalCandidate(_) if self.peers[i].hide_candidates => {}
                    IceEvent::LocalCandidate(c) => {
                        // Round-trip through SDP like a real signalling channel.
                        let c = Candidate::from_sdp(&c.to_sdp()).unwrap();
                        self.signals
                            .push_back((now + lat, other, Signal::Candidate(Box::new(c))))
                    }
                    IceEvent::GatheringComplete => {
                        self.signals.push_back((now + lat, other, Signal::End))
                    }
                    _ => {}
                }
                self.signals.make_contiguous().sort_by_key(|s| s.0);
            }
            self.peers[i].events.push(e);
        }
    }

    pub fn state(&self, i: usize) -> ConnectionState {
        self.peers[i].agent.state()
    }

    pub fn both_connected(&self) -> bool {
        self.peers.iter().all(|p| {
            p.agent.selected_pair().is_some()
                && matches!(
                    p.agent.state(),
                    ConnectionState::Connected | ConnectionState::Completed
                )
        })
    }

    pub fn any_failed(&self) -> bool {
        self.peers
            .iter()
            .any(|p| p.agent.state() == ConnectionState::Failed)
    }

    /// Sends probes both ways over the selected pairs and checks each side received the
    /// other's on exactly its own selected pair: the two agents agree on the pair.
    pub fn verify_same_pair(&mut self, tries: usize) -> bool {
        for p in &mut self.peers {
            p.data.clear();
        }
        for k in 0..tries {
            self.send_data(0, &[0x80, 0, k as u8]);
            self.send_data(1, &[0x80, 1, k as u8]);
        }
        self.run(Duration::from_millis(500), |s| {
            s.peers.iter().all(|p| !p.data.is_empty())
        });
        (0..2).all(|i| {
            let sel = self.peers[i].agent.selected_pair();
            let p = &self.peers[i];
            !p.data.is_empty() && p.data.iter().all(|(l, r, _)| Some((*l, *r)) == sel)
        })
    }
}

/// A default config for peer `i` of a scenario seeded with `seed`.
pub fn config(seed: u64, controlling: bool) -> IceConfig {
    IceConfig {
        controlling,
        seed,
        ..Default::default()
    }
}
