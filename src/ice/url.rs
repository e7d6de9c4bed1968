//! STUN and TURN server URIs: `stun:` / `stuns:` (RFC 7064 §3.1) and `turn:` / `turns:`
//! (RFC 7065 §3.1). Pure parsing: host names are kept as text for the runtime to resolve.
//!
//! ```text
//! stunURI = scheme ":" host [ ":" port ]                       scheme = "stun" / "stuns"
//! turnURI = scheme ":" host [ ":" port ] [ "?transport=" transport ]
//!                                                              scheme = "turn" / "turns"
//! host    = IP-literal ("[" IPv6 "]") / IPv4address / reg-name   (RFC 3986 §3.2.2)
//! ```
//!
//! Default ports are 3478 (`stun`, `turn`) and 5349 (`stuns`, `turns`, over TLS). A TURN
//! URI without `?transport=` means UDP for `turn:` and TCP for `turns:` (RFC 7065 §3.1:
//! TLS runs over TCP). Schemes and the `transport` key compare case-insensitively.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use thiserror::Error;

use crate::net::Protocol;

/// The four URI schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `stun:` (RFC 7064).
    Stun,
    /// `stuns:` STUN over TLS (RFC 7064).
    Stuns,
    /// `turn:` (RFC 7065).
    Turn,
    /// `turns:` TURN over TLS (RFC 7065).
    Turns,
}

impl Scheme {
    /// The scheme as written in a URI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Stun => "stun",
            Scheme::Stuns => "stuns",
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        }
    }

    /// Default port: 3478, or 5349 for the TLS schemes (RFC 7064 §3.1, RFC 7065 §3.1).
    pub const fn default_port(self) -> u16 {
        match self {
            Scheme::Stun | Scheme::Turn => 3478,
            Scheme::Stuns | Scheme::Turns => 5349,
        }
    }

    /// Whether the scheme asks for TLS.
    pub const fn is_secure(self) -> bool {
        matches!(self, Scheme::Stuns | Scheme::Turns)
    }

    /// Whether this is a TURN scheme.
    pub const fn is_turn(self) -> bool {
        matches!(self, Scheme::Turn | Scheme::Turns)
    }
}

/// The host part: an IP literal or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// IPv4 address or bracketed IPv6 literal.
    Ip(IpAddr),
    /// A registered name (not resolved here).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A parsed STUN or TURN URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IceUrl {
    /// Scheme.
    pub scheme: Scheme,
    /// Host.
    pub host: Host,
    /// Port (the scheme's default when absent).
    pub port: u16,
    /// Transport to reach the server: UDP for `stun:`/`turn:` by default, TCP for the TLS
    /// schemes; `?transport=` overrides it for TURN.
    pub transport: Protocol,
}

/// Why a string is not a STUN/TURN URI.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// No `scheme:` prefix.
    #[error("missing scheme (expected stun:, stuns:, turn: or turns:)")]
    MissingScheme,
    /// A scheme other than the four.
    #[error("unknown scheme {0:?} (expected stun, stuns, turn or turns)")]
    UnknownScheme(String),
    /// `scheme://host`: these URIs have no authority part (RFC 7064 §3.1).
    #[error("no \"//\" after the scheme: write stun:host, not stun://host")]
    Authority,
    /// `user@` or a path: not allowed in STUN/TURN URIs.
    #[error("user info and paths are not allowed")]
    Unexpected,
    /// Empty host.
    #[error("missing host")]
    MissingHost,
    /// A host that is neither an IP literal nor a valid name.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// A port that is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// A query on a `stun:`/`stuns:` URI, or a key other than `transport`.
    #[error("invalid query {0:?} (only turn URIs take ?transport=udp|tcp)")]
    BadQuery(String),
    /// `transport=` other than `udp` or `tcp`.
    #[error("unknown transport {0:?} (expected udp or tcp)")]
    BadTransport(String),
    /// `turns:` with `transport=udp` (that would be DTLS, not supported).
    #[error("turns: with transport=udp (DTLS) is not supported")]
    SecureUdp,
}

impl IceUrl {
    /// Parses a URI (RFC 7064 §3.1, RFC 7065 §3.1).
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = s.split_once(':').ok_or(UrlError::MissingScheme)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "stuns" => Scheme::Stuns,
            "turn" => Scheme::Turn,
            "turns" => Scheme::Turns,
            "" => return Err(UrlError::MissingScheme),
            other => return Err(UrlError::UnknownScheme(other.to_owned())),
        };
        if rest.starts_with("//") {
            return Err(UrlError::Authority);
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        if hostport.contains(['@', '/', '#']) {
            return Err(UrlError::Unexpected);
        }
        let (host, port) = split_host_port(hostport)?;
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(UrlError::BadPort(p.to_owned())),
            },
        };
        let mut transport = if scheme.is_secure() {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        if let Some(q) = query {
            if !scheme.is_turn() {
                return Err(UrlError::BadQuery(q.to_owned()));
            }
            let (key, value) = q
                .split_once('=')
                .ok_or_else(|| UrlError::BadQuery(q.to_owned()))?;
            if !key.eq_ignore_ascii_case("transport") {
                return Err(UrlError::BadQuery(q.to_owned()));
            }
            transport = match value.to_ascii_lowercase().as_str() {
                "udp" => Protocol::Udp,
                "tcp" => Protocol::Tcp,
                _ => return Err(UrlError::BadTransport(value.to_owned())),
            };
            if scheme == Scheme::Turns && transport == Protocol::Udp {
                return Err(UrlError::SecureUdp);
            }
        }
        Ok(IceUrl {
            scheme,
            host,
            port,
            transport,
        })
    }

    /// `host:port` for resolution (`[v6]:port` for IPv6 literals).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for IceUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        IceUrl::parse(s)
    }
}

impl fmt::Display for IceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.scheme.as_str(), self.host, self.port)?;
        if self.scheme.is_turn() {
            let t = match self.transport {
                Protocol::Udp => "udp",
                Protocol::Tcp => "tcp",
            };
            write!(f, "?transport={t}")?;
        }
        Ok(())
    }
}

/// Splits `host[:port]`, where host may be `[v6]`.
fn split_host_port(s: &str) -> Result<(Host, Option<&str>), UrlError> {
    if s.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (lit, after) = rest
            .split_once(']')
            .ok_or_else(|| UrlError::BadHost(s.to_owned()))?;
        let ip: Ipv6Addr = lit.parse().map_err(|_| UrlError::BadHost(s.to_owned()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| UrlError::BadHost(s.to_owned()))?,
            ),
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => {
            if p.contains(':') {
                // An unbracketed IPv6 literal (RFC 3986 requires brackets).
                return Err(UrlError::BadHost(s.to_owned()));
            }
            (h, Some(p))
        }
        None => (s, None),
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    if !valid_reg_name(host) {
        return Err(UrlError::BadHost(host.to_owned()));
    }
    Ok((Host::Name(host.to_owned()), port))
}

/// A DNS-style name: labels of letters, digits and `-` (not at either end), dot-separated,
/// at most 253 characters (an optional trailing dot allowed). Stricter than RFC 3986's
/// reg-name, which would admit percent-encoding and sub-delims no resolver accepts.
fn valid_reg_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    // All-numeric dotted names look like a mistyped IPv4 address: refuse them.
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    h.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }
    fn name(s: &str) -> Host {
        Host::Name(s.into())
    }

    #[test]
    fn good_uris() {
        use Protocol::{Tcp, Udp};
        use Scheme::*;
        let table: &[(&str, Scheme, Host, u16, Protocol)] = &[
            (
                "stun:stun.l.google.com:19302",
                Stun,
                name("stun.l.google.com"),
                19302,
                Udp,
            ),
            ("stun:example.org", Stun, name("example.org"), 3478, Udp),
            ("STUN:example.org", Stun, name("example.org"), 3478, Udp),
            ("stuns:example.org", Stuns, name("example.org"), 5349, Tcp),
            ("stun:192.0.2.1", Stun, ip("192.0.2.1"), 3478, Udp),
            ("stun:[2001:db8::1]", Stun, ip("2001:db8::1"), 3478, Udp),
            (
                "stun:[2001:db8::1]:9999",
                Stun,
                ip("2001:db8::1"),
                9999,
                Udp,
            ),
            ("turn:127.0.0.1:3478", Turn, ip("127.0.0.1"), 3478, Udp),
            ("turn:example.org", Turn, name("example.org"), 3478, Udp),
            (
                "turn:example.org?transport=tcp",
                Turn,
                name("example.org"),
                3478,
                Tcp,
            ),
            (
                "turn:example.org:1234?transport=udp",
                Turn,
                name("example.org"),
                1234,
                Udp,
            ),
            ("turn:[::1]:3479?Transport=TCP", Turn, ip("::1"), 3479, Tcp),
            ("turns:example.org", Turns, name("example.org"), 5349, Tcp),
            (
                "turns:example.org:443?transport=tcp",
                Turns,
                name("example.org"),
                443,
                Tcp,
            ),
            ("turn:a-b.example.:80", Turn, name("a-b.example."), 80, Udp),
        ];
        for (s, scheme, host, port, transport) in table {
            let u = IceUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (u.scheme, &u.host, u.port, u.transport),
                (*scheme, host, *port, *transport),
                "{s}"
            );
            // Display round-trips to the same URI.
            assert_eq!(IceUrl::parse(&u.to_string()).unwrap(), u, "{s}");
        }
        assert_eq!(
            IceUrl::parse("turn:[::1]:5000").unwrap().host_port(),
            "[::1]:5000"
        );
    }

    #[test]
    fn bad_uris() {
        let table: &[(&str, UrlError)] = &[
            ("example.org", UrlError::MissingScheme),
            (":example.org", UrlError::MissingScheme),
            ("http:example.org", UrlError::UnknownScheme("http".into())),
            ("stun://example.org", UrlError::Authority),
            ("turn:user@example.org", UrlError::Unexpected),
            ("stun:example.org/path", UrlError::Unexpected),
            ("stun:", UrlError::MissingHost),
            ("stun::3478", UrlError::MissingHost),
            ("stun:example.org:", UrlError::BadPort("".into())),
            ("stun:example.org:0", UrlError::BadPort("0".into())),
            ("stun:example.org:65536", UrlError::BadPort("65536".into())),
            ("stun:example.org:+12", UrlError::BadPort("+12".into())),
            ("stun:example.org:x", UrlError::BadPort("x".into())),
            ("stun:2001:db8::1", UrlError::BadHost("2001:db8::1".into())),
            (
                "stun:[2001:db8::1",
                UrlError::BadHost("[2001:db8::1".into()),
            ),
            ("stun:[192.0.2.1]", UrlError::BadHost("[192.0.2.1]".into())),
            ("stun:[::1]x", UrlError::BadHost("[::1]x".into())),
            (
                "stun:exa_mple.org",
                UrlError::BadHost("exa_mple.org".into()),
            ),
            ("stun:-a.org", UrlError::BadHost("-a.org".into())),
            ("stun:a..org", UrlError::BadHost("a..org".into())),
            ("stun:256.1.1.1", UrlError::BadHost("256.1.1.1".into())),
            (
                "stun:example.org?transport=udp",
                UrlError::BadQuery("transport=udp".into()),
            ),
            (
                "turn:example.org?proto=udp",
                UrlError::BadQuery("proto=udp".into()),
            ),
            (
                "turn:example.org?transport",
                UrlError::BadQuery("transport".into()),
            ),
            (
                "turn:example.org?transport=sctp",
                UrlError::BadTransport("sctp".into()),
            ),
            ("turns:example.org?transport=udp", UrlError::SecureUdp),
        ];
        for (s, want) in table {
            assert_eq!(IceUrl::parse(s).as_ref(), Err(want), "{s}");
        }
    }
}
