//! The agent table of one shard: a slab with a free list (slots are reused, so a slot
//! number in a transaction id may name a newer agent — that agent then finds no matching
//! transaction and drops the response), a key → slot map for commands, and a
//! ufrag → slot map for Binding requests on mux sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::servers::Servers;
use crate::api::{ConnStats, DataMode, LinkTx};
use crate::ice::IceAgent;
use crate::io::SocketId;

/// One hosted agent.
#[derive(Debug)]
pub(crate) struct Hosted {
    pub key: u64,
    pub ufrag: u64,
    pub agent: IceAgent,
    pub mode: DataMode,
    /// The shard's end of an app-owned agent's link (one pointer; `None` for sessions).
    pub link: Option<LinkTx>,
    /// (candidate base, socket, is a mux socket). Exact (a boxed slice, 16 B): set once per
    /// gathering, rebuilt on the rare removal.
    pub socks: Box<[(SocketAddr, SocketId, bool)]>,
    /// Mux routes announced for this agent, withdrawn on close. Exact (a boxed slice): one
    /// route is the rule, pushed when a pair on a mux socket is selected.
    pub routes: Box<[(u16, SocketAddr)]>,
    pub selected_sock: Option<SocketId>,
    /// STUN/TURN clients (agents with `urls` only; boxed: 8 bytes for the others).
    pub servers: Option<Box<Servers>>,
    /// The one live timer entry of this agent.
    pub timer_at: Option<Instant>,
    /// Remote credentials held back until the role is chosen (dial/accept).
    pub pending_remote: Option<Box<(String, String)>>,
    pub started: bool,
    pub up: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

impl Hosted {
    pub fn new(key: u64, agent: IceAgent, mode: DataMode, link: Option<LinkTx>) -> Self {
        let ufrag = ufrag_key(agent.local_credentials().0.as_bytes());
        Hosted {
            key,
            ufrag,
            started: agent.is_lite(),
            agent,
            mode,
            link,
            socks: Box::default(),
            routes: Box::default(),
            selected_sock: None,
            servers: None,
            timer_at: None,
            pending_remote: None,
            up: false,
            bytes_in: 0,
            bytes_out: 0,
            packets_in: 0,
            packets_out: 0,
        }
    }

    /// The local base a datagram from `from` on `sock` arrived on. A socket bound to an
    /// unspecified address carries one base per interface: the one with the source's IP
    /// (same host), else the first of the family (the io layer reports no destination IP).
    pub fn local_for(&self, sock: SocketId, from: SocketAddr) -> Option<SocketAddr> {
        let mut first = None;
        for (base, id, _) in &self.socks {
            if *id == sock && base.is_ipv4() == from.is_ipv4() {
                if base.ip() == from.ip() {
                    return Some(*base);
                }
                first.get_or_insert(*base);
            }
        }
        first
    }

    /// The socket a transmit from `base` goes out on.
    pub fn sock_for(&self, base: SocketAddr) -> Option<SocketId> {
        self.socks
            .iter()
            .find(|(b, _, _)| *b == base)
            .map(|(_, id, _)| *id)
    }

    /// Adds a mux route (exact capacity: the list is rebuilt, which is rare).
    pub fn add_route(&mut self, route: (u16, SocketAddr)) {
        rebuild(&mut self.routes, |r| {
            r.reserve_exact(1);
            r.push(route);
        });
    }

    pub fn conn_stats(&self) -> ConnStats {
        ConnStats {
            state: self.agent.state(),
            bytes_sent: self.bytes_out,
            bytes_received: self.bytes_in,
            packets_sent: self.packets_out,
            packets_received: self.packets_in,
            rtt: self.agent.selected_rtt().unwrap_or(Duration::ZERO),
            selected: self.agent.selected_pair(),
        }
    }
}

/// Map key of a ufrag: the engine's ufrags are 8 ice-chars, packed; others are hashed
/// (a collision only makes the wrong agent drop the request).
pub(crate) fn ufrag_key(u: &[u8]) -> u64 {
    if let Ok(b) = <[u8; 8]>::try_from(u) {
        return u64::from_le_bytes(b);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in u {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Boxed: a slot is then 8 bytes, so the slab's doubling slack costs little.
    slots: Vec<Option<Box<Hosted>>>,
    free: Vec<u32>,
    by_key: HashMap<u64, u32>,
    by_ufrag: HashMap<u64, u32>,
}

impl Table {
    /// The slot the next `insert` will use.
    pub fn next_slot(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.slots.len() as u32)
    }

    pub fn insert(&mut self, h: Hosted) -> u32 {
        let (key, ufrag) = (h.key, h.ufrag);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(Box::new(h));
                s
            }
            None => {
                self.slots.push(Some(Box::new(h)));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        self.by_ufrag.insert(ufrag, slot);
        slot
    }

    pub fn remove(&mut self, slot: u32) -> Option<Box<Hosted>> {
        let h = self.slots.get_mut(slot as usize)?.take()?;
        self.by_key.remove(&h.key);
        if self.by_ufrag.get(&h.ufrag) == Some(&slot) {
            self.by_ufrag.remove(&h.ufrag);
        }
        self.free.push(slot);
        Some(h)
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Hosted> {
        self.slots.get_mut(slot as usize)?.as_deref_mut()
    }

    #[inline]
    pub fn contains(&self, slot: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(Option::is_some)
    }

    pub fn slot_of(&self, key: u64) -> Option<u32> {
        self.by_key.get(&key).copied()
    }

    /// The agent in `slot` now answers to `ufrag` (ICE restart): Binding requests for the
    /// old one are unknown from now on.
    pub fn set_ufrag(&mut self, slot: u32, ufrag: &str) {
        let Some(h) = self
            .slots
            .get_mut(slot as usize)
            .and_then(Option::as_deref_mut)
        else {
            return;
        };
        let (old, new) = (h.ufrag, ufrag_key(ufrag.as_bytes()));
        h.ufrag = new;
        if self.by_ufrag.get(&old) == Some(&slot) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(new, slot);
    }

    #[inline]
    pub fn slot_of_ufrag(&self, ufrag: &[u8]) -> Option<u32> {
        self.by_ufrag.get(&ufrag_key(ufrag)).copied()
    }
}

/// Edits an exact list (a boxed slice, no growth slack) through a `Vec`, then makes it exact
/// again: for the hosting's lists, which change rarely.
pub(crate) fn rebuild<T, R>(list: &mut Box<[T]>, f: impl FnOnce(&mut Vec<T>) -> R) -> R {
    let mut v = std::mem::take(list).into_vec();
    let r = f(&mut v);
    *list = v.into_boxed_slice();
    r
}

#[cfg(test)]
mod tests {
    use super::Hosted;

    /// Every hosted agent is one `Box<Hosted>`: at most 640 B it lands in mimalloc's 640-B
    /// size class (the next is 768 B, 128 B more per agent).
    #[test]
    fn hosted_stays_in_the_640_byte_size_class() {
        let size = std::mem::size_of::<Hosted>();
        assert!(size <= 640, "size_of::<Hosted>() = {size} B");
    }
}
