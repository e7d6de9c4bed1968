//! Binding responses (RFC 8489 §6.3): XOR-MAPPED-ADDRESS, SOFTWARE, FINGERPRINT; error
//! responses with ERROR-CODE, and 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1.1).

use std::net::SocketAddr;

use crate::stun::{Class, ErrorCode, Message, MessageType, MessageWriter, StunError, attr};

type Answer = Result<(usize, bool), StunError>;

fn start<'b>(
    req: &Message<'_>,
    class: Class,
    out: &'b mut [u8],
) -> Result<MessageWriter<'b>, StunError> {
    MessageWriter::new(
        out,
        MessageType::new(req.method(), class),
        req.transaction_id(),
    )
}

fn finish(mut w: MessageWriter<'_>, software: &str, is_error: bool) -> Answer {
    if !software.is_empty() {
        w.add_raw(attr::SOFTWARE, software.as_bytes())?;
    }
    w.add_fingerprint()?;
    Ok((w.finish(), is_error))
}

/// A Binding success response reflecting `source`.
pub(super) fn success(
    req: &Message<'_>,
    source: SocketAddr,
    software: &str,
    out: &mut [u8],
) -> Answer {
    let mut w = start(req, Class::Success, out)?;
    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, source)?;
    finish(w, software, false)
}

/// An error response with `code`.
pub(super) fn error(
    req: &Message<'_>,
    code: &ErrorCode<'_>,
    software: &str,
    out: &mut [u8],
) -> Answer {
    let mut w = start(req, Class::Error, out)?;
    w.add_error_code(code)?;
    finish(w, software, true)
}

/// 420 Unknown Attribute listing the unknown comprehension-required types.
pub(super) fn unknown_attributes(req: &Message<'_>, software: &str, out: &mut [u8]) -> Answer {
    let mut w = start(req, Class::Error, out)?;
    w.add_error_code(&ErrorCode::UNKNOWN_ATTRIBUTE)?;
    let count = req.unknown_required().count();
    w.add_with(attr::UNKNOWN_ATTRIBUTES, 2 * count, |d| {
        for (slot, typ) in d.chunks_exact_mut(2).zip(req.unknown_required()) {
            slot.copy_from_slice(&typ.to_be_bytes());
        }
    })?;
    finish(w, software, true)
}
