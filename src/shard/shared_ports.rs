//! Shared-port relay sockets (`[turn] relay_socket = "shared-port"`): one UDP socket per
//! relay port per family, bound to the wildcard address (`0.0.0.0:P` / `[::]:P`,
//! `IPV6_V6ONLY`), carrying port P for every relay IP of that family. With k relay IPs a
//! socket holds up to k allocations — one per (relay IP, P) "slot" — so N descriptors carry
//! k × N allocations. Datagrams report their destination IP (`IP_PKTINFO`), which names
//! the slot; relayed datagrams leave from the slot's IP.
//!
//! Each shard owns its own port sockets (no `SO_REUSEPORT`: a port belongs to one shard,
//! whose thread then handles every packet of its allocations, as with per-allocation
//! sockets), from its own slice of the port range (the range split evenly over the
//! shards, so a shard never scans ports another holds). An allocation takes a free slot of an existing socket of this shard first
//! (a per-IP list of ports that may have one), else binds a new port socket; a socket
//! closes when its last slot is freed. EVEN-PORT with R=1 reserves (ip, P+1) by binding
//! and parking a fresh wildcard socket on P+1 — so P+1 must be free on every shard — which
//! whichever shard presents the RESERVATION-TOKEN registers as its own port socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use hashbrown::HashMap;

use super::worker::{Parked, bind_relay, parked_take};
use crate::io::{Backend, SocketId};
use crate::turn::server::{OpenError, PortWish, Sock};

/// Most relay IPs per family in shared-port mode (one bit per slot).
pub const MAX_SHARED_IPS: usize = 64;

/// One port socket: its id and which relay IPs' slots are taken (bit = index in
/// [`Family::ips`]).
#[derive(Debug, Clone, Copy)]
struct PortSock {
    id: SocketId,
    used: u64,
}

/// The port sockets of one address family.
#[derive(Debug, Default)]
struct Family {
    ips: Vec<IpAddr>,
    socks: HashMap<u16, PortSock>,
    /// Per relay IP: ports whose socket may have that IP's slot free (checked when popped).
    free: Vec<Vec<u16>>,
}

impl Family {
    fn new(ips: Vec<IpAddr>) -> Self {
        let free = vec![Vec::new(); ips.len().min(MAX_SHARED_IPS)];
        Family {
            ips,
            socks: HashMap::new(),
            free,
        }
    }

    /// The slot (bit) of a relay IP; `None` for others, and beyond the 64 bits (the
    /// config refuses more than [`MAX_SHARED_IPS`] per family).
    fn slot(&self, ip: IpAddr) -> Option<usize> {
        self.ips
            .iter()
            .position(|&x| x == ip)
            .filter(|&s| s < MAX_SHARED_IPS)
    }

    /// Notes that `port`'s socket has every slot but `taken`'s free.
    fn offer_others(&mut self, port: u16, taken: usize) {
        for (s, list) in self.free.iter_mut().enumerate() {
            if s != taken {
                list.push(port);
            }
        }
    }

    /// Keeps the free lists bounded: drops entries whose socket is gone or slot taken,
    /// and duplicates, once a list is much longer than there are sockets.
    fn compact(&mut self, slot: usize) {
        let socks = &self.socks;
        let list = &mut self.free[slot];
        if list.len() <= 2 * socks.len() + 64 {
            return;
        }
        list.retain(|p| socks.get(p).is_some_and(|ps| ps.used & (1 << slot) == 0));
        list.sort_unstable();
        list.dedup();
    }
}

/// The shared-port relay sockets of one shard.
#[derive(Debug)]
pub(super) struct SharedPorts {
    range: (u16, u16),
    /// Where the next port scan starts.
    next: u16,
    v4: Family,
    v6: Family,
    /// Socket index → relay port (0: not a port socket). Read for every datagram.
    port_of: Vec<u16>,
}

impl SharedPorts {
    pub(super) fn new(relay_ips: &[IpAddr], range: (u16, u16)) -> Self {
        let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = relay_ips.iter().partition(|ip| ip.is_ipv6());
        SharedPorts {
            range,
            next: range.0,
            v4: Family::new(v4),
            v6: Family::new(v6),
            port_of: Vec::new(),
        }
    }

    /// The relay port of a shared port socket, `None` for any other socket.
    #[inline]
    pub(super) fn port_of(&self, sock: SocketId) -> Option<u16> {
        self.port_of
            .get(sock.0 as usize)
            .copied()
            .filter(|&p| p != 0)
    }

    /// Port sockets open on this shard.
    pub(super) fn sockets(&self) -> usize {
        self.v4.socks.len() + self.v6.socks.len()
    }

    fn family(&mut self, ip: IpAddr) -> &mut Family {
        if ip.is_ipv6() {
            &mut self.v6
        } else {
            &mut self.v4
        }
    }

    fn wildcard(ip: IpAddr, port: u16) -> SocketAddr {
        let any = if ip.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        SocketAddr::new(any, port)
    }

    fn register(
        &mut self,
        backend: &mut Backend,
        sock: UdpSocket,
        ip: IpAddr,
        slot: usize,
        port: u16,
    ) -> Result<(Sock, SocketAddr), OpenError> {
        let id = backend
            .add_socket_pktinfo(sock)
            .map_err(|_| OpenError::Exhausted)?;
        let i = id.0 as usize;
        if self.port_of.len() <= i {
            self.port_of.resize(i + 1, 0);
        }
        self.port_of[i] = port;
        let fam = self.family(ip);
        fam.socks.insert(
            port,
            PortSock {
                id,
                used: 1 << slot,
            },
        );
        fam.offer_others(port, slot);
        Ok((Sock(id.0), SocketAddr::new(ip, port)))
    }

    /// A relayed address on `ip`: a free slot of an existing port socket of this shard, or
    /// a new port socket from the range (see the module docs for EVEN-PORT).
    pub(super) fn open(
        &mut self,
        backend: &mut Backend,
        parked: &Parked,
        ip: IpAddr,
        wish: PortWish,
    ) -> Result<(Sock, SocketAddr), OpenError> {
        let fam = self.family(ip);
        let slot = fam.slot(ip).ok_or(OpenError::Exhausted)?;
        let bit = 1u64 << slot;
        if wish == PortWish::Any {
            while let Some(port) = fam.free[slot].pop() {
                if let Some(ps) = fam.socks.get_mut(&port)
                    && ps.used & bit == 0
                {
                    ps.used |= bit;
                    return Ok((Sock(ps.id.0), SocketAddr::new(ip, port)));
                }
            }
        }
        // The whole slice if need be: ports with a socket of this shard cost a hash lookup,
        // only unbound ones a bind attempt (another shard holds none of them).
        let (lo, hi) = self.range;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let port = self.next;
            self.next = if port >= hi { lo } else { port + 1 };
            if wish != PortWish::Any && port % 2 == 1 {
                continue;
            }
            if wish == PortWish::EvenReserveNext && (port == hi || port == u16::MAX) {
                continue;
            }
            let existing = self.family(ip).socks.get(&port).copied();
            if existing.is_some_and(|ps| ps.used & bit != 0) {
                continue;
            }
            // EVEN-PORT R=1: P+1 must be free everywhere (a fresh wildcard bind), and is
            // parked for whichever shard presents the token.
            let reserve = |parked: &Parked| -> Result<bool, OpenError> {
                if wish != PortWish::EvenReserveNext {
                    return Ok(true);
                }
                match bind_relay(Self::wildcard(ip, port + 1)) {
                    Ok(s) => {
                        parked
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(SocketAddr::new(ip, port + 1), s);
                        Ok(true)
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        Err(OpenError::Exhausted)
                    }
                    Err(_) => Ok(false),
                }
            };
            if let Some(ps) = existing {
                if !reserve(parked)? {
                    continue;
                }
                let fam = self.family(ip);
                if let Some(e) = fam.socks.get_mut(&port) {
                    e.used |= bit;
                }
                return Ok((Sock(ps.id.0), SocketAddr::new(ip, port)));
            }
            let sock = match bind_relay(Self::wildcard(ip, port)) {
                Ok(s) => s,
                // Out of file descriptors: no other port will do better.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return Err(OpenError::Exhausted);
                }
                Err(_) => continue, // another shard's port, or another program's
            };
            if !reserve(parked)? {
                continue; // `sock` is dropped: the port is free again
            }
            return self.register(backend, sock, ip, slot, port);
        }
        Err(OpenError::Exhausted)
    }

    /// Registers the port socket parked at `addr` (EVEN-PORT R=1, possibly by another
    /// shard) as this shard's, with `addr`'s slot taken.
    pub(super) fn claim(
        &mut self,
        backend: &mut Backend,
        parked: &Parked,
        addr: SocketAddr,
    ) -> Result<(Sock, SocketAddr), OpenError> {
        let slot = self
            .family(addr.ip())
            .slot(addr.ip())
            .ok_or(OpenError::Exhausted)?;
        let sock = parked_take(parked, addr).ok_or(OpenError::Exhausted)?;
        self.register(backend, sock, addr.ip(), slot, addr.port())
    }

    /// Frees the slot of `relayed` on `sock`; closes the socket when it was the last.
    pub(super) fn end(&mut self, backend: &mut Backend, sock: Sock, relayed: SocketAddr) {
        let port = relayed.port();
        let fam = self.family(relayed.ip());
        let Some(slot) = fam.slot(relayed.ip()) else {
            return;
        };
        let Some(ps) = fam.socks.get_mut(&port).filter(|ps| ps.id.0 == sock.0) else {
            return;
        };
        ps.used &= !(1u64 << slot);
        if ps.used != 0 {
            fam.free[slot].push(port);
            fam.compact(slot);
            return;
        }
        let id = ps.id;
        fam.socks.remove(&port);
        if let Some(p) = self.port_of.get_mut(id.0 as usize) {
            *p = 0;
        }
        backend.remove_socket(id);
    }
}
