#![no_main]
//! RFC 7983 classify, then dispatch to the parser that classification selects.

use icering::stun::{ChannelData, Message, PacketKind, classify};

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    match kind {
        PacketKind::Stun => common::stun(data),
        PacketKind::ChannelData => common::channel_data(data),
        PacketKind::Zrtp | PacketKind::Dtls | PacketKind::Rtp | PacketKind::Unknown => {}
    }
    // Whatever ChannelData parses is classified as ChannelData. Whatever STUN parses
    // starts with a byte below 64, so it is never taken for ChannelData or RTP (it can be
    // classified Unknown/ZRTP/DTLS: a STUN type with a method above 0xFF has a first
    // byte of 4..=63, which RFC 7983 does not route to STUN).
    if ChannelData::parse_udp(data).is_ok() {
        assert_eq!(kind, PacketKind::ChannelData);
    }
    if Message::parse(data).is_ok() {
        assert!(!matches!(kind, PacketKind::ChannelData | PacketKind::Rtp));
        if data[0] <= 3 {
            assert_eq!(kind, PacketKind::Stun);
        }
    }
    if data.is_empty() {
        assert_eq!(kind, PacketKind::Unknown);
    }
});
