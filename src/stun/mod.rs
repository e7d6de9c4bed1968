//! STUN wire codec.
