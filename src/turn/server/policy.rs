//! Relay policy: which peer addresses may be relayed to (the coturn CVE-2020-26262 class of
//! bugs: a relay must not become a proxy into the server's own loopback, link-local or
//! private networks), and allocation quotas shared by the shards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashMap;

/// An address block `ip/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    ip: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A block; `prefix` is capped at the family's width.
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        Cidr {
            ip: canonical(ip),
            prefix: prefix.min(max),
        }
    }

    /// Whether `ip` lies in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let shift = 32 - u32::from(self.prefix);
                shift == 32 || (u32::from(net) >> shift) == (u32::from(a) >> shift)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let shift = 128 - u32::from(self.prefix);
                shift == 128 || (u128::from(net) >> shift) == (u128::from(a) >> shift)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fc00::/7`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?,
        };
        Ok(Cidr::new(ip, prefix))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) → IPv4, so a mapped loopback cannot slip through.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which peers may be relayed to.
///
/// Order of the decision: `denied` blocks match → refuse; `allowed` blocks match → allow;
/// loopback → `allow_loopback`; unspecified, "this network" (0/8), link-local, multicast,
/// broadcast, documentation and reserved ranges → refuse; private ranges (RFC 1918, CGNAT
/// 100.64/10, IPv6 ULA fc00::/7, site-local) → `allow_private`; everything else → allow.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Always refused.
    pub denied: Vec<Cidr>,
    /// Allowed even if a default rule would refuse them.
    pub allowed: Vec<Cidr>,
    /// Allow 127.0.0.0/8 and ::1 (tests on one machine).
    pub allow_loopback: bool,
    /// Allow private ranges.
    pub allow_private: bool,
}

impl PeerPolicy {
    /// Whether relaying to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.denied.iter().any(|c| c.contains(ip)) {
            return false;
        }
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return true;
        }
        match ip {
            IpAddr::V4(a) => self.permits_v4(a),
            IpAddr::V6(a) => self.permits_v6(a),
        }
    }

    fn permits_v4(&self, a: Ipv4Addr) -> bool {
        if a.is_loopback() {
            return self.allow_loopback;
        }
        let o = a.octets();
        if a.is_unspecified()
            || o[0] == 0
            || a.is_link_local()
            || a.is_multicast()
            || a.is_broadcast()
            || a.is_documentation()
            || o[0] >= 240
        {
            return false;
        }
        let cgnat = o[0] == 100 && (o[1] & 0xC0) == 64;
        if a.is_private() || cgnat {
            return self.allow_private;
        }
        true
    }

    fn permits_v6(&self, a: Ipv6Addr) -> bool {
        if a.is_loopback() {
            return self.allow_loopback;
        }
        let s = a.segments();
        if a.is_unspecified()
            || a.is_multicast()
            || (s[0] & 0xFFC0) == 0xFE80 // link-local
            || (s[0] == 0x2001 && s[1] == 0x0DB8) // documentation
            || (s[0] == 0x64 && s[1] == 0xFF9B) // NAT64: would reach IPv4 space unchecked
            || a.to_ipv4().is_some_and(|_| s[0..6] == [0; 6])
        // IPv4-compatible (deprecated)
        {
            return false;
        }
        if (s[0] & 0xFE00) == 0xFC00 || (s[0] & 0xFFC0) == 0xFEC0 {
            return self.allow_private;
        }
        true
    }
}

/// Allocation quotas shared by all shards: touched only when an allocation is created or
/// freed, never per packet.
#[derive(Debug, Default)]
pub struct Quotas {
    total: AtomicU32,
    per_user: Mutex<HashMap<String, u32>>,
}

/// Why a quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// The user has `user_quota` allocations (486).
    User,
    /// The server has `total_quota` allocations (508).
    Total,
}

impl Quotas {
    /// Takes one allocation for `user` if both limits allow it (0 = unlimited).
    pub fn acquire(&self, user: &str, user_quota: u32, total_quota: u32) -> Result<(), QuotaError> {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(user).copied().unwrap_or(0);
        if user_quota != 0 && held >= user_quota {
            return Err(QuotaError::User);
        }
        let prev = self.total.fetch_add(1, Ordering::Relaxed);
        if total_quota != 0 && prev >= total_quota {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(QuotaError::Total);
        }
        *users.entry_ref(user).or_insert(0) += 1;
        Ok(())
    }

    /// Returns one allocation of `user`.
    pub fn release(&self, user: &str) {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Allocations held, all shards.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// RESERVATION-TOKENs (EVEN-PORT R=1, RFC 8656 §14.9), shared by all shards: the
/// Allocate carrying the token may land on another shard than the one that reserved the
/// port (SO_REUSEPORT hashes the client's new 5-tuple). Touched only by Allocate and the
/// sweep.
#[derive(Debug, Default)]
pub struct Reservations {
    map: Mutex<HashMap<[u8; 8], (std::net::SocketAddr, std::time::Instant)>>,
}

impl Reservations {
    /// Records a reserved relay address until `until`.
    pub fn insert(&self, token: [u8; 8], addr: std::net::SocketAddr, until: std::time::Instant) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(token, (addr, until));
    }

    /// The address a token reserves, if live.
    pub fn peek(&self, token: &[u8; 8], now: std::time::Instant) -> Option<std::net::SocketAddr> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(token).filter(|(_, t)| *t > now).map(|(a, _)| *a)
    }

    /// Takes a live token.
    pub fn take(&self, token: &[u8; 8], now: std::time::Instant) -> Option<std::net::SocketAddr> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.remove(token) {
            Some((a, t)) if t > now => Some(a),
            _ => None,
        }
    }

    /// Removes expired tokens, returning their addresses (to release the parked sockets).
    pub fn expire(&self, now: std::time::Instant) -> Vec<std::net::SocketAddr> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        m.retain(|_, (a, t)| {
            let keep = *t > now;
            if !keep {
                gone.push(*a);
            }
            keep
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_internal_ranges() {
        let p = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "::",
            "64:ff9b::7f00:1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.permits(ip(bad)), "{bad} must be refused");
        }
        for good in ["8.8.8.8", "2001:4860::8888", "193.0.0.1"] {
            assert!(p.permits(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn lists_and_flags_override() {
        let p = PeerPolicy {
            denied: vec!["8.8.0.0/16".parse().unwrap()],
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
            allow_loopback: true,
            allow_private: false,
        };
        assert!(!p.permits(ip("8.8.8.8")));
        assert!(p.permits(ip("10.9.9.9")));
        assert!(!p.permits(ip("192.168.0.1")));
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert!(Cidr::from_str("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    }

    #[test]
    fn quotas_count_per_user_and_total() {
        let q = Quotas::default();
        q.acquire("a", 2, 3).unwrap();
        q.acquire("a", 2, 3).unwrap();
        assert_eq!(q.acquire("a", 2, 3), Err(QuotaError::User));
        q.acquire("b", 2, 3).unwrap();
        assert_eq!(q.acquire("c", 2, 3), Err(QuotaError::Total));
        q.release("a");
        q.acquire("c", 2, 3).unwrap();
        assert_eq!(q.total(), 3);
    }
}
