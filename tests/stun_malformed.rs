//! A table of malformed inputs and the exact error each one gets, plus the visibility
//! rules around MESSAGE-INTEGRITY and the unknown-attribute bookkeeping.

use icering::stun::{
    Attribute, ChannelData, Class, ErrorCode, IntegrityKey, Message, MessageType, MessageWriter,
    Method, StunError, attr,
};

const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// A Binding request header followed by `body`; the length field says `body.len()`.
fn msg(body: &[u8]) -> Vec<u8> {
    msg_len(body, body.len() as u16)
}

/// As [`msg`], with an explicit header length field.
fn msg_len(body: &[u8], len: u16) -> Vec<u8> {
    let mut v = vec![0x00, 0x01];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    v.extend_from_slice(&TID);
    v.extend_from_slice(body);
    v
}

/// One TLV, padded with zeros.
fn tlv(typ: u16, value: &[u8]) -> Vec<u8> {
    let mut v = typ.to_be_bytes().to_vec();
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn parse_err(bytes: &[u8]) -> StunError {
    Message::parse(bytes).expect_err("must be rejected")
}

/// Decodes the single attribute of `body` through the message accessors.
fn decode_err(typ: u16, value: &[u8]) -> StunError {
    let bytes = msg(&tlv(typ, value));
    let m = Message::parse(&bytes).expect("the TLV itself is well-formed");
    m.get_decoded(typ)
        .expect("present")
        .expect_err("value must be rejected")
}

#[test]
fn short_inputs_are_too_short() {
    let full = msg(&[]);
    for n in 0..20 {
        assert_eq!(
            parse_err(&full[..n]),
            StunError::TooShort { need: 20, have: n },
            "{n} bytes"
        );
    }
    assert!(Message::parse(&full).is_ok());
}

#[test]
fn header_errors() {
    let ok = msg(&[]);
    let table: Vec<(&str, Vec<u8>, StunError)> = vec![
        (
            "top bit of type set",
            {
                let mut v = ok.clone();
                v[0] = 0x80;
                v
            },
            StunError::NotStun,
        ),
        (
            "second bit of type set",
            {
                let mut v = ok.clone();
                v[0] = 0x40;
                v
            },
            StunError::NotStun,
        ),
        (
            "bad cookie",
            {
                let mut v = ok.clone();
                v[7] ^= 1;
                v
            },
            StunError::BadMagicCookie,
        ),
        (
            "RFC 3489 style zero cookie",
            {
                let mut v = ok.clone();
                v[4..8].fill(0);
                v
            },
            StunError::BadMagicCookie,
        ),
        (
            "length 2",
            msg_len(&[0, 0], 2),
            StunError::UnalignedLength(2),
        ),
        (
            "length 7 with 8 bytes",
            msg_len(&[0; 8], 7),
            StunError::UnalignedLength(7),
        ),
        (
            "header says more than there is",
            msg_len(&tlv(attr::PRIORITY, &[0; 4]), 12),
            StunError::LengthMismatch {
                header: 12,
                actual: 8,
            },
        ),
        (
            "header says less than there is",
            msg_len(&tlv(attr::PRIORITY, &[0; 4]), 4),
            StunError::LengthMismatch {
                header: 4,
                actual: 8,
            },
        ),
        (
            "header says 0, a trailing attribute",
            msg_len(&tlv(attr::USE_CANDIDATE, &[]), 0),
            StunError::LengthMismatch {
                header: 0,
                actual: 4,
            },
        ),
        (
            "trailing garbage after a UDP datagram",
            {
                let mut v = ok.clone();
                v.extend_from_slice(&[0xFF; 3]);
                v
            },
            StunError::LengthMismatch {
                header: 0,
                actual: 3,
            },
        ),
    ];
    for (what, bytes, want) in table {
        assert_eq!(parse_err(&bytes), want, "{what}");
    }
}

#[test]
fn attribute_framing_errors() {
    let table: Vec<(&str, Vec<u8>, StunError)> = vec![
        (
            "TLV length runs past the end",
            msg(&[0x00, 0x06, 0x00, 0x09, b'a', b'b', b'c', b'd']),
            StunError::AttributeOverrun {
                typ: attr::USERNAME,
                offset: 20,
            },
        ),
        (
            "padding runs past the end",
            msg(&cat(&[
                tlv(attr::PRIORITY, &[0; 4]),
                vec![0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd'],
            ])),
            StunError::AttributeOverrun {
                typ: attr::SOFTWARE,
                offset: 28,
            },
        ),
        (
            "max length TLV in a short message",
            msg(&[0x00, 0x13, 0xFF, 0xFF]),
            StunError::AttributeOverrun {
                typ: attr::DATA,
                offset: 20,
            },
        ),
        (
            "attribute after FINGERPRINT",
            msg(&cat(&[
                tlv(attr::FINGERPRINT, &[0; 4]),
                tlv(attr::SOFTWARE, b"x"),
            ])),
            StunError::AttributeAfterFingerprint,
        ),
        (
            "two FINGERPRINTs",
            msg(&cat(&[
                tlv(attr::FINGERPRINT, &[0; 4]),
                tlv(attr::FINGERPRINT, &[0; 4]),
            ])),
            StunError::AttributeAfterFingerprint,
        ),
        (
            "MESSAGE-INTEGRITY of 16 bytes",
            msg(&tlv(attr::MESSAGE_INTEGRITY, &[0; 16])),
            StunError::BadAttribute(0x0008),
        ),
        (
            "MESSAGE-INTEGRITY of 24 bytes",
            msg(&tlv(attr::MESSAGE_INTEGRITY, &[0; 24])),
            StunError::BadAttribute(0x0008),
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 of 12 bytes",
            msg(&tlv(attr::MESSAGE_INTEGRITY_SHA256, &[0; 12])),
            StunError::BadAttribute(0x001C),
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 of 18 bytes",
            msg(&tlv(attr::MESSAGE_INTEGRITY_SHA256, &[0; 18])),
            StunError::BadAttribute(0x001C),
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 of 36 bytes",
            msg(&tlv(attr::MESSAGE_INTEGRITY_SHA256, &[0; 36])),
            StunError::BadAttribute(0x001C),
        ),
        (
            "FINGERPRINT of 8 bytes",
            msg(&tlv(attr::FINGERPRINT, &[0; 8])),
            StunError::BadAttribute(0x8028),
        ),
    ];
    for (what, bytes, want) in table {
        assert_eq!(parse_err(&bytes), want, "{what}");
    }
}

#[test]
fn attribute_value_errors() {
    let mut long_user = vec![b'u'; 513];
    let mut long_realm = vec![b'r'; 764];
    let table: Vec<(&str, u16, Vec<u8>, StunError)> = vec![
        (
            "XOR-MAPPED-ADDRESS family 3",
            attr::XOR_MAPPED_ADDRESS,
            vec![0, 3, 0, 0, 1, 2, 3, 4],
            StunError::BadAddressFamily(3),
        ),
        (
            "MAPPED-ADDRESS family 0",
            attr::MAPPED_ADDRESS,
            vec![0, 0, 0, 80, 1, 2, 3, 4],
            StunError::BadAddressFamily(0),
        ),
        (
            "XOR-PEER-ADDRESS IPv4 with 16 address bytes",
            attr::XOR_PEER_ADDRESS,
            [&[0u8, 1, 0, 0][..], &[0; 16]].concat(),
            StunError::BadAttribute(attr::XOR_PEER_ADDRESS),
        ),
        (
            "XOR-RELAYED-ADDRESS IPv6 with 4 address bytes",
            attr::XOR_RELAYED_ADDRESS,
            vec![0, 2, 0, 0, 1, 2, 3, 4],
            StunError::BadAttribute(attr::XOR_RELAYED_ADDRESS),
        ),
        (
            "address of 3 bytes",
            attr::XOR_MAPPED_ADDRESS,
            vec![0, 1, 0],
            StunError::BadAttribute(attr::XOR_MAPPED_ADDRESS),
        ),
        (
            "USERNAME not UTF-8",
            attr::USERNAME,
            vec![b'a', 0xFF, 0xFE],
            StunError::BadText(attr::USERNAME),
        ),
        (
            "USERNAME of 513 bytes",
            attr::USERNAME,
            std::mem::take(&mut long_user),
            StunError::BadText(attr::USERNAME),
        ),
        (
            "REALM of 764 bytes",
            attr::REALM,
            std::mem::take(&mut long_realm),
            StunError::BadText(attr::REALM),
        ),
        (
            "NONCE truncated UTF-8",
            attr::NONCE,
            vec![0xE3, 0x83],
            StunError::BadText(attr::NONCE),
        ),
        (
            "SOFTWARE lone continuation byte",
            attr::SOFTWARE,
            vec![0x80],
            StunError::BadText(attr::SOFTWARE),
        ),
        (
            "ERROR-CODE class 7",
            attr::ERROR_CODE,
            vec![0, 0, 7, 1],
            StunError::BadAttribute(attr::ERROR_CODE),
        ),
        (
            "ERROR-CODE class 2",
            attr::ERROR_CODE,
            vec![0, 0, 2, 0],
            StunError::BadAttribute(attr::ERROR_CODE),
        ),
        (
            "ERROR-CODE number 100",
            attr::ERROR_CODE,
            vec![0, 0, 4, 100],
            StunError::BadAttribute(attr::ERROR_CODE),
        ),
        (
            "ERROR-CODE of 3 bytes",
            attr::ERROR_CODE,
            vec![0, 0, 4],
            StunError::BadAttribute(attr::ERROR_CODE),
        ),
        (
            "ERROR-CODE reason not UTF-8",
            attr::ERROR_CODE,
            vec![0, 0, 4, 1, 0xC0, 0x80],
            StunError::BadText(attr::ERROR_CODE),
        ),
        (
            "PRIORITY of 2 bytes",
            attr::PRIORITY,
            vec![0, 1],
            StunError::BadAttribute(attr::PRIORITY),
        ),
        (
            "ICE-CONTROLLING of 4 bytes",
            attr::ICE_CONTROLLING,
            vec![0; 4],
            StunError::BadAttribute(attr::ICE_CONTROLLING),
        ),
        (
            "USE-CANDIDATE with a value",
            attr::USE_CANDIDATE,
            vec![1],
            StunError::BadAttribute(attr::USE_CANDIDATE),
        ),
        (
            "LIFETIME of 8 bytes",
            attr::LIFETIME,
            vec![0; 8],
            StunError::BadAttribute(attr::LIFETIME),
        ),
        (
            "CHANNEL-NUMBER of 2 bytes",
            attr::CHANNEL_NUMBER,
            vec![0x40, 0],
            StunError::BadAttribute(attr::CHANNEL_NUMBER),
        ),
        (
            "REQUESTED-TRANSPORT of 1 byte",
            attr::REQUESTED_TRANSPORT,
            vec![17],
            StunError::BadAttribute(attr::REQUESTED_TRANSPORT),
        ),
        (
            "REQUESTED-ADDRESS-FAMILY 3",
            attr::REQUESTED_ADDRESS_FAMILY,
            vec![3, 0, 0, 0],
            StunError::BadAddressFamily(3),
        ),
        (
            "EVEN-PORT of 4 bytes",
            attr::EVEN_PORT,
            vec![0x80, 0, 0, 0],
            StunError::BadAttribute(attr::EVEN_PORT),
        ),
        (
            "RESERVATION-TOKEN of 4 bytes",
            attr::RESERVATION_TOKEN,
            vec![0; 4],
            StunError::BadAttribute(attr::RESERVATION_TOKEN),
        ),
        (
            "USERHASH of 16 bytes",
            attr::USERHASH,
            vec![0; 16],
            StunError::BadAttribute(attr::USERHASH),
        ),
        (
            "UNKNOWN-ATTRIBUTES of odd length",
            attr::UNKNOWN_ATTRIBUTES,
            vec![0, 1, 0],
            StunError::BadAttribute(attr::UNKNOWN_ATTRIBUTES),
        ),
        (
            "PASSWORD-ALGORITHM params overrun",
            attr::PASSWORD_ALGORITHM,
            vec![0, 2, 0, 8, 0, 0, 0, 0],
            StunError::BadAttribute(attr::PASSWORD_ALGORITHM),
        ),
        (
            "PASSWORD-ALGORITHM with a trailing second entry",
            attr::PASSWORD_ALGORITHM,
            vec![0, 1, 0, 0, 0, 2, 0, 0],
            StunError::BadAttribute(attr::PASSWORD_ALGORITHM),
        ),
        (
            "PASSWORD-ALGORITHMS truncated entry",
            attr::PASSWORD_ALGORITHMS,
            vec![0, 1, 0, 0, 0, 2],
            StunError::BadAttribute(attr::PASSWORD_ALGORITHMS),
        ),
        (
            "ADDRESS-ERROR-CODE family 9",
            attr::ADDRESS_ERROR_CODE,
            vec![9, 0, 4, 40],
            StunError::BadAddressFamily(9),
        ),
        (
            "ICMP of 4 bytes",
            attr::ICMP,
            vec![0; 4],
            StunError::BadAttribute(attr::ICMP),
        ),
        (
            "ALTERNATE-DOMAIN of 256 bytes",
            attr::ALTERNATE_DOMAIN,
            vec![b'd'; 256],
            StunError::BadText(attr::ALTERNATE_DOMAIN),
        ),
    ];
    for (what, typ, value, want) in table {
        assert_eq!(decode_err(typ, &value), want, "{what}");
    }
    // Limits are inclusive at the RFC's maxima.
    let ok_user = msg(&tlv(attr::USERNAME, &[b'u'; 512]));
    assert_eq!(
        Message::parse(&ok_user).unwrap().username().map(str::len),
        Some(512)
    );
    // The convenience accessors turn a malformed value into `None`, never a panic.
    let bad_user = msg(&tlv(attr::USERNAME, &[0xFF]));
    assert_eq!(Message::parse(&bad_user).unwrap().username(), None);
    let bad_ec = msg(&tlv(attr::ERROR_CODE, &[0, 0, 7, 1]));
    assert_eq!(Message::parse(&bad_ec).unwrap().error_code(), None);
    let bad_prio = msg(&tlv(attr::PRIORITY, &[0, 1]));
    assert_eq!(Message::parse(&bad_prio).unwrap().priority(), None);
}

#[test]
fn channel_data_errors() {
    let table: Vec<(&str, Vec<u8>, StunError)> = vec![
        (
            "3 bytes",
            vec![0x40, 0x00, 0x00],
            StunError::TooShort { need: 4, have: 3 },
        ),
        (
            "channel 0x3FFF",
            vec![0x3F, 0xFF, 0x00, 0x00],
            StunError::BadChannelNumber(0x3FFF),
        ),
        (
            "channel 0x5000 (reserved)",
            vec![0x50, 0x00, 0x00, 0x00],
            StunError::BadChannelNumber(0x5000),
        ),
        (
            "channel 0x7FFF (reserved)",
            vec![0x7F, 0xFF, 0x00, 0x00],
            StunError::BadChannelNumber(0x7FFF),
        ),
        (
            "length beyond the datagram",
            vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4],
            StunError::TooShort { need: 9, have: 8 },
        ),
        (
            "more than 3 bytes of padding",
            vec![0x40, 0x00, 0x00, 0x01, 1, 0, 0, 0, 0],
            StunError::LengthMismatch {
                header: 1,
                actual: 5,
            },
        ),
        (
            "trailing bytes after a padded frame",
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4, 0],
            StunError::LengthMismatch {
                header: 4,
                actual: 5,
            },
        ),
    ];
    for (what, bytes, want) in table {
        assert_eq!(ChannelData::parse_udp(&bytes), Err(want), "{what}");
    }
    // Valid edge cases for UDP: unpadded and padded are both fine.
    assert!(ChannelData::parse_udp(&[0x40, 0x00, 0x00, 0x01, 7]).is_ok());
    assert!(ChannelData::parse_udp(&[0x4F, 0xFF, 0x00, 0x01, 7, 0, 0, 0]).is_ok());

    // Stream framing: a bad channel is an error, a short buffer asks for more.
    assert_eq!(
        ChannelData::parse_stream(&[0x3F, 0xFF, 0, 0]),
        Err(StunError::BadChannelNumber(0x3FFF))
    );
    assert_eq!(
        ChannelData::parse_stream(&[0x50, 0x00, 0, 0]),
        Err(StunError::BadChannelNumber(0x5000))
    );
    assert_eq!(ChannelData::parse_stream(&[0x40, 0x00, 0]), Ok(None));
    assert_eq!(
        ChannelData::parse_stream(&[0x40, 0x00, 0, 2, 1, 2]),
        Ok(None)
    );
    // On a stream the padding is required before the frame is complete.
    assert_eq!(
        ChannelData::parse_stream(&[0x40, 0x00, 0, 2, 1, 2, 0]),
        Ok(None)
    );

    let mut out = [0u8; 8];
    assert_eq!(
        ChannelData {
            channel: 0x3FFF,
            data: &[]
        }
        .encode(&mut out, false),
        Err(StunError::BadChannelNumber(0x3FFF))
    );
    assert_eq!(
        ChannelData {
            channel: 0x4000,
            data: &[1; 5]
        }
        .encode(&mut out, true),
        Err(StunError::BufferTooSmall)
    );
}

#[test]
fn attributes_after_message_integrity_are_invisible_except_fingerprint() {
    let key = IntegrityKey::new(b"pass");
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        &TID,
    )
    .unwrap();
    w.add(&Attribute::Username("user")).unwrap();
    w.add_message_integrity(&key).unwrap();
    // Smuggled in after MESSAGE-INTEGRITY: must be ignored, including an unknown
    // comprehension-required type and a second MESSAGE-INTEGRITY.
    w.add(&Attribute::Priority(7)).unwrap();
    w.add(&Attribute::Username("mallory")).unwrap();
    w.add_raw(0x7FFE, b"zz").unwrap();
    w.add_raw(attr::MESSAGE_INTEGRITY, &[0; 20]).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let m = Message::parse(&buf[..n]).unwrap();
    let seen: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        seen,
        [attr::USERNAME, attr::MESSAGE_INTEGRITY, attr::FINGERPRINT]
    );
    assert_eq!(m.username(), Some("user"));
    assert_eq!(m.priority(), None);
    assert!(!m.has_unknown_required());
    assert_eq!(m.unknown_required().count(), 0);
    m.verify_integrity(&key).unwrap();
    m.verify_fingerprint().unwrap();
}

#[test]
fn attributes_between_mi_and_mi256_stay_invisible() {
    // MESSAGE-INTEGRITY, then an attribute, then MESSAGE-INTEGRITY-SHA256: the attribute
    // in between follows MESSAGE-INTEGRITY and must stay ignored (RFC 8489 §14.5).
    let bytes = msg(&cat(&[
        tlv(attr::USERNAME, b"user"),
        tlv(attr::MESSAGE_INTEGRITY, &[0; 20]),
        tlv(attr::PRIORITY, &[0, 0, 0, 9]),
        tlv(0x7FFE, b"zz"),
        tlv(attr::MESSAGE_INTEGRITY_SHA256, &[0; 32]),
        tlv(attr::FINGERPRINT, &[0; 4]),
    ]));
    let m = Message::parse(&bytes).unwrap();
    let seen: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        seen,
        [
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(m.priority(), None);
    assert!(!m.has_unknown_required());
    assert_eq!(m.unknown_required().count(), 0);
}

#[test]
fn attributes_after_mi256_are_invisible_except_fingerprint() {
    let bytes = msg(&cat(&[
        tlv(attr::MESSAGE_INTEGRITY_SHA256, &[0; 16]),
        tlv(attr::MESSAGE_INTEGRITY, &[0; 20]),
        tlv(attr::SOFTWARE, b"after"),
        tlv(attr::FINGERPRINT, &[0; 4]),
    ]));
    let m = Message::parse(&bytes).unwrap();
    let seen: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(seen, [attr::MESSAGE_INTEGRITY_SHA256, attr::FINGERPRINT]);
    assert_eq!(m.integrity_offset(), None);
    assert_eq!(m.software(), None);
}

#[test]
fn unknown_required_is_listed_unknown_optional_is_not() {
    let bytes = msg(&cat(&[
        tlv(0x0002, &[0; 4]), // RESPONSE-ADDRESS (RFC 3489), not known to icering
        tlv(attr::PRIORITY, &[0, 0, 0, 1]),
        tlv(0x7ABC, b"x"),
        tlv(0x8123, b"optional"),
        tlv(0xFFFF, b""),
    ]));
    let m = Message::parse(&bytes).unwrap();
    assert!(m.has_unknown_required());
    assert_eq!(m.unknown_required().collect::<Vec<_>>(), [0x0002, 0x7ABC]);
    assert_eq!(
        m.get_decoded(0x8123),
        Some(Ok(Attribute::Other {
            typ: 0x8123,
            value: b"optional"
        }))
    );

    let only_optional = msg(&cat(&[tlv(0x8123, b"o"), tlv(0xC0FF, &[])]));
    let m = Message::parse(&only_optional).unwrap();
    assert!(!m.has_unknown_required());
    assert_eq!(m.unknown_required().count(), 0);
}

#[test]
fn verify_errors() {
    let m_bytes = msg(&tlv(attr::SOFTWARE, b"x"));
    let m = Message::parse(&m_bytes).unwrap();
    assert_eq!(
        m.verify_integrity(&IntegrityKey::new(b"k")),
        Err(StunError::NoIntegrity)
    );
    assert_eq!(m.verify_fingerprint(), Err(StunError::NoFingerprint));

    let bytes = msg(&cat(&[
        tlv(attr::MESSAGE_INTEGRITY, &[0; 20]),
        tlv(attr::FINGERPRINT, &[0; 4]),
    ]));
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.verify_integrity(&IntegrityKey::new(b"k")),
        Err(StunError::IntegrityMismatch)
    );
    assert_eq!(m.verify_fingerprint(), Err(StunError::FingerprintMismatch));
}

#[test]
fn writer_errors() {
    let t = MessageType::new(Method::BINDING, Class::Request);
    let mut tiny = [0u8; 19];
    assert_eq!(
        MessageWriter::new(&mut tiny, t, &TID).unwrap_err(),
        StunError::BufferTooSmall
    );
    let mut buf = [0u8; 24];
    let mut w = MessageWriter::new(&mut buf, t, &TID).unwrap();
    assert_eq!(
        w.add(&Attribute::Priority(1)),
        Err(StunError::BufferTooSmall)
    );
    assert_eq!(w.len(), 20, "a failed add leaves the message as it was");
    assert_eq!(
        w.add(&Attribute::ErrorCode(ErrorCode {
            code: 700,
            reason: ""
        })),
        Err(StunError::BadAttribute(attr::ERROR_CODE))
    );
    let mut big = vec![0u8; 70_000];
    let mut w = MessageWriter::new(&mut big, t, &TID).unwrap();
    assert_eq!(
        w.add_raw(attr::DATA, &[0; 65_536]),
        Err(StunError::ValueTooLong)
    );
    // A value that fits a TLV but not the 16-bit message length.
    assert_eq!(
        w.add_raw(attr::DATA, &[0; 65_532]),
        Err(StunError::BufferTooSmall)
    );
    assert_eq!(
        w.add_raw(attr::DATA, &[0; 65_529]),
        Err(StunError::BufferTooSmall)
    );
    w.add_raw(attr::DATA, &[0; 65_528]).unwrap();
    assert_eq!(w.len(), 20 + 4 + 65_528);
    assert!(Message::parse(w.as_bytes()).is_ok());
}
