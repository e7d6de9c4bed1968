//! Building messages into caller-owned buffers (RFC 8489 §5, §14).

use std::net::SocketAddr;

use bytes::BytesMut;

use super::attr::{self, Attribute, ErrorCode, PasswordAlgorithm, xor_address};
use super::integrity::fingerprint;
use super::{
    HEADER_LEN, IntegrityKey, IntegrityKeySha256, MAGIC_COOKIE, MessageType, StunError,
    TransactionId,
};

/// Writes one STUN message into a caller-owned buffer, no allocation. The header length is
/// kept current after every attribute, so integrity and fingerprint can be appended at any
/// point and the buffer always holds a well-formed message of [`len`](Self::len) bytes.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message of type `typ` with transaction id `tid` in `buf`.
    pub fn new(
        buf: &'b mut [u8],
        typ: MessageType,
        tid: &TransactionId,
    ) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::BufferTooSmall);
        }
        buf[0..2].copy_from_slice(&typ.to_u16().to_be_bytes());
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(tid);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
        })
    }

    /// Bytes written so far (a complete message).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a message has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The message written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Finishes, returning the message length.
    #[inline]
    pub fn finish(self) -> usize {
        self.len
    }

    fn transaction_id(&self) -> TransactionId {
        let mut t = [0; 12];
        t.copy_from_slice(&self.buf[8..20]);
        t
    }

    /// Appends an attribute whose value `write` fills in place: `vlen` bytes.
    #[inline]
    pub fn add_with(
        &mut self,
        typ: u16,
        vlen: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), StunError> {
        if vlen > usize::from(u16::MAX) {
            return Err(StunError::ValueTooLong);
        }
        let padded = (vlen + 3) & !3;
        let end = self.len + 4 + padded;
        if end > self.buf.len() || end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(StunError::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&typ.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(vlen as u16).to_be_bytes());
        write(&mut self.buf[at + 4..at + 4 + vlen]);
        self.buf[at + 4 + vlen..end].fill(0);
        self.len = end;
        self.buf[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
        Ok(())
    }

    /// Appends an attribute with the given value bytes.
    #[inline]
    pub fn add_raw(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        self.add_with(typ, value.len(), |dst| dst.copy_from_slice(value))
    }

    /// Appends an attribute whose padding bytes are `pad` instead of zero. Receivers must
    /// ignore padding (RFC 8489 §14); RFC 5769's vectors pad with spaces to prove it.
    pub fn add_raw_with_padding(
        &mut self,
        typ: u16,
        value: &[u8],
        pad: u8,
    ) -> Result<(), StunError> {
        self.add_raw(typ, value)?;
        let end = self.len;
        self.buf[end - ((4 - value.len() % 4) % 4)..end].fill(pad);
        Ok(())
    }

    /// Appends a 32-bit attribute (PRIORITY, LIFETIME, ...).
    #[inline]
    pub fn add_u32(&mut self, typ: u16, v: u32) -> Result<(), StunError> {
        self.add_raw(typ, &v.to_be_bytes())
    }

    /// Appends a 64-bit attribute (ICE-CONTROLLING, ICE-CONTROLLED).
    #[inline]
    pub fn add_u64(&mut self, typ: u16, v: u64) -> Result<(), StunError> {
        self.add_raw(typ, &v.to_be_bytes())
    }

    /// Appends a plain address attribute (MAPPED-ADDRESS, ALTERNATE-SERVER).
    pub fn add_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), StunError> {
        let mut v = [0u8; 20];
        let n = attr::encode_address(addr, &mut v);
        self.add_raw(typ, &v[..n])
    }

    /// Appends an XOR-encoded address attribute (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS,
    /// XOR-RELAYED-ADDRESS).
    #[inline]
    pub fn add_xor_address(&mut self, typ: u16, addr: SocketAddr) -> Result<(), StunError> {
        let x = xor_address(addr, &self.transaction_id());
        self.add_address(typ, x)
    }

    /// Appends an ERROR-CODE-shaped value; `family` prefixes it for ADDRESS-ERROR-CODE.
    fn add_error_like(&mut self, typ: u16, family: u8, e: &ErrorCode<'_>) -> Result<(), StunError> {
        if !(300..700).contains(&e.code) {
            return Err(StunError::BadAttribute(typ));
        }
        let reason = e.reason.as_bytes();
        self.add_with(typ, 4 + reason.len(), |d| {
            d[0] = family;
            d[1] = 0;
            d[2] = (e.code / 100) as u8;
            d[3] = (e.code % 100) as u8;
            d[4..].copy_from_slice(reason);
        })
    }

    /// Appends ERROR-CODE.
    pub fn add_error_code(&mut self, e: &ErrorCode<'_>) -> Result<(), StunError> {
        self.add_error_like(attr::ERROR_CODE, 0, e)
    }

    fn add_password_algorithm_list(
        &mut self,
        typ: u16,
        algs: &[PasswordAlgorithm<'_>],
    ) -> Result<(), StunError> {
        let vlen: usize = algs.iter().map(|a| 4 + ((a.params.len() + 3) & !3)).sum();
        self.add_with(typ, vlen, |d| {
            let mut at = 0;
            for a in algs {
                d[at..at + 2].copy_from_slice(&a.algorithm.to_be_bytes());
                d[at + 2..at + 4].copy_from_slice(&(a.params.len() as u16).to_be_bytes());
                d[at + 4..at + 4 + a.params.len()].copy_from_slice(a.params);
                let next = at + 4 + ((a.params.len() + 3) & !3);
                d[at + 4 + a.params.len()..next].fill(0);
                at = next;
            }
        })
    }

    /// Appends PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub fn add_password_algorithms(
        &mut self,
        algs: &[PasswordAlgorithm<'_>],
    ) -> Result<(), StunError> {
        self.add_password_algorithm_list(attr::PASSWORD_ALGORITHMS, algs)
    }

    /// Appends any typed attribute. MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT values are
    /// written verbatim here; use the dedicated methods to compute them.
    pub fn add(&mut self, a: &Attribute<'_>) -> Result<(), StunError> {
        let typ = a.typ();
        match *a {
            Attribute::MappedAddress(addr) | Attribute::AlternateServer(addr) => {
                self.add_address(typ, addr)
            }
            Attribute::XorMappedAddress(addr)
            | Attribute::XorPeerAddress(addr)
            | Attribute::XorRelayedAddress(addr) => self.add_xor_address(typ, addr),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s)
            | Attribute::AlternateDomain(s) => self.add_raw(typ, s.as_bytes()),
            Attribute::UserHash(v) => self.add_raw(typ, v),
            Attribute::MessageIntegrity(v) => self.add_raw(typ, v),
            Attribute::MessageIntegritySha256(v)
            | Attribute::PasswordAlgorithms(v)
            | Attribute::UnknownAttributes(v)
            | Attribute::Data(v) => self.add_raw(typ, v),
            Attribute::Fingerprint(v)
            | Attribute::Priority(v)
            | Attribute::Lifetime(v)
            | Attribute::ConnectionId(v) => self.add_u32(typ, v),
            Attribute::Nomination(v) => self.add_u32(typ, v & 0x00FF_FFFF),
            Attribute::ErrorCode(e) => self.add_error_like(typ, 0, &e),
            Attribute::AddressErrorCode(f, e) => self.add_error_like(typ, f.code(), &e),
            Attribute::PasswordAlgorithm(alg) => self.add_password_algorithm_list(typ, &[alg]),
            Attribute::UseCandidate | Attribute::DontFragment => self.add_raw(typ, &[]),
            Attribute::IceControlled(v) | Attribute::IceControlling(v) => self.add_u64(typ, v),
            Attribute::ChannelNumber(n) => {
                let b = n.to_be_bytes();
                self.add_raw(typ, &[b[0], b[1], 0, 0])
            }
            Attribute::RequestedAddressFamily(f) | Attribute::AdditionalAddressFamily(f) => {
                self.add_raw(typ, &[f.code(), 0, 0, 0])
            }
            Attribute::EvenPort(r) => self.add_raw(typ, &[if r { 0x80 } else { 0 }]),
            Attribute::RequestedTransport(p) => self.add_raw(typ, &[p, 0, 0, 0]),
            Attribute::ReservationToken(t) => self.add_raw(typ, t),
            Attribute::Icmp { typ: t, code, data } => {
                let d = data.to_be_bytes();
                self.add_raw(typ, &[0, 0, t, code, d[0], d[1], d[2], d[3]])
            }
            Attribute::Other { value, .. } => self.add_raw(typ, value),
        }
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` over everything written so far
    /// (RFC 8489 §14.5).
    #[inline]
    pub fn add_message_integrity(&mut self, key: &IntegrityKey) -> Result<(), StunError> {
        let at = self.len;
        let mac = key.sign(self.buf, at, at + 24 - HEADER_LEN);
        self.add_raw(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes) computed with `key`
    /// (RFC 8489 §14.6).
    pub fn add_message_integrity_sha256(
        &mut self,
        key: &IntegrityKeySha256,
    ) -> Result<(), StunError> {
        let at = self.len;
        let mac = key.sign(self.buf, at, at + 36 - HEADER_LEN);
        self.add_raw(attr::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// Appends FINGERPRINT, which must be the last attribute (RFC 8489 §14.7).
    #[inline]
    pub fn add_fingerprint(&mut self) -> Result<(), StunError> {
        let at = self.len;
        if at + 8 > self.buf.len() {
            return Err(StunError::BufferTooSmall);
        }
        // The final length goes into the header first, so the CRC is one pass.
        let len_at = at + 8 - HEADER_LEN;
        self.buf[2..4].copy_from_slice(&(len_at as u16).to_be_bytes());
        let crc = fingerprint(self.buf, at, len_at);
        self.add_u32(attr::FINGERPRINT, crc)
    }
}

/// Builds a message into a `BytesMut` (appending), for callers that keep their own pool of
/// buffers: `max` bytes are reserved, the message is written, and the unused tail is
/// dropped again. Returns the message length.
pub fn write_into_bytes_mut(
    out: &mut BytesMut,
    max: usize,
    typ: MessageType,
    tid: &TransactionId,
    build: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    let start = out.len();
    out.resize(start + max, 0);
    let result = MessageWriter::new(&mut out[start..], typ, tid).and_then(|mut w| {
        build(&mut w)?;
        Ok(w.finish())
    });
    out.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}
