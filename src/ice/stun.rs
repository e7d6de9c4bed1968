//! Binding requests and responses for connectivity checks (RFC 8445 §7.1, §7.3), written
//! with the zero-copy codec into caller-owned buffers.

use std::net::SocketAddr;

use crate::stun::{
    Class, ErrorCode, IntegrityKey, MessageType, MessageWriter, Method, StunError, TransactionId,
    attr,
};

/// What a check request carries besides USERNAME / MI / FP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckParams<'a> {
    pub remote_ufrag: &'a str,
    pub local_ufrag: &'a str,
    /// PRIORITY: the prflx priority of the local candidate (§7.1.1).
    pub priority: u32,
    pub controlling: bool,
    pub tie_breaker: u64,
    pub use_candidate: bool,
    pub nomination: Option<u32>,
}

/// A Binding request (§7.1): USERNAME `remote:local` (§7.2.2), PRIORITY, ICE-CONTROLLING
/// or ICE-CONTROLLED, USE-CANDIDATE, NOMINATION, MESSAGE-INTEGRITY with the remote
/// password, FINGERPRINT.
pub(crate) fn write_request(
    buf: &mut [u8],
    tid: &TransactionId,
    p: &CheckParams<'_>,
    key: &IntegrityKey,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Request), tid)?;
    let (r, l) = (p.remote_ufrag.as_bytes(), p.local_ufrag.as_bytes());
    w.add_with(attr::USERNAME, r.len() + 1 + l.len(), |d| {
        d[..r.len()].copy_from_slice(r);
        d[r.len()] = b':';
        d[r.len() + 1..].copy_from_slice(l);
    })?;
    w.add_u32(attr::PRIORITY, p.priority)?;
    let role = if p.controlling {
        attr::ICE_CONTROLLING
    } else {
        attr::ICE_CONTROLLED
    };
    w.add_raw(role, &p.tie_breaker.to_be_bytes())?;
    if p.use_candidate {
        w.add_raw(attr::USE_CANDIDATE, &[])?;
    }
    if let Some(n) = p.nomination {
        w.add_u32(attr::NOMINATION, n & 0x00FF_FFFF)?;
    }
    w.add_message_integrity(key)?;
    w.add_fingerprint()?;
    Ok(w.finish())
}

/// A Binding success response (§7.3.1): XOR-MAPPED-ADDRESS of the request's source, MI
/// with the local password, FINGERPRINT.
pub(crate) fn write_success(
    buf: &mut [u8],
    tid: &TransactionId,
    mapped: SocketAddr,
    key: &IntegrityKey,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Success), tid)?;
    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)?;
    w.add_message_integrity(key)?;
    w.add_fingerprint()?;
    Ok(w.finish())
}

/// A Binding error response; MI only when the request was authenticated (420, 487), not
/// for 400/401 (RFC 8489 §9.1.3). `unknown` fills UNKNOWN-ATTRIBUTES (420 only).
pub(crate) fn write_error(
    buf: &mut [u8],
    tid: &TransactionId,
    code: u16,
    unknown: &[u16],
    key: Option<&IntegrityKey>,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Error), tid)?;
    let e = match code {
        400 => ErrorCode::BAD_REQUEST,
        401 => ErrorCode::UNAUTHENTICATED,
        420 => ErrorCode::UNKNOWN_ATTRIBUTE,
        487 => ErrorCode::ROLE_CONFLICT,
        _ => ErrorCode::SERVER_ERROR,
    };
    w.add_error_code(&e)?;
    if !unknown.is_empty() {
        w.add_with(attr::UNKNOWN_ATTRIBUTES, 2 * unknown.len(), |d| {
            for (c, t) in d.chunks_exact_mut(2).zip(unknown) {
                c.copy_from_slice(&t.to_be_bytes());
            }
        })?;
    }
    if let Some(k) = key {
        w.add_message_integrity(k)?;
    }
    w.add_fingerprint()?;
    Ok(w.finish())
}
