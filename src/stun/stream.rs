//! Framing of STUN and ChannelData messages on a byte stream (TURN over TCP/TLS,
//! RFC 8656 §12.5; STUN over TCP, RFC 8489 §6.2.2).
//!
//! A stream carries back-to-back STUN messages (20-byte header + the length field) and
//! ChannelData messages (4-byte header + data padded to a multiple of 4). The first two
//! bits tell them apart: `00` STUN, `01` ChannelData. Anything else cannot be resynchronised
//! and the connection must be closed.

use super::channel_data;
use super::{HEADER_LEN, MAGIC_COOKIE, StunError};

/// Length of the next frame at the start of `buf`: `Ok(Some(n))` when `n` bytes make one
/// whole frame (padding included), `Ok(None)` when more bytes are needed, `Err` when the
/// stream cannot be a STUN/ChannelData stream. Only the header is checked; the caller
/// parses the frame with [`Message::parse`](super::Message::parse) or
/// [`ChannelData::parse_udp`](super::ChannelData::parse_udp).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, StunError> {
    Ok(declared_len(buf)?.filter(|&n| buf.len() >= n))
}

/// The length the next frame's header declares (padding included), as soon as the header
/// bytes that say it have arrived (4 bytes; a STUN header is refused as soon as its length
/// or magic cookie is wrong), so a reader can refuse an oversized frame early. `Ok(None)`:
/// more bytes are needed to know.
pub fn declared_len(buf: &[u8]) -> Result<Option<usize>, StunError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if buf.len() < 4 {
        return match first >> 6 {
            0 | 1 => Ok(None),
            _ => Err(StunError::NotStun),
        };
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]);
    match first >> 6 {
        0 => {
            if !len.is_multiple_of(4) {
                return Err(StunError::UnalignedLength(len));
            }
            if buf.len() >= 8
                && u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
            {
                return Err(StunError::BadMagicCookie);
            }
            Ok(Some(HEADER_LEN + usize::from(len)))
        }
        // ChannelData: any channel number 0x4000..=0x7FFF frames the same way; whether it
        // is bound (and inside RFC 8656's 0x4000..=0x4FFF or RFC 5766's wider range) is the
        // receiver's decision.
        1 => {
            let len = usize::from(len);
            Ok(Some(channel_data::HEADER_LEN + len + padding(len)))
        }
        _ => Err(StunError::NotStun),
    }
}

/// Bytes of zero padding that make a frame of `len` bytes a multiple of 4 on a stream
/// (RFC 8656 §12.5; STUN messages are already aligned, ChannelData may not be).
#[inline]
pub const fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Vec<u8> {
        let mut m = vec![0u8; 28];
        m[1] = 0x01;
        m[3] = 8;
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m
    }

    #[test]
    fn stun_frames_need_the_whole_message() {
        let m = binding();
        for cut in 0..m.len() {
            assert_eq!(frame_len(&m[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_len(&m), Ok(Some(28)));
        let mut two = m.clone();
        two.extend_from_slice(&m);
        assert_eq!(frame_len(&two), Ok(Some(28)));
    }

    #[test]
    fn channel_data_frames_include_padding() {
        let cd = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(frame_len(&cd[..9]), Ok(None));
        assert_eq!(frame_len(&cd[..11]), Ok(None));
        assert_eq!(frame_len(&cd), Ok(Some(12)));
        assert_eq!(padding(9), 3);
        assert_eq!(padding(12), 0);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Err(StunError::NotStun));
        assert_eq!(frame_len(&[0xC0, 0x00, 0, 4]), Err(StunError::NotStun));
        // RFC 5766's wider channel range frames like any other ChannelData.
        assert_eq!(frame_len(&[0x6A, 0x5B, 0, 1, 9, 0, 0, 0]), Ok(Some(8)));
        let mut m = binding();
        m[4] = 0;
        assert_eq!(frame_len(&m), Err(StunError::BadMagicCookie));
        let mut m = binding();
        m[3] = 7;
        assert_eq!(frame_len(&m), Err(StunError::UnalignedLength(7)));
    }
}
