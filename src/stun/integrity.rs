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

/// HMAC-SHA1 key for MESSAGE-INTEGRITY, precomputed once per credential: the SHA-1
/// states after absorbing the inner and outer key pads (RFC 2104), 40 bytes in all.
#[derive(Clone)]
pub struct IntegrityKey {
    inner: [u32; 5],
    outer: [u32; 5],
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
        // RFC 2104: keys longer than the block are hashed first, then zero-padded.
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..20].copy_from_slice(&Sha1::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| {
            let mut block = k;
            block.iter_mut().for_each(|b| *b ^= byte);
            let mut state = SHA1_H0;
            sha1::block_api::compress(&mut state, &[block]);
            state
        };
        IntegrityKey {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The HMAC of `buf[..upto]` with the header length replaced by `len_at`.
    ///
    /// Hashes with the SHA-1 block function, no allocation. A message that fits 3 blocks
    /// with its padding (up to 183 bytes: every ICE check and response) is copied once to
    /// the stack, length patched and padded, and hashed in one block-function call; a
    /// longer one is hashed in place, only its first block (patched length) and padded
    /// tail built on the stack.
    #[inline]
    pub(crate) fn sign(&self, buf: &[u8], upto: usize, len_at: usize) -> [u8; 20] {
        let msg = &buf[..upto];
        let len_field = (len_at as u16).to_be_bytes();
        let mut state = self.inner;
        // MD padding: 0x80, zeros, bit length (the key block counts: 64 bytes).
        let bits = ((64 + upto) as u64) * 8;
        if upto + 9 <= SHORT_BLOCKS * 64 {
            // Short messages (every ICE check and response): message and padding in one
            // stack buffer, hashed by one call of the block function.
            let mut blocks = [[0u8; 64]; SHORT_BLOCKS];
            let n = (upto + 9).div_ceil(64);
            let flat = blocks.as_flattened_mut();
            flat[..upto].copy_from_slice(msg);
            flat[2..4].copy_from_slice(&len_field);
            flat[upto] = 0x80;
            flat[n * 64 - 8..n * 64].copy_from_slice(&bits.to_be_bytes());
            sha1::block_api::compress(&mut state, &blocks[..n]);
            return self.finish(state);
        }
        let (blocks, tail) = msg.as_chunks::<64>();
        let mut tail_block = [0u8; 128];
        tail_block[..tail.len()].copy_from_slice(tail);
        if let Some((first, rest)) = blocks.split_first() {
            let mut first = *first;
            first[2..4].copy_from_slice(&len_field);
            sha1::block_api::compress(&mut state, &[first]);
            sha1::block_api::compress(&mut state, rest);
        } else {
            // The whole message is in the tail; it holds at least the 20-byte header.
            tail_block[2..4].copy_from_slice(&len_field);
        }
        tail_block[tail.len()] = 0x80;
        let tail_len = if tail.len() < 56 { 64 } else { 128 };
        tail_block[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
        let (tail_blocks, _) = tail_block[..tail_len].as_chunks::<64>();
        sha1::block_api::compress(&mut state, tail_blocks);
        self.finish(state)
    }

    /// The outer hash of HMAC over the inner digest `state`.
    #[inline]
    fn finish(&self, state: [u32; 5]) -> [u8; 20] {
        let mut outer_block = [0u8; 64];
        for (chunk, word) in outer_block.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        outer_block[20] = 0x80;
        outer_block[56..].copy_from_slice(&(((64 + 20) as u64) * 8).to_be_bytes());
        let mut state = self.outer;
        sha1::block_api::compress(&mut state, &[outer_block]);
        let mut mac = [0u8; 20];
        for (chunk, word) in mac.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        mac
    }
}

/// Messages up to `SHORT_BLOCKS * 64 - 9` bytes are signed through one stack buffer.
const SHORT_BLOCKS: usize = 3;

/// SHA-1 initial state (FIPS 180-4 §5.3.1).
const SHA1_H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

/// Constant-time equality of two MACs: one data-independent fold, then one `subtle`
/// comparison (instead of a `Choice` per byte).
#[inline]
fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    bool::from(diff.ct_eq(&0))
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
///
/// When the header already holds `len_at` (always on receive, where FINGERPRINT is last,
/// and on send, where the writer sets the final length first) the CRC runs in one pass.
#[inline]
pub(crate) fn fingerprint(buf: &[u8], upto: usize, len_at: usize) -> u32 {
    let len = (len_at as u16).to_be_bytes();
    if buf[2..4] == len {
        return crc32fast::hash(&buf[..upto]) ^ FINGERPRINT_XOR;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..2]);
    h.update(&len);
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
        if mac_eq(&expect, &buf[at + 4..at + 24]) {
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
        if mac_eq(&expect[..vlen], &buf[at + 4..at + 4 + vlen]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-level HMAC-SHA1 equals the `hmac` crate's for every key size class and
    /// every tail length (including the 55/56 and 63/64 padding boundaries).
    #[test]
    fn sign_matches_reference_hmac() {
        let mut msg = [0u8; 300];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        for key_len in [0, 1, 20, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 13) as u8).collect();
            let ours = IntegrityKey::new(&key);
            for upto in 20..=msg.len() {
                let len_at = (upto + 4) & 0xFFFF;
                let mut reference = Hmac::<Sha1>::new_from_slice(&key).unwrap();
                feed(&mut reference, &msg, upto, len_at);
                let want: [u8; 20] = reference.finalize().into_bytes().into();
                assert_eq!(
                    ours.sign(&msg, upto, len_at),
                    want,
                    "key {key_len} upto {upto}"
                );
            }
        }
    }

    #[test]
    fn mac_eq_is_equality() {
        assert!(mac_eq(&[1, 2, 3], &[1, 2, 3]));
        assert!(!mac_eq(&[1, 2, 3], &[1, 2, 4]));
        assert!(!mac_eq(&[1, 2, 3], &[1, 2]));
        assert!(mac_eq(&[], &[]));
    }
}
