//! Framing of TURN over a byte stream (TCP; TLS above it would frame the same), RFC 8656
//! §12.5 and RFC 5766 §11.5: the stream carries STUN messages (20-byte header, length in
//! bytes 2..4) and ChannelData messages (4-byte header, data padded to a multiple of 4),
//! told apart by the first byte (RFC 7983). The client pads its own ChannelData when its
//! transport is TCP (see `ClientConfig::transport`), so whatever it transmits can be
//! written to the stream as is; this decoder cuts the received stream back into messages.

use thiserror::Error;

use crate::stun::{self, HEADER_LEN};

/// The stream cannot be framed any more: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Bytes that cannot start a STUN or ChannelData message (see
    /// [`stun::stream::declared_len`]).
    #[error("not a STUN/ChannelData stream: {0}")]
    NotFramed(stun::StunError),
    /// A message longer than the decoder accepts.
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLong(usize),
}

/// Cuts a received byte stream into whole STUN / ChannelData messages.
///
/// `push` appends what the socket read; `next_frame` then yields each complete message in
/// order (ChannelData including its padding, which `ChannelData::parse_udp` accepts). The
/// buffer grows to at most `max_frame` plus one read.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new(65_535 + HEADER_LEN)
    }
}

impl StreamDecoder {
    /// A decoder that refuses messages longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        StreamDecoder {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message, `None` if more bytes are needed. After an error the
    /// stream is unusable.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        let rest = &self.buf[self.start..];
        let len = match stun::stream::declared_len(rest) {
            Ok(Some(len)) => len,
            Ok(None) => return None,
            Err(e) => return Some(Err(FrameError::NotFramed(e))),
        };
        if len > self.max_frame {
            return Some(Err(FrameError::TooLong(len)));
        }
        if rest.len() < len {
            return None;
        }
        let at = self.start;
        self.start += len;
        Some(Ok(&self.buf[at..at + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{ChannelData, Class, Message, MessageType, MessageWriter, Method};

    #[test]
    fn splits_stun_and_padded_channel_data_fed_byte_by_byte() {
        let mut stream = Vec::new();
        let mut b = [0u8; 64];
        let mut w = MessageWriter::new(
            &mut b,
            MessageType::new(Method::BINDING, Class::Request),
            &[7; 12],
        )
        .unwrap();
        w.add_raw(crate::stun::attr::SOFTWARE, b"abc").unwrap();
        let n = w.finish();
        stream.extend_from_slice(&b[..n]);
        let mut cd = [0u8; 16];
        let m = ChannelData {
            channel: 0x4001,
            data: b"hello",
        }
        .encode(&mut cd, true)
        .unwrap();
        assert_eq!(m, 12);
        stream.extend_from_slice(&cd[..m]);
        stream.extend_from_slice(&b[..n]);

        let mut d = StreamDecoder::default();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for byte in &stream {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame() {
                frames.push(f.unwrap().to_vec());
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(Message::parse(&frames[0]).unwrap().software(), Some("abc"));
        let c = ChannelData::parse_udp(&frames[1]).unwrap();
        assert_eq!((c.channel, c.data), (0x4001, &b"hello"[..]));
        assert_eq!(frames[2], frames[0]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn garbage_and_oversized_frames_are_errors() {
        let mut d = StreamDecoder::default();
        d.push(&[0x80, 0, 0, 0]);
        assert_eq!(
            d.next_frame(),
            Some(Err(FrameError::NotFramed(stun::StunError::NotStun)))
        );
        let mut d = StreamDecoder::new(100);
        d.push(&[0x40, 0x00, 0x01, 0x00]);
        assert_eq!(d.next_frame(), Some(Err(FrameError::TooLong(260))));
        let mut d = StreamDecoder::new(100);
        d.push(&[0x00, 0x01]);
        assert_eq!(d.next_frame(), None);
    }
}
