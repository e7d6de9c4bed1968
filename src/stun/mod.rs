//! STUN wire codec: RFC 8489 (compatible with RFC 5389), the ICE attributes of RFC 8445
//! §16, TURN (RFC 8656) attributes and ChannelData, and the RFC 7983 first-byte demux.
//!
//! Everything here is sans-IO and allocation-free:
//!
//! - [`Message::parse`] is the checked constructor for untrusted bytes (in the manner of
//!   smoltcp's `new_checked`): once it returns `Ok`, every accessor is bounds-safe and
//!   borrows from the datagram without copying.
//! - [`MessageWriter`] builds a message into a caller-owned `&mut [u8]` and appends
//!   MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT in place.
//! - [`IntegrityKey`] / [`IntegrityKeySha256`] hold HMAC state precomputed once per
//!   credential, so a check costs only the hash of the message itself.
//! - [`channel_data`] frames TURN ChannelData; [`demux`] classifies a datagram by its
//!   first byte for one-port multiplexing; [`stream`] cuts a TCP byte stream into frames.

pub mod attr;
pub mod channel_data;
pub mod demux;
mod error;
mod integrity;
mod message;
pub mod stream;
mod writer;

pub use attr::{AddressFamily, Attribute, ErrorCode, PasswordAlgorithm};
pub use channel_data::ChannelData;
pub use demux::{PacketKind, classify};
pub use error::StunError;
pub use integrity::{
    IntegrityKey, IntegrityKeySha256, long_term_key_md5, long_term_key_sha256, userhash,
};
pub use message::{Attributes, Message, RawAttribute};
pub use writer::{MessageWriter, write_into_bytes_mut};

/// The fixed magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// XOR constant applied to the CRC-32 in FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Message class (RFC 8489 §5): the C1/C0 bits of the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// An indication: no response.
    Indication,
    /// A success response.
    Success,
    /// An error response (carries ERROR-CODE).
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// A STUN method (12 bits). Unknown methods are representable so a server can answer
/// them with an error instead of dropping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489 §18.2).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §17).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656 §17).
    pub const REFRESH: Method = Method(0x004);
    /// Send, indication only (RFC 8656 §17).
    pub const SEND: Method = Method(0x006);
    /// Data, indication only (RFC 8656 §17).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656 §17).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656 §17).
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// Connect (RFC 6062 §6.1).
    pub const CONNECT: Method = Method(0x00A);
    /// ConnectionBind (RFC 6062 §6.1).
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// ConnectionAttempt (RFC 6062 §6.1).
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// The 16-bit message type: method and class interleaved (RFC 8489 §5, Figure 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
}

impl MessageType {
    /// A type from its parts.
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Encodes to the wire value (the two leading zero bits included).
    pub const fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Decodes a wire value (the caller has checked the two leading bits are zero).
    pub const fn from_u16(v: u16) -> Self {
        let method = (v & 0x000F) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0F80);
        let class = ((v >> 4) & 1) | ((v >> 7) & 2);
        MessageType {
            method: Method(method),
            class: Class::from_bits(class),
        }
    }
}

/// The 96-bit transaction id (RFC 8489 §5).
pub type TransactionId = [u8; 12];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for m in 0..0x1000u16 {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = MessageType::new(Method(m), c);
                assert_eq!(MessageType::from_u16(t.to_u16()), t);
                assert_eq!(t.to_u16() & 0xC000, 0);
            }
        }
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Request).to_u16(),
            0x0001
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Success).to_u16(),
            0x0101
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Error).to_u16(),
            0x0111
        );
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).to_u16(),
            0x0016
        );
        assert_eq!(
            MessageType::new(Method::DATA, Class::Indication).to_u16(),
            0x0017
        );
    }
}
