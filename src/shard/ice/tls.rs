//! TURN over TLS (`turns:`, RFC 7065 §3; RFC 8656 §3.1): a rustls client session between
//! a relay's TURN client and its TCP stream. rustls is itself sans-IO: ciphertext read
//! from the stream goes in ([`TlsLink::input`]), the TURN frames come out into the
//! relay's [`StreamDecoder`]; frames to send go in as plaintext and come out as records
//! ([`TlsLink::output`]) that the shard writes to the stream at the end of its turn.
//!
//! This lives with the runtime, not in `turn`: verifying a certificate reads the clock.
//! No ALPN is offered (RFC 7443's `stun.turn` is optional; browsers send none either).

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::ice::url::Host;
use crate::turn::client::stream::StreamDecoder;

/// Where a `turns:` server's certificate chain must lead, with the name it must carry.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsTarget {
    /// The name to verify: the URL's host, a DNS name or an IP address (the certificate
    /// must then hold it as an IP subjectAltName).
    pub fn new(config: Arc<ClientConfig>, host: &Host) -> Result<Self, String> {
        let name = match host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(n) => ServerName::try_from(n.clone())
                .map_err(|e| format!("{n:?} is not a TLS server name: {e}"))?,
        };
        Ok(TlsTarget { config, name })
    }
}

fn config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration trusting the platform's certificate store (read once per
/// process, on the first `turns:` URL).
pub(crate) fn platform_config() -> Result<Arc<ClientConfig>, String> {
    static PLATFORM: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    PLATFORM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}"));
                return Err(format!(
                    "no platform root certificates for turns: (install ca-certificates, \
                     or give the CA with tls_roots){}",
                    why.unwrap_or_default()
                ));
            }
            Ok(config(roots))
        })
        .clone()
}

/// A client configuration trusting only the CA certificates in `pem`.
pub(crate) fn pem_config(pem: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("tls_roots: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("tls_roots: a certificate is not usable as a root: {e}"))?;
    }
    if roots.is_empty() {
        return Err("tls_roots: no CERTIFICATE block in the PEM".into());
    }
    Ok(config(roots))
}

/// One TLS session over a relay's TCP stream.
pub(crate) struct TlsLink {
    conn: ClientConnection,
}

impl std::fmt::Debug for TlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLink")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl TlsLink {
    /// Starts the handshake: the ClientHello waits in [`output`](Self::output).
    pub fn new(target: &TlsTarget) -> Result<Self, String> {
        let conn = ClientConnection::new(target.config.clone(), target.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(TlsLink { conn })
    }

    /// Ciphertext from the stream: handshake records are answered (in the next
    /// [`output`](Self::output)), application data goes to `plain`. An error (a
    /// certificate that does not verify, a malformed record, the server's alert) ends the
    /// session.
    pub fn input(&mut self, mut bytes: &[u8], plain: &mut StreamDecoder) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        while !bytes.is_empty() {
            self.conn
                .read_tls(&mut bytes)
                .map_err(|e| format!("TLS: {e}"))?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| format!("TLS: {e}"))?;
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                let n = self
                    .conn
                    .reader()
                    .read(&mut buf)
                    .map_err(|e| format!("TLS: {e}"))?;
                if n == 0 {
                    break;
                }
                plain.push(&buf[..n]);
                left = left.saturating_sub(n);
            }
        }
        Ok(())
    }

    /// Encrypts `frames` (buffered by rustls until the handshake is done) and appends
    /// every record due to `out`. Returns the plaintext bytes rustls refused (its buffer
    /// limit, 64 KiB, reached before the handshake ended): those frames are lost, as a
    /// datagram would be.
    pub fn output(&mut self, frames: &[u8], out: &mut Vec<u8>) -> usize {
        let taken = if frames.is_empty() {
            0
        } else {
            self.conn.writer().write(frames).unwrap_or(0)
        };
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
        frames.len() - taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_roots_must_hold_a_certificate() {
        assert!(pem_config("").unwrap_err().contains("no CERTIFICATE"));
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(pem_config(junk).is_err());
    }

    #[test]
    fn server_names_come_from_the_url_host() {
        let cfg = config(RootCertStore::empty());
        let ip = TlsTarget::new(cfg.clone(), &Host::Ip("127.0.0.1".parse().unwrap())).unwrap();
        assert!(matches!(ip.name, ServerName::IpAddress(_)));
        let dns = TlsTarget::new(cfg.clone(), &Host::Name("turn.example.org".into())).unwrap();
        assert!(matches!(dns.name, ServerName::DnsName(_)));
        assert!(TlsTarget::new(cfg, &Host::Name("bad name".into())).is_err());
    }

    /// Garbage from the "server" ends the session with an error, without a panic.
    #[test]
    fn garbage_from_the_server_is_an_error() {
        let cfg = config(RootCertStore::empty());
        let target = TlsTarget::new(cfg, &Host::Name("turn.example.org".into())).unwrap();
        let mut link = TlsLink::new(&target).unwrap();
        let mut hello = Vec::new();
        assert_eq!(link.output(b"", &mut hello), 0);
        assert!(hello.len() > 50, "a ClientHello is due at once");
        let mut dec = StreamDecoder::default();
        assert!(
            link.input(b"\x01\x01\x00\x00\x00 not TLS", &mut dec)
                .is_err()
        );
    }
}
