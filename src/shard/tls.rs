//! STUN/TURN over TLS (RFC 8656 §3.1; `turns:`, RFC 7065 §3) with rustls, both ends:
//!
//! - **Client** ([`TlsLink`]): the session between an agent's TURN client and its TCP
//!   stream to a `turns:` server. rustls is itself sans-IO: ciphertext read from the
//!   stream goes in ([`TlsLink::input`]), the TURN frames come out into the relay's
//!   [`StreamDecoder`]; frames to send go in as plaintext and come out as records
//!   ([`TlsLink::output`]) that the shard writes to the stream at the end of its turn. No
//!   ALPN is offered (RFC 7443's `stun.turn` is optional; browsers send none either).
//! - **Server** ([`server_config`], [`ServerSession`]): the sessions of the streams
//!   accepted on `[server] tls_listen`, the same way round.
//!
//! This lives with the runtime, not in `turn`: verifying a certificate reads the clock.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
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
                     or give the CA: AgentOptions::tls_roots, icering ping --turn-ca){}",
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
        let cert = cert.map_err(|e| format!("TLS roots: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("TLS roots: a certificate is not usable as a root: {e}"))?;
    }
    if roots.is_empty() {
        return Err("TLS roots: no CERTIFICATE block in the PEM".into());
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
        let mut conn = ClientConnection::new(target.config.clone(), target.name.clone())
            .map_err(|e| format!("TLS: {e}"))?;
        // No limit of rustls' own: a refused tail would cut a frame in two. The stream's
        // backlog bound closes a stream whose server does not read.
        conn.set_buffer_limit(None);
        Ok(TlsLink { conn })
    }

    /// Ciphertext from the stream: handshake records are answered (in the next
    /// [`output`](Self::output)), application data goes to `plain`. An error (a
    /// certificate that does not verify, a malformed record, the server's alert) ends the
    /// session.
    pub fn input(&mut self, bytes: &[u8], plain: &mut StreamDecoder) -> Result<(), String> {
        match feed(&mut self.conn, bytes, &mut |b| plain.push(b))? {
            Fed::Open => Ok(()),
            Fed::Closed => Err("TLS: closed by the server".into()),
        }
    }

    /// Encrypts `frames` (held by rustls until the handshake is done) and appends every
    /// record due to `out`.
    pub fn output(&mut self, frames: &[u8], out: &mut Vec<u8>) {
        seal(&mut self.conn, &[frames], out);
    }

    /// Ends the session: appends close_notify (RFC 8446 §6.1) to `out`.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        seal(&mut self.conn, &[], out);
    }
}

/// The server's TLS configuration from PEM files: the certificate chain (server
/// certificate first) and its private key, read at start and on each reload; every error
/// names the file.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    // No session resumption: its cache is one mutex every shard would share, and a TURN
    // client holds one long connection rather than many short ones.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// One accepted TLS stream's session, and the frames written to it this turn.
pub(crate) struct ServerSession {
    conn: ServerConnection,
    /// Plaintext frames to seal at the end of the turn, as few records as they fit in.
    pending: Vec<u8>,
    /// Listed for the end of the turn's [`seal_pending`](Self::seal_pending).
    dirty: bool,
}

/// How a server session ends when its stream closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The pending frames, then close_notify (RFC 8446 §6.1).
    CloseNotify,
    /// Bad frames from the client: the pending frames (answers to those before), no
    /// close_notify.
    Abort,
    /// The session failed: only what rustls has due (its fatal alert, if it sends one);
    /// frames after an alert would be discarded by the peer anyway.
    Failed,
}

impl ServerSession {
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, String> {
        let mut conn = ServerConnection::new(config.clone()).map_err(|e| format!("TLS: {e}"))?;
        // As for the client: the stream's backlog bound is the limit.
        conn.set_buffer_limit(None);
        Ok(ServerSession {
            conn,
            pending: Vec::new(),
            dirty: false,
        })
    }

    /// Whether the caller should list this session for the end of the turn's
    /// [`seal_pending`](Self::seal_pending): true the first time since the last one.
    pub fn list(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Adds `parts` (a frame and its padding) to what the next
    /// [`seal_pending`](Self::seal_pending) encrypts.
    pub fn push(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.pending.extend_from_slice(p);
        }
    }

    /// Encrypts the frames pushed since the last call (one record per 16 KiB, not one
    /// per frame) and appends them, after any handshake records due, to `out`.
    pub fn seal_pending(&mut self, out: &mut Vec<u8>) {
        self.dirty = false;
        seal(&mut self.conn, &[&self.pending], out);
        self.pending.clear();
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
    }

    /// Ciphertext from the client: application data is appended to `plain`, handshake
    /// records are answered in the next [`seal_pending`](Self::seal_pending). An error (a
    /// malformed record, the client's alert) ends the stream: [`Ending::Failed`].
    pub fn input(&mut self, bytes: &[u8], plain: &mut Vec<u8>) -> Result<Fed, String> {
        feed(&mut self.conn, bytes, &mut |b| plain.extend_from_slice(b))
    }

    /// Ends the session as `how` says, appending its last records to `out`.
    pub fn end(&mut self, how: Ending, out: &mut Vec<u8>) {
        if how == Ending::Failed {
            self.pending.clear();
        }
        self.seal_pending(out);
        if how == Ending::CloseNotify {
            self.conn.send_close_notify();
            seal(&mut self.conn, &[], out);
        }
    }
}

/// What a session made of the bytes fed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Still open.
    Open,
    /// The peer sent close_notify: the plaintext before it was delivered; close the stream.
    Closed,
}

/// Feeds `bytes` to a session, handing every plaintext byte to `plain`.
fn feed<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    mut bytes: &[u8],
    plain: &mut dyn FnMut(&[u8]),
) -> Result<Fed, String> {
    let mut buf = [0u8; 4096];
    while !bytes.is_empty() {
        let read = conn.read_tls(&mut bytes).map_err(|e| format!("TLS: {e}"))?;
        let state = conn
            .process_new_packets()
            .map_err(|e| format!("TLS: {e}"))?;
        // After close_notify rustls reads nothing more (`read == 0`): the session is over.
        let closed = state.peer_has_closed() || read == 0;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = conn
                .reader()
                .read(&mut buf)
                .map_err(|e| format!("TLS: {e}"))?;
            if n == 0 {
                break;
            }
            plain(&buf[..n]);
            left = left.saturating_sub(n);
        }
        if closed {
            return Ok(Fed::Closed);
        }
    }
    Ok(Fed::Open)
}

/// Encrypts `parts` (unlimited buffer: every byte is taken) and appends every record a
/// session has due to `out`.
fn seal<D>(conn: &mut rustls::ConnectionCommon<D>, parts: &[&[u8]], out: &mut Vec<u8>) {
    for p in parts.iter().filter(|p| !p.is_empty()) {
        // With no buffer limit rustls takes everything; an error means the session is
        // closing, which the next read reports.
        let _ = conn.writer().write_all(p);
    }
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
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
        link.output(b"", &mut hello);
        assert!(hello.len() > 50, "a ClientHello is due at once");
        let mut dec = StreamDecoder::default();
        assert!(
            link.input(b"\x01\x01\x00\x00\x00 not TLS", &mut dec)
                .is_err()
        );
    }

    /// A client and a server session over memory, with a CA and certificate made here.
    fn pair() -> (TlsLink, ServerSession) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["turn.test".to_string()]).unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("icering-tls-unit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let server = ServerSession::new(&server_config(&c, &k).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let target = TlsTarget::new(
            pem_config(&ca_pem).unwrap(),
            &Host::Name("turn.test".into()),
        )
        .unwrap();
        (TlsLink::new(&target).unwrap(), server)
    }

    /// Runs the handshake; returns what each side decrypted on the way.
    fn handshake(client: &mut TlsLink, server: &mut ServerSession) {
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let (mut dec, mut plain) = (StreamDecoder::default(), Vec::new());
        for _ in 0..4 {
            to_server.clear();
            client.output(b"", &mut to_server);
            server.input(&to_server, &mut plain).unwrap();
            to_client.clear();
            server.seal_pending(&mut to_client);
            client.input(&to_client, &mut dec).unwrap();
        }
        assert!(!client.conn.is_handshaking() && plain.is_empty());
    }

    /// More than rustls' default 64 KiB buffer in one go arrives whole (a refused tail
    /// would cut a frame in two).
    #[test]
    fn a_large_write_is_sealed_whole() {
        let (mut client, mut server) = pair();
        handshake(&mut client, &mut server);
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut records = Vec::new();
        client.output(&big, &mut records);
        let mut plain = Vec::new();
        server.input(&records, &mut plain).unwrap();
        assert_eq!(plain, big);
    }

    /// The server's close_notify, followed by more bytes, ends the session with an
    /// error instead of looping on bytes rustls no longer reads.
    #[test]
    fn close_notify_ends_the_session() {
        let (mut client, mut server) = pair();
        handshake(&mut client, &mut server);
        let mut records = Vec::new();
        server.end(Ending::CloseNotify, &mut records);
        records.extend_from_slice(&[0x17; 10_000]);
        let mut dec = StreamDecoder::default();
        let err = client.input(&records, &mut dec).unwrap_err();
        assert!(err.contains("closed by the server"), "{err}");
    }

    /// The client's close: the frames written before it arrive, then the server sees
    /// the session closed.
    #[test]
    fn a_client_close_follows_its_last_frames() {
        let (mut client, mut server) = pair();
        handshake(&mut client, &mut server);
        let mut records = Vec::new();
        client.output(b"last frame", &mut records);
        client.close(&mut records);
        let mut plain = Vec::new();
        assert_eq!(server.input(&records, &mut plain), Ok(Fed::Closed));
        assert_eq!(plain, b"last frame");
    }
}
