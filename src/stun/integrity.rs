//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.5, §14.6), key derivation
//! (RFC 8489 §9.1, §9.2) and FINGERPRINT (RFC 8489 §14.7).
//!
//! A key type holds the HMAC state already keyed (inner and outer pads absorbed), so each
//! check clones ~200 bytes and hashes only the message. Checks never copy the message: the
//! header's length field is fed to the MAC as the value it must have at the integrity
//! attribute, followed by the bytes in place.

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{FINGERPRINT_XOR, HEADER_LEN, Message, StunError};

/// HMAC-SHA1 key for MESSAGE-INTEGRITY, precomputed once per credential.
#[derive(Clone)]
pub struct IntegrityKey {
    mac: Hmac<Sha1>,
}

/// HMAC-SHA256 key for MESSAGE-INTEGRITY-SHA256, precomputed once per credential.
#[derive(Clone)]
pub struct IntegrityKeySha256 {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl std::fmt::Debug for IntegrityKeySha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKeySha256(..)")
    }
}

/// Long-term key with the MD5 password algorithm (RFC 8489 §9.2.2):
/// `MD5(username ":" realm ":" password)`. Strings are used as given (no SASLprep).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for part in [username, ":", realm, ":", password] {
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Long-term key with the SHA-256 password algorithm (RFC 8489 §9.2.2).
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, ":", realm, ":", password] {
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// USERHASH value: `SHA-256(username ":" realm)` (RFC 8489 §14.4).
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, ":", realm] {
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Feeds `buf[..upto]` to `mac` as if the header's length field were `len_at`.
fn feed<M: Mac>(mac: &mut M, buf: &[u8], upto: usize, len_at: usize) {
    mac.update(&buf[0..2]);
    mac.update(&(len_at as u16).to_be_bytes());
    mac.update(&buf[4..upto]);
}

impl IntegrityKey {
    /// Key from raw bytes: the password for short-term credentials (RFC 8489 §9.1.1), or a
    /// long-term key from [`long_term_key_md5`] / [`long_term_key_sha256`].
    pub fn new(key: &[u8]) -> Self {
        IntegrityKey {
            mac: Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// The HMAC of `buf[..upto]` with the header length replaced by `len_at`.
    pub(crate) fn sign(&self, buf: &[u8], upto: usize, len_at: usize) -> [u8; 20] {
        let mut mac = self.mac.clone();
        feed(&mut mac, buf, upto, len_at);
        mac.finalize().into_bytes().into()
    }
}

impl IntegrityKeySha256 {
    /// Key from raw bytes, as for [`IntegrityKey::new`].
    pub fn new(key: &[u8]) -> Self {
        IntegrityKeySha256 {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    pub(crate) fn sign(&self, buf: &[u8], upto: usize, len_at: usize) -> [u8; 32] {
        let mut mac = self.mac.clone();
        feed(&mut mac, buf, upto, len_at);
        mac.finalize().into_bytes().into()
    }
}

/// CRC-32 of `buf[..upto]` with the header length replaced by `len_at`, xor'd.
pub(crate) fn fingerprint(buf: &[u8], upto: usize, len_at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..2]);
    h.update(&(len_at as u16).to_be_bytes());
    h.update(&buf[4..upto]);
    h.finalize() ^ FINGERPRINT_XOR
}

impl Message<'_> {
    /// Checks MESSAGE-INTEGRITY with `key` in constant time (RFC 8489 §14.5).
    #[inline]
    pub fn verify_integrity(&self, key: &IntegrityKey) -> Result<(), StunError> {
        let at = self.integrity_offset().ok_or(StunError::NoIntegrity)?;
        let buf = self.as_bytes();
        let expect = key.sign(buf, at, at + 24 - HEADER_LEN);
        if bool::from(expect.ct_eq(&buf[at + 4..at + 24])) {
            Ok(())
        } else {
            Err(StunError::IntegrityMismatch)
        }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256, possibly truncated to 16..32 bytes (RFC 8489 §14.6).
    pub fn verify_integrity_sha256(&self, key: &IntegrityKeySha256) -> Result<(), StunError> {
        let at = self
            .integrity_sha256_offset()
            .ok_or(StunError::NoIntegrity)?;
        let buf = self.as_bytes();
        let vlen = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let expect = key.sign(buf, at, at + 4 + vlen - HEADER_LEN);
        if bool::from(expect[..vlen].ct_eq(&buf[at + 4..at + 4 + vlen])) {
            Ok(())
        } else {
            Err(StunError::IntegrityMismatch)
        }
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7).
    #[inline]
    pub fn verify_fingerprint(&self) -> Result<(), StunError> {
        let at = self.fingerprint_offset().ok_or(StunError::NoFingerprint)?;
        let buf = self.as_bytes();
        let got = u32::from_be_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if fingerprint(buf, at, at + 8 - HEADER_LEN) == got {
            Ok(())
        } else {
            Err(StunError::FingerprintMismatch)
        }
    }
}
