//! Attribute types and typed values (RFC 8489 §14, RFC 8445 §16, RFC 8656 §18, RFC 6062).
//!
//! [`Attribute::decode`] turns a raw TLV value into a typed, borrowed value; the writer's
//! [`MessageWriter::add`](super::MessageWriter::add) encodes one back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MAGIC_COOKIE, StunError, TransactionId};

// Comprehension-required (0x0000-0x7FFF).
/// MAPPED-ADDRESS (RFC 8489 §14.1).
pub const MAPPED_ADDRESS: u16 = 0x0001;
/// USERNAME (RFC 8489 §14.3).
pub const USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY (RFC 8489 §14.5).
pub const MESSAGE_INTEGRITY: u16 = 0x0008;
/// ERROR-CODE (RFC 8489 §14.8).
pub const ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// CHANNEL-NUMBER (RFC 8656 §18.1).
pub const CHANNEL_NUMBER: u16 = 0x000C;
/// LIFETIME (RFC 8656 §18.2).
pub const LIFETIME: u16 = 0x000D;
/// XOR-PEER-ADDRESS (RFC 8656 §18.3).
pub const XOR_PEER_ADDRESS: u16 = 0x0012;
/// DATA (RFC 8656 §18.4).
pub const DATA: u16 = 0x0013;
/// REALM (RFC 8489 §14.9).
pub const REALM: u16 = 0x0014;
/// NONCE (RFC 8489 §14.10).
pub const NONCE: u16 = 0x0015;
/// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
/// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// EVEN-PORT (RFC 8656 §18.7).
pub const EVEN_PORT: u16 = 0x0018;
/// REQUESTED-TRANSPORT (RFC 8656 §18.8).
pub const REQUESTED_TRANSPORT: u16 = 0x0019;
/// DONT-FRAGMENT (RFC 8656 §18.9).
pub const DONT_FRAGMENT: u16 = 0x001A;
/// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// PASSWORD-ALGORITHM (RFC 8489 §14.12).
pub const PASSWORD_ALGORITHM: u16 = 0x001D;
/// USERHASH (RFC 8489 §14.4).
pub const USERHASH: u16 = 0x001E;
/// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// RESERVATION-TOKEN (RFC 8656 §18.10).
pub const RESERVATION_TOKEN: u16 = 0x0022;
/// PRIORITY (RFC 8445 §16.1).
pub const PRIORITY: u16 = 0x0024;
/// USE-CANDIDATE (RFC 8445 §16.1).
pub const USE_CANDIDATE: u16 = 0x0025;
/// CONNECTION-ID (RFC 6062 §6.2.1).
pub const CONNECTION_ID: u16 = 0x002A;

// Comprehension-optional (0x8000-0xFFFF).
/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
/// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
/// ALTERNATE-DOMAIN (RFC 8489 §14.16).
pub const ALTERNATE_DOMAIN: u16 = 0x8003;
/// ICMP (RFC 8656 §18.13).
pub const ICMP: u16 = 0x8004;
/// SOFTWARE (RFC 8489 §14.14).
pub const SOFTWARE: u16 = 0x8022;
/// ALTERNATE-SERVER (RFC 8489 §14.15).
pub const ALTERNATE_SERVER: u16 = 0x8023;
/// FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT: u16 = 0x8028;
/// ICE-CONTROLLED (RFC 8445 §16.1).
pub const ICE_CONTROLLED: u16 = 0x8029;
/// ICE-CONTROLLING (RFC 8445 §16.1).
pub const ICE_CONTROLLING: u16 = 0x802A;
/// NOMINATION, used for renomination (draft-thatcher-ice-renomination, as in pion/ice
/// and libwebrtc).
pub const NOMINATION: u16 = 0xC001;

/// Whether the codec knows `typ`. Unknown comprehension-required types (below 0x8000)
/// make a server answer 420 (RFC 8489 §6.3.1).
pub const fn is_known(typ: u16) -> bool {
    typ >= 0x8000 || (typ < 64 && (KNOWN_REQUIRED >> typ) & 1 != 0)
}

/// Bit `t` set for each comprehension-required type `t` the codec knows (all are below 64).
const KNOWN_REQUIRED: u64 = {
    let known = [
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        REALM,
        NONCE,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        DONT_FRAGMENT,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        RESERVATION_TOKEN,
        PRIORITY,
        USE_CANDIDATE,
        CONNECTION_ID,
    ];
    let mut mask = 0u64;
    let mut k = 0;
    while k < known.len() {
        assert!(known[k] < 64);
        mask |= 1 << known[k];
        k += 1;
    }
    mask
};

/// Comprehension-required types are 0x0000..=0x7FFF (RFC 8489 §14).
pub const fn is_comprehension_required(typ: u16) -> bool {
    typ < 0x8000
}

/// Address family code used in address attributes and the TURN family attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl AddressFamily {
    /// Wire code.
    pub const fn code(self) -> u8 {
        match self {
            AddressFamily::V4 => 1,
            AddressFamily::V6 => 2,
        }
    }

    /// From a wire code.
    pub const fn from_code(code: u8) -> Result<Self, StunError> {
        match code {
            1 => Ok(AddressFamily::V4),
            2 => Ok(AddressFamily::V6),
            other => Err(StunError::BadAddressFamily(other)),
        }
    }

    /// The family of an address.
    pub const fn of(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => AddressFamily::V4,
            SocketAddr::V6(_) => AddressFamily::V6,
        }
    }
}

/// An ERROR-CODE value (RFC 8489 §14.8): a code in 300..=699 and a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// Class × 100 + number.
    pub code: u16,
    /// UTF-8 reason phrase.
    pub reason: &'a str,
}

impl ErrorCode<'static> {
    /// 300 Try Alternate.
    pub const TRY_ALTERNATE: Self = Self {
        code: 300,
        reason: "Try Alternate",
    };
    /// 400 Bad Request.
    pub const BAD_REQUEST: Self = Self {
        code: 400,
        reason: "Bad Request",
    };
    /// 401 Unauthenticated.
    pub const UNAUTHENTICATED: Self = Self {
        code: 401,
        reason: "Unauthenticated",
    };
    /// 403 Forbidden (RFC 8656).
    pub const FORBIDDEN: Self = Self {
        code: 403,
        reason: "Forbidden",
    };
    /// 420 Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: Self = Self {
        code: 420,
        reason: "Unknown Attribute",
    };
    /// 437 Allocation Mismatch (RFC 8656).
    pub const ALLOCATION_MISMATCH: Self = Self {
        code: 437,
        reason: "Allocation Mismatch",
    };
    /// 438 Stale Nonce.
    pub const STALE_NONCE: Self = Self {
        code: 438,
        reason: "Stale Nonce",
    };
    /// 440 Address Family not Supported (RFC 8656).
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self {
        code: 440,
        reason: "Address Family not Supported",
    };
    /// 441 Wrong Credentials (RFC 8656).
    pub const WRONG_CREDENTIALS: Self = Self {
        code: 441,
        reason: "Wrong Credentials",
    };
    /// 442 Unsupported Transport Protocol (RFC 8656).
    pub const UNSUPPORTED_TRANSPORT: Self = Self {
        code: 442,
        reason: "Unsupported Transport Protocol",
    };
    /// 443 Peer Address Family Mismatch (RFC 8656).
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self {
        code: 443,
        reason: "Peer Address Family Mismatch",
    };
    /// 486 Allocation Quota Reached (RFC 8656).
    pub const ALLOCATION_QUOTA_REACHED: Self = Self {
        code: 486,
        reason: "Allocation Quota Reached",
    };
    /// 487 Role Conflict (RFC 8445 §7.3.1.1).
    pub const ROLE_CONFLICT: Self = Self {
        code: 487,
        reason: "Role Conflict",
    };
    /// 500 Server Error.
    pub const SERVER_ERROR: Self = Self {
        code: 500,
        reason: "Server Error",
    };
    /// 508 Insufficient Capacity (RFC 8656).
    pub const INSUFFICIENT_CAPACITY: Self = Self {
        code: 508,
        reason: "Insufficient Capacity",
    };
}

/// Password algorithm numbers (RFC 8489 §18.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithm<'a> {
    /// 0x0001 MD5, 0x0002 SHA-256.
    pub algorithm: u16,
    /// Parameters (empty for both defined algorithms).
    pub params: &'a [u8],
}

impl PasswordAlgorithm<'static> {
    /// MD5 (RFC 8489 §18.5.1.1).
    pub const MD5: Self = Self {
        algorithm: 0x0001,
        params: &[],
    };
    /// SHA-256 (RFC 8489 §18.5.1.2).
    pub const SHA256: Self = Self {
        algorithm: 0x0002,
        params: &[],
    };
}

/// A typed attribute, borrowing its variable-length parts from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS.
    XorMappedAddress(SocketAddr),
    /// USERNAME (< 513 bytes).
    Username(&'a str),
    /// USERHASH (32 bytes).
    UserHash(&'a [u8; 32]),
    /// MESSAGE-INTEGRITY (20-byte HMAC-SHA1).
    MessageIntegrity(&'a [u8; 20]),
    /// MESSAGE-INTEGRITY-SHA256 (16..=32 bytes, multiple of 4).
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT.
    Fingerprint(u32),
    /// ERROR-CODE.
    ErrorCode(ErrorCode<'a>),
    /// REALM (< 763 bytes).
    Realm(&'a str),
    /// NONCE (< 763 bytes).
    Nonce(&'a str),
    /// PASSWORD-ALGORITHMS: raw list; iterate with [`password_algorithms`].
    PasswordAlgorithms(&'a [u8]),
    /// PASSWORD-ALGORITHM.
    PasswordAlgorithm(PasswordAlgorithm<'a>),
    /// UNKNOWN-ATTRIBUTES: raw list of 16-bit types; iterate with [`unknown_attributes`].
    UnknownAttributes(&'a [u8]),
    /// SOFTWARE (< 763 bytes).
    Software(&'a str),
    /// ALTERNATE-SERVER.
    AlternateServer(SocketAddr),
    /// ALTERNATE-DOMAIN.
    AlternateDomain(&'a str),
    /// PRIORITY.
    Priority(u32),
    /// USE-CANDIDATE.
    UseCandidate,
    /// ICE-CONTROLLED tie-breaker.
    IceControlled(u64),
    /// ICE-CONTROLLING tie-breaker.
    IceControlling(u64),
    /// NOMINATION value (renomination).
    Nomination(u32),
    /// CHANNEL-NUMBER.
    ChannelNumber(u16),
    /// LIFETIME in seconds.
    Lifetime(u32),
    /// XOR-PEER-ADDRESS.
    XorPeerAddress(SocketAddr),
    /// DATA.
    Data(&'a [u8]),
    /// XOR-RELAYED-ADDRESS.
    XorRelayedAddress(SocketAddr),
    /// REQUESTED-ADDRESS-FAMILY.
    RequestedAddressFamily(AddressFamily),
    /// EVEN-PORT with its R (reserve next port) bit.
    EvenPort(bool),
    /// REQUESTED-TRANSPORT protocol number (17 = UDP).
    RequestedTransport(u8),
    /// DONT-FRAGMENT.
    DontFragment,
    /// RESERVATION-TOKEN.
    ReservationToken(&'a [u8; 8]),
    /// ADDITIONAL-ADDRESS-FAMILY (only IPv6 is valid, RFC 8656 §18.11).
    AdditionalAddressFamily(AddressFamily),
    /// ADDRESS-ERROR-CODE: family and error.
    AddressErrorCode(AddressFamily, ErrorCode<'a>),
    /// ICMP: type, code, error data.
    Icmp {
        /// ICMP type.
        typ: u8,
        /// ICMP code.
        code: u8,
        /// Error data (e.g. the MTU for "fragmentation needed").
        data: u32,
    },
    /// CONNECTION-ID.
    ConnectionId(u32),
    /// Any other attribute, undecoded.
    Other {
        /// Attribute type.
        typ: u16,
        /// Value bytes, without padding.
        value: &'a [u8],
    },
}

fn fixed<const N: usize>(typ: u16, v: &[u8]) -> Result<&[u8; N], StunError> {
    v.try_into().map_err(|_| StunError::BadAttribute(typ))
}

fn be_u32(typ: u16, v: &[u8]) -> Result<u32, StunError> {
    Ok(u32::from_be_bytes(*fixed::<4>(typ, v)?))
}

/// Longest USERNAME in bytes (RFC 8489 §14.3: "less than 513 bytes").
pub(crate) const MAX_USERNAME: usize = 512;

/// A text attribute's value: at most `max` bytes of UTF-8 (RFC 8489 §14.3, §14.9, ...).
#[inline]
pub(crate) fn text(typ: u16, v: &[u8], max: usize) -> Result<&str, StunError> {
    if v.len() > max {
        return Err(StunError::BadText(typ));
    }
    // ICE usernames, realms and nonces are ASCII in practice: `ascii` checks them a word
    // or a vector at a time, where `from_utf8` walks a short value byte by byte.
    if ascii(v) {
        // SAFETY: every byte is below 0x80, and a sequence of ASCII bytes is valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(v) });
    }
    std::str::from_utf8(v).map_err(|_| StunError::BadText(typ))
}

/// Bits that are set only in non-ASCII bytes, 8 bytes at a time.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether every byte of `v` is ASCII. Values of 8 to 32 bytes (an ICE USERNAME is
/// `ufrag:ufrag`, 9 to 513 bytes, usually 9 to 33) take two overlapping loads, the first
/// and the last 8 or 16 bytes, and one test; the rest go to `<[u8]>::is_ascii`.
#[inline(always)]
fn ascii(v: &[u8]) -> bool {
    let n = v.len();
    if n.wrapping_sub(16) <= 16 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86_64 baseline, and both unaligned 16-byte loads
        // lie within `v` (16 <= n <= 32: bytes 0..16 and n-16..n).
        unsafe {
            use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
            let first = _mm_loadu_si128(v.as_ptr().cast());
            let last = _mm_loadu_si128(v.as_ptr().add(n - 16).cast());
            return _mm_movemask_epi8(_mm_or_si128(first, last)) == 0;
        }
        #[cfg(not(target_arch = "x86_64"))]
        return ascii_16_to_32(v);
    }
    if n.wrapping_sub(8) < 8 {
        let first = u64::from_ne_bytes(*v.first_chunk::<8>().expect("8 <= n"));
        let last = u64::from_ne_bytes(*v.last_chunk::<8>().expect("8 <= n"));
        return (first | last) & HIGH == 0;
    }
    v.is_ascii()
}

/// `ascii` for 16 to 32 bytes without SSE2: the first and the last 16 bytes as four `u64`
/// (compiled into the tests on x86_64 too, so the portable path is checked here).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn ascii_16_to_32(v: &[u8]) -> bool {
    let (Some(first), Some(last)) = (v.first_chunk::<16>(), v.last_chunk::<16>()) else {
        return v.is_ascii();
    };
    let w = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    (w(&first[..8]) | w(&first[8..]) | w(&last[..8]) | w(&last[8..])) & HIGH == 0
}

fn error_code(typ: u16, v: &[u8]) -> Result<ErrorCode<'_>, StunError> {
    if v.len() < 4 || v.len() > 4 + 763 {
        return Err(StunError::BadAttribute(typ));
    }
    let class = u16::from(v[2] & 0x07);
    let number = u16::from(v[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(StunError::BadAttribute(typ));
    }
    Ok(ErrorCode {
        code: class * 100 + number,
        reason: text(typ, &v[4..], 763)?,
    })
}

fn family_attr(typ: u16, v: &[u8]) -> Result<AddressFamily, StunError> {
    AddressFamily::from_code(fixed::<4>(typ, v)?[0])
}

/// Decodes a plain (MAPPED-ADDRESS style) address value (RFC 8489 §14.1).
pub fn decode_address(typ: u16, v: &[u8]) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute(typ));
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (1, 8) => Ok(SocketAddr::new(
            Ipv4Addr::new(v[4], v[5], v[6], v[7]).into(),
            port,
        )),
        (2, 20) => {
            let ip: [u8; 16] = v[4..20]
                .try_into()
                .map_err(|_| StunError::BadAttribute(typ))?;
            Ok(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        (1 | 2, _) => Err(StunError::BadAttribute(typ)),
        (f, _) => Err(StunError::BadAddressFamily(f)),
    }
}

/// Decodes an XOR-encoded address value (RFC 8489 §14.2).
pub fn decode_xor_address(
    typ: u16,
    v: &[u8],
    tid: &TransactionId,
) -> Result<SocketAddr, StunError> {
    let plain = decode_address(typ, v)?;
    Ok(xor_address(plain, tid))
}

/// XORs an address with the magic cookie (and transaction id for IPv6); its own inverse.
pub fn xor_address(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip: IpAddr = match addr.ip() {
        IpAddr::V4(ip) => Ipv4Addr::from(u32::from(ip) ^ MAGIC_COOKIE).into(),
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            for (i, b) in o.iter_mut().enumerate() {
                *b ^= if i < 4 { cookie[i] } else { tid[i - 4] };
            }
            Ipv6Addr::from(o).into()
        }
    };
    SocketAddr::new(ip, port)
}

/// Writes a plain address value into `out` (8 or 20 bytes), returning the length used.
pub(crate) fn encode_address(addr: SocketAddr, out: &mut [u8; 20]) -> usize {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 1;
            out[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 2;
            out[4..20].copy_from_slice(&ip.octets());
            20
        }
    }
}

/// Iterates the 16-bit types in an UNKNOWN-ATTRIBUTES value.
pub fn unknown_attributes(v: &[u8]) -> impl Iterator<Item = u16> + '_ {
    v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// Iterates a PASSWORD-ALGORITHMS value; a malformed tail ends the iteration with an error.
pub fn password_algorithms(
    mut v: &[u8],
) -> impl Iterator<Item = Result<PasswordAlgorithm<'_>, StunError>> {
    std::iter::from_fn(move || {
        if v.is_empty() {
            return None;
        }
        match split_password_algorithm(PASSWORD_ALGORITHMS, v) {
            Ok((alg, rest)) => {
                v = rest;
                Some(Ok(alg))
            }
            Err(e) => {
                v = &[];
                Some(Err(e))
            }
        }
    })
}

fn split_password_algorithm(
    typ: u16,
    v: &[u8],
) -> Result<(PasswordAlgorithm<'_>, &[u8]), StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute(typ));
    }
    let algorithm = u16::from_be_bytes([v[0], v[1]]);
    let plen = usize::from(u16::from_be_bytes([v[2], v[3]]));
    let padded = (plen + 3) & !3;
    if v.len() < 4 + plen {
        return Err(StunError::BadAttribute(typ));
    }
    let params = &v[4..4 + plen];
    let rest = v.get(4 + padded..).unwrap_or(&[]);
    Ok((PasswordAlgorithm { algorithm, params }, rest))
}

impl<'a> Attribute<'a> {
    /// Decodes the value of an attribute of type `typ` in a message with id `tid`.
    pub fn decode(typ: u16, v: &'a [u8], tid: &TransactionId) -> Result<Self, StunError> {
        Ok(match typ {
            MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(typ, v)?),
            XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_xor_address(typ, v, tid)?),
            USERNAME => Attribute::Username(text(typ, v, MAX_USERNAME)?),
            USERHASH => Attribute::UserHash(fixed::<32>(typ, v)?),
            MESSAGE_INTEGRITY => Attribute::MessageIntegrity(fixed::<20>(typ, v)?),
            MESSAGE_INTEGRITY_SHA256 => {
                if v.len() < 16 || v.len() > 32 || !v.len().is_multiple_of(4) {
                    return Err(StunError::BadAttribute(typ));
                }
                Attribute::MessageIntegritySha256(v)
            }
            FINGERPRINT => Attribute::Fingerprint(be_u32(typ, v)?),
            ERROR_CODE => Attribute::ErrorCode(error_code(typ, v)?),
            REALM => Attribute::Realm(text(typ, v, 763)?),
            NONCE => Attribute::Nonce(text(typ, v, 763)?),
            PASSWORD_ALGORITHMS => {
                for alg in password_algorithms(v) {
                    alg?;
                }
                Attribute::PasswordAlgorithms(v)
            }
            PASSWORD_ALGORITHM => {
                let (alg, rest) = split_password_algorithm(typ, v)?;
                if !rest.is_empty() {
                    return Err(StunError::BadAttribute(typ));
                }
                Attribute::PasswordAlgorithm(alg)
            }
            UNKNOWN_ATTRIBUTES => {
                if !v.len().is_multiple_of(2) {
                    return Err(StunError::BadAttribute(typ));
                }
                Attribute::UnknownAttributes(v)
            }
            SOFTWARE => Attribute::Software(text(typ, v, 763)?),
            ALTERNATE_SERVER => Attribute::AlternateServer(decode_address(typ, v)?),
            ALTERNATE_DOMAIN => Attribute::AlternateDomain(text(typ, v, 255)?),
            PRIORITY => Attribute::Priority(be_u32(typ, v)?),
            USE_CANDIDATE => {
                fixed::<0>(typ, v)?;
                Attribute::UseCandidate
            }
            ICE_CONTROLLED => Attribute::IceControlled(u64::from_be_bytes(*fixed(typ, v)?)),
            ICE_CONTROLLING => Attribute::IceControlling(u64::from_be_bytes(*fixed(typ, v)?)),
            NOMINATION => Attribute::Nomination(be_u32(typ, v)? & 0x00FF_FFFF),
            CHANNEL_NUMBER => {
                let b = fixed::<4>(typ, v)?;
                Attribute::ChannelNumber(u16::from_be_bytes([b[0], b[1]]))
            }
            LIFETIME => Attribute::Lifetime(be_u32(typ, v)?),
            XOR_PEER_ADDRESS => Attribute::XorPeerAddress(decode_xor_address(typ, v, tid)?),
            DATA => Attribute::Data(v),
            XOR_RELAYED_ADDRESS => Attribute::XorRelayedAddress(decode_xor_address(typ, v, tid)?),
            REQUESTED_ADDRESS_FAMILY => Attribute::RequestedAddressFamily(family_attr(typ, v)?),
            EVEN_PORT => Attribute::EvenPort(fixed::<1>(typ, v)?[0] & 0x80 != 0),
            REQUESTED_TRANSPORT => Attribute::RequestedTransport(fixed::<4>(typ, v)?[0]),
            DONT_FRAGMENT => {
                fixed::<0>(typ, v)?;
                Attribute::DontFragment
            }
            RESERVATION_TOKEN => Attribute::ReservationToken(fixed::<8>(typ, v)?),
            ADDITIONAL_ADDRESS_FAMILY => Attribute::AdditionalAddressFamily(family_attr(typ, v)?),
            ADDRESS_ERROR_CODE => {
                if v.len() < 4 {
                    return Err(StunError::BadAttribute(typ));
                }
                let family = AddressFamily::from_code(v[0])?;
                Attribute::AddressErrorCode(family, error_code(typ, v)?)
            }
            ICMP => {
                let b = fixed::<8>(typ, v)?;
                Attribute::Icmp {
                    typ: b[2],
                    code: b[3],
                    data: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                }
            }
            CONNECTION_ID => Attribute::ConnectionId(be_u32(typ, v)?),
            _ => Attribute::Other { typ, value: v },
        })
    }

    /// The attribute's type code.
    pub fn typ(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => XOR_MAPPED_ADDRESS,
            Attribute::Username(_) => USERNAME,
            Attribute::UserHash(_) => USERHASH,
            Attribute::MessageIntegrity(_) => MESSAGE_INTEGRITY,
            Attribute::MessageIntegritySha256(_) => MESSAGE_INTEGRITY_SHA256,
            Attribute::Fingerprint(_) => FINGERPRINT,
            Attribute::ErrorCode(_) => ERROR_CODE,
            Attribute::Realm(_) => REALM,
            Attribute::Nonce(_) => NONCE,
            Attribute::PasswordAlgorithms(_) => PASSWORD_ALGORITHMS,
            Attribute::PasswordAlgorithm(_) => PASSWORD_ALGORITHM,
            Attribute::UnknownAttributes(_) => UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => SOFTWARE,
            Attribute::AlternateServer(_) => ALTERNATE_SERVER,
            Attribute::AlternateDomain(_) => ALTERNATE_DOMAIN,
            Attribute::Priority(_) => PRIORITY,
            Attribute::UseCandidate => USE_CANDIDATE,
            Attribute::IceControlled(_) => ICE_CONTROLLED,
            Attribute::IceControlling(_) => ICE_CONTROLLING,
            Attribute::Nomination(_) => NOMINATION,
            Attribute::ChannelNumber(_) => CHANNEL_NUMBER,
            Attribute::Lifetime(_) => LIFETIME,
            Attribute::XorPeerAddress(_) => XOR_PEER_ADDRESS,
            Attribute::Data(_) => DATA,
            Attribute::XorRelayedAddress(_) => XOR_RELAYED_ADDRESS,
            Attribute::RequestedAddressFamily(_) => REQUESTED_ADDRESS_FAMILY,
            Attribute::EvenPort(_) => EVEN_PORT,
            Attribute::RequestedTransport(_) => REQUESTED_TRANSPORT,
            Attribute::DontFragment => DONT_FRAGMENT,
            Attribute::ReservationToken(_) => RESERVATION_TOKEN,
            Attribute::AdditionalAddressFamily(_) => ADDITIONAL_ADDRESS_FAMILY,
            Attribute::AddressErrorCode(..) => ADDRESS_ERROR_CODE,
            Attribute::Icmp { .. } => ICMP,
            Attribute::ConnectionId(_) => CONNECTION_ID,
            Attribute::Other { typ, .. } => *typ,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ascii` (overlapping 8- and 16-byte loads for 8..=32 bytes) and its portable
    /// 16..=32-byte form, for every length across their cases and a high bit at every
    /// position, at every alignment of the value in a larger buffer.
    #[test]
    fn ascii_agrees_with_is_ascii() {
        let mut buf = [b'a'; 120];
        for start in 0..16 {
            for len in 0..=80 {
                let v = &mut buf[start..start + len];
                assert!(ascii(v), "start {start}, len {len}");
                assert!(ascii_16_to_32(v), "portable, start {start}, len {len}");
                for i in 0..len {
                    for high in [0x80, 0xC3, 0xFF] {
                        v[i] = high;
                        assert!(!ascii(v), "start {start}, len {len}, 0x{high:02x} at {i}");
                        if (16..=32).contains(&len) {
                            assert!(!ascii_16_to_32(v), "portable, len {len}, at {i}");
                        }
                        v[i] = b'a';
                    }
                }
            }
        }
        // Bytes just outside the value are not read into the answer.
        buf.fill(0xFF);
        for len in 0..=80 {
            buf[20..20 + len].fill(b'z');
            assert!(ascii(&buf[20..20 + len]), "len {len}");
            buf[20..20 + len].fill(0xFF);
        }
    }
}
