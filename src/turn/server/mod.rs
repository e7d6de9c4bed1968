//! The sans-IO STUN/TURN server a shard drives for every datagram on a listening socket.
//!
//! Today it answers STUN Binding requests (RFC 8489 §6.3); the TURN relay methods of
//! RFC 8656 are added here as well, so one server object owns one listening port's
//! protocol state.

mod binding;

use std::net::SocketAddr;

use crate::stun::{self, Class, Message, Method, PacketKind};

/// Why a datagram got no answer. Each reason has its own counter in [`ServerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a STUN message, or a STUN message that fails the checked parse.
    Malformed,
    /// A FINGERPRINT is present and wrong (RFC 8489 §7.3).
    BadFingerprint,
    /// A response or indication: a server answers only requests.
    NotRequest,
    /// ChannelData, DTLS, RTP or unknown first byte on a STUN port.
    NotStun,
    /// The output buffer could not hold the answer.
    NoRoom,
}

/// Per-server counters (per shard, since each shard owns its server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams handled.
    pub received: u64,
    /// Success responses sent.
    pub answered: u64,
    /// Error responses sent (400, 420, ...).
    pub errors_sent: u64,
    /// Dropped: malformed.
    pub dropped_malformed: u64,
    /// Dropped: bad fingerprint.
    pub dropped_bad_fingerprint: u64,
    /// Dropped: not a request.
    pub dropped_not_request: u64,
    /// Dropped: not STUN.
    pub dropped_not_stun: u64,
    /// Dropped: no room for the answer.
    pub dropped_no_room: u64,
}

impl ServerStats {
    /// Adds another set of counters (to sum over shards).
    pub fn add(&mut self, o: &ServerStats) {
        self.received += o.received;
        self.answered += o.answered;
        self.errors_sent += o.errors_sent;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_bad_fingerprint += o.dropped_bad_fingerprint;
        self.dropped_not_request += o.dropped_not_request;
        self.dropped_not_stun += o.dropped_not_stun;
        self.dropped_no_room += o.dropped_no_room;
    }

    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_bad_fingerprint
            + self.dropped_not_request
            + self.dropped_not_stun
            + self.dropped_no_room
    }

    fn count_drop(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.dropped_malformed,
            DropReason::BadFingerprint => &mut self.dropped_bad_fingerprint,
            DropReason::NotRequest => &mut self.dropped_not_request,
            DropReason::NotStun => &mut self.dropped_not_stun,
            DropReason::NoRoom => &mut self.dropped_no_room,
        };
        *c += 1;
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the first `n` bytes of the output buffer back to the source.
    Reply(usize),
    /// Send nothing.
    Drop(DropReason),
}

/// Server settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// SOFTWARE attribute value for responses; empty omits it.
    pub software: String,
}

/// The sans-IO STUN/TURN server for one listening port.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    stats: ServerStats,
}

impl Server {
    /// A server with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            stats: ServerStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Counts a datagram the runtime dropped before it reached the server (e.g. no send
    /// slot free for the answer).
    pub fn note_drop(&mut self, reason: DropReason) {
        self.stats.received += 1;
        self.stats.count_drop(reason);
    }

    /// Handles one datagram from `source`, writing any answer into `out`.
    pub fn handle(&mut self, source: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Outcome {
        self.stats.received += 1;
        let outcome = self.dispatch(source, datagram, out);
        match outcome {
            Outcome::Reply(_) => {}
            Outcome::Drop(r) => self.stats.count_drop(r),
        }
        outcome
    }

    fn dispatch(&mut self, source: SocketAddr, datagram: &[u8], out: &mut [u8]) -> Outcome {
        if stun::classify(datagram) != PacketKind::Stun {
            return Outcome::Drop(DropReason::NotStun);
        }
        let Ok(msg) = Message::parse(datagram) else {
            return Outcome::Drop(DropReason::Malformed);
        };
        if msg.fingerprint_offset().is_some() && msg.verify_fingerprint().is_err() {
            return Outcome::Drop(DropReason::BadFingerprint);
        }
        if msg.class() != Class::Request {
            return Outcome::Drop(DropReason::NotRequest);
        }
        let software = self.config.software.as_str();
        let result = if msg.has_unknown_required() {
            binding::unknown_attributes(&msg, software, out)
        } else if msg.method() == Method::BINDING {
            binding::success(&msg, source, software, out)
        } else {
            binding::error(&msg, &stun::ErrorCode::BAD_REQUEST, software, out)
        };
        match result {
            Ok((n, is_error)) => {
                if is_error {
                    self.stats.errors_sent += 1;
                } else {
                    self.stats.answered += 1;
                }
                Outcome::Reply(n)
            }
            Err(_) => Outcome::Drop(DropReason::NoRoom),
        }
    }
}
