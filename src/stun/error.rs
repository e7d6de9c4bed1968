use thiserror::Error;

/// Everything that can be wrong with STUN bytes or a STUN buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StunError {
    /// Fewer bytes than the structure needs.
    #[error("too short: need {need} bytes, have {have}")]
    TooShort {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The two leading bits of the message type are not zero (RFC 8489 §5).
    #[error("not a STUN message: leading bits of the type are not zero")]
    NotStun,
    /// The magic cookie is not 0x2112A442 (RFC 8489 §5).
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The header length is not a multiple of 4.
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(u16),
    /// The header length disagrees with the datagram.
    #[error("message length {header} does not match the {actual} bytes after the header")]
    LengthMismatch {
        /// Length field of the header.
        header: u16,
        /// Bytes that follow the header.
        actual: usize,
    },
    /// An attribute's TLV runs past the end of the message.
    #[error("attribute 0x{typ:04x} at offset {offset} overruns the message")]
    AttributeOverrun {
        /// Attribute type.
        typ: u16,
        /// Offset of its header in the message.
        offset: usize,
    },
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// A known attribute's value has an impossible size or content.
    #[error("malformed value of attribute 0x{0:04x}")]
    BadAttribute(u16),
    /// An address attribute names a family other than IPv4 (1) or IPv6 (2).
    #[error("unknown address family {0}")]
    BadAddressFamily(u8),
    /// A text attribute is not UTF-8 or too long for its kind.
    #[error("attribute 0x{0:04x} is not valid text")]
    BadText(u16),
    /// The message has no MESSAGE-INTEGRITY(-SHA256) to check.
    #[error("no message integrity attribute")]
    NoIntegrity,
    /// MESSAGE-INTEGRITY(-SHA256) does not match.
    #[error("message integrity check failed")]
    IntegrityMismatch,
    /// The message has no FINGERPRINT.
    #[error("no fingerprint")]
    NoFingerprint,
    /// FINGERPRINT does not match.
    #[error("fingerprint mismatch")]
    FingerprintMismatch,
    /// The output buffer cannot hold what is being written.
    #[error("buffer too small")]
    BufferTooSmall,
    /// A value is too long to encode (attribute values are at most 65535 bytes).
    #[error("value too long")]
    ValueTooLong,
    /// A ChannelData channel number outside 0x4000..=0x4FFF (RFC 8656 §12).
    #[error("channel number 0x{0:04x} outside 0x4000..=0x4FFF")]
    BadChannelNumber(u16),
}
