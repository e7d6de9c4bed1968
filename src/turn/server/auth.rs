//! Long-term credentials (RFC 8489 §9.2) with stateless nonces, static users and TURN REST
//! ephemeral credentials (coturn's `use-auth-secret` / `static-auth-secret`).
//!
//! Nonce: `obMatJos2` + `gAAA` (RFC 8489 §9.2 nonce cookie, security feature "password
//! algorithms") + 8 hex digits of issue time (seconds since the server epoch) + 16 hex
//! digits of `HMAC-SHA1(secret, time ‖ client address ‖ client port)`. It needs no state,
//! is bound to the client's transport address, and every shard sharing `secret` accepts it.
//! An old or forged nonce gets 438.
//!
//! REST credentials: username `expiry:user` (or `user:expiry`), password
//! `base64(HMAC-SHA1(secret, username))`; several secrets may be valid at once (rotation).
//! An expired timestamp gets 401.

use std::net::SocketAddr;

use hashbrown::HashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::stun::{
    IntegrityKey, IntegrityKeySha256, Message, PasswordAlgorithm, attr, long_term_key_md5,
    long_term_key_sha256,
};

/// RFC 8489 nonce cookie with the "password algorithms" security feature bit set.
pub(super) const NONCE_PREFIX: &str = "obMatJos2gAAA";
/// Length of a nonce: prefix + 8 + 16 hex digits.
pub(super) const NONCE_LEN: usize = NONCE_PREFIX.len() + 24;
/// The password algorithms offered in 401 responses, in preference order.
pub(super) const ALGORITHMS: [PasswordAlgorithm<'static>; 2] =
    [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5];

/// Which password algorithm a key was derived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PasswordAlg {
    Md5,
    Sha256,
}

/// Which MESSAGE-INTEGRITY the request used (the response uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MiKind {
    Sha1,
    Sha256,
}

/// A verified credential: the username and the HMAC keys derived once from it.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    pub username: Box<str>,
    pub alg: PasswordAlg,
    pub key: IntegrityKey,
    pub key256: IntegrityKeySha256,
}

impl Credential {
    fn derive(username: &str, realm: &str, password: &str, alg: PasswordAlg) -> Self {
        let (key, key256) = match alg {
            PasswordAlg::Md5 => {
                let k = long_term_key_md5(username, realm, password);
                (IntegrityKey::new(&k), IntegrityKeySha256::new(&k))
            }
            PasswordAlg::Sha256 => {
                let k = long_term_key_sha256(username, realm, password);
                (IntegrityKey::new(&k), IntegrityKeySha256::new(&k))
            }
        };
        Credential {
            username: username.into(),
            alg,
            key,
            key256,
        }
    }

    /// Checks the request's integrity attribute (SHA-256 preferred when present).
    pub fn verify(&self, msg: &Message<'_>) -> Option<MiKind> {
        if msg.integrity_sha256_offset().is_some() {
            msg.verify_integrity_sha256(&self.key256)
                .ok()
                .map(|_| MiKind::Sha256)
        } else {
            msg.verify_integrity(&self.key).ok().map(|_| MiKind::Sha1)
        }
    }
}

/// Why a request failed authentication, mapped to its error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthError {
    /// No integrity attribute: the challenge (401, not counted as a failure).
    Challenge,
    /// USERNAME/REALM/NONCE missing or PASSWORD-ALGORITHM malformed (400).
    BadRequest,
    /// Nonce expired or not ours (438).
    StaleNonce,
    /// Unknown user, wrong password, expired REST credential, wrong realm (401, counted).
    Rejected,
}

/// The credential store and nonce key of one server.
pub(super) struct Authenticator {
    realm: String,
    users: HashMap<String, String>,
    secrets: Vec<Vec<u8>>,
    nonce_key: Hmac<Sha1>,
    nonce_lifetime: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

fn hex(out: &mut [u8], bytes: &[u8]) {
    const D: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = D[usize::from(b >> 4)];
        out[2 * i + 1] = D[usize::from(b & 15)];
    }
}

/// Standard base64 with padding (RFC 4648 §4), for REST passwords.
pub(super) fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The TURN REST password for `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64(&mac.finalize().into_bytes())
}

/// The expiry timestamp of a REST username (`expiry:user`, `user:expiry` or `expiry`).
fn rest_expiry(username: &str) -> Option<u64> {
    let first = username.split(':').next()?;
    let last = username.rsplit(':').next()?;
    first.parse().ok().or_else(|| last.parse().ok())
}

impl Authenticator {
    pub fn new(
        realm: String,
        users: &[(String, String)],
        secrets: &[String],
        nonce_secret: &[u8],
        nonce_lifetime: u64,
    ) -> Self {
        Authenticator {
            realm,
            users: users.iter().cloned().collect(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            nonce_key: Hmac::<Sha1>::new_from_slice(nonce_secret).expect("any key length"),
            nonce_lifetime,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn nonce_mac(&self, ts: u32, client: SocketAddr) -> [u8; 8] {
        let mut mac = self.nonce_key.clone();
        mac.update(&ts.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(a) => mac.update(&a.octets()),
            std::net::IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        full[..8].try_into().expect("20 >= 8")
    }

    /// A fresh nonce for `client` issued at `secs` (seconds since the server epoch).
    pub fn nonce(&self, secs: u64, client: SocketAddr) -> [u8; NONCE_LEN] {
        let ts = secs as u32;
        let mut out = [0u8; NONCE_LEN];
        let p = NONCE_PREFIX.len();
        out[..p].copy_from_slice(NONCE_PREFIX.as_bytes());
        hex(&mut out[p..p + 8], &ts.to_be_bytes());
        hex(&mut out[p + 8..], &self.nonce_mac(ts, client));
        out
    }

    /// Whether `nonce` was issued by us to `client` and is still fresh at `secs`.
    pub fn nonce_valid(&self, nonce: &str, secs: u64, client: SocketAddr) -> bool {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN || !nonce.starts_with(NONCE_PREFIX) {
            return false;
        }
        let p = NONCE_PREFIX.len();
        let Ok(ts) = u32::from_str_radix(&nonce[p..p + 8], 16) else {
            return false;
        };
        let mut expect = [0u8; 16];
        hex(&mut expect, &self.nonce_mac(ts, client));
        let same: bool = subtle::ConstantTimeEq::ct_eq(&expect[..], &b[p + 8..]).into();
        let age = (secs as u32).wrapping_sub(ts);
        same && u64::from(age) <= self.nonce_lifetime
    }

    /// Authenticates a request (RFC 8489 §9.2.4). `cached` is the credential of the
    /// allocation on this 5-tuple, tried first so an allocation's requests cost one HMAC.
    pub fn check(
        &self,
        msg: &Message<'_>,
        client: SocketAddr,
        secs: u64,
        unix_now: u64,
        cached: Option<&Credential>,
    ) -> Result<(Credential, MiKind), AuthError> {
        if msg.integrity_offset().is_none() && msg.integrity_sha256_offset().is_none() {
            return Err(AuthError::Challenge);
        }
        let (Some(username), Some(realm), Some(nonce)) = (msg.username(), msg.realm(), msg.nonce())
        else {
            return Err(AuthError::BadRequest);
        };
        let alg = match msg.get(attr::PASSWORD_ALGORITHM) {
            None => PasswordAlg::Md5,
            Some(a) => {
                if msg.get(attr::PASSWORD_ALGORITHMS).is_none() || a.value.len() < 4 {
                    return Err(AuthError::BadRequest);
                }
                match u16::from_be_bytes([a.value[0], a.value[1]]) {
                    1 => PasswordAlg::Md5,
                    2 => PasswordAlg::Sha256,
                    _ => return Err(AuthError::BadRequest),
                }
            }
        };
        if !self.nonce_valid(nonce, secs, client) {
            return Err(AuthError::StaleNonce);
        }
        if realm != self.realm {
            return Err(AuthError::Rejected);
        }
        if let Some(c) = cached
            && &*c.username == username
            && c.alg == alg
        {
            return c
                .verify(msg)
                .map(|k| (c.clone(), k))
                .ok_or(AuthError::Rejected);
        }
        if let Some(pass) = self.users.get(username) {
            let c = Credential::derive(username, realm, pass, alg);
            if let Some(k) = c.verify(msg) {
                return Ok((c, k));
            }
        }
        if !self.secrets.is_empty()
            && let Some(expiry) = rest_expiry(username)
            && expiry >= unix_now
        {
            for secret in &self.secrets {
                let pass = rest_password(secret, username);
                let c = Credential::derive(username, realm, &pass, alg);
                if let Some(k) = c.verify(msg) {
                    return Ok((c, k));
                }
            }
        }
        Err(AuthError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn nonce_is_bound_to_client_and_time() {
        let a = Authenticator::new("r".into(), &[], &[], b"k", 600);
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let n = a.nonce(100, c);
        let s = std::str::from_utf8(&n).unwrap();
        assert!(a.nonce_valid(s, 100, c));
        assert!(a.nonce_valid(s, 700, c));
        assert!(!a.nonce_valid(s, 701, c));
        assert!(!a.nonce_valid(s, 100, "192.0.2.1:5001".parse().unwrap()));
        let mut forged = n;
        forged[NONCE_LEN - 1] ^= 1;
        assert!(!a.nonce_valid(std::str::from_utf8(&forged).unwrap(), 100, c));
        assert!(!a.nonce_valid("short", 100, c));
    }

    #[test]
    fn rest_expiry_forms() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
    }
}
