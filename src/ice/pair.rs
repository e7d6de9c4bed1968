//! Candidate pairs (RFC 8445 §6.1.2): priority, state, and the one STUN transaction a pair
//! has in flight.

use std::time::{Duration, Instant};

use crate::stun::TransactionId;

/// Pair state (RFC 8445 §6.1.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairState {
    /// Waiting for a pair of the same foundation to succeed.
    Frozen,
    /// Ready to be checked.
    Waiting,
    /// A check is in flight.
    InProgress,
    /// A check succeeded: the pair is valid.
    Succeeded,
    /// Checks failed.
    Failed,
}

/// Pair priority (RFC 8445 §6.1.2.3) from the controlling (`g`) and controlled (`d`)
/// candidate priorities: `2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)`.
pub const fn pair_priority(g: u32, d: u32) -> u64 {
    let (min, max) = if g < d { (g, d) } else { (d, g) };
    ((min as u64) << 32) + 2 * (max as u64) + (g > d) as u64
}

/// Why a transaction is in flight on a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// An ordinary or triggered check.
    Check,
    /// A check carrying USE-CANDIDATE (controlling agent).
    Nominate,
    /// A keepalive / consent check on the selected pair (not retransmitted).
    Consent,
}

/// The in-flight transaction of a pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transaction {
    pub tid: TransactionId,
    pub purpose: Purpose,
    /// Requests sent so far (the first included).
    pub sent: u8,
    pub last_sent: Instant,
    pub next_retransmit: Instant,
    pub rto: Duration,
    /// The request is built but not yet handed to `poll_transmit`.
    pub queued: bool,
}

impl Transaction {
    /// Marks the request sent again at `now` as the `sent`-th request, to be retransmitted
    /// `rto` later unless answered; the caller queues it.
    pub(crate) fn resend(&mut self, now: Instant, sent: u8, rto: Duration) {
        self.sent = sent;
        self.rto = rto;
        self.last_sent = now;
        self.next_retransmit = now + rto;
        self.queued = true;
    }
}

/// A candidate pair, by index into the agent's candidate lists.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub local: u16,
    pub remote: u16,
    pub priority: u64,
    pub state: PairState,
    /// Hash of local and remote foundation (the pair foundation, §6.1.2.6).
    pub foundation: u64,
    pub txn: Option<Transaction>,
    /// Controlled: the peer sent USE-CANDIDATE before our check succeeded; the value is the
    /// NOMINATION (or 0).
    pub nominate_on_success: Option<u32>,
    /// A STUN request or response authenticated on this 5-tuple: data may flow.
    pub authenticated: bool,
    /// Last round-trip time measured on a check.
    pub rtt: Option<Duration>,
    /// Last time a valid STUN response arrived on this pair.
    pub last_response: Option<Instant>,
    /// The local candidate of the valid pair this check produced: the one whose address
    /// is the mapped address of the last success response (RFC 8445 §7.2.5.3.2), e.g. the
    /// srflx candidate when the check left through a NAT. `u16::MAX` until then.
    pub valid_local: u16,
}

impl Pair {
    pub(crate) fn new(local: u16, remote: u16, priority: u64, foundation: u64) -> Self {
        Pair {
            local,
            remote,
            priority,
            state: PairState::Frozen,
            foundation,
            txn: None,
            nominate_on_success: None,
            authenticated: false,
            rtt: None,
            last_response: None,
            valid_local: u16::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_formula() {
        // RFC 8445 §6.1.2.3 is symmetric up to the tie bit.
        let a = pair_priority(2_130_706_431, 1_694_498_815);
        let b = pair_priority(1_694_498_815, 2_130_706_431);
        assert_eq!(a, b + 1);
        assert_eq!(a >> 32, 1_694_498_815);
    }
}
