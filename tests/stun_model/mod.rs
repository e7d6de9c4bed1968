//! A plain model of `Message::parse`'s contract, shared by `tests/stun_parse_model.rs` and
//! the `stun_message` fuzz target: one loop applying every rule to every attribute, in
//! message order, as RFC 8489 §5 and §14.5–§14.7 state them. [`agree`] runs the parser and
//! the model on the same bytes and panics unless they agree on the error or, on success,
//! on everything a caller can observe.

use icering::stun::{Message, StunError, attr};

/// What a caller can observe of a parsed message, as the model computes it.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    /// Visible attributes: type, offset of the TLV header, value.
    visible: Vec<(u16, usize, Vec<u8>)>,
    mi: Option<usize>,
    mi256: Option<usize>,
    fp: Option<usize>,
    unknown_required: Vec<u16>,
}

/// The parse contract, one rule at a time.
fn model(buf: &[u8]) -> Result<Observed, StunError> {
    if buf.len() < 20 {
        return Err(StunError::TooShort {
            need: 20,
            have: buf.len(),
        });
    }
    if buf[0] & 0xC0 != 0 {
        return Err(StunError::NotStun);
    }
    if buf[4..8] != [0x21, 0x12, 0xA4, 0x42] {
        return Err(StunError::BadMagicCookie);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]);
    if !len.is_multiple_of(4) {
        return Err(StunError::UnalignedLength(len));
    }
    if usize::from(len) != buf.len() - 20 {
        return Err(StunError::LengthMismatch {
            header: len,
            actual: buf.len() - 20,
        });
    }
    let end = buf.len();
    let (mut mi, mut mi256, mut fp) = (None, None, None);
    // Attributes at or after this offset are invisible (except MI-256 and FINGERPRINT).
    let mut visible_end = end;
    let mut at = 20;
    while at < end {
        if fp.is_some() {
            return Err(StunError::AttributeAfterFingerprint);
        }
        let typ = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let vlen = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let padded = vlen.div_ceil(4) * 4;
        let next = at + 4 + padded;
        if next > end {
            return Err(StunError::AttributeOverrun { typ, offset: at });
        }
        let visible = at < visible_end;
        if typ == attr::MESSAGE_INTEGRITY && visible {
            if vlen != 20 {
                return Err(StunError::BadAttribute(typ));
            }
            mi = Some(at);
            visible_end = next;
        } else if typ == attr::MESSAGE_INTEGRITY_SHA256 && mi256.is_none() {
            if !(16..=32).contains(&vlen) || !vlen.is_multiple_of(4) {
                return Err(StunError::BadAttribute(typ));
            }
            mi256 = Some(at);
            if visible {
                visible_end = next;
            }
        } else if typ == attr::FINGERPRINT {
            if vlen != 4 {
                return Err(StunError::BadAttribute(typ));
            }
            fp = Some(at);
        }
        at = next;
    }
    let mut visible = Vec::new();
    let mut at = 20;
    while at < end {
        let typ = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let vlen = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        if at < visible_end || Some(at) == mi256 || Some(at) == fp {
            visible.push((typ, at, buf[at + 4..at + 4 + vlen].to_vec()));
        }
        at += 4 + vlen.div_ceil(4) * 4;
    }
    let unknown_required = visible
        .iter()
        .map(|a| a.0)
        .filter(|&t| t < 0x8000 && !KNOWN_REQUIRED.contains(&t))
        .collect();
    Ok(Observed {
        visible,
        mi,
        mi256,
        fp,
        unknown_required,
    })
}

/// The comprehension-required types the codec implements (RFC 8489 §18.3, RFC 8445 §16,
/// RFC 8656 §18, RFC 6062), written out independently of `attr::is_known`.
const KNOWN_REQUIRED: &[u16] = &[
    0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015, 0x0016,
    0x0017, 0x0018, 0x0019, 0x001A, 0x001C, 0x001D, 0x001E, 0x0020, 0x0022, 0x0024, 0x0025, 0x002A,
];

/// Runs both on `bytes` and asserts they agree.
pub fn agree(bytes: &[u8]) {
    let want = model(bytes);
    let got = Message::parse(bytes);
    let m = match (&want, got) {
        (Err(w), Err(g)) => {
            assert_eq!(*w, g, "error for {bytes:02x?}");
            return;
        }
        (Ok(_), Ok(m)) => m,
        (w, g) => panic!("model {w:?}, parser {:?} for {bytes:02x?}", g.map(|_| ())),
    };
    let want = want.unwrap();
    let visible: Vec<_> = m
        .attributes()
        .map(|a| (a.typ, a.offset, a.value.to_vec()))
        .collect();
    assert_eq!(visible, want.visible, "visible attributes of {bytes:02x?}");
    assert_eq!(m.integrity_offset(), want.mi);
    assert_eq!(m.integrity_sha256_offset(), want.mi256);
    assert_eq!(m.fingerprint_offset(), want.fp);
    assert_eq!(
        m.unknown_required().collect::<Vec<_>>(),
        want.unknown_required
    );
    assert_eq!(m.has_unknown_required(), !want.unknown_required.is_empty());
    // The cached getters read the first visible attribute of their type.
    let first = |t: u16| {
        want.visible
            .iter()
            .find(|a| a.0 == t)
            .map(|a| a.2.as_slice())
    };
    assert_eq!(
        m.username(),
        first(attr::USERNAME)
            .filter(|v| v.len() <= 512)
            .and_then(|v| std::str::from_utf8(v).ok())
    );
    assert_eq!(
        m.priority(),
        first(attr::PRIORITY).and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(
        m.ice_controlling(),
        first(attr::ICE_CONTROLLING).and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(
        m.ice_controlled(),
        first(attr::ICE_CONTROLLED).and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(m.use_candidate(), first(attr::USE_CANDIDATE).is_some());
}
