//! Allocations (RFC 8656 §2.2) and their permission and channel tables, indexed for the
//! hot path: 5-tuple → allocation, relay socket → allocation, then per-allocation maps
//! peer IP → permission, channel number → peer and peer → channel number.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hashbrown::HashMap;

use super::Sock;
use super::auth::Credential;
use super::policy::canonical;

/// Index of an allocation in the [`Allocations`] slab.
pub(super) type AllocId = u32;

/// After a channel binding expires, its number may not be bound to another peer nor the
/// peer to another number for 5 minutes (RFC 8656 §12): the entry stays, carrying no data,
/// until then.
pub(super) const CHANNEL_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(300);

/// A channel binding (RFC 8656 §12).
#[derive(Debug, Clone, Copy)]
pub(super) struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
}

/// Per-allocation traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocationCounters {
    /// Datagrams relayed client → peer.
    pub to_peer_packets: u64,
    /// Payload bytes relayed client → peer.
    pub to_peer_bytes: u64,
    /// Datagrams relayed peer → client.
    pub to_client_packets: u64,
    /// Payload bytes relayed peer → client.
    pub to_client_bytes: u64,
    /// Datagrams dropped by the bandwidth cap.
    pub dropped_bandwidth: u64,
}

/// A token bucket in bytes, refilled lazily when spent: back to one full burst (a second's
/// worth) once the relay's whole-second clock has ticked since the last refill.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    tokens: u64,
    /// Seconds since the server's epoch of the last refill.
    at: u64,
}

impl Bucket {
    pub fn new(rate: u64) -> Self {
        Bucket {
            rate,
            tokens: rate,
            at: 0,
        }
    }

    /// Spends `n` bytes if available at `now` (`epoch`: the server's time origin).
    #[inline]
    pub fn take(&mut self, n: usize, now: Instant, epoch: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // A whole second or more since the last refill: a full burst again.
        let secs = now.saturating_duration_since(epoch).as_secs();
        if secs > self.at {
            self.tokens = self.rate;
            self.at = secs;
        }
        match self.tokens.checked_sub(n as u64) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// Entries a [`SmallMap`] keeps in a vector before it switches to a hash map.
const SMALL: usize = 8;

/// A map that is a short vector while it holds at most [`SMALL`] entries (most
/// allocations have one or two permissions and channels: a vector of exactly that many
/// entries instead of a hash table's minimum of four buckets plus control bytes) and a
/// hash map beyond, so a client with many peers still gets O(1) lookups.
#[derive(Debug)]
pub(super) enum SmallMap<K, V> {
    Vec(Vec<(K, V)>),
    Map(HashMap<K, V>),
}

impl<K: Eq + std::hash::Hash + Copy, V> SmallMap<K, V> {
    pub fn new() -> Self {
        SmallMap::Vec(Vec::new())
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        match self {
            SmallMap::Vec(v) => v.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            SmallMap::Map(m) => m.get(k),
        }
    }

    pub fn insert(&mut self, k: K, val: V) {
        match self {
            SmallMap::Vec(v) => {
                if let Some(e) = v.iter_mut().find(|(key, _)| *key == k) {
                    e.1 = val;
                } else if v.len() < SMALL {
                    // Grow one at a time: the common case stays at one or two entries.
                    v.reserve_exact(1);
                    v.push((k, val));
                } else {
                    let mut m: HashMap<K, V> = std::mem::take(v).into_iter().collect();
                    m.insert(k, val);
                    *self = SmallMap::Map(m);
                }
            }
            SmallMap::Map(m) => {
                m.insert(k, val);
            }
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        match self {
            SmallMap::Vec(v) => {
                let i = v.iter().position(|(key, _)| key == k)?;
                Some(v.swap_remove(i).1)
            }
            SmallMap::Map(m) => m.remove(k),
        }
    }

    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            SmallMap::Vec(v) => v.iter().for_each(|(k, v)| f(k, v)),
            SmallMap::Map(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        match self {
            SmallMap::Vec(v) => v.retain_mut(|(k, v)| f(k, v)),
            SmallMap::Map(m) => m.retain(|k, v| f(k, v)),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Vec(v) => v.len(),
            SmallMap::Map(m) => m.len(),
        }
    }
}

/// One allocation.
#[derive(Debug)]
pub(super) struct Allocation {
    /// The listening socket the client talks to (server side of the 5-tuple).
    pub client_sock: Sock,
    /// The client's transport address.
    pub client: SocketAddr,
    /// The relay socket and its address.
    pub relay_sock: Sock,
    pub relay: SocketAddr,
    /// The relay socket is a shared-port socket (found by `relay`, sends from its IP).
    pub shared: bool,
    pub expires: Instant,
    /// Seconds since the server's epoch of this allocation's one live timer entry
    /// (`u32::MAX`: none); see `Relay::wake`.
    pub wake: u32,
    pub cred: Credential,
    /// Peer IP → permission expiry.
    pub perms: SmallMap<IpAddr, Instant>,
    /// Channel number → binding.
    pub channels: SmallMap<u16, Channel>,
    /// Peer transport address → channel number.
    pub peer_channels: SmallMap<SocketAddr, u16>,
    pub bucket: Bucket,
    pub counters: AllocationCounters,
    /// What the success response said beyond the relay address, so a retransmitted
    /// Allocate (same transaction id, same 5-tuple) gets it again instead of 437.
    pub created: Created,
}

/// The Allocate transaction that created an allocation (RFC 8656 §7.2: a retransmission
/// is recognised by its transaction id).
#[derive(Debug, Clone, Copy)]
pub(super) struct Created {
    pub tid: [u8; 12],
    pub v6_refused: bool,
    pub token: Option<[u8; 8]>,
}

impl Allocation {
    #[inline]
    pub fn permitted(&self, peer: IpAddr, now: Instant) -> bool {
        self.perms
            .get(&canonical(peer))
            .is_some_and(|&exp| exp > now)
    }

    pub fn permit(&mut self, peer: IpAddr, until: Instant) {
        self.perms.insert(canonical(peer), until);
    }

    /// When this allocation next needs the timer: it expires, a permission expires, or an
    /// expired channel's cool-down ends.
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.expires;
        self.perms.for_each(|_, &exp| at = at.min(exp));
        self.channels
            .for_each(|_, ch| at = at.min(ch.expires + CHANNEL_COOLDOWN));
        at
    }

    /// Drops expired permissions, and channels once their cool-down is over too.
    pub fn expire(&mut self, now: Instant) {
        self.perms.retain(|_, exp| *exp > now);
        let peer_channels = &mut self.peer_channels;
        self.channels.retain(|_, ch| {
            let keep = ch.expires + CHANNEL_COOLDOWN > now;
            if !keep {
                peer_channels.remove(&ch.peer);
            }
            keep
        });
    }

    /// The channel bound to `peer` that carries data now (not expired, not cooling down).
    #[inline]
    pub fn live_channel_to(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        let &ch = self.peer_channels.get(peer)?;
        self.channels
            .get(&ch)
            .is_some_and(|c| c.expires > now)
            .then_some(ch)
    }
}

/// The allocations of one server.
#[derive(Debug, Default)]
pub(super) struct Allocations {
    /// Boxed, so the slab's growth slack costs a pointer per slot, not a whole allocation.
    slab: Vec<Option<Box<Allocation>>>,
    free: Vec<AllocId>,
    /// (listening socket, client address) → allocation.
    by_client: HashMap<(Sock, SocketAddr), AllocId>,
    /// Relay socket → allocation (one socket per allocation).
    by_relay: HashMap<Sock, AllocId>,
    /// Relayed address → allocation (shared-port sockets).
    by_relayed: HashMap<SocketAddr, AllocId>,
}

impl Allocations {
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    #[inline]
    pub fn by_client(&self, sock: Sock, client: SocketAddr) -> Option<AllocId> {
        self.by_client.get(&(sock, client)).copied()
    }

    #[inline]
    pub fn by_relay(&self, sock: Sock) -> Option<AllocId> {
        self.by_relay.get(&sock).copied()
    }

    #[inline]
    pub fn by_relayed(&self, relayed: SocketAddr) -> Option<AllocId> {
        self.by_relayed.get(&relayed).copied()
    }

    #[inline]
    pub fn get(&self, id: AllocId) -> Option<&Allocation> {
        self.slab.get(id as usize)?.as_deref()
    }

    #[inline]
    pub fn get_mut(&mut self, id: AllocId) -> Option<&mut Allocation> {
        self.slab.get_mut(id as usize)?.as_deref_mut()
    }

    pub fn insert(&mut self, a: Allocation) -> AllocId {
        let key = (a.client_sock, a.client);
        let (relay, relayed, shared) = (a.relay_sock, a.relay, a.shared);
        let id = match self.free.pop() {
            Some(id) => {
                self.slab[id as usize] = Some(Box::new(a));
                id
            }
            None => {
                self.slab.push(Some(Box::new(a)));
                (self.slab.len() - 1) as AllocId
            }
        };
        self.by_client.insert(key, id);
        if shared {
            self.by_relayed.insert(relayed, id);
        } else {
            self.by_relay.insert(relay, id);
        }
        id
    }

    pub fn remove(&mut self, id: AllocId) -> Option<Allocation> {
        let a = self.slab.get_mut(id as usize)?.take()?;
        self.by_client.remove(&(a.client_sock, a.client));
        if a.shared {
            self.by_relayed.remove(&a.relay);
        } else {
            self.by_relay.remove(&a.relay_sock);
        }
        self.free.push(id);
        Some(*a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_caps_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000);
        assert!(b.take(600, t0, t0));
        assert!(!b.take(600, t0 + Duration::from_millis(999), t0));
        // A whole second later: a second's worth, capped at the burst.
        assert!(b.take(600, t0 + Duration::from_secs(1), t0));
        assert!(b.take(400, t0 + Duration::from_secs(10), t0));
        assert!(b.take(600, t0 + Duration::from_secs(10), t0));
        assert!(!b.take(1, t0 + Duration::from_secs(10), t0));
        let mut unlimited = Bucket::new(0);
        assert!(unlimited.take(1 << 20, t0, t0));
    }

    #[test]
    fn small_map_spills_into_a_hash_map_and_back_stays_correct() {
        let mut m = SmallMap::new();
        for i in 0..20u16 {
            m.insert(i, u32::from(i) * 10);
            m.insert(i, u32::from(i) * 100);
            assert!(matches!(m, SmallMap::Vec(_)) == (usize::from(i) < SMALL));
        }
        assert_eq!(m.len(), 20);
        assert_eq!(m.get(&7), Some(&700));
        assert_eq!(m.remove(&7), Some(700));
        assert_eq!(m.get(&7), None);
        m.retain(|k, _| k % 2 == 0);
        assert_eq!(m.len(), 10);
        let mut s = SmallMap::new();
        s.insert(1u16, 1u8);
        s.insert(2, 2);
        assert_eq!(s.remove(&1), Some(1));
        assert_eq!(s.get(&2), Some(&2));
        s.retain(|_, _| false);
        assert_eq!(s.len(), 0);
    }
}
