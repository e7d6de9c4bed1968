//! `Message::parse` against a plain model of its contract.
//!
//! The parser is split for speed (a loop for the visible window, a shortcut for the usual
//! MESSAGE-INTEGRITY + FINGERPRINT ending, a second loop for what follows the window).
//! The model below is the straightforward form: one loop applying every rule to every
//! attribute, in message order, as RFC 8489 §5, §14.5–§14.7 state them. For any input the
//! two must agree on the error, and on success on everything a caller can observe: the
//! visible attributes, the integrity/fingerprint offsets, the unknown-attribute report and
//! the cached ICE getters.

use icering::stun::{Message, StunError, attr};
use proptest::prelude::*;

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
fn agree(bytes: &[u8]) {
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

/// Types the parser treats specially, plus known, unknown-required and optional ones.
const TYPES: &[u16] = &[
    attr::USERNAME,
    attr::PRIORITY,
    attr::ICE_CONTROLLING,
    attr::ICE_CONTROLLED,
    attr::USE_CANDIDATE,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::FINGERPRINT,
    attr::SOFTWARE,
    attr::REALM,
    attr::LIFETIME,
    attr::NOMINATION,
    0x0002, // RESPONSE-ADDRESS (RFC 3489): unknown, comprehension-required
    0x0046, // shares its low six bits with USERNAME
    0x7ABC,
    0x8123,
];

/// A value length for `typ`: mostly the one its rules require, sometimes anything.
fn vlen_for(typ: u16) -> BoxedStrategy<usize> {
    let right: BoxedStrategy<usize> = match typ {
        attr::MESSAGE_INTEGRITY => Just(20).boxed(),
        attr::MESSAGE_INTEGRITY_SHA256 => (4usize..=8).prop_map(|k| 4 * k).boxed(),
        attr::FINGERPRINT | attr::PRIORITY => Just(4).boxed(),
        attr::ICE_CONTROLLING | attr::ICE_CONTROLLED => Just(8).boxed(),
        attr::USE_CANDIDATE => Just(0).boxed(),
        _ => (0usize..24).boxed(),
    };
    prop_oneof![4 => right, 1 => 0usize..40].boxed()
}

/// A well-framed message of up to 9 attributes, then possibly damaged: a byte set to
/// anything (a length, a type, the header), or cut short with the header length fixed up.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let one = proptest::sample::select(TYPES)
        .prop_flat_map(|t| (Just(t), vlen_for(t), any::<u8>()))
        .prop_map(|(t, len, fill)| (t, vec![fill; len]));
    (
        proptest::collection::vec(one, 0..9),
        any::<[u8; 12]>(),
        prop_oneof![
            3 => Just(None),
            1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Some((i, b, false))),
            1 => (any::<prop::sample::Index>(), Just(0u8)).prop_map(|(i, b)| Some((i, b, true))),
        ],
    )
        .prop_map(|(attrs, tid, damage)| {
            let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
            m.extend_from_slice(&tid);
            for (t, v) in attrs {
                m.extend_from_slice(&t.to_be_bytes());
                m.extend_from_slice(&(v.len() as u16).to_be_bytes());
                m.extend_from_slice(&v);
                m.resize(m.len().div_ceil(4) * 4, 0);
            }
            if let Some((i, _, true)) = damage {
                // Cut at a multiple of 4 inside the body.
                let words = (m.len() - 20) / 4;
                m.truncate(20 + 4 * i.index(words + 1));
            }
            let len = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
            if let Some((i, b, false)) = damage {
                // Any byte, the header's length and cookie included.
                let i = i.index(m.len());
                m[i] = b;
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn parse_agrees_with_the_model(bytes in message()) {
        agree(&bytes);
    }

    #[test]
    fn parse_agrees_with_the_model_on_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..120)
    ) {
        agree(&bytes);
    }
}

/// Orders of the attributes around the window that the generator reaches only rarely.
#[test]
fn window_orders_agree() {
    let tlv = |t: u16, len: usize| {
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.resize(4 + len.div_ceil(4) * 4, 0x33);
        v
    };
    let mi = || tlv(attr::MESSAGE_INTEGRITY, 20);
    let mi256 = || tlv(attr::MESSAGE_INTEGRITY_SHA256, 32);
    let fp = || tlv(attr::FINGERPRINT, 4);
    let user = || tlv(attr::USERNAME, 5);
    let unknown = || tlv(0x7ABC, 2);
    let orders: Vec<Vec<Vec<u8>>> = vec![
        vec![user(), mi(), fp()],
        vec![user(), mi(), mi256(), fp()],
        vec![user(), mi256(), mi(), fp()],
        vec![user(), mi(), user(), unknown(), mi256(), fp()],
        vec![mi(), mi(), fp()],
        vec![mi(), tlv(attr::MESSAGE_INTEGRITY, 16), fp()],
        vec![mi256(), tlv(attr::MESSAGE_INTEGRITY_SHA256, 12), fp()],
        vec![mi(), fp(), fp()],
        vec![mi(), tlv(attr::FINGERPRINT, 8)],
        vec![mi(), fp(), user()],
        vec![fp()],
        vec![tlv(attr::FINGERPRINT, 0), mi()],
        vec![mi()],
        vec![mi(), unknown()],
        vec![unknown(), mi(), fp()],
        vec![tlv(attr::MESSAGE_INTEGRITY, 24), fp()],
        vec![mi256(), mi(), tlv(attr::MESSAGE_INTEGRITY, 3), fp()],
    ];
    for attrs in orders {
        let body = attrs.concat();
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&body);
        agree(&m);
        // And with the last attribute's length pointing past the end.
        let last = m.len() - attrs.last().unwrap().len();
        m[last + 2..last + 4].copy_from_slice(&0x00FFu16.to_be_bytes());
        agree(&m);
    }
}
