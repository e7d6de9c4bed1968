//! The borrowed, checked message view (RFC 8489 §5, §14).

use std::net::SocketAddr;

use super::attr::{self, Attribute, ErrorCode};
use super::{Class, HEADER_LEN, MAGIC_COOKIE, MessageType, Method, StunError, TransactionId};

/// A STUN message borrowed from a datagram. Construct it with [`Message::parse`], which
/// checks the header and every attribute's bounds once; afterwards no accessor can read out
/// of bounds, and none copies.
///
/// Attributes after MESSAGE-INTEGRITY are invisible except MESSAGE-INTEGRITY-SHA256 and
/// FINGERPRINT, and those after MESSAGE-INTEGRITY-SHA256 except FINGERPRINT
/// (RFC 8489 §14.5, §14.6). FINGERPRINT must be last.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    /// Offset of the MESSAGE-INTEGRITY attribute header, or 0.
    mi: u32,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header, or 0.
    mi256: u32,
    /// Offset of the FINGERPRINT attribute header, or 0.
    fp: u32,
    /// Attributes starting at or after this offset are ignored (except MI-256/FP).
    visible_end: u32,
    /// A visible comprehension-required attribute is unknown to this codec.
    has_unknown_required: bool,
    /// Offsets of the TLV headers of the first visible USERNAME, PRIORITY,
    /// ICE-CONTROLLING, ICE-CONTROLLED and USE-CANDIDATE, or [`ABSENT`]: the ICE
    /// connectivity-check fast path reads these without scanning the attributes again.
    ///
    /// Invariant (the getters' `unsafe` reads rely on it): a slot is either [`ABSENT`]
    /// (4, where the magic cookie is) or the offset `at` of an attribute `parse` has
    /// bounds-checked, so `at + 4 + vlen <= buf.len()` where `vlen` is the big-endian
    /// length at `at + 2`. Either way 4 bytes at the slot lie within `buf`. Only `parse`
    /// writes the slots (the fields are private; `Hot::view` is the one constructor).
    hot: [u32; HOT],
}

/// A hot slot with no attribute: the offset of the magic cookie, 4 bytes every parsed
/// message has. Read as a TLV header it is type 0x2112, no hot type, so a getter that
/// compares the header word at its slot needs no separate presence test.
const ABSENT: u32 = 4;

/// Number of attribute types whose first visible value `parse` records.
const HOT: usize = 5;
const HOT_USERNAME: usize = 0;
const HOT_PRIORITY: usize = 1;
const HOT_ICE_CONTROLLING: usize = 2;
const HOT_ICE_CONTROLLED: usize = 3;
const HOT_USE_CANDIDATE: usize = 4;

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Message");
        d.field("type", &self.message_type())
            .field("len", &self.buf.len());
        let attrs: Vec<_> = self.attributes().map(|a| a.typ).collect();
        d.field("attributes", &attrs).finish()
    }
}

/// An attribute as it sits in the message: type, value without padding, and the offset of
/// its TLV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value bytes, padding excluded.
    pub value: &'a [u8],
    /// Offset of the 4-byte TLV header from the start of the message.
    pub offset: usize,
}

/// The first header rule (RFC 8489 §5, §6.3) `buf` breaks, checked in this order: size,
/// leading zero bits, magic cookie, length a multiple of 4, length equal to the datagram.
/// Only called once `parse`'s combined check has failed.
#[cold]
fn header_error(buf: &[u8]) -> StunError {
    if buf.len() < HEADER_LEN {
        return StunError::TooShort {
            need: HEADER_LEN,
            have: buf.len(),
        };
    }
    if buf[0] & 0xC0 != 0 {
        return StunError::NotStun;
    }
    if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
        return StunError::BadMagicCookie;
    }
    let len = be16(buf, 2);
    if !len.is_multiple_of(4) {
        return StunError::UnalignedLength(len);
    }
    StunError::LengthMismatch {
        header: len,
        actual: buf.len() - HEADER_LEN,
    }
}

/// What the walk over the visible attributes records.
struct Hot {
    slots: [u32; HOT],
    unknown: bool,
}

impl Hot {
    /// Nothing found yet.
    #[inline(always)]
    fn new() -> Self {
        Hot {
            slots: [ABSENT; HOT],
            unknown: false,
        }
    }

    /// Notes the attribute at `at`; true when it closes the visible window
    /// (MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 or FINGERPRINT).
    #[inline(always)]
    fn visit(&mut self, typ: u16, at: usize) -> bool {
        // One arm per slot with a constant index keeps the slots in registers.
        match typ {
            attr::USERNAME => self.note(HOT_USERNAME, at),
            attr::PRIORITY => self.note(HOT_PRIORITY, at),
            attr::ICE_CONTROLLING => self.note(HOT_ICE_CONTROLLING, at),
            attr::ICE_CONTROLLED => self.note(HOT_ICE_CONTROLLED, at),
            attr::USE_CANDIDATE => self.note(HOT_USE_CANDIDATE, at),
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 | attr::FINGERPRINT => {
                return true;
            }
            _ => {
                // Off the ICE fast path; laid out after it.
                std::hint::cold_path();
                self.unknown |= !attr::is_known(typ);
            }
        }
        false
    }

    /// The message as walked so far: no integrity or fingerprint attribute found yet,
    /// attributes visible up to `visible_end`.
    #[inline(always)]
    fn view(self, buf: &[u8], visible_end: usize) -> Message<'_> {
        Message {
            buf,
            mi: 0,
            mi256: 0,
            fp: 0,
            visible_end: visible_end as u32,
            has_unknown_required: self.unknown,
            hot: self.slots,
        }
    }

    /// Records the first occurrence only: `at` is the offset of a bounds-checked TLV
    /// header (at least `HEADER_LEN`, so never [`ABSENT`]; see `Message::hot`).
    #[inline(always)]
    fn note(&mut self, k: usize, at: usize) {
        if self.slots[k] == ABSENT {
            self.slots[k] = at as u32;
        }
    }

    /// [`note`](Self::note)s a fixed-size hot attribute of `tlv_len` bytes (header and
    /// value) at `at`; the offset of the next attribute.
    #[inline(always)]
    fn fixed(&mut self, k: usize, at: usize, tlv_len: usize) -> usize {
        self.note(k, at);
        at + tlv_len
    }
}

/// An attribute's TLV header word (type, then length, big-endian on the wire) as a
/// native-order read of those 4 bytes gives it: one compare tests type and length.
const fn wire(typ: u16, vlen: u16) -> u32 {
    u32::from_ne_bytes((((typ as u32) << 16) | vlen as u32).to_be_bytes())
}

const W_PRIORITY: u32 = wire(attr::PRIORITY, 4);
const W_ICE_CONTROLLING: u32 = wire(attr::ICE_CONTROLLING, 8);
const W_ICE_CONTROLLED: u32 = wire(attr::ICE_CONTROLLED, 8);
const W_USE_CANDIDATE: u32 = wire(attr::USE_CANDIDATE, 0);
const W_MESSAGE_INTEGRITY: u32 = wire(attr::MESSAGE_INTEGRITY, 20);
const W_FINGERPRINT: u32 = wire(attr::FINGERPRINT, 4);
/// The magic cookie as a native-order read of header bytes 4..8 gives it.
const W_COOKIE: u32 = u32::from_ne_bytes(MAGIC_COOKIE.to_be_bytes());
// What lets `hot_array` skip the presence test (see `ABSENT`).
const _: () = assert!(
    W_PRIORITY != W_COOKIE && W_ICE_CONTROLLING != W_COOKIE && W_ICE_CONTROLLED != W_COOKIE
);

/// The 4 bytes at `at` in native order (compare with [`wire`] constants); `at + 4` must
/// be within `buf` (the callers have checked it), else this panics.
#[inline(always)]
fn word(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(
        *buf[at..]
            .first_chunk::<4>()
            .expect("caller checked the bound"),
    )
}

/// The walk over the attributes before a trailing MESSAGE-INTEGRITY (20 bytes) and
/// FINGERPRINT, `HEADER_LEN..limit`, `limit = buf.len() - 32`: all of them are visible
/// (RFC 8489 §14.5, §14.7).
/// The hot fixed-size ICE attributes are recognised by their whole TLV header word (type
/// and the one valid length), so they skip the byte swap, the length arithmetic and the
/// type switch; anything else takes the general step. Bounds are checked once, at the
/// end: an attribute that runs past `limit` makes the walk miss it. `None` (the caller
/// then runs the general walk, which finds the same result or the exact error) when the
/// walk does not land exactly on `limit`, or meets an integrity or fingerprint attribute.
#[inline(always)]
fn walk_signed(buf: &[u8], limit: usize) -> Option<Hot> {
    let mut hot = Hot::new();
    let mut at = HEADER_LEN;
    // ICE agents put USERNAME first: that one is taken without the dispatch. (When
    // `limit == HEADER_LEN` this reads MESSAGE-INTEGRITY's header, which is no USERNAME.)
    let [t0, t1, l0, l1] = word(buf, at).to_ne_bytes();
    if [t0, t1] == attr::USERNAME.to_be_bytes() {
        hot.slots[HOT_USERNAME] = at as u32;
        at = (at + usize::from(u16::from_be_bytes([l0, l1])) + 7) & !3;
    }
    // `at` is a multiple of 4 below `limit`, and `limit + 32 == buf.len()`: the 4-byte
    // read is in bounds. (`limit` itself is a multiple of 4 only if the message is
    // well-formed; if it is not, the walk cannot land on it.)
    while at < limit {
        let w = word(buf, at);
        at = match w {
            W_PRIORITY => hot.fixed(HOT_PRIORITY, at, 8),
            W_ICE_CONTROLLING => hot.fixed(HOT_ICE_CONTROLLING, at, 12),
            W_ICE_CONTROLLED => hot.fixed(HOT_ICE_CONTROLLED, at, 12),
            W_USE_CANDIDATE => hot.fixed(HOT_USE_CANDIDATE, at, 4),
            _ => {
                let h = u32::from_be_bytes(w.to_ne_bytes());
                let (typ, vlen) = ((h >> 16) as u16, (h & 0xFFFF) as usize);
                if hot.visit(typ, at) {
                    return None;
                }
                // `at` is a multiple of 4: this is `at + 4 + vlen` rounded up to the padding.
                (at + vlen + 7) & !3
            }
        };
    }
    // Every attribute noted, header and value, ends at or before `at`: landing on `limit`
    // proves them all in bounds (the invariant of `Message::hot`).
    (at == limit).then_some(hot)
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl<'a> Message<'a> {
    /// Checked constructor for untrusted bytes: the whole datagram must be exactly one
    /// STUN message (UDP framing, RFC 8489 §6.3).
    ///
    /// A message ending in MESSAGE-INTEGRITY + FINGERPRINT (every signed ICE check or
    /// TURN request) takes a fast walk up to them, see `walk_signed`. Otherwise, or if
    /// that walk hands over, one pass over the TLVs checks every bound: until
    /// MESSAGE-INTEGRITY(-SHA256) closes the visible window the loop only records the hot
    /// ICE attributes and notes unknown comprehension-required types; the rarer rules about
    /// what follows the window (RFC 8489 §14.5–§14.7) live in a second loop, entered with
    /// the attribute that closed it, after a shortcut for the usual MESSAGE-INTEGRITY +
    /// FINGERPRINT ending. Errors are the same, for the same input, as a single loop
    /// applying every rule to every attribute (`tests/stun_parse_model.rs` checks that
    /// against such a model).
    // Always inlined: the result stays in registers at the call site instead of going
    // through memory, which is a fifth of a Binding request's parse.
    #[inline(always)]
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        let end = buf.len();
        // The header rules (RFC 8489 §5, §6.3), each one test on the bytes in place: the two
        // leading bits zero, the magic cookie, the length field equal to the rest of the
        // datagram (which also proves `end >= HEADER_LEN`). The last rule, a length that is
        // a multiple of 4 (once equal to the rest, exactly when `end` is), comes after the
        // fast path: that one only succeeds on a walk from `HEADER_LEN` in whole words that
        // lands on `end - 32`, which proves it.
        let Some(hdr) = buf.first_chunk::<8>() else {
            return Err(header_error(buf));
        };
        let cookie = &hdr[4..];
        if hdr[0] & 0xC0 != 0
            || u32::from_ne_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]) != W_COOKIE
            || usize::from(u16::from_be_bytes([hdr[2], hdr[3]])) + HEADER_LEN != end
        {
            return Err(header_error(buf));
        }
        // The usual end of a signed ICE or TURN message: MESSAGE-INTEGRITY (20 bytes),
        // then FINGERPRINT, together the last 32 bytes. Both TLV headers are read from the
        // end, off the walk's load-to-load chain, so the walk only has to land exactly on
        // MESSAGE-INTEGRITY. Anything else (an integrity or fingerprint attribute before
        // it, an attribute running into it) takes the general walk below.
        if end >= HEADER_LEN + 32
            && word(buf, end - 32) == W_MESSAGE_INTEGRITY
            && word(buf, end - 8) == W_FINGERPRINT
            && let Some(hot) = walk_signed(buf, end - 32)
        {
            let mut m = hot.view(buf, end - 8);
            (m.mi, m.fp) = ((end - 32) as u32, (end - 8) as u32);
            return Ok(m);
        }
        if !end.is_multiple_of(4) {
            return Err(header_error(buf));
        }
        let mut hot = Hot::new();
        let mut at = HEADER_LEN;
        // Window open: every attribute is visible until MESSAGE-INTEGRITY(-SHA256).
        // `at` and `end` are multiples of 4 (the header length is), so the 4-byte read
        // fails exactly when `at == end`: the end of the message.
        let (mut typ, mut vlen, mut next) = loop {
            let Some(w) = buf.get(at..at + 4) else {
                return Ok(hot.view(buf, end));
            };
            let h = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            let typ = (h >> 16) as u16;
            let vlen = (h & 0xFFFF) as usize;
            // `at` is a multiple of 4: this is `at + 4 + vlen` rounded up to the padding.
            let next = (at + vlen + 7) & !3;
            if next > end {
                return Err(StunError::AttributeOverrun { typ, offset: at });
            }
            if hot.visit(typ, at) {
                break (typ, vlen, next);
            }
            at = next;
        };
        let mut m = hot.view(buf, end);
        // The usual end of an authenticated message: MESSAGE-INTEGRITY, then FINGERPRINT
        // (its TLV header is 0x8028 0x0004) as the last attribute.
        if typ == attr::MESSAGE_INTEGRITY && vlen == 20 {
            m.mi = at as u32;
            m.visible_end = next as u32;
            if next + 8 == end && buf.get(next..next + 4) == Some(&[0x80, 0x28, 0x00, 0x04]) {
                m.fp = next as u32;
                return Ok(m);
            }
        }
        // Window closing or closed: besides a first MESSAGE-INTEGRITY while the window is
        // still open, only the first MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count
        // (RFC 8489 §14.5, §14.6); FINGERPRINT must be last (§14.7). Everything else is
        // bounds-checked and skipped.
        loop {
            match typ {
                attr::MESSAGE_INTEGRITY if m.mi == 0 && m.mi256 == 0 => {
                    if vlen != 20 {
                        return Err(StunError::BadAttribute(typ));
                    }
                    m.mi = at as u32;
                    m.visible_end = next as u32;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if m.mi256 == 0 => {
                    if !(16..=32).contains(&vlen) || !vlen.is_multiple_of(4) {
                        return Err(StunError::BadAttribute(typ));
                    }
                    m.mi256 = at as u32;
                    if m.mi == 0 {
                        m.visible_end = next as u32;
                    }
                }
                attr::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(StunError::BadAttribute(typ));
                    }
                    if next != end {
                        return Err(StunError::AttributeAfterFingerprint);
                    }
                    m.fp = at as u32;
                    return Ok(m);
                }
                _ => {}
            }
            at = next;
            let Some(&[t0, t1, l0, l1]) = buf.get(at..at + 4) else {
                return Ok(m);
            };
            typ = u16::from_be_bytes([t0, t1]);
            vlen = usize::from(u16::from_be_bytes([l0, l1]));
            next = (at + vlen + 7) & !3;
            if next > end {
                return Err(StunError::AttributeOverrun { typ, offset: at });
            }
        }
    }

    /// The whole message.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Method and class.
    #[inline]
    pub fn message_type(&self) -> MessageType {
        MessageType::from_u16(be16(self.buf, 0))
    }

    /// The method.
    #[inline]
    pub fn method(&self) -> Method {
        self.message_type().method
    }

    /// The class.
    #[inline]
    pub fn class(&self) -> Class {
        self.message_type().class
    }

    /// The transaction id.
    #[inline]
    pub fn transaction_id(&self) -> &'a TransactionId {
        self.buf[8..20].try_into().expect("header checked")
    }

    /// Visible attributes, in order.
    #[inline]
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            at: HEADER_LEN,
            visible_end: self.visible_end as usize,
            mi256: self.mi256 as usize,
            fp: self.fp as usize,
        }
    }

    /// The first visible attribute of type `typ`.
    #[inline]
    pub fn get(&self, typ: u16) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    /// Decodes the first visible attribute of type `typ`; `None` if absent.
    pub fn get_decoded(&self, typ: u16) -> Option<Result<Attribute<'a>, StunError>> {
        self.get(typ)
            .map(|a| Attribute::decode(typ, a.value, self.transaction_id()))
    }

    /// Whether a visible comprehension-required attribute is unknown (answer 420).
    #[inline]
    pub fn has_unknown_required(&self) -> bool {
        self.has_unknown_required
    }

    /// The unknown comprehension-required attribute types, for UNKNOWN-ATTRIBUTES.
    pub fn unknown_required(&self) -> impl Iterator<Item = u16> + 'a {
        self.attributes()
            .map(|a| a.typ)
            .filter(|&t| !attr::is_known(t))
    }

    /// Offset of the MESSAGE-INTEGRITY attribute, if present.
    #[inline]
    pub fn integrity_offset(&self) -> Option<usize> {
        (self.mi != 0).then_some(self.mi as usize)
    }

    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute, if present.
    #[inline]
    pub fn integrity_sha256_offset(&self) -> Option<usize> {
        (self.mi256 != 0).then_some(self.mi256 as usize)
    }

    /// Offset of the FINGERPRINT attribute, if present.
    #[inline]
    pub fn fingerprint_offset(&self) -> Option<usize> {
        (self.fp != 0).then_some(self.fp as usize)
    }

    /// Value of the first visible attribute recorded in `hot[k]`.
    #[inline(always)]
    fn hot_value(&self, k: usize) -> Option<&'a [u8]> {
        let at = self.hot[k];
        if at == ABSENT {
            return None;
        }
        let at = at as usize;
        // SAFETY: a slot other than `ABSENT` is the offset of a TLV `parse` has bounds-checked
        // (`Message::hot`): its 4-byte header and `vlen` value bytes lie within `buf`.
        unsafe {
            let h = self.buf.get_unchecked(at..at + 4);
            let vlen = usize::from(u16::from_be_bytes([h[2], h[3]]));
            Some(self.buf.get_unchecked(at + 4..at + 4 + vlen))
        }
    }

    /// Value of the first visible attribute recorded in `hot[k]` if its TLV header is
    /// `header` (a hot type and an `N`-byte length, as [`wire`] lays them out): one
    /// compare tests presence (an [`ABSENT`] slot reads the magic cookie, which never
    /// matches), the length and, redundantly, the type.
    #[inline(always)]
    fn hot_array<const N: usize>(&self, k: usize, header: u32) -> Option<&'a [u8; N]> {
        let at = self.hot[k] as usize;
        // SAFETY: 4 bytes at any slot lie within `buf` (`Message::hot`). A slot whose
        // header word is `header` is not `ABSENT` (the cookie is not a hot TLV header), so
        // it is a TLV `parse` has bounds-checked whose value is `N` bytes: those follow
        // the header within `buf`.
        unsafe {
            let p = self.buf.as_ptr().add(at);
            if p.cast::<[u8; 4]>().read() != header.to_ne_bytes() {
                return None;
            }
            Some(&*p.add(4).cast::<[u8; N]>())
        }
    }

    fn text(&self, typ: u16) -> Option<&'a str> {
        match self.get_decoded(typ)? {
            Ok(Attribute::Username(s) | Attribute::Realm(s) | Attribute::Nonce(s)) => Some(s),
            Ok(Attribute::Software(s) | Attribute::AlternateDomain(s)) => Some(s),
            _ => None,
        }
    }

    fn be_u32(&self, typ: u16) -> Option<u32> {
        let v = self.get(typ)?.value;
        Some(u32::from_be_bytes(v.try_into().ok()?))
    }

    /// USERNAME, if present and valid.
    #[inline]
    pub fn username(&self) -> Option<&'a str> {
        attr::text(
            attr::USERNAME,
            self.hot_value(HOT_USERNAME)?,
            attr::MAX_USERNAME,
        )
        .ok()
    }

    /// REALM, if present and valid.
    pub fn realm(&self) -> Option<&'a str> {
        self.text(attr::REALM)
    }

    /// NONCE, if present and valid.
    pub fn nonce(&self) -> Option<&'a str> {
        self.text(attr::NONCE)
    }

    /// SOFTWARE, if present and valid.
    pub fn software(&self) -> Option<&'a str> {
        self.text(attr::SOFTWARE)
    }

    /// PRIORITY (RFC 8445 §7.1.1).
    #[inline]
    pub fn priority(&self) -> Option<u32> {
        Some(u32::from_be_bytes(
            *self.hot_array(HOT_PRIORITY, W_PRIORITY)?,
        ))
    }

    /// ICE-CONTROLLING tie-breaker.
    #[inline]
    pub fn ice_controlling(&self) -> Option<u64> {
        Some(u64::from_be_bytes(
            *self.hot_array(HOT_ICE_CONTROLLING, W_ICE_CONTROLLING)?,
        ))
    }

    /// ICE-CONTROLLED tie-breaker.
    #[inline]
    pub fn ice_controlled(&self) -> Option<u64> {
        Some(u64::from_be_bytes(
            *self.hot_array(HOT_ICE_CONTROLLED, W_ICE_CONTROLLED)?,
        ))
    }

    /// Whether USE-CANDIDATE is present.
    #[inline]
    pub fn use_candidate(&self) -> bool {
        self.hot[HOT_USE_CANDIDATE] != ABSENT
    }

    /// NOMINATION value (renomination), if present.
    pub fn nomination(&self) -> Option<u32> {
        self.be_u32(attr::NOMINATION).map(|v| v & 0x00FF_FFFF)
    }

    /// LIFETIME in seconds.
    pub fn lifetime(&self) -> Option<u32> {
        self.be_u32(attr::LIFETIME)
    }

    /// CHANNEL-NUMBER.
    pub fn channel_number(&self) -> Option<u16> {
        match self.get_decoded(attr::CHANNEL_NUMBER)? {
            Ok(Attribute::ChannelNumber(n)) => Some(n),
            _ => None,
        }
    }

    /// DATA.
    pub fn data(&self) -> Option<&'a [u8]> {
        self.get(attr::DATA).map(|a| a.value)
    }

    /// ERROR-CODE, if present and valid.
    pub fn error_code(&self) -> Option<ErrorCode<'a>> {
        match self.get_decoded(attr::ERROR_CODE)? {
            Ok(Attribute::ErrorCode(e)) => Some(e),
            _ => None,
        }
    }

    /// Decodes an XOR address attribute (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, ...).
    pub fn xor_address(&self, typ: u16) -> Option<Result<SocketAddr, StunError>> {
        let a = self.get(typ)?;
        Some(attr::decode_xor_address(
            typ,
            a.value,
            self.transaction_id(),
        ))
    }

    /// Every XOR-encoded address of type `typ` (several XOR-PEER-ADDRESS in one
    /// CreatePermission, two XOR-RELAYED-ADDRESS in a dual allocation).
    pub fn xor_addresses(
        &self,
        typ: u16,
    ) -> impl Iterator<Item = Result<SocketAddr, StunError>> + 'a {
        let tid = self.transaction_id();
        self.attributes()
            .filter(move |a| a.typ == typ)
            .map(move |a| attr::decode_xor_address(typ, a.value, tid))
    }

    /// XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(&self) -> Option<Result<SocketAddr, StunError>> {
        self.xor_address(attr::XOR_MAPPED_ADDRESS)
    }

    /// MAPPED-ADDRESS.
    pub fn mapped_address(&self) -> Option<Result<SocketAddr, StunError>> {
        let a = self.get(attr::MAPPED_ADDRESS)?;
        Some(attr::decode_address(attr::MAPPED_ADDRESS, a.value))
    }
}

/// Iterator over a message's visible attributes.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
    visible_end: usize,
    mi256: usize,
    fp: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    #[inline]
    fn next(&mut self) -> Option<RawAttribute<'a>> {
        // Bounds were validated by `Message::parse`; `get` keeps this panic-free anyway.
        while self.at + 4 <= self.buf.len() {
            let offset = self.at;
            let typ = be16(self.buf, offset);
            let vlen = usize::from(be16(self.buf, offset + 2));
            self.at = offset + 4 + ((vlen + 3) & !3);
            let visible = offset < self.visible_end
                || (offset == self.fp && self.fp != 0)
                || (offset == self.mi256 && self.mi256 != 0);
            if visible {
                let value = self.buf.get(offset + 4..offset + 4 + vlen)?;
                return Some(RawAttribute { typ, value, offset });
            }
        }
        None
    }
}
