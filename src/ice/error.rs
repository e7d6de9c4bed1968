use thiserror::Error;

use crate::stun::StunError;

/// Everything the ICE agent can refuse. Untrusted datagrams never produce an error: they
/// are answered or dropped (see [`Handled`](super::Handled)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IceError {
    /// A candidate line or value is malformed (RFC 8839 §5.1).
    #[error("malformed candidate: {0}")]
    BadCandidate(&'static str),
    /// ufrag/pwd violate RFC 8445 §5.3 (ice-chars; ufrag ≥ 4, pwd ≥ 22 characters).
    #[error("invalid credentials: {0}")]
    BadCredentials(&'static str),
    /// Something valid that this agent does not implement (e.g. mDNS host names).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A configured limit (candidates, pairs) is reached.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The agent was closed.
    #[error("agent is closed")]
    Closed,
    /// A STUN message could not be written.
    #[error("stun: {0}")]
    Stun(#[from] StunError),
}
