//! STUN client transactions: retransmission timers (RFC 8489 §6.2.1, §6.2.2) and
//! transaction ids, shared by the TURN client and the Binding client.

use std::time::{Duration, Instant};

/// Retransmission settings (RFC 8489 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    /// Initial RTO (RFC 8489: 500 ms; it doubles after each send).
    pub rto: Duration,
    /// Total requests sent over UDP before giving up (Rc, RFC 8489: 7).
    pub max_sends: u32,
    /// After the last request, wait this many initial RTOs for an answer (Rm, RFC 8489:
    /// 16).
    pub last_wait: u32,
    /// Over TCP nothing is retransmitted; the transaction times out after this
    /// (Ti, RFC 8489 §6.2.2: 39.5 s).
    pub reliable_timeout: Duration,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            rto: Duration::from_millis(500),
            max_sends: 7,
            last_wait: 16,
            reliable_timeout: Duration::from_millis(39_500),
        }
    }
}

/// What a transaction timer asks for at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing yet.
    No,
    /// (Re)send the request.
    Send,
    /// No answer in time: the transaction failed.
    TimedOut,
}

/// The timer of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    sends: u32,
    next: Instant,
    interval: Duration,
}

impl Timer {
    /// A timer whose first send is due at `now`.
    pub(crate) fn new(now: Instant, cfg: &Retransmit) -> Self {
        Timer {
            sends: 0,
            next: now,
            interval: cfg.rto,
        }
    }

    /// When the timer next fires.
    pub(crate) fn deadline(&self) -> Instant {
        self.next
    }

    /// Requests sent so far.
    pub(crate) fn sends(&self) -> u32 {
        self.sends
    }

    /// What to do at `now`.
    pub(crate) fn due(&self, now: Instant, cfg: &Retransmit, reliable: bool) -> Due {
        if now < self.next {
            Due::No
        } else if self.sends == 0 || (!reliable && self.sends < cfg.max_sends) {
            Due::Send
        } else {
            Due::TimedOut
        }
    }

    /// Records a send at `now` and arms the next retransmission or the final timeout.
    pub(crate) fn sent(&mut self, now: Instant, cfg: &Retransmit, reliable: bool) {
        self.sends += 1;
        if reliable {
            self.next = now + cfg.reliable_timeout;
        } else if self.sends >= cfg.max_sends {
            self.next = now + cfg.rto * cfg.last_wait;
        } else {
            self.next = now + self.interval;
            self.interval *= 2;
        }
    }
}

/// SplitMix64 for transaction ids (RFC 8489 §5 asks for uniform randomness; the caller
/// seeds it from the OS, tests from a constant).
#[derive(Debug, Clone)]
pub(crate) struct TidSource(u64);

impl TidSource {
    pub(crate) fn new(seed: u64) -> Self {
        TidSource(seed ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn next_tid(&mut self) -> crate::stun::TransactionId {
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        t[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..4]);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8489 §6.2.1's example: with RTO 500 ms, requests at 0, 500, 1500, 3500, 7500,
    /// 15500 and 31500 ms, failure at 39500 ms.
    #[test]
    fn udp_schedule_matches_rfc_8489_example() {
        let cfg = Retransmit::default();
        let t0 = Instant::now();
        let mut t = Timer::new(t0, &cfg);
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            match t.due(now, &cfg, false) {
                Due::Send => {
                    sends.push((now - t0).as_millis());
                    t.sent(now, &cfg, false);
                }
                Due::TimedOut => break,
                Due::No => now = t.deadline(),
            }
        }
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!((now - t0).as_millis(), 39500);
    }

    #[test]
    fn reliable_sends_once_then_times_out_after_ti() {
        let cfg = Retransmit::default();
        let t0 = Instant::now();
        let mut t = Timer::new(t0, &cfg);
        assert_eq!(t.due(t0, &cfg, true), Due::Send);
        t.sent(t0, &cfg, true);
        assert_eq!(t.due(t0 + Duration::from_secs(39), &cfg, true), Due::No);
        assert_eq!(t.due(t.deadline(), &cfg, true), Due::TimedOut);
        assert_eq!(t.deadline() - t0, Duration::from_millis(39_500));
        assert_eq!(t.sends(), 1);
    }
}
