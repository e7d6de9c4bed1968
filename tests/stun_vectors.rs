//! RFC 5769 test vectors and the RFC 8489 Appendix B vector, byte-exact in both
//! directions: we parse and verify theirs, and what we build is byte-for-byte theirs.

use std::net::SocketAddr;

use icering::stun::{
    Attribute, Class, IntegrityKey, IntegrityKeySha256, Message, MessageType, MessageWriter,
    Method, PasswordAlgorithm, StunError, attr, long_term_key_md5, long_term_key_sha256, userhash,
};

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

const TID_5769: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const PASSWORD_5769: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1.
fn sample_request() -> Vec<u8> {
    hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
         00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
         00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
         00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
         80 28 00 04 e5 7a 3b cf")
}

/// RFC 5769 §2.2.
fn sample_ipv4_response() -> Vec<u8> {
    hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 08 00 01 a1 47 e1 12 a6 43
         00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
         80 28 00 04 c0 7d 4c 96")
}

/// RFC 5769 §2.3.
fn sample_ipv6_response() -> Vec<u8> {
    hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
         80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
         00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
         00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
         80 28 00 04 c8 fb 0b 4c")
}

const TID_LT: [u8; 12] = [
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
];
const USER_LT: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// "The\u{00AD}M\u{00AA}tr\u{2168}" after SASLprep (icering takes passwords as given).
const PASSWORD_LT: &str = "TheMatrIX";
const REALM_LT: &str = "example.org";

/// RFC 5769 §2.4.
fn sample_long_term_request() -> Vec<u8> {
    hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
         00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                     53 54 76 79 36 34 73 41
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
}

/// RFC 8489 Appendix B.1.
fn sample_sha256_request() -> Vec<u8> {
    hex("00 01 00 9c 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
         00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f 24 81 94 15
                     56 9e 60 b2 05 c4 6e 41 40 7f 17 04
         00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f 34 39 39 6b
                     39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73
                     41 00 00 00
         00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         00 1d 00 04 00 02 00 00
         00 1c 00 20 e4 68 6c 8f 0e de b5 90 13 e0 70 90 01 0a 93 ef cc bc cc 54
                     4c 0a 45 d9 f8 30 aa 6d 6f 73 5a 01")
}

#[test]
fn rfc5769_request_parses_and_verifies() {
    let bytes = sample_request();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Request)
    );
    assert_eq!(m.transaction_id(), &TID_5769);
    assert_eq!(m.software(), Some("STUN test client"));
    assert_eq!(m.priority(), Some(0x6e0001ff));
    assert_eq!(m.ice_controlled(), Some(0x932ff9b151263b36));
    assert_eq!(m.username(), Some("evtj:h6vY"));
    assert!(!m.has_unknown_required());
    m.verify_integrity(&IntegrityKey::new(PASSWORD_5769.as_bytes()))
        .unwrap();
    m.verify_fingerprint().unwrap();
    assert_eq!(
        m.verify_integrity(&IntegrityKey::new(b"wrong password")),
        Err(StunError::IntegrityMismatch)
    );
}

#[test]
fn rfc5769_request_is_built_byte_exact() {
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        &TID_5769,
    )
    .unwrap();
    w.add(&Attribute::Software("STUN test client")).unwrap();
    w.add(&Attribute::Priority(0x6e0001ff)).unwrap();
    w.add(&Attribute::IceControlled(0x932ff9b151263b36))
        .unwrap();
    w.add_raw_with_padding(attr::USERNAME, b"evtj:h6vY", b' ')
        .unwrap();
    w.add_message_integrity(&IntegrityKey::new(PASSWORD_5769.as_bytes()))
        .unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    assert_eq!(&buf[..n], &sample_request()[..]);
}

fn check_response(bytes: &[u8], mapped: SocketAddr) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!(
        m.message_type(),
        MessageType::new(Method::BINDING, Class::Success)
    );
    assert_eq!(m.software(), Some("test vector"));
    assert_eq!(m.xor_mapped_address(), Some(Ok(mapped)));
    m.verify_integrity(&IntegrityKey::new(PASSWORD_5769.as_bytes()))
        .unwrap();
    m.verify_fingerprint().unwrap();

    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Success),
        &TID_5769,
    )
    .unwrap();
    w.add_raw_with_padding(attr::SOFTWARE, b"test vector", b' ')
        .unwrap();
    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped).unwrap();
    w.add_message_integrity(&IntegrityKey::new(PASSWORD_5769.as_bytes()))
        .unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    assert_eq!(&buf[..n], bytes);
}

#[test]
fn rfc5769_ipv4_response_both_ways() {
    check_response(&sample_ipv4_response(), "192.0.2.1:32853".parse().unwrap());
}

#[test]
fn rfc5769_ipv6_response_both_ways() {
    check_response(
        &sample_ipv6_response(),
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap(),
    );
}

#[test]
fn rfc5769_long_term_request_both_ways() {
    let bytes = sample_long_term_request();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.transaction_id(), &TID_LT);
    assert_eq!(m.username(), Some(USER_LT));
    assert_eq!(m.nonce(), Some("f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(m.realm(), Some(REALM_LT));
    let key = IntegrityKey::new(&long_term_key_md5(USER_LT, REALM_LT, PASSWORD_LT));
    m.verify_integrity(&key).unwrap();
    assert_eq!(m.verify_fingerprint(), Err(StunError::NoFingerprint));

    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        &TID_LT,
    )
    .unwrap();
    w.add(&Attribute::Username(USER_LT)).unwrap();
    w.add(&Attribute::Nonce("f//499k954d6OL34oL9FSTvy64sA"))
        .unwrap();
    w.add(&Attribute::Realm(REALM_LT)).unwrap();
    w.add_message_integrity(&key).unwrap();
    let n = w.finish();
    assert_eq!(&buf[..n], &bytes[..]);
}

/// RFC 8489 B.1 as corrected by its erratum: the printed header length 0x9c counts 12
/// bytes that are not there (the attributes take 0x90), and the printed
/// MESSAGE-INTEGRITY-SHA256 is not the HMAC of the message; the corrected value is the
/// HMAC-SHA256 under the SHA-256 long-term key that PASSWORD-ALGORITHM names.
fn corrected_sha256_request() -> Vec<u8> {
    let mut v = sample_sha256_request();
    v[2..4].copy_from_slice(&[0x00, 0x90]);
    let n = v.len();
    v[n - 32..].copy_from_slice(&hex("b5c7bf00 5b6c52a2 1c51c5e8 92f81924
                                       136296cb 927c4314 9309278c c6518e65"));
    v
}

#[test]
fn rfc8489_printed_vector_has_the_wrong_length() {
    assert_eq!(
        Message::parse(&sample_sha256_request()).unwrap_err(),
        StunError::LengthMismatch {
            header: 0x9c,
            actual: 0x90
        }
    );
}

#[test]
fn rfc8489_sha256_userhash_request_both_ways() {
    let bytes = corrected_sha256_request();
    let m = Message::parse(&bytes).unwrap();
    let nonce = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";
    assert_eq!(m.nonce(), Some(nonce));
    assert_eq!(m.realm(), Some(REALM_LT));
    let hash = userhash(USER_LT, REALM_LT);
    assert_eq!(
        m.get_decoded(attr::USERHASH),
        Some(Ok(Attribute::UserHash(&hash)))
    );
    assert_eq!(
        m.get_decoded(attr::PASSWORD_ALGORITHM),
        Some(Ok(Attribute::PasswordAlgorithm(PasswordAlgorithm::SHA256)))
    );
    let key = IntegrityKeySha256::new(&long_term_key_sha256(USER_LT, REALM_LT, PASSWORD_LT));
    m.verify_integrity_sha256(&key).unwrap();
    let md5_key = IntegrityKeySha256::new(&long_term_key_md5(USER_LT, REALM_LT, PASSWORD_LT));
    assert_eq!(
        m.verify_integrity_sha256(&md5_key),
        Err(StunError::IntegrityMismatch)
    );

    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        &TID_LT,
    )
    .unwrap();
    w.add(&Attribute::UserHash(&hash)).unwrap();
    w.add(&Attribute::Nonce(nonce)).unwrap();
    w.add(&Attribute::Realm(REALM_LT)).unwrap();
    w.add(&Attribute::PasswordAlgorithm(PasswordAlgorithm::SHA256))
        .unwrap();
    w.add_message_integrity_sha256(&key).unwrap();
    let n = w.finish();
    assert_eq!(&buf[..n], &bytes[..]);
}
