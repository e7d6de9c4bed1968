//! TURN ChannelData framing (RFC 8656 §12.4, §12.5).
//!
//! Over UDP the length field gives the data length and padding is optional; over TCP/TLS
//! every ChannelData message is padded to a multiple of 4 bytes so the stream stays
//! framed.

use super::StunError;

/// Header length: channel number and length.
pub const HEADER_LEN: usize = 4;
/// Lowest valid channel number.
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest valid channel number (0x5000..=0x7FFF are reserved, RFC 8656 §12).
pub const MAX_CHANNEL: u16 = 0x4FFF;

/// A ChannelData message borrowed from a datagram or stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// Channel number, 0x4000..=0x4FFF.
    pub channel: u16,
    /// Application data.
    pub data: &'a [u8],
}

/// Whether `n` is a valid channel number.
#[inline]
pub const fn is_valid_channel(n: u16) -> bool {
    n >= MIN_CHANNEL && n <= MAX_CHANNEL
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message that is a whole UDP datagram. Up to 3 bytes of padding
    /// after the data are accepted (RFC 8656 §12.5).
    #[inline]
    pub fn parse_udp(buf: &'a [u8]) -> Result<Self, StunError> {
        let (cd, framed) = Self::parse_prefix(buf)?;
        let unpadded = HEADER_LEN + cd.data.len();
        if buf.len() > framed.max(unpadded) {
            return Err(StunError::LengthMismatch {
                header: cd.data.len() as u16,
                actual: buf.len() - HEADER_LEN,
            });
        }
        Ok(cd)
    }

    /// Parses one ChannelData message at the start of a stream buffer. Returns the message
    /// and the bytes it occupies including padding, or `Ok(None)` if more bytes are needed.
    pub fn parse_stream(buf: &'a [u8]) -> Result<Option<(Self, usize)>, StunError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        match Self::parse_prefix(buf) {
            Ok((cd, framed)) if buf.len() >= framed => Ok(Some((cd, framed))),
            Ok(_) | Err(StunError::TooShort { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Parses the header and data; returns the padded frame length too.
    fn parse_prefix(buf: &'a [u8]) -> Result<(Self, usize), StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::TooShort {
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !is_valid_channel(channel) {
            return Err(StunError::BadChannelNumber(channel));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let data = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(StunError::TooShort {
                need: HEADER_LEN + len,
                have: buf.len(),
            })?;
        Ok((ChannelData { channel, data }, HEADER_LEN + ((len + 3) & !3)))
    }

    /// Encoded length; `padded` for stream transports.
    pub const fn encoded_len(data_len: usize, padded: bool) -> usize {
        if padded {
            HEADER_LEN + ((data_len + 3) & !3)
        } else {
            HEADER_LEN + data_len
        }
    }

    /// Writes the 4-byte header for `data_len` bytes of data into `out[..4]`, for callers
    /// that place the data after it themselves (zero-copy relaying).
    pub fn write_header(channel: u16, data_len: usize, out: &mut [u8]) -> Result<(), StunError> {
        if !is_valid_channel(channel) {
            return Err(StunError::BadChannelNumber(channel));
        }
        if data_len > usize::from(u16::MAX) {
            return Err(StunError::ValueTooLong);
        }
        let hdr = out.get_mut(..HEADER_LEN).ok_or(StunError::BufferTooSmall)?;
        hdr[0..2].copy_from_slice(&channel.to_be_bytes());
        hdr[2..4].copy_from_slice(&(data_len as u16).to_be_bytes());
        Ok(())
    }

    /// Encodes into `out`, padding to 4 bytes if `padded`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8], padded: bool) -> Result<usize, StunError> {
        let n = Self::encoded_len(self.data.len(), padded);
        if out.len() < n {
            return Err(StunError::BufferTooSmall);
        }
        Self::write_header(self.channel, self.data.len(), out)?;
        let end = HEADER_LEN + self.data.len();
        out[HEADER_LEN..end].copy_from_slice(self.data);
        out[end..n].fill(0);
        Ok(n)
    }
}
