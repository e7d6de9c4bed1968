//! Candidates (RFC 8445 §5.1): kinds, foundations (§5.1.1.3) and priorities (§5.1.2).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::net::Protocol;

/// The four candidate types of RFC 8445 §5.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address on a local interface.
    Host,
    /// The address a STUN server saw (mapped by a NAT).
    ServerReflexive,
    /// Learned from a connectivity check (§7.2.5.3.1, §7.3.1.3).
    PeerReflexive,
    /// An address allocated on a TURN relay.
    Relayed,
}

impl CandidateKind {
    /// The recommended type preference (RFC 8445 §5.1.2.2).
    pub const fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::Relayed => 0,
        }
    }

    /// The SDP token (`host`, `srflx`, `prflx`, `relay`).
    pub const fn as_str(self) -> &'static str {
        match self {
            CandidateKind::Host => "host",
            CandidateKind::ServerReflexive => "srflx",
            CandidateKind::PeerReflexive => "prflx",
            CandidateKind::Relayed => "relay",
        }
    }
}

/// ICE-TCP candidate role (RFC 6544 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpType {
    /// Opens connections.
    Active,
    /// Accepts connections.
    Passive,
    /// Simultaneous open.
    SimultaneousOpen,
}

impl TcpType {
    /// The SDP token.
    pub const fn as_str(self) -> &'static str {
        match self {
            TcpType::Active => "active",
            TcpType::Passive => "passive",
            TcpType::SimultaneousOpen => "so",
        }
    }
}

/// A foundation: 1 to 32 ice-chars (RFC 8445 §5.1.1.3), stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Foundation {
    len: u8,
    bytes: [u8; 32],
}

impl Foundation {
    /// From text; `None` unless 1..=32 ice-chars.
    pub fn new(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 32 || !b.iter().all(|c| is_ice_char(*c)) {
            return None;
        }
        let mut bytes = [0; 32];
        bytes[..b.len()].copy_from_slice(b);
        Some(Foundation {
            len: b.len() as u8,
            bytes,
        })
    }

    /// A decimal foundation derived from a hash (how pion/ice and libwebrtc write them).
    pub fn from_hash(h: u32) -> Self {
        // Decimal digits written in place (at most 10 for a u32): no formatting machinery.
        let mut digits = [0u8; 10];
        let mut n = h;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0; 32];
        bytes[..digits.len() - i].copy_from_slice(&digits[i..]);
        Foundation {
            len: (digits.len() - i) as u8,
            bytes,
        }
    }

    /// As text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// As bytes (ice-chars, so also the text's UTF-8), without re-validating them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for Foundation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Foundation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ALPHA / DIGIT / "+" / "/" (RFC 8445 §15.1).
#[inline]
pub(crate) fn is_ice_char(c: u8) -> bool {
    ICE_CHAR[usize::from(c)]
}

/// [`is_ice_char`] as a table: one load per byte when credentials are validated.
const ICE_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
        i += 1;
    }
    t
};

/// SDP extension attributes that browsers append (`generation`, `ufrag`, `network-id`,
/// `network-cost`) plus any others, kept so a candidate line round-trips.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// `generation N` (libwebrtc).
    pub generation: Option<u32>,
    /// `ufrag X` (libwebrtc): the ufrag the candidate belongs to.
    pub ufrag: Option<Box<str>>,
    /// `network-id N` (libwebrtc).
    pub network_id: Option<u32>,
    /// `network-cost N` (libwebrtc).
    pub network_cost: Option<u32>,
    /// Any other `name value` pairs, in order.
    pub other: Vec<(Box<str>, Box<str>)>,
}

/// A candidate (RFC 8445 §5.1).
///
/// Build local candidates with [`Candidate::host`], [`Candidate::server_reflexive`] or
/// [`Candidate::relayed`]; parse remote ones with [`Candidate::from_sdp`]. The agent assigns
/// priorities to local candidates (see [`IceAgent::add_local_candidate`]).
///
/// [`IceAgent::add_local_candidate`]: super::IceAgent::add_local_candidate
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Foundation (§5.1.1.3).
    pub foundation: Foundation,
    /// Component id: 1 = RTP/data, 2 = RTCP (§5.1.1).
    pub component: u16,
    /// Transport.
    pub protocol: Protocol,
    /// Priority (§5.1.2).
    pub priority: u32,
    /// Transport address.
    pub addr: SocketAddr,
    /// Type.
    pub kind: CandidateKind,
    /// Related address (`raddr`/`rport`): the base for srflx/prflx, the mapped address for
    /// relay.
    pub related: Option<SocketAddr>,
    /// The base (§5.1.1.2) a local candidate sends from: itself for host and relay
    /// candidates, the host address for server/peer-reflexive ones. Equals `addr` for remote
    /// candidates.
    pub base: SocketAddr,
    /// ICE-TCP type, parsed and printed; the agent checks UDP candidates only.
    pub tcptype: Option<TcpType>,
    /// SDP extensions, `None` when the line had none (boxed: most candidates have none,
    /// and every agent keeps its candidates).
    pub extensions: Option<Box<Extensions>>,
}

/// RFC 8445 §5.1.2.1: `(2^24)*type + (2^8)*local + (256 - component)`.
pub const fn priority(kind: CandidateKind, local_preference: u16, component: u16) -> u32 {
    (kind.type_preference() << 24)
        | ((local_preference as u32) << 8)
        | (256 - (component as u32 & 0xFF)) & 0xFF
}

/// Default local preference (§5.1.2.1): IPv6 before IPv4 (RFC 8421 prefers IPv6 when both
/// work), and the `interface_index`-th interface of a family lower than the one before.
pub fn local_preference(ip: IpAddr, interface_index: u16) -> u16 {
    let top: u16 = match ip {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => 0x3FFF,
        IpAddr::V6(_) => 0xFFFF,
        IpAddr::V4(_) => 0x7FFF,
    };
    top.saturating_sub(interface_index.saturating_mul(128))
}

fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for p in parts {
        for b in *p {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h ^= 0xFF;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// §5.1.1.3: same type, base IP, server IP and transport → same foundation. The server is
/// unknown to the sans-IO agent, so the related address stands in for it.
pub fn compute_foundation(
    kind: CandidateKind,
    base: IpAddr,
    server: Option<IpAddr>,
    protocol: Protocol,
) -> Foundation {
    let server = server.map(ip_bytes).unwrap_or([0; 16]);
    let proto: &[u8] = match protocol {
        Protocol::Udp => b"udp",
        Protocol::Tcp => b"tcp",
    };
    Foundation::from_hash(fnv1a(&[
        kind.as_str().as_bytes(),
        &ip_bytes(base),
        &server,
        proto,
    ]))
}

impl Candidate {
    fn make(
        kind: CandidateKind,
        addr: SocketAddr,
        base: SocketAddr,
        related: Option<SocketAddr>,
    ) -> Self {
        let server = match kind {
            CandidateKind::Relayed => related.map(|r| r.ip()),
            _ => None,
        };
        Candidate {
            foundation: compute_foundation(kind, base.ip(), server, Protocol::Udp),
            component: 1,
            protocol: Protocol::Udp,
            priority: priority(kind, local_preference(base.ip(), 0), 1),
            addr,
            kind,
            related,
            base,
            tcptype: None,
            extensions: None,
        }
    }

    /// A host candidate on a local interface address.
    pub fn host(addr: SocketAddr) -> Self {
        Self::make(CandidateKind::Host, addr, addr, None)
    }

    /// A server-reflexive candidate `mapped` learnt by sending from `base` (RFC 8445
    /// §5.1.1.2). `raddr` is the base.
    pub fn server_reflexive(mapped: SocketAddr, base: SocketAddr) -> Self {
        Self::make(CandidateKind::ServerReflexive, mapped, base, Some(base))
    }

    /// A relayed candidate `relayed` allocated on a TURN server; `mapped` is the client's
    /// server-reflexive address as the server saw it (`raddr`). The runtime sends from a
    /// relayed candidate through its TURN client.
    pub fn relayed(relayed: SocketAddr, mapped: SocketAddr) -> Self {
        Self::make(CandidateKind::Relayed, relayed, relayed, Some(mapped))
    }

    /// A peer-reflexive candidate (§7.2.5.3.1 / §7.3.1.3).
    pub fn peer_reflexive(addr: SocketAddr, base: SocketAddr, priority: u32) -> Self {
        let mut c = Self::make(CandidateKind::PeerReflexive, addr, base, Some(base));
        c.priority = priority;
        c
    }

    /// The same candidate for another component (recomputes the priority's low byte).
    pub fn with_component(mut self, component: u16) -> Self {
        self.component = component;
        self.priority = (self.priority & 0xFFFF_FF00) | (256 - (u32::from(component) & 0xFF));
        self
    }

    /// The local preference bits of the priority.
    pub fn local_preference(&self) -> u16 {
        (self.priority >> 8) as u16
    }
}
