//! `Message::parse` against a plain model of its contract.
//!
//! The parser is split for speed (a loop for the visible window, a shortcut for the usual
//! MESSAGE-INTEGRITY + FINGERPRINT ending, a second loop for what follows the window).
//! The model in `tests/stun_model/` is the straightforward form: one loop applying every
//! rule to every attribute. For any input the two must agree on the error, and on success
//! on everything a caller can observe: the visible attributes, the integrity/fingerprint
//! offsets, the unknown-attribute report and the cached ICE getters.

mod stun_model;

use icering::stun::attr;
use proptest::prelude::*;
use stun_model::agree;

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

/// A well-framed message of up to 9 attributes (with `signed`, followed by a 20-byte
/// MESSAGE-INTEGRITY and a FINGERPRINT, the tail `parse` reads first), then possibly
/// damaged: a byte set to anything (a length, a type, the header), or cut short with the
/// header length fixed up.
fn message(signed: bool) -> impl Strategy<Value = Vec<u8>> {
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
        .prop_map(move |(mut attrs, tid, damage)| {
            if signed {
                attrs.push((attr::MESSAGE_INTEGRITY, vec![0x5A; 20]));
                attrs.push((attr::FINGERPRINT, vec![0xA5; 4]));
            }
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
    fn parse_agrees_with_the_model(bytes in message(false)) {
        agree(&bytes);
    }

    #[test]
    fn parse_agrees_with_the_model_on_signed_messages(bytes in message(true)) {
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
    let prio = |len| tlv(attr::PRIORITY, len);
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
        // ICE shapes the signed fast path takes, and near misses it must hand over to
        // the general walk: a hot attribute with another length, a repeated one, one
        // running into MESSAGE-INTEGRITY, USERNAME first or not.
        vec![
            tlv(attr::USERNAME, 17),
            prio(4),
            tlv(attr::ICE_CONTROLLING, 8),
            mi(),
            fp(),
        ],
        vec![
            tlv(attr::USERNAME, 33),
            tlv(0xC057, 4),
            tlv(attr::ICE_CONTROLLED, 8),
            tlv(attr::USE_CANDIDATE, 0),
            prio(4),
            mi(),
            fp(),
        ],
        vec![
            prio(4),
            tlv(attr::USE_CANDIDATE, 0),
            tlv(attr::ICE_CONTROLLING, 8),
            user(),
            mi(),
            fp(),
        ],
        vec![
            user(),
            prio(8),
            prio(4),
            tlv(attr::ICE_CONTROLLING, 4),
            mi(),
            fp(),
        ],
        vec![
            user(),
            prio(4),
            prio(4),
            user(),
            tlv(attr::USE_CANDIDATE, 4),
            mi(),
            fp(),
        ],
        vec![
            user(),
            tlv(attr::USE_CANDIDATE, 0),
            tlv(attr::USE_CANDIDATE, 0),
            mi(),
            fp(),
        ],
        vec![
            tlv(attr::ICE_CONTROLLED, 8),
            tlv(attr::ICE_CONTROLLED, 8),
            mi(),
            fp(),
        ],
        vec![tlv(attr::USERNAME, 0), tlv(0x0002, 4), mi(), fp()],
        vec![user(), mi(), mi(), fp()],
        vec![user(), fp(), mi(), fp()],
        vec![user(), mi256(), tlv(attr::MESSAGE_INTEGRITY, 20), fp()],
    ];
    for attrs in orders {
        let body = attrs.concat();
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[9; 12]);
        m.extend_from_slice(&body);
        agree(&m);
        // Every attribute's length one word longer or shorter (it then runs into its
        // neighbour, or the walk lands inside it), and each 0.
        let mut at = 20;
        for a in &attrs {
            let len = u16::from_be_bytes([m[at + 2], m[at + 3]]);
            for other in [len.wrapping_add(4), len.wrapping_sub(4), 0, 1] {
                let mut n = m.clone();
                n[at + 2..at + 4].copy_from_slice(&other.to_be_bytes());
                agree(&n);
            }
            at += a.len();
        }
        // And with the last attribute's length pointing past the end.
        let last = m.len() - attrs.last().unwrap().len();
        m[last + 2..last + 4].copy_from_slice(&0x00FFu16.to_be_bytes());
        agree(&m);
    }
}

/// Messages whose own header, read as a TLV header, is a hot attribute's (PRIORITY is
/// type 0x0024 length 4; a message of type 0x0024 and length 4 is valid): the getters
/// must not take the message header, or the magic cookie, for an attribute.
#[test]
fn header_lookalikes_are_no_attributes() {
    for (typ, body) in [
        (attr::PRIORITY, vec![0x00, 0x25, 0x00, 0x00]),
        (attr::PRIORITY, vec![0x7A, 0xBC, 0x00, 0x00]),
        (attr::USERNAME, vec![0x00, 0x25, 0x00, 0x00]),
        (0x2112, vec![0x00, 0x25, 0x00, 0x00]),
        (attr::PRIORITY, vec![]),
    ] {
        let mut m = typ.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 8]);
        m.extend_from_slice(&body);
        let p = icering::stun::Message::parse(&m).expect("valid");
        assert_eq!(p.priority(), None);
        assert_eq!(p.username(), None);
        assert_eq!(p.ice_controlling(), None);
        assert_eq!(p.ice_controlled(), None);
        agree(&m);
    }
}

/// A datagram ending in MESSAGE-INTEGRITY + FINGERPRINT whose length is not a multiple of
/// 4: the signed fast path runs before the alignment rule is tested, and must hand such a
/// message over so that it gets `UnalignedLength` like any other.
#[test]
fn unaligned_signed_messages_are_refused() {
    let mut tail = vec![0x00, 0x08, 0x00, 0x14];
    tail.extend_from_slice(&[0x5A; 20]);
    tail.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
    for extra in 1..=11usize {
        for first in [attr::USERNAME, attr::PRIORITY, 0x7ABC] {
            for vlen in [0u16, 1, 2, 3, 4, 5, 8] {
                let mut body = first.to_be_bytes().to_vec();
                body.extend_from_slice(&vlen.to_be_bytes());
                body.resize(4 + extra, 0x61);
                body.extend_from_slice(&tail);
                let mut m = vec![0x00, 0x01];
                m.extend_from_slice(&(body.len() as u16).to_be_bytes());
                m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                m.extend_from_slice(&[7; 12]);
                m.extend_from_slice(&body);
                if !extra.is_multiple_of(4) {
                    assert!(matches!(
                        icering::stun::Message::parse(&m),
                        Err(icering::stun::StunError::UnalignedLength(_))
                    ));
                }
                agree(&m);
            }
        }
    }
}
