//! TURN (RFC 8656), sans-IO. [`server`] is the STUN/TURN server side that the shards drive;
//! it never opens a socket or reads a clock.

pub mod server;
