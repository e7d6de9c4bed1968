//! The relay hot path (RFC 8656 §11, §12): Send indications and ChannelData from the
//! client go out of the relay socket to the peer; datagrams from a peer come back as
//! ChannelData (if a channel is bound) or a Data indication. Each writes straight into the
//! caller's send slot: no allocation, no lock.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::AllocId;
use super::{DropReason, Outcome, Relay, ServerStats, Sock};
use crate::stun::{Class, Message, MessageType, MessageWriter, Method, attr};

/// Channel numbers accepted: RFC 8656 allows 0x4000..=0x4FFF, but RFC 5766 clients
/// (coturn's own `turnutils_uclient` among them) pick from 0x4000..=0x7FFF and coturn
/// accepts that range, so we do too. First bytes 0x50..=0x7F are unassigned in the
/// RFC 7983 demux, so nothing else is shadowed on a TURN port.
#[inline]
pub(super) const fn is_legacy_channel(n: u16) -> bool {
    n >= 0x4000 && n <= 0x7FFF
}

/// Parses a ChannelData datagram with a channel in the RFC 5766 range; up to 3 bytes of
/// padding are accepted (RFC 8656 §12.5).
#[inline]
pub(super) fn parse_channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    let hdr = buf.get(..4)?;
    let ch = u16::from_be_bytes([hdr[0], hdr[1]]);
    let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if !is_legacy_channel(ch) || buf.len() < 4 + len || buf.len() > 4 + ((len + 3) & !3) {
        return None;
    }
    Some((ch, &buf[4..4 + len]))
}

impl Relay {
    /// A datagram from `peer` on the relay socket of allocation `id`. Inlined into both
    /// callers (`Server::dispatch`, `Server::handle_relayed`): it is the hot path.
    #[inline(always)]
    pub(super) fn peer_datagram(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
        now: Instant,
        stats: &mut ServerStats,
    ) -> Outcome {
        let counter = self.tid_counter;
        let epoch = self.cfg.epoch;
        let Some(a) = self.allocs.get_mut(id) else {
            return Outcome::Drop(DropReason::NoAllocation);
        };
        if !a.permitted(peer.ip(), now) {
            return Outcome::Drop(DropReason::NoPermission);
        }
        if !a.bucket.take(data.len(), now, epoch) {
            a.counters.dropped_bandwidth += 1;
            return Outcome::Drop(DropReason::Bandwidth);
        }
        let len = match a.live_channel_to(&peer, now) {
            Some(ch) => {
                let n = 4 + data.len();
                if n > out.len() || data.len() > usize::from(u16::MAX) {
                    return Outcome::Drop(DropReason::NoRoom);
                }
                out[0..2].copy_from_slice(&ch.to_be_bytes());
                out[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
                out[4..n].copy_from_slice(data);
                n
            }
            None => {
                let mut tid = [0u8; 12];
                tid[..4].copy_from_slice(b"icrD");
                tid[4..].copy_from_slice(&counter.to_be_bytes());
                self.tid_counter = counter.wrapping_add(1);
                let typ = MessageType::new(Method::DATA, Class::Indication);
                let built = MessageWriter::new(out, typ, &tid).and_then(|mut w| {
                    w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
                    w.add_raw(attr::DATA, data)?;
                    Ok(w.finish())
                });
                match built {
                    Ok(n) => n,
                    Err(_) => return Outcome::Drop(DropReason::NoRoom),
                }
            }
        };
        a.counters.to_client_packets += 1;
        a.counters.to_client_bytes += data.len() as u64;
        stats.relayed_to_client += 1;
        stats.relayed_to_client_bytes += data.len() as u64;
        Outcome::Send {
            sock: a.client_sock,
            src: None,
            to: a.client,
            len,
        }
    }

    /// Payload for `peer` from the allocation on (`sock`, `client`): checks and copies.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn relay_to_peer(
        &mut self,
        sock: Sock,
        client: SocketAddr,
        peer: Option<SocketAddr>,
        channel: u16,
        data: &[u8],
        out: &mut [u8],
        now: Instant,
        stats: &mut ServerStats,
    ) -> Outcome {
        let epoch = self.cfg.epoch;
        let Some(a) = self
            .allocs
            .by_client(sock, client)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            return Outcome::Drop(DropReason::NoAllocation);
        };
        let peer = match peer {
            Some(p) => p,
            None => match a.channels.get(&channel) {
                Some(ch) if ch.expires > now => ch.peer,
                _ => return Outcome::Drop(DropReason::NoPermission),
            },
        };
        if peer.is_ipv4() != a.relay.is_ipv4() || !a.permitted(peer.ip(), now) {
            return Outcome::Drop(DropReason::NoPermission);
        }
        if data.len() > out.len() {
            return Outcome::Drop(DropReason::NoRoom);
        }
        if !a.bucket.take(data.len(), now, epoch) {
            a.counters.dropped_bandwidth += 1;
            return Outcome::Drop(DropReason::Bandwidth);
        }
        out[..data.len()].copy_from_slice(data);
        a.counters.to_peer_packets += 1;
        a.counters.to_peer_bytes += data.len() as u64;
        stats.relayed_to_peer += 1;
        stats.relayed_to_peer_bytes += data.len() as u64;
        Outcome::Send {
            sock: a.relay_sock,
            // A shared-port socket is bound to the wildcard address: the peer must see the
            // relayed address it was told (RFC 8656 §11.2: "from the relayed address").
            src: a.shared.then_some(a.relay.ip()),
            to: peer,
            len: data.len(),
        }
    }

    /// ChannelData from a client (RFC 8656 §12.6).
    #[inline]
    pub(super) fn channel_data(
        &mut self,
        sock: Sock,
        client: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        now: Instant,
        stats: &mut ServerStats,
    ) -> Outcome {
        match parse_channel_data(datagram) {
            Some((ch, data)) => self.relay_to_peer(sock, client, None, ch, data, out, now, stats),
            None => Outcome::Drop(DropReason::Malformed),
        }
    }

    /// A Send indication (RFC 8656 §11.2). Indications get no answer, so anything wrong
    /// is a counted drop.
    pub(super) fn send_indication(
        &mut self,
        sock: Sock,
        client: SocketAddr,
        msg: &Message<'_>,
        out: &mut [u8],
        now: Instant,
        stats: &mut ServerStats,
    ) -> Outcome {
        let (Some(Ok(peer)), Some(data)) = (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.data())
        else {
            return Outcome::Drop(DropReason::Malformed);
        };
        self.relay_to_peer(sock, client, Some(peer), 0, data, out, now, stats)
    }
}
