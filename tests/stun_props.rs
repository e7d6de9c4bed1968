//! Property tests for the STUN codec: typed attributes round-trip through the writer and
//! the parser, integrity and fingerprint verify and catch every single-bit flip, and no
//! input of any shape makes a reader panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use icering::stun::{
    AddressFamily, Attribute, ChannelData, Class, ErrorCode, IntegrityKey, IntegrityKeySha256,
    Message, MessageType, MessageWriter, Method, PasswordAlgorithm, StunError, attr, classify,
};
use proptest::prelude::*;

/// An owned attribute value; [`Owned::attr`] borrows it as an [`Attribute`].
#[derive(Debug, Clone)]
enum Owned {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    Username(String),
    UserHash([u8; 32]),
    ErrorCode(u16, String),
    Realm(String),
    Nonce(String),
    PasswordAlgorithms(Vec<u8>),
    PasswordAlgorithm(u16, Vec<u8>),
    UnknownAttributes(Vec<u8>),
    Software(String),
    AlternateServer(SocketAddr),
    AlternateDomain(String),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    Nomination(u32),
    ChannelNumber(u16),
    Lifetime(u32),
    XorPeerAddress(SocketAddr),
    Data(Vec<u8>),
    XorRelayedAddress(SocketAddr),
    RequestedAddressFamily(AddressFamily),
    EvenPort(bool),
    RequestedTransport(u8),
    DontFragment,
    ReservationToken([u8; 8]),
    AdditionalAddressFamily(AddressFamily),
    AddressErrorCode(AddressFamily, u16, String),
    Icmp(u8, u8, u32),
    ConnectionId(u32),
    Other(u16, Vec<u8>),
}

impl Owned {
    fn attr(&self) -> Attribute<'_> {
        match self {
            Owned::MappedAddress(a) => Attribute::MappedAddress(*a),
            Owned::XorMappedAddress(a) => Attribute::XorMappedAddress(*a),
            Owned::Username(s) => Attribute::Username(s),
            Owned::UserHash(h) => Attribute::UserHash(h),
            Owned::ErrorCode(code, reason) => Attribute::ErrorCode(ErrorCode {
                code: *code,
                reason,
            }),
            Owned::Realm(s) => Attribute::Realm(s),
            Owned::Nonce(s) => Attribute::Nonce(s),
            Owned::PasswordAlgorithms(v) => Attribute::PasswordAlgorithms(v),
            Owned::PasswordAlgorithm(algorithm, params) => {
                Attribute::PasswordAlgorithm(PasswordAlgorithm {
                    algorithm: *algorithm,
                    params,
                })
            }
            Owned::UnknownAttributes(v) => Attribute::UnknownAttributes(v),
            Owned::Software(s) => Attribute::Software(s),
            Owned::AlternateServer(a) => Attribute::AlternateServer(*a),
            Owned::AlternateDomain(s) => Attribute::AlternateDomain(s),
            Owned::Priority(v) => Attribute::Priority(*v),
            Owned::UseCandidate => Attribute::UseCandidate,
            Owned::IceControlled(v) => Attribute::IceControlled(*v),
            Owned::IceControlling(v) => Attribute::IceControlling(*v),
            Owned::Nomination(v) => Attribute::Nomination(*v),
            Owned::ChannelNumber(v) => Attribute::ChannelNumber(*v),
            Owned::Lifetime(v) => Attribute::Lifetime(*v),
            Owned::XorPeerAddress(a) => Attribute::XorPeerAddress(*a),
            Owned::Data(v) => Attribute::Data(v),
            Owned::XorRelayedAddress(a) => Attribute::XorRelayedAddress(*a),
            Owned::RequestedAddressFamily(f) => Attribute::RequestedAddressFamily(*f),
            Owned::EvenPort(r) => Attribute::EvenPort(*r),
            Owned::RequestedTransport(p) => Attribute::RequestedTransport(*p),
            Owned::DontFragment => Attribute::DontFragment,
            Owned::ReservationToken(t) => Attribute::ReservationToken(t),
            Owned::AdditionalAddressFamily(f) => Attribute::AdditionalAddressFamily(*f),
            Owned::AddressErrorCode(f, code, reason) => Attribute::AddressErrorCode(
                *f,
                ErrorCode {
                    code: *code,
                    reason,
                },
            ),
            Owned::Icmp(typ, code, data) => Attribute::Icmp {
                typ: *typ,
                code: *code,
                data: *data,
            },
            Owned::ConnectionId(v) => Attribute::ConnectionId(*v),
            Owned::Other(typ, value) => Attribute::Other { typ: *typ, value },
        }
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![Just(AddressFamily::V4), Just(AddressFamily::V6)]
}

/// Text of at most `chars` characters: at most 4 bytes each, so `4 * chars` bytes.
fn text(chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=chars).prop_map(|c| c.into_iter().collect())
}

fn padded(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn password_algorithms_value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9)),
        1..4,
    )
    .prop_map(|algs| {
        let mut v = Vec::new();
        for (alg, params) in algs {
            v.extend_from_slice(&alg.to_be_bytes());
            v.extend_from_slice(&(params.len() as u16).to_be_bytes());
            v.extend_from_slice(&padded(&params));
        }
        v
    })
}

/// Attribute types that `Attribute::decode` does not know, so they decode as `Other`.
fn other_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("not a known type", |&t| {
        matches!(
            Attribute::decode(t, &[], &[0; 12]),
            Ok(Attribute::Other { .. })
        )
    })
}

fn error_code() -> impl Strategy<Value = u16> {
    300u16..=699
}

/// Any attribute except MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, whose placement
/// changes what is visible; those are covered by the integrity properties.
fn owned_attr() -> impl Strategy<Value = Owned> {
    prop_oneof![
        socket_addr().prop_map(Owned::MappedAddress),
        socket_addr().prop_map(Owned::XorMappedAddress),
        text(128).prop_map(Owned::Username),
        any::<[u8; 32]>().prop_map(Owned::UserHash),
        (error_code(), text(190)).prop_map(|(c, r)| Owned::ErrorCode(c, r)),
        text(190).prop_map(Owned::Realm),
        text(190).prop_map(Owned::Nonce),
        password_algorithms_value().prop_map(Owned::PasswordAlgorithms),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(a, p)| Owned::PasswordAlgorithm(a, p)),
        proptest::collection::vec(any::<u16>(), 0..8).prop_map(|t| {
            Owned::UnknownAttributes(t.iter().flat_map(|t| t.to_be_bytes()).collect())
        }),
        text(190).prop_map(Owned::Software),
        socket_addr().prop_map(Owned::AlternateServer),
        text(63).prop_map(Owned::AlternateDomain),
        any::<u32>().prop_map(Owned::Priority),
        Just(Owned::UseCandidate),
        any::<u64>().prop_map(Owned::IceControlled),
        any::<u64>().prop_map(Owned::IceControlling),
        (0u32..1 << 24).prop_map(Owned::Nomination),
        (0x4000u16..=0x4FFF).prop_map(Owned::ChannelNumber),
        any::<u32>().prop_map(Owned::Lifetime),
        socket_addr().prop_map(Owned::XorPeerAddress),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Owned::Data),
        socket_addr().prop_map(Owned::XorRelayedAddress),
        family().prop_map(Owned::RequestedAddressFamily),
        any::<bool>().prop_map(Owned::EvenPort),
        any::<u8>().prop_map(Owned::RequestedTransport),
        Just(Owned::DontFragment),
        any::<[u8; 8]>().prop_map(Owned::ReservationToken),
        family().prop_map(Owned::AdditionalAddressFamily),
        (family(), error_code(), text(100)).prop_map(|(f, c, r)| Owned::AddressErrorCode(f, c, r)),
        (any::<u8>(), any::<u8>(), any::<u32>()).prop_map(|(t, c, d)| Owned::Icmp(t, c, d)),
        any::<u32>().prop_map(Owned::ConnectionId),
        (other_type(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(t, v)| Owned::Other(t, v)),
    ]
}

fn message_type() -> impl Strategy<Value = MessageType> {
    (
        0u16..0x1000,
        prop_oneof![
            Just(Class::Request),
            Just(Class::Indication),
            Just(Class::Success),
            Just(Class::Error)
        ],
    )
        .prop_map(|(m, c)| MessageType::new(Method(m), c))
}

fn write(typ: MessageType, tid: &[u8; 12], attrs: &[Owned], buf: &mut [u8]) -> usize {
    let mut w = MessageWriter::new(buf, typ, tid).unwrap();
    for a in attrs {
        w.add(&a.attr()).unwrap();
    }
    w.finish()
}

/// Drives every reader over a parsed message; returns nothing, must not panic.
fn exercise(m: &Message<'_>) {
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
    let _ = m.xor_addresses(attr::XOR_RELAYED_ADDRESS).count();
    assert_eq!(m.has_unknown_required(), m.unknown_required().count() > 0);
    let _ = format!("{m:?}");
    for a in m.attributes() {
        let _ = m.get_decoded(a.typ);
        if let Ok(d) = Attribute::decode(a.typ, a.value, m.transaction_id()) {
            match d {
                Attribute::PasswordAlgorithms(v) => {
                    let _ = attr::password_algorithms(v).count();
                }
                Attribute::UnknownAttributes(v) => {
                    let _ = attr::unknown_attributes(v).count();
                }
                _ => {}
            }
        }
    }
    let _ = m.verify_integrity(&IntegrityKey::new(b"key"));
    let _ = m.verify_integrity_sha256(&IntegrityKeySha256::new(b"key"));
    let _ = m.verify_fingerprint();
}

/// Raw bytes through every entry point of the codec.
fn no_panic(bytes: &[u8]) {
    let _ = classify(bytes);
    if let Ok(m) = Message::parse(bytes) {
        exercise(&m);
    }
    let _ = ChannelData::parse_udp(bytes);
    let _ = ChannelData::parse_stream(bytes);
    // Every attribute decoder on the raw bytes as a value.
    for typ in ALL_TYPES.iter().copied().chain([0x0003, 0x7FFF, 0xFFFF]) {
        let _ = Attribute::decode(typ, bytes, &[7; 12]);
    }
}

const ALL_TYPES: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::RESERVATION_TOKEN,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::CONNECTION_ID,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::ADDRESS_ERROR_CODE,
    attr::PASSWORD_ALGORITHMS,
    attr::ALTERNATE_DOMAIN,
    attr::ICMP,
    attr::SOFTWARE,
    attr::ALTERNATE_SERVER,
    attr::FINGERPRINT,
    attr::ICE_CONTROLLED,
    attr::ICE_CONTROLLING,
    attr::NOMINATION,
];

/// A STUN-looking datagram: valid header and TLVs of known types with arbitrary values
/// (so the value decoders, not just the header checks, see garbage).
fn stunlike() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<[u8; 12]>(),
        proptest::collection::vec(
            (
                prop_oneof![proptest::sample::select(ALL_TYPES), any::<u16>()],
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..8,
        ),
    )
        .prop_map(|(typ, tid, attrs)| {
            let mut body = Vec::new();
            for (t, v) in attrs {
                body.extend_from_slice(&t.to_be_bytes());
                body.extend_from_slice(&(v.len() as u16).to_be_bytes());
                body.extend_from_slice(&padded(&v));
            }
            let mut m = (typ & 0x3FFF).to_be_bytes().to_vec();
            m.extend_from_slice(&(body.len() as u16).to_be_bytes());
            m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
            m.extend_from_slice(&tid);
            m.extend_from_slice(&body);
            m
        })
}

proptest! {
    #[test]
    fn typed_attributes_round_trip(
        typ in message_type(),
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(owned_attr(), 0..12),
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        let n = write(typ, &tid, &attrs, &mut buf);
        let m = Message::parse(&buf[..n]).unwrap();
        prop_assert_eq!(m.message_type(), typ);
        prop_assert_eq!(m.transaction_id(), &tid);
        let decoded: Vec<Attribute<'_>> = m
            .attributes()
            .map(|a| Attribute::decode(a.typ, a.value, &tid).unwrap())
            .collect();
        let expected: Vec<Attribute<'_>> = attrs.iter().map(Owned::attr).collect();
        prop_assert_eq!(decoded, expected);
        let unknown: Vec<u16> = attrs
            .iter()
            .filter_map(|a| match a {
                Owned::Other(t, _) if *t < 0x8000 => Some(*t),
                _ => None,
            })
            .collect();
        prop_assert_eq!(m.has_unknown_required(), !unknown.is_empty());
        prop_assert_eq!(m.unknown_required().collect::<Vec<_>>(), unknown);
        // The first of each type is what `get_decoded` returns.
        for a in &attrs {
            let a = a.attr();
            let first = attrs.iter().map(Owned::attr).find(|b| b.typ() == a.typ());
            prop_assert_eq!(m.get_decoded(a.typ()), first.map(Ok));
        }
        exercise(&m);
    }

    #[test]
    fn integrity_and_fingerprint_verify(
        typ in message_type(),
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(owned_attr(), 0..8),
        key in proptest::collection::vec(any::<u8>(), 0..80),
        sha256 in any::<bool>(),
    ) {
        let k1 = IntegrityKey::new(&key);
        let k256 = IntegrityKeySha256::new(&key);
        let mut buf = vec![0u8; 16 * 1024];
        let mut w = MessageWriter::new(&mut buf, typ, &tid).unwrap();
        for a in &attrs {
            w.add(&a.attr()).unwrap();
        }
        w.add_message_integrity(&k1).unwrap();
        if sha256 {
            w.add_message_integrity_sha256(&k256).unwrap();
        }
        w.add_fingerprint().unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        prop_assert_eq!(m.verify_integrity(&k1), Ok(()));
        prop_assert_eq!(m.verify_fingerprint(), Ok(()));
        if sha256 {
            prop_assert_eq!(m.verify_integrity_sha256(&k256), Ok(()));
        } else {
            prop_assert_eq!(m.verify_integrity_sha256(&k256), Err(StunError::NoIntegrity));
        }
        // (Not `key + [0]`: HMAC zero-pads short keys, so that is the same key.)
        let mut other = key.clone();
        other.push(1);
        prop_assert_eq!(
            m.verify_integrity(&IntegrityKey::new(&other)),
            Err(StunError::IntegrityMismatch)
        );
        // The typed attributes are all still visible before the integrity attributes.
        prop_assert_eq!(m.attributes().count(), attrs.len() + 2 + usize::from(sha256));
    }

    #[test]
    fn single_bit_flips_never_verify(
        attrs in proptest::collection::vec(owned_attr(), 0..6),
        tid in any::<[u8; 12]>(),
        flip in any::<proptest::sample::Index>(),
    ) {
        let k = IntegrityKey::new(b"shared secret");
        let mut buf = vec![0u8; 8 * 1024];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::BINDING, Class::Request),
            &tid,
        )
        .unwrap();
        for a in &attrs {
            w.add(&a.attr()).unwrap();
        }
        w.add_message_integrity(&k).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        let mut bytes = buf[..n].to_vec();
        let bit = flip.index(n * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(m) = Message::parse(&bytes) {
            exercise(&m);
            let both = m.verify_integrity(&k).is_ok() && m.verify_fingerprint().is_ok();
            prop_assert!(!both, "flipped bit {} still verifies", bit);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        no_panic(&bytes);
    }

    #[test]
    fn stun_shaped_garbage_never_panics(bytes in stunlike()) {
        // Framing is valid by construction; only MI/MI-256/FINGERPRINT sizes and
        // placement can still make `parse` refuse it.
        match Message::parse(&bytes) {
            Ok(_) => {}
            Err(e) => prop_assert!(
                matches!(e, StunError::BadAttribute(_) | StunError::AttributeAfterFingerprint),
                "unexpected {:?}", e
            ),
        }
        no_panic(&bytes);
        // And truncated or with a corrupted length field.
        no_panic(&bytes[..bytes.len() / 2]);
        let mut b = bytes.clone();
        b[3] ^= 0x04;
        no_panic(&b);
    }

    #[test]
    fn channel_data_round_trips(
        channel in 0x4000u16..=0x4FFF,
        data in proptest::collection::vec(any::<u8>(), 0..300),
        next in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let cd = ChannelData { channel, data: &data };
        for padded in [false, true] {
            let mut out = vec![0xAAu8; 400];
            let n = cd.encode(&mut out, padded).unwrap();
            prop_assert_eq!(n, ChannelData::encoded_len(data.len(), padded));
            prop_assert_eq!(classify(&out[..n]), icering::stun::PacketKind::ChannelData);
            prop_assert_eq!(ChannelData::parse_udp(&out[..n]), Ok(cd));
            if padded {
                prop_assert_eq!(n % 4, 0);
                prop_assert!(out[4 + data.len()..n].iter().all(|&b| b == 0));
                // Stream framing: the frame followed by the next frame.
                let follow = ChannelData { channel: 0x4000, data: &next };
                let mut stream = out[..n].to_vec();
                let mut tail = vec![0u8; 40];
                let m = follow.encode(&mut tail, true).unwrap();
                stream.extend_from_slice(&tail[..m]);
                prop_assert_eq!(ChannelData::parse_stream(&stream), Ok(Some((cd, n))));
                prop_assert_eq!(ChannelData::parse_stream(&stream[n..]), Ok(Some((follow, m))));
                // Any strict prefix of a frame asks for more bytes.
                for cut in [0, 3, n - 1] {
                    prop_assert_eq!(ChannelData::parse_stream(&stream[..cut]), Ok(None));
                }
            } else {
                // `write_header` + data in place is the same frame.
                let mut hdr = [0u8; 4];
                ChannelData::write_header(channel, data.len(), &mut hdr).unwrap();
                prop_assert_eq!(&hdr[..], &out[..4]);
            }
        }
    }
}
