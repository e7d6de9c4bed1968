//! First-byte demultiplexing of one UDP port (RFC 7983 §7, with the TURN channel range of
//! RFC 8656 §12 and RFC 7983bis).

/// What a datagram on a shared port is, judged by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// 0..=3: STUN.
    Stun,
    /// 16..=19: ZRTP.
    Zrtp,
    /// 20..=63: DTLS.
    Dtls,
    /// 64..=79: TURN ChannelData.
    ChannelData,
    /// 128..=191: RTP or RTCP.
    Rtp,
    /// Anything else, including an empty datagram.
    Unknown,
}

/// Classifies a datagram by its first byte.
#[inline]
pub fn classify(datagram: &[u8]) -> PacketKind {
    match datagram.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(16..=19) => PacketKind::Zrtp,
        Some(20..=63) => PacketKind::Dtls,
        Some(64..=79) => PacketKind::ChannelData,
        Some(128..=191) => PacketKind::Rtp,
        _ => PacketKind::Unknown,
    }
}
