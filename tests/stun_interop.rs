//! Cross-checks against an independent STUN implementation: the webrtc-rs `stun` crate.
//!
//! (a) Messages icering builds are decoded by the peer, which reads the same values and
//!     verifies MESSAGE-INTEGRITY and FINGERPRINT with its own HMAC/CRC code.
//! (b) Messages the peer builds are parsed by icering, which reads the same values and
//!     verifies them.

use std::net::SocketAddr;

use icering::stun::{
    Attribute, Class, ErrorCode, IntegrityKey, Message, MessageType, MessageWriter, Method, attr,
    long_term_key_md5,
};
use stun::agent::TransactionId as PeerTid;
use stun::attributes::{
    ATTR_ICE_CONTROLLING, ATTR_LIFETIME, ATTR_NONCE, ATTR_PRIORITY, ATTR_REALM,
    ATTR_REQUESTED_TRANSPORT, ATTR_USE_CANDIDATE, ATTR_USERNAME,
};
use stun::error_code::{CODE_UNAUTHORIZED, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS, CLASS_REQUEST, Getter, METHOD_ALLOCATE,
    Message as PeerMessage, MessageType as PeerType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

const TID: [u8; 12] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
];
const ICE_PWD: &str = "asd88fgpdd777uzjYhagZg";
const ICE_USER: &str = "9c5bd4f1:a8e3b3c2";
const PRIORITY: u32 = 0x6e00_1eff;
const TIE_BREAKER: u64 = 0x0123_4567_89ab_cdef;
const TURN_USER: &str = "alice";
const TURN_REALM: &str = "icering.test";
const TURN_PASS: &str = "correct horse battery staple";
const TURN_NONCE: &str = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";

fn peer_decode(bytes: &[u8]) -> PeerMessage {
    let mut m = PeerMessage::new();
    m.write(bytes).expect("peer decodes what icering built");
    assert_eq!(m.raw, bytes);
    m
}

fn peer_u32(m: &PeerMessage, t: stun::attributes::AttrType) -> u32 {
    u32::from_be_bytes(m.get(t).unwrap().try_into().unwrap())
}

fn peer_text(m: &PeerMessage, t: stun::attributes::AttrType) -> String {
    TextAttribute::get_from_as(m, t).unwrap().text
}

fn peer_xor_mapped(m: &PeerMessage) -> SocketAddr {
    let mut a = XorMappedAddress::default();
    a.get_from(m).unwrap();
    SocketAddr::new(a.ip, a.port)
}

fn peer_build(setters: Vec<Box<dyn Setter>>) -> Vec<u8> {
    let mut m = PeerMessage::new();
    m.build(&setters).expect("peer builds");
    m.raw.clone()
}

struct Raw(stun::attributes::AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut PeerMessage) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

fn raw(t: stun::attributes::AttrType, v: &[u8]) -> Box<dyn Setter> {
    Box::new(Raw(t, v.to_vec()))
}

// ---------------------------------------------------------------------------------------
// (a) icering builds, the peer parses and verifies.
// ---------------------------------------------------------------------------------------

fn our_binding_request(buf: &mut [u8]) -> usize {
    let mut w =
        MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Request), &TID).unwrap();
    w.add(&Attribute::Username(ICE_USER)).unwrap();
    w.add(&Attribute::Priority(PRIORITY)).unwrap();
    w.add(&Attribute::IceControlling(TIE_BREAKER)).unwrap();
    w.add(&Attribute::UseCandidate).unwrap();
    w.add_message_integrity(&IntegrityKey::new(ICE_PWD.as_bytes()))
        .unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

#[test]
fn ours_binding_request_peer_reads_and_verifies() {
    let mut buf = [0u8; 256];
    let n = our_binding_request(&mut buf);
    let mut m = peer_decode(&buf[..n]);
    assert_eq!(m.typ, BINDING_REQUEST);
    assert_eq!(m.transaction_id.0, TID);
    assert_eq!(peer_text(&m, ATTR_USERNAME), ICE_USER);
    assert_eq!(peer_u32(&m, ATTR_PRIORITY), PRIORITY);
    assert_eq!(
        u64::from_be_bytes(m.get(ATTR_ICE_CONTROLLING).unwrap().try_into().unwrap()),
        TIE_BREAKER
    );
    assert!(m.contains(ATTR_USE_CANDIDATE));
    assert!(m.get(ATTR_USE_CANDIDATE).unwrap().is_empty());
    FINGERPRINT
        .check(&m)
        .expect("peer verifies our FINGERPRINT");
    MessageIntegrity::new_short_term_integrity(ICE_PWD.into())
        .check(&mut m)
        .expect("peer verifies our MESSAGE-INTEGRITY");
    assert!(
        MessageIntegrity::new_short_term_integrity("not the password".into())
            .check(&mut m)
            .is_err()
    );
}

fn our_success(buf: &mut [u8], mapped: SocketAddr) -> usize {
    let mut w =
        MessageWriter::new(buf, MessageType::new(Method::BINDING, Class::Success), &TID).unwrap();
    w.add(&Attribute::XorMappedAddress(mapped)).unwrap();
    w.add_message_integrity(&IntegrityKey::new(ICE_PWD.as_bytes()))
        .unwrap();
    w.add_fingerprint().unwrap();
    w.finish()
}

#[test]
fn ours_success_responses_peer_reads_xor_mapped_v4_v6() {
    for mapped in [
        "192.0.2.77:40001".parse::<SocketAddr>().unwrap(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap(),
    ] {
        let mut buf = [0u8; 256];
        let n = our_success(&mut buf, mapped);
        let mut m = peer_decode(&buf[..n]);
        assert_eq!(m.typ, BINDING_SUCCESS);
        assert_eq!(peer_xor_mapped(&m), mapped);
        FINGERPRINT.check(&m).unwrap();
        MessageIntegrity::new_short_term_integrity(ICE_PWD.into())
            .check(&mut m)
            .unwrap();
    }
}

#[test]
fn ours_error_401_peer_reads_code_realm_nonce() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Error),
        &TID,
    )
    .unwrap();
    w.add(&Attribute::ErrorCode(ErrorCode::UNAUTHENTICATED))
        .unwrap();
    w.add(&Attribute::Realm(TURN_REALM)).unwrap();
    w.add(&Attribute::Nonce(TURN_NONCE)).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let m = peer_decode(&buf[..n]);
    assert_eq!(
        m.typ,
        PeerType::new(METHOD_ALLOCATE, stun::message::CLASS_ERROR_RESPONSE)
    );
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&m).unwrap();
    assert!(e.code == CODE_UNAUTHORIZED);
    assert_eq!(e.code.0, 401);
    assert_eq!(e.reason, b"Unauthenticated");
    assert_eq!(peer_text(&m, ATTR_REALM), TURN_REALM);
    assert_eq!(peer_text(&m, ATTR_NONCE), TURN_NONCE);
    FINGERPRINT.check(&m).unwrap();
}

#[test]
fn ours_allocate_long_term_peer_reads_and_verifies() {
    let key = IntegrityKey::new(&long_term_key_md5(TURN_USER, TURN_REALM, TURN_PASS));
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::ALLOCATE, Class::Request),
        &TID,
    )
    .unwrap();
    w.add(&Attribute::RequestedTransport(17)).unwrap();
    w.add(&Attribute::Lifetime(600)).unwrap();
    w.add(&Attribute::Username(TURN_USER)).unwrap();
    w.add(&Attribute::Realm(TURN_REALM)).unwrap();
    w.add(&Attribute::Nonce(TURN_NONCE)).unwrap();
    w.add_message_integrity(&key).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let mut m = peer_decode(&buf[..n]);
    assert_eq!(m.typ, PeerType::new(METHOD_ALLOCATE, CLASS_REQUEST));
    assert_eq!(m.get(ATTR_REQUESTED_TRANSPORT).unwrap(), [17, 0, 0, 0]);
    assert_eq!(peer_u32(&m, ATTR_LIFETIME), 600);
    assert_eq!(peer_text(&m, ATTR_USERNAME), TURN_USER);
    assert_eq!(peer_text(&m, ATTR_REALM), TURN_REALM);
    assert_eq!(peer_text(&m, ATTR_NONCE), TURN_NONCE);
    FINGERPRINT.check(&m).unwrap();
    MessageIntegrity::new_long_term_integrity(
        TURN_USER.into(),
        TURN_REALM.into(),
        TURN_PASS.into(),
    )
    .check(&mut m)
    .expect("peer verifies our long-term MESSAGE-INTEGRITY");
}

// ---------------------------------------------------------------------------------------
// (b) the peer builds, icering parses and verifies.
// ---------------------------------------------------------------------------------------

#[test]
fn peer_binding_request_we_read_and_verify() {
    let bytes = peer_build(vec![
        Box::new(BINDING_REQUEST),
        Box::new(PeerTid(TID)),
        Box::new(TextAttribute::new(ATTR_USERNAME, ICE_USER.into())),
        raw(ATTR_PRIORITY, &PRIORITY.to_be_bytes()),
        raw(ATTR_ICE_CONTROLLING, &TIE_BREAKER.to_be_bytes()),
        raw(ATTR_USE_CANDIDATE, &[]),
        Box::new(MessageIntegrity::new_short_term_integrity(ICE_PWD.into())),
        Box::new(FINGERPRINT),
    ]);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Request)
    );
    assert_eq!(m.transaction_id(), &TID);
    assert_eq!(m.username(), Some(ICE_USER));
    assert_eq!(m.priority(), Some(PRIORITY));
    assert_eq!(m.ice_controlling(), Some(TIE_BREAKER));
    assert_eq!(m.ice_controlled(), None);
    assert!(m.use_candidate());
    assert!(!m.has_unknown_required());
    m.verify_integrity(&IntegrityKey::new(ICE_PWD.as_bytes()))
        .unwrap();
    m.verify_fingerprint().unwrap();
    assert!(
        m.verify_integrity(&IntegrityKey::new(b"not the password"))
            .is_err()
    );

    // And what we build from the same values is byte-identical.
    let mut buf = [0u8; 256];
    let n = our_binding_request(&mut buf);
    assert_eq!(&buf[..n], &bytes[..]);
}

#[test]
fn peer_success_responses_we_read_xor_mapped_v4_v6() {
    for mapped in [
        "203.0.113.9:3478".parse::<SocketAddr>().unwrap(),
        "[fe80::1:2:3:4]:65535".parse().unwrap(),
    ] {
        let bytes = peer_build(vec![
            Box::new(BINDING_SUCCESS),
            Box::new(PeerTid(TID)),
            Box::new(XorMappedAddress {
                ip: mapped.ip(),
                port: mapped.port(),
            }),
            Box::new(MessageIntegrity::new_short_term_integrity(ICE_PWD.into())),
            Box::new(FINGERPRINT),
        ]);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.xor_mapped_address(), Some(Ok(mapped)));
        assert_eq!(
            m.get_decoded(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(Attribute::XorMappedAddress(mapped)))
        );
        m.verify_integrity(&IntegrityKey::new(ICE_PWD.as_bytes()))
            .unwrap();
        m.verify_fingerprint().unwrap();

        let mut buf = [0u8; 256];
        let n = our_success(&mut buf, mapped);
        assert_eq!(&buf[..n], &bytes[..]);
    }
}

#[test]
fn peer_error_401_we_read_code_realm_nonce() {
    let bytes = peer_build(vec![
        Box::new(BINDING_ERROR),
        Box::new(PeerTid(TID)),
        Box::new(ErrorCodeAttribute {
            code: CODE_UNAUTHORIZED,
            reason: b"Unauthorized".to_vec(),
        }),
        Box::new(TextAttribute::new(ATTR_REALM, TURN_REALM.into())),
        Box::new(TextAttribute::new(ATTR_NONCE, TURN_NONCE.into())),
        Box::new(FINGERPRINT),
    ]);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Error)
    );
    assert_eq!(
        m.error_code(),
        Some(ErrorCode {
            code: 401,
            reason: "Unauthorized"
        })
    );
    assert_eq!(m.realm(), Some(TURN_REALM));
    assert_eq!(m.nonce(), Some(TURN_NONCE));
    m.verify_fingerprint().unwrap();
}

#[test]
fn peer_allocate_long_term_we_read_and_verify() {
    let bytes = peer_build(vec![
        Box::new(PeerType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(PeerTid(TID)),
        raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
        raw(ATTR_LIFETIME, &3600u32.to_be_bytes()),
        Box::new(TextAttribute::new(ATTR_USERNAME, TURN_USER.into())),
        Box::new(TextAttribute::new(ATTR_REALM, TURN_REALM.into())),
        Box::new(TextAttribute::new(ATTR_NONCE, TURN_NONCE.into())),
        Box::new(MessageIntegrity::new_long_term_integrity(
            TURN_USER.into(),
            TURN_REALM.into(),
            TURN_PASS.into(),
        )),
        Box::new(FINGERPRINT),
    ]);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::ALLOCATE, Class::Request)
    );
    assert_eq!(
        m.get_decoded(attr::REQUESTED_TRANSPORT),
        Some(Ok(Attribute::RequestedTransport(17)))
    );
    assert_eq!(m.lifetime(), Some(3600));
    assert_eq!(m.username(), Some(TURN_USER));
    assert_eq!(m.realm(), Some(TURN_REALM));
    assert_eq!(m.nonce(), Some(TURN_NONCE));
    let key = IntegrityKey::new(&long_term_key_md5(TURN_USER, TURN_REALM, TURN_PASS));
    m.verify_integrity(&key).unwrap();
    m.verify_fingerprint().unwrap();
    let wrong = IntegrityKey::new(&long_term_key_md5(TURN_USER, TURN_REALM, "wrong"));
    assert!(m.verify_integrity(&wrong).is_err());
}
