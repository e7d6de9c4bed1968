//! Server-reflexive discovery: one STUN Binding transaction (RFC 8489 §6.2, RFC 8445
//! §5.1.1.2), retransmitted over UDP, ending in the XOR-MAPPED-ADDRESS or an error.

use std::net::SocketAddr;
use std::time::Instant;

use super::ClientError;
use super::txn::{Due, Retransmit, TidSource, Timer};
use crate::net::Transmit;
use crate::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};

/// How a Binding transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingEvent {
    /// The server saw the request come from `mapped` (the srflx candidate's address).
    Mapped(SocketAddr),
    /// Error response, timeout or an answer without a mapped address.
    Failed(ClientError),
}

/// A Binding request: header and FINGERPRINT, nothing else (RFC 8489 §6.1).
fn request_for(tid: &TransactionId) -> [u8; 28] {
    let mut request = [0u8; 28];
    let mut w = MessageWriter::new(
        &mut request,
        MessageType::new(Method::BINDING, Class::Request),
        tid,
    )
    .expect("28 bytes hold a header and FINGERPRINT");
    w.add_fingerprint()
        .expect("28 bytes hold a header and FINGERPRINT");
    request
}

/// A sans-IO STUN Binding client for one (local address, server) pair. Same drive loop as
/// [`Client`](super::Client); it ends with one [`BindingEvent`].
#[derive(Debug)]
pub struct BindingClient {
    server: SocketAddr,
    local: SocketAddr,
    retransmit: Retransmit,
    tid: TransactionId,
    timer: Timer,
    request: [u8; 28],
    done: bool,
    event: Option<BindingEvent>,
}

impl BindingClient {
    /// Starts a Binding request from `local` to `server`, first send due at `now`.
    pub fn new(
        server: SocketAddr,
        local: SocketAddr,
        retransmit: Retransmit,
        seed: u64,
        now: Instant,
    ) -> Self {
        let tid = TidSource::new(seed).next_tid();
        BindingClient {
            server,
            local,
            retransmit,
            tid,
            timer: Timer::new(now, &retransmit),
            request: request_for(&tid),
            done: false,
            event: None,
        }
    }

    /// The same transaction with its id starting with `prefix`, for a request sent from
    /// a socket shared by many agents: the answer is routed back by that prefix (as the
    /// agents' own checks are, `IceConfig::tid_prefix`). The other 6 bytes stay random.
    pub fn with_tid_prefix(mut self, prefix: [u8; 6]) -> Self {
        self.tid[..6].copy_from_slice(&prefix);
        self.request = request_for(&self.tid);
        self
    }

    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Whether the transaction ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When [`handle_timeout`](Self::handle_timeout) next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then(|| self.timer.deadline())
    }

    /// Times the transaction out after the last retransmission (RFC 8489 §6.2.1).
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.done && self.timer.due(now, &self.retransmit, false) == Due::TimedOut {
            self.end(BindingEvent::Failed(ClientError::Timeout("Binding")));
        }
    }

    /// Writes the request when a (re)send is due.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.done || self.timer.due(now, &self.retransmit, false) != Due::Send {
            return None;
        }
        buf.get_mut(..self.request.len())?
            .copy_from_slice(&self.request);
        self.timer.sent(now, &self.retransmit, false);
        Some(Transmit {
            source: self.local,
            destination: self.server,
            size: self.request.len(),
        })
    }

    /// Feeds a datagram; `true` if it was the answer to this transaction (consumed).
    pub fn handle_packet(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        if self.done || from != self.server {
            return false;
        }
        let Ok(m) = Message::parse(data) else {
            return false;
        };
        if m.transaction_id() != &self.tid || m.method() != Method::BINDING {
            return false;
        }
        if m.fingerprint_offset().is_some() && m.verify_fingerprint().is_err() {
            return true;
        }
        let ev = match m.class() {
            Class::Success => match m.xor_mapped_address().or_else(|| m.mapped_address()) {
                Some(Ok(a)) => BindingEvent::Mapped(a),
                _ => BindingEvent::Failed(ClientError::BadResponse("Binding")),
            },
            Class::Error => {
                let (code, reason) = m
                    .error_code()
                    .map_or((0, String::new()), |e| (e.code, e.reason.to_owned()));
                BindingEvent::Failed(ClientError::Refused {
                    method: "Binding",
                    code,
                    reason,
                })
            }
            _ => return false,
        };
        self.end(ev);
        true
    }

    /// The outcome, once.
    pub fn poll_event(&mut self) -> Option<BindingEvent> {
        self.event.take()
    }

    fn end(&mut self, ev: BindingEvent) {
        self.done = true;
        self.event = Some(ev);
    }
}
