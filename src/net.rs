//! Shared vocabulary between the sans-IO layers and the runtime.

use std::net::SocketAddr;

/// Transport protocol of a 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP datagrams.
    Udp,
    /// TCP stream (RFC 4571 / RFC 8656 §12.5 framing above it).
    Tcp,
}

/// A datagram a sans-IO object wants sent. The payload has already been written into the
/// caller-owned buffer passed to `poll_transmit`; `size` says how much of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Local address to send from (selects the socket).
    pub source: SocketAddr,
    /// Where to send.
    pub destination: SocketAddr,
    /// Number of payload bytes written at the start of the buffer.
    pub size: usize,
}

/// A received datagram as a sans-IO object sees it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Where it came from.
    pub source: SocketAddr,
    /// Local address it arrived on.
    pub destination: SocketAddr,
    /// Payload, borrowed from the runtime's receive buffer.
    pub contents: &'a [u8],
}
