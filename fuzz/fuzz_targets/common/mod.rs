//! Shared oracles for the STUN fuzz targets: drive every public reader of the codec and
//! check the invariants that must hold for any input.

#![allow(dead_code)]

use std::cell::RefCell;

use icering::stun::{
    Attribute, ChannelData, IntegrityKey, IntegrityKeySha256, Message, MessageType, MessageWriter,
    StunError, attr,
};

thread_local! {
    static KEYS: (IntegrityKey, IntegrityKeySha256) = (
        IntegrityKey::new(b"VOkJxbRl1RmTxUk/WvJxBt"),
        IntegrityKeySha256::new(b"VOkJxbRl1RmTxUk/WvJxBt"),
    );
    static OUT: RefCell<Vec<u8>> = RefCell::new(vec![0; 20 + 4 + 65536]);
}

/// The one-loop model of `Message::parse` (also used by `tests/stun_parse_model.rs`).
#[path = "../../../tests/stun_model/mod.rs"]
mod stun_model;

/// Parses `data` as a STUN message and, if it parses, exercises everything on it; the
/// parser must agree with the model on every input (same error, same visible view).
pub fn stun(data: &[u8]) {
    stun_model::agree(data);
    if let Ok(m) = Message::parse(data) {
        exercise(&m);
    }
}

/// Every accessor, every attribute decoded (and re-encoded), every verifier.
pub fn exercise(m: &Message<'_>) {
    let bytes = m.as_bytes();
    assert_eq!(bytes[0] & 0xC0, 0);
    let _ = (m.message_type(), m.method(), m.class(), m.transaction_id());
    let _ = (m.username(), m.realm(), m.nonce(), m.software());
    let _ = (m.priority(), m.ice_controlling(), m.ice_controlled());
    let _ = (m.use_candidate(), m.nomination(), m.lifetime());
    let _ = (m.channel_number(), m.data(), m.error_code());
    let _ = (m.xor_mapped_address(), m.mapped_address());
    let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
    // The cached ICE getters agree with a scan of the visible attributes.
    let scan = |t: u16| m.get(t).map(|a| a.value);
    assert_eq!(
        m.username(),
        scan(attr::USERNAME)
            .filter(|v| v.len() <= 512)
            .and_then(|v| std::str::from_utf8(v).ok())
    );
    assert_eq!(
        m.priority(),
        scan(attr::PRIORITY).and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(
        m.ice_controlling(),
        scan(attr::ICE_CONTROLLING).and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(
        m.ice_controlled(),
        scan(attr::ICE_CONTROLLED).and_then(|v| Some(u64::from_be_bytes(v.try_into().ok()?)))
    );
    assert_eq!(m.use_candidate(), scan(attr::USE_CANDIDATE).is_some());
    for a in m.xor_addresses(attr::XOR_RELAYED_ADDRESS) {
        let _ = a;
    }
    // has_unknown_required() agrees with unknown_required().
    let unknown = m.unknown_required().count();
    assert_eq!(m.has_unknown_required(), unknown > 0);
    let _ = format!("{m:?}");

    let tid = *m.transaction_id();
    let mut prev_end = 20;
    for a in m.attributes() {
        // Attributes are in order, inside the message, and padded.
        assert!(a.offset >= prev_end);
        assert!(a.offset + 4 + a.value.len() <= bytes.len());
        prev_end = a.offset + 4 + a.value.len();
        assert_eq!(m.get(a.typ).map(|g| g.typ), Some(a.typ));
        let _ = m.get_decoded(a.typ);
        if let Ok(d) = Attribute::decode(a.typ, a.value, &tid) {
            assert_eq!(d.typ(), a.typ);
            match d {
                Attribute::PasswordAlgorithms(v) => {
                    for alg in attr::password_algorithms(v) {
                        alg.expect("validated by decode");
                    }
                }
                Attribute::UnknownAttributes(v) => {
                    let _ = attr::unknown_attributes(v).count();
                }
                _ => {}
            }
            reencode(&d, &tid);
        }
    }
    if let Some(at) = m.integrity_offset() {
        assert!(at >= 20 && at + 24 <= bytes.len());
    }
    if let Some(at) = m.fingerprint_offset() {
        assert_eq!(at + 8, bytes.len(), "FINGERPRINT is last");
    }
    KEYS.with(|(k1, k256)| {
        match (m.integrity_offset(), m.verify_integrity(k1)) {
            (None, r) => assert_eq!(r, Err(StunError::NoIntegrity)),
            (Some(_), r) => assert!(matches!(r, Ok(()) | Err(StunError::IntegrityMismatch))),
        }
        match (m.integrity_sha256_offset(), m.verify_integrity_sha256(k256)) {
            (None, r) => assert_eq!(r, Err(StunError::NoIntegrity)),
            (Some(_), r) => assert!(matches!(r, Ok(()) | Err(StunError::IntegrityMismatch))),
        }
    });
    match (m.fingerprint_offset(), m.verify_fingerprint()) {
        (None, r) => assert_eq!(r, Err(StunError::NoFingerprint)),
        (Some(_), r) => assert!(matches!(r, Ok(()) | Err(StunError::FingerprintMismatch))),
    }
}

/// A decoded attribute written alone into a fresh message decodes to the same value.
fn reencode(d: &Attribute<'_>, tid: &[u8; 12]) {
    OUT.with(|out| {
        let mut out = out.borrow_mut();
        let typ = MessageType::from_u16(0x0001);
        let mut w = MessageWriter::new(&mut out[..], typ, tid).expect("big enough");
        w.add(d).expect("decoded values re-encode");
        let n = w.finish();
        let m = Message::parse(&out[..n]).expect("a written message parses");
        let a = m.attributes().next().expect("one attribute");
        let again = Attribute::decode(a.typ, a.value, tid).expect("re-decodes");
        assert_eq!(&again, d);
    });
}

/// Both ChannelData framings, with their invariants.
pub fn channel_data(data: &[u8]) {
    let udp = ChannelData::parse_udp(data);
    if let Ok(cd) = udp {
        assert!((0x4000..=0x4FFF).contains(&cd.channel));
        assert!(data.len() >= 4 + cd.data.len() && data.len() <= 4 + ((cd.data.len() + 3) & !3));
        assert_eq!(&data[4..4 + cd.data.len()], cd.data);
    }
    match ChannelData::parse_stream(data) {
        Ok(Some((cd, used))) => {
            assert!(used <= data.len() && used % 4 == 0);
            assert_eq!(used, ChannelData::encoded_len(cd.data.len(), true));
            // A padded frame is also a valid datagram.
            assert_eq!(ChannelData::parse_udp(&data[..used]), Ok(cd));
            let mut out = vec![0u8; used];
            assert_eq!(cd.encode(&mut out, true), Ok(used));
            assert_eq!(&out[..4 + cd.data.len()], &data[..4 + cd.data.len()]);
        }
        Ok(None) => assert!(
            udp.is_err() || data.len() < ChannelData::encoded_len(udp.unwrap().data.len(), true)
        ),
        Err(_) => assert!(udp.is_err()),
    }
}
