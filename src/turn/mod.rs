//! TURN (RFC 8656), sans-IO, both sides. [`server`] is the STUN/TURN server the shards
//! drive; [`client`] is the TURN client that allocates relayed candidates (and the STUN
//! Binding client that discovers server-reflexive ones). Neither opens a socket or reads
//! a clock: `now` is passed in, output is polled into caller buffers.

pub mod client;
pub mod server;
