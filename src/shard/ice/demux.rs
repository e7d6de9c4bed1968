//! Who owns a datagram on a mux socket, decided without per-connection state where
//! possible (RFC 7983 §7 first byte, then):
//!
//! * Binding request → the first character of USERNAME's local ufrag names the owner
//!   shard (the engine generates every ufrag that way); on the owner, ufrag → slot.
//! * STUN response → the transaction id starts with the owner's shard (u16) and slot
//!   (u32) (`IceConfig::tid_prefix`).
//! * anything else (data, indications) → the 5-tuple route table, filled when an agent
//!   selects a pair on a mux socket and broadcast to every shard.

use std::net::SocketAddr;

use hashbrown::HashMap;

use super::IceStats;
use super::table::Table;
use crate::ice::rng::ICE_CHARS;
use crate::stun::{Class, Message, Method};

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// An agent on this shard.
    Local(u32),
    /// Another shard.
    Shard(u16),
}

/// Why a datagram is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    UnknownUfrag,
    /// A request for a ufrag of this shard that has no agent yet: the agent's `Create`
    /// may still sit in the control channel behind the datagram (counted as an unknown
    /// ufrag if it never comes).
    PendingUfrag,
    StaleTransaction,
    NoRoute,
    Malformed,
}

impl DropReason {
    pub(crate) fn count(self, s: &mut IceStats) {
        match self {
            DropReason::UnknownUfrag | DropReason::PendingUfrag => s.drop_unknown_ufrag += 1,
            DropReason::StaleTransaction => s.drop_stale_transaction += 1,
            DropReason::NoRoute => s.drop_no_route += 1,
            DropReason::Malformed => s.drop_malformed += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Owner(Owner),
    Drop(DropReason),
}

/// The shard an engine-generated ufrag belongs to.
#[inline]
pub(crate) fn shard_of_ufrag(ufrag: &[u8]) -> Option<u16> {
    let c = *ufrag.first()?;
    ICE_CHARS.iter().position(|&x| x == c).map(|i| i as u16)
}

/// Decides the owner of `data`, received from `from` on mux socket `m` of shard `me` (of
/// `shards`).
pub(crate) fn owner(
    data: &[u8],
    m: u16,
    from: SocketAddr,
    (me, shards): (u16, u16),
    table: &Table,
    routes: &HashMap<(u16, SocketAddr), (u16, u32)>,
) -> Verdict {
    let by_route = || match routes.get(&(m, from)) {
        Some(&(s, slot)) if s == me => Verdict::Owner(Owner::Local(slot)),
        Some(&(s, _)) => Verdict::Owner(Owner::Shard(s)),
        None => Verdict::Drop(DropReason::NoRoute),
    };
    if !matches!(data.first(), Some(0..=3)) {
        return by_route();
    }
    let Ok(msg) = Message::parse(data) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    if msg.method() != Method::BINDING {
        return Verdict::Drop(DropReason::Malformed);
    }
    match msg.class() {
        Class::Request => {
            // USERNAME = "local ufrag:remote ufrag" (RFC 8445 §7.2.2).
            let Some(ours) = msg
                .username()
                .and_then(|u| u.split_once(':'))
                .map(|(ours, _)| ours.as_bytes())
            else {
                return Verdict::Drop(DropReason::UnknownUfrag);
            };
            match shard_of_ufrag(ours) {
                Some(s) if s == me => match table.slot_of_ufrag(ours) {
                    Some(slot) => Verdict::Owner(Owner::Local(slot)),
                    None => Verdict::Drop(DropReason::PendingUfrag),
                },
                Some(s) if s < shards => Verdict::Owner(Owner::Shard(s)),
                _ => Verdict::Drop(DropReason::UnknownUfrag),
            }
        }
        Class::Success | Class::Error => {
            let tid = msg.transaction_id();
            let s = u16::from_be_bytes([tid[0], tid[1]]);
            let slot = u32::from_be_bytes([tid[2], tid[3], tid[4], tid[5]]);
            if s >= shards {
                Verdict::Drop(DropReason::StaleTransaction)
            } else if s != me {
                Verdict::Owner(Owner::Shard(s))
            } else if table.contains(slot) {
                Verdict::Owner(Owner::Local(slot))
            } else {
                Verdict::Drop(DropReason::StaleTransaction)
            }
        }
        Class::Indication => by_route(),
    }
}
