//! A small blocking TURN client on a std UdpSocket (or a TcpStream, RFC 8656 §12.5
//! framing), built on icering's codec, for the relay tests. It learns REALM and NONCE from
//! a 401/438 and retries once, like a real client.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use icering::stun::{
    Class, IntegrityKey, IntegrityKeySha256, Message, MessageType, MessageWriter, Method,
    PasswordAlgorithm, StunError, attr, long_term_key_md5, long_term_key_sha256,
};

/// Builds extra attributes into a request.
pub type Attrs<'a> = &'a dyn Fn(&mut MessageWriter<'_>) -> Result<(), StunError>;

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("answer parses")
    }
    pub fn is_success(&self) -> bool {
        self.msg().class() == Class::Success
    }
    pub fn code(&self) -> Option<u16> {
        self.msg().error_code().map(|e| e.code)
    }
}

pub struct TurnClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
    pub sha256: bool,
    realm: Option<String>,
    nonce: Option<String>,
    tid: u64,
    /// Datagrams that were not the awaited answer (Data indications, ChannelData).
    pub pending: VecDeque<Vec<u8>>,
    /// TURN over TCP: the stream and bytes read but not yet framed.
    tcp: Option<(TcpStream, Vec<u8>)>,
}

impl TurnClient {
    pub fn new(server: SocketAddr, user: &str, pass: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        TurnClient {
            sock,
            server,
            user: user.into(),
            pass: pass.into(),
            sha256: false,
            realm: None,
            nonce: None,
            tid: 1,
            pending: VecDeque::new(),
            tcp: None,
        }
    }

    /// A client that talks to the server over TCP.
    pub fn new_tcp(server: SocketAddr, user: &str, pass: &str) -> Self {
        let mut c = Self::new(server, user, pass);
        let s = TcpStream::connect(server).expect("TCP connect to the server");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.set_nodelay(true).unwrap();
        c.tcp = Some((s, Vec::new()));
        c
    }

    /// The TCP stream (TCP clients only).
    pub fn stream(&self) -> &TcpStream {
        &self.tcp.as_ref().expect("a TCP client").0
    }

    pub fn local(&self) -> SocketAddr {
        match &self.tcp {
            Some((s, _)) => s.local_addr().unwrap(),
            None => self.sock.local_addr().unwrap(),
        }
    }

    /// Sends one message: a datagram, or a frame padded to 4 bytes on TCP.
    pub fn send_raw(&self, d: &[u8]) {
        match &self.tcp {
            Some((s, _)) => {
                let pad = (4 - d.len() % 4) % 4;
                let mut framed = d.to_vec();
                framed.extend(std::iter::repeat_n(0, pad));
                (&*s).write_all(&framed).unwrap();
            }
            None => {
                self.sock.send_to(d, self.server).unwrap();
            }
        }
    }

    /// Receives one message (`None` after the read timeout or when the stream closed).
    pub fn recv_raw(&mut self) -> Option<Vec<u8>> {
        let Some((s, rx)) = &mut self.tcp else {
            let mut buf = [0u8; 2048];
            let (n, _) = self.sock.recv_from(&mut buf).ok()?;
            return Some(buf[..n].to_vec());
        };
        loop {
            if let Ok(Some(n)) = icering::stun::stream::frame_len(rx) {
                return Some(rx.drain(..n).collect());
            }
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => rx.extend_from_slice(&buf[..n]),
            }
        }
    }

    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    pub fn set_nonce(&mut self, n: &str) {
        self.nonce = Some(n.into());
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        let mut t = [7u8; 12];
        t[4..].copy_from_slice(&self.tid.to_be_bytes());
        t
    }

    /// Builds a request; signed if the realm and nonce are known.
    pub fn build(&mut self, method: Method, attrs: Attrs<'_>, out: &mut [u8]) -> ([u8; 12], usize) {
        let tid = self.next_tid();
        let mut w =
            MessageWriter::new(out, MessageType::new(method, Class::Request), &tid).unwrap();
        attrs(&mut w).unwrap();
        if let (Some(realm), Some(nonce)) = (self.realm.clone(), self.nonce.clone()) {
            w.add_raw(attr::USERNAME, self.user.as_bytes()).unwrap();
            w.add_raw(attr::REALM, realm.as_bytes()).unwrap();
            w.add_raw(attr::NONCE, nonce.as_bytes()).unwrap();
            if self.sha256 {
                w.add(&icering::stun::Attribute::PasswordAlgorithm(
                    PasswordAlgorithm::SHA256,
                ))
                .unwrap();
                w.add_password_algorithms(&[PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5])
                    .unwrap();
                let k = long_term_key_sha256(&self.user, &realm, &self.pass);
                w.add_message_integrity_sha256(&IntegrityKeySha256::new(&k))
                    .unwrap();
            } else {
                let k = long_term_key_md5(&self.user, &realm, &self.pass);
                w.add_message_integrity(&IntegrityKey::new(&k)).unwrap();
            }
        }
        w.add_fingerprint().unwrap();
        (tid, w.finish())
    }

    /// Sends a request and waits for the answer with its transaction id (resends 3x).
    pub fn exchange(&mut self, req: &[u8], tid: [u8; 12]) -> Option<Answer> {
        for _ in 0..3 {
            self.send_raw(req);
            while let Some(d) = self.recv_raw() {
                let d = &d[..];
                if let Ok(m) = Message::parse(d)
                    && m.transaction_id() == &tid
                    && matches!(m.class(), Class::Success | Class::Error)
                {
                    return Some(Answer { bytes: d.to_vec() });
                }
                self.pending.push_back(d.to_vec());
            }
        }
        None
    }

    /// A request, retried once with fresh REALM/NONCE after 401 or 438.
    pub fn request(&mut self, method: Method, attrs: Attrs<'_>) -> Answer {
        let mut buf = [0u8; 2048];
        for _ in 0..2 {
            let (tid, n) = self.build(method, attrs, &mut buf);
            let a = self
                .exchange(&buf[..n], tid)
                .expect("no answer from the server");
            let code = a.code();
            if matches!(code, Some(401) | Some(438)) {
                let had = self.nonce.is_some() && code == Some(401);
                let m = a.msg();
                self.realm = m.realm().map(str::to_string);
                self.nonce = m.nonce().map(str::to_string);
                if had {
                    return a; // wrong credentials: do not loop
                }
                continue;
            }
            return a;
        }
        panic!("no answer after the retry")
    }

    /// Checks the answer's MESSAGE-INTEGRITY(-SHA256) with our key.
    pub fn verify(&self, a: &Answer) -> bool {
        let m = a.msg();
        let realm = self.realm.as_deref().unwrap();
        if self.sha256 {
            let k = long_term_key_sha256(&self.user, realm, &self.pass);
            m.verify_integrity_sha256(&IntegrityKeySha256::new(&k))
                .is_ok()
        } else {
            let k = long_term_key_md5(&self.user, realm, &self.pass);
            m.verify_integrity(&IntegrityKey::new(&k)).is_ok()
        }
    }

    pub fn allocate(&mut self) -> Answer {
        self.request(Method::ALLOCATE, &|w| {
            w.add_raw(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        })
    }

    /// Allocates and returns the relayed address.
    pub fn allocate_ok(&mut self) -> SocketAddr {
        let a = self.allocate();
        assert!(a.is_success(), "allocate failed: {:?}", a.code());
        assert!(self.verify(&a), "allocate response integrity");
        let m = a.msg();
        assert_eq!(m.xor_mapped_address().unwrap().unwrap(), self.local());
        assert_eq!(m.lifetime(), Some(600));
        m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap()
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Answer {
        self.request(Method::CREATE_PERMISSION, &move |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        })
    }

    pub fn channel_bind(&mut self, ch: u16, peer: SocketAddr) -> Answer {
        self.request(Method::CHANNEL_BIND, &move |w| {
            w.add_raw(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0])?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        })
    }

    pub fn refresh(&mut self, lifetime: u32) -> Answer {
        self.request(Method::REFRESH, &move |w| {
            w.add_u32(attr::LIFETIME, lifetime)
        })
    }

    pub fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut buf = [0u8; 2048];
        let tid = self.next_tid();
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            &tid,
        )
        .unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.add_raw(attr::DATA, data).unwrap();
        let n = w.finish();
        self.send_raw(&buf[..n]);
    }

    pub fn send_channel_data(&self, ch: u16, data: &[u8]) {
        let mut buf = vec![0u8; 4 + data.len()];
        buf[0..2].copy_from_slice(&ch.to_be_bytes());
        buf[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
        buf[4..].copy_from_slice(data);
        self.send_raw(&buf);
    }

    /// The next relayed datagram: `(peer, data)` from a Data indication, or
    /// `(channel as port 0 address, data)` from ChannelData.
    pub fn recv_relayed(&mut self) -> Option<Relayed> {
        let d = loop {
            let d = match self.pending.pop_front() {
                Some(d) => d,
                None => self.recv_raw()?,
            };
            // A second answer to a request `exchange` resent after a slow first one (a
            // loaded machine): the transaction is over, skip it.
            match Message::parse(&d) {
                Ok(m) if matches!(m.class(), Class::Success | Class::Error) => continue,
                _ => break d,
            }
        };
        if let Ok(m) = Message::parse(&d) {
            assert_eq!(m.method(), Method::DATA, "unexpected {m:?}");
            assert_eq!(m.class(), Class::Indication);
            let peer = m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap();
            return Some(Relayed::Data(peer, m.data().unwrap().to_vec()));
        }
        let ch = u16::from_be_bytes([d[0], d[1]]);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        Some(Relayed::Channel(ch, d[4..4 + len].to_vec()))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    Data(SocketAddr, Vec<u8>),
    Channel(u16, Vec<u8>),
}

/// A peer: a UdpSocket on 127.0.0.1.
pub fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

pub fn peer_recv(s: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).ok()?;
    Some((from, buf[..n].to_vec()))
}
