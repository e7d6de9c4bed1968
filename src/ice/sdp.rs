//! Candidate lines (RFC 8839 §5.1), byte-compatible with pion/ice `Candidate.Marshal`:
//!
//! ```text
//! <foundation> <component> udp <priority> <ip> <port> typ <type> [raddr <ip> rport <port>]
//!     [tcptype <t>] [generation N] [ufrag X] [network-id N] [network-cost N] [<name> <value>]*
//! ```
//!
//! Parsing accepts the line with or without `candidate:` / `a=candidate:`, `UDP` in any
//! case, and extension pairs in any order.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use super::IceError;
use super::candidate::{Candidate, CandidateKind, Extensions, Foundation, TcpType};
use crate::net::Protocol;

impl Candidate {
    /// Parses a candidate attribute value (RFC 8839 §5.1), with or without the
    /// `candidate:` prefix. mDNS (`.local`) addresses are refused as unsupported.
    pub fn from_sdp(line: &str) -> Result<Candidate, IceError> {
        let mut s = line.trim();
        s = s.strip_prefix("a=").unwrap_or(s);
        s = s.strip_prefix("candidate:").unwrap_or(s);
        let mut it = s.split_ascii_whitespace();
        let mut next = |what: &'static str| it.next().ok_or(IceError::BadCandidate(what));
        let foundation =
            Foundation::new(next("foundation")?).ok_or(IceError::BadCandidate("foundation"))?;
        let component: u16 = next("component")?
            .parse()
            .ok()
            .filter(|c| (1..=256).contains(c))
            .ok_or(IceError::BadCandidate("component"))?;
        let transport = next("transport")?;
        let protocol = if transport.eq_ignore_ascii_case("udp") {
            Protocol::Udp
        } else if transport.eq_ignore_ascii_case("tcp") {
            Protocol::Tcp
        } else {
            return Err(IceError::Unsupported("transport"));
        };
        let priority: u32 = next("priority")?
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(IceError::BadCandidate("priority"))?;
        let ip_text = next("address")?;
        let ip: IpAddr = match ip_text.parse() {
            Ok(ip) => ip,
            Err(_) if ip_text.ends_with(".local") => return Err(IceError::Unsupported("mDNS")),
            Err(_) => return Err(IceError::BadCandidate("address")),
        };
        let port: u16 = next("port")?
            .parse()
            .map_err(|_| IceError::BadCandidate("port"))?;
        if next("typ")? != "typ" {
            return Err(IceError::BadCandidate("typ"));
        }
        let kind = match next("type")? {
            "host" => CandidateKind::Host,
            "srflx" => CandidateKind::ServerReflexive,
            "prflx" => CandidateKind::PeerReflexive,
            "relay" => CandidateKind::Relayed,
            _ => return Err(IceError::BadCandidate("type")),
        };
        let mut raddr: Option<IpAddr> = None;
        let mut rport: Option<u16> = None;
        let mut tcptype = None;
        let mut ext: Option<Box<Extensions>> = None;
        while let Some(name) = it.next() {
            let value = it.next().ok_or(IceError::BadCandidate("extension value"))?;
            let num = || {
                value
                    .parse::<u32>()
                    .map_err(|_| IceError::BadCandidate("extension value"))
            };
            match name {
                "raddr" => {
                    raddr = Some(value.parse().map_err(|_| IceError::BadCandidate("raddr"))?)
                }
                "rport" => {
                    rport = Some(value.parse().map_err(|_| IceError::BadCandidate("rport"))?)
                }
                "tcptype" => {
                    tcptype = Some(match value {
                        "active" => TcpType::Active,
                        "passive" => TcpType::Passive,
                        "so" => TcpType::SimultaneousOpen,
                        _ => return Err(IceError::BadCandidate("tcptype")),
                    })
                }
                "generation" => ext.get_or_insert_default().generation = Some(num()?),
                "ufrag" => ext.get_or_insert_default().ufrag = Some(value.into()),
                "network-id" => ext.get_or_insert_default().network_id = Some(num()?),
                "network-cost" => ext.get_or_insert_default().network_cost = Some(num()?),
                _ => ext
                    .get_or_insert_default()
                    .other
                    .push((name.into(), value.into())),
            }
        }
        let related = match (raddr, rport) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            (None, None) => None,
            (Some(ip), None) => Some(SocketAddr::new(ip, 0)),
            (None, Some(_)) => return Err(IceError::BadCandidate("rport without raddr")),
        };
        let addr = SocketAddr::new(ip, port);
        Ok(Candidate {
            foundation,
            component,
            protocol,
            priority,
            addr,
            kind,
            related,
            base: addr,
            tcptype,
            extensions: ext,
        })
    }

    /// The candidate attribute value without the `candidate:` prefix, as pion/ice
    /// `Candidate.Marshal` writes it (plus any extensions the candidate carries).
    pub fn to_sdp(&self) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(s, "{}", SdpDisplay(self));
        s
    }
}

/// `Display` adapter writing [`Candidate::to_sdp`] without allocating.
#[derive(Debug, Clone, Copy)]
pub struct SdpDisplay<'a>(pub &'a Candidate);

impl fmt::Display for SdpDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        let proto = match c.protocol {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        };
        write!(
            f,
            "{} {} {} {} {} {} typ {}",
            c.foundation,
            c.component,
            proto,
            c.priority,
            c.addr.ip(),
            c.addr.port(),
            c.kind.as_str()
        )?;
        if c.kind != CandidateKind::Host
            && let Some(r) = c.related
        {
            write!(f, " raddr {} rport {}", r.ip(), r.port())?;
        }
        if let Some(t) = c.tcptype {
            write!(f, " tcptype {}", t.as_str())?;
        }
        let Some(e) = &c.extensions else {
            return Ok(());
        };
        if let Some(g) = e.generation {
            write!(f, " generation {g}")?;
        }
        if let Some(u) = &e.ufrag {
            write!(f, " ufrag {u}")?;
        }
        if let Some(n) = e.network_id {
            write!(f, " network-id {n}")?;
        }
        if let Some(n) = e.network_cost {
            write!(f, " network-cost {n}")?;
        }
        for (k, v) in &e.other {
            write!(f, " {k} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pion_host_round_trips() {
        let line = "4207374051 1 udp 2130706431 192.168.1.5 50000 typ host";
        let c = Candidate::from_sdp(line).unwrap();
        assert_eq!(c.kind, CandidateKind::Host);
        assert_eq!(c.priority, 2130706431);
        assert_eq!(c.to_sdp(), line);
    }

    #[test]
    fn srflx_with_prefix_and_browser_extensions() {
        let line = "candidate:842163049 1 UDP 1677729535 203.0.113.7 61000 typ srflx raddr 10.0.0.2 rport 61000 generation 0 ufrag EsAw network-id 1 network-cost 10 foo bar";
        let c = Candidate::from_sdp(line).unwrap();
        assert_eq!(c.kind, CandidateKind::ServerReflexive);
        assert_eq!(c.related, Some("10.0.0.2:61000".parse().unwrap()));
        assert_eq!(
            c.extensions.as_ref().unwrap().ufrag.as_deref(),
            Some("EsAw")
        );
        assert_eq!(c.extensions.as_ref().unwrap().network_id, Some(1));
        assert_eq!(
            c.to_sdp(),
            "842163049 1 udp 1677729535 203.0.113.7 61000 typ srflx raddr 10.0.0.2 rport 61000 generation 0 ufrag EsAw network-id 1 network-cost 10 foo bar"
        );
    }

    #[test]
    fn ipv6_tcp_and_errors() {
        let c = Candidate::from_sdp("1 1 tcp 1518280447 2001:db8::1 9 typ host tcptype active")
            .unwrap();
        assert_eq!(c.tcptype, Some(TcpType::Active));
        assert_eq!(c.addr, "[2001:db8::1]:9".parse().unwrap());
        assert_eq!(
            c.to_sdp(),
            "1 1 tcp 1518280447 2001:db8::1 9 typ host tcptype active"
        );
        for bad in [
            "",
            "1 1 udp",
            "1 x udp 1 1.2.3.4 5 typ host",
            "1 1 sctp 1 1.2.3.4 5 typ host",
            "1 1 udp 1 1.2.3.4 5 type host",
            "1 1 udp 1 1.2.3.4 5 typ bogus",
            "1 1 udp 1 1.2.3.4 99999 typ host",
            "1 1 udp 1 1.2.3.4 5 typ host generation",
            "1 1 udp 1 abc.local 5 typ host",
            "\u{e9} 1 udp 1 1.2.3.4 5 typ host",
        ] {
            assert!(Candidate::from_sdp(bad).is_err(), "{bad:?}");
        }
    }
}
