//! Agent configuration: roles, credentials, pacing and timeouts.

use std::time::Duration;

/// Configuration of an [`IceAgent`](super::IceAgent). Defaults follow RFC 8445 and the
/// pion/ice defaults users know.
#[derive(Debug, Clone)]
pub struct IceConfig {
    /// Start as the controlling agent (§6.1.1). A lite agent is always controlled.
    pub controlling: bool,
    /// Be an ICE-lite agent (RFC 8445 §2.5): answer checks, never send them.
    pub lite: bool,
    /// Seed of the agent's PRNG (tie-breaker, generated credentials, transaction ids).
    pub seed: u64,
    /// Local ufrag; generated (8 ice-chars) when `None`.
    pub local_ufrag: Option<String>,
    /// Local password; generated (24 ice-chars) when `None`.
    pub local_pwd: Option<String>,
    /// Pacing interval Ta between new checks (§14.2). Default 50 ms.
    pub ta: Duration,
    /// Initial STUN retransmission timeout (§14.3). Default 500 ms, doubled per retry.
    pub rto: Duration,
    /// Upper bound of the doubled RTO. Default 3 s.
    pub max_rto: Duration,
    /// Binding requests per check before the pair fails (pion: 7).
    pub max_binding_requests: u8,
    /// How long the controlling agent waits after the first valid pair for a better one
    /// before nominating (unless no better pair can still succeed). Default 200 ms.
    pub nomination_delay: Duration,
    /// Put USE-CANDIDATE on every check (aggressive nomination, RFC 5245). Default off.
    pub aggressive_nomination: bool,
    /// Renominate (NOMINATION attribute) when a better pair becomes valid after the first
    /// nomination, e.g. after an ICE restart. Default on.
    pub renomination: bool,
    /// Keepalive/consent request interval on the selected pair. Default 2 s.
    pub keepalive_interval: Duration,
    /// Consent freshness check interval (RFC 7675 §5.1: randomized ±20 %, i.e. 4–6 s at
    /// the 5 s default). Checks are sent at the earlier of this and the keepalive.
    pub consent_interval: Duration,
    /// Consent is lost after this long without a response (RFC 7675: 30 s).
    pub consent_timeout: Duration,
    /// Disconnected after this long without receiving on the selected pair (pion: 5 s).
    pub disconnected_timeout: Duration,
    /// Failed after this long without receiving on the selected pair (pion: 25 s).
    pub failed_timeout: Duration,
    /// Maximum number of candidate pairs (§6.1.2.5). Default 100.
    pub max_pairs: usize,
    /// Maximum number of local or remote candidates. Default 64.
    pub max_candidates: usize,
    /// Written at the start of every transaction id the agent generates (the other 6 of
    /// the 12 bytes stay random), so a runtime hosting many agents on one port can route
    /// responses statelessly (icering's shards put shard u16 + slot u32 here). RFC 8489
    /// §5 asks for ids that are unpredictable to off-path attackers; 48 random bits plus
    /// MESSAGE-INTEGRITY on every response keep that. Default `None`: 96 random bits.
    pub tid_prefix: Option<[u8; 6]>,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig {
            controlling: false,
            lite: false,
            seed: 0,
            local_ufrag: None,
            local_pwd: None,
            ta: Duration::from_millis(50),
            rto: Duration::from_millis(500),
            max_rto: Duration::from_secs(3),
            max_binding_requests: 7,
            nomination_delay: Duration::from_millis(200),
            aggressive_nomination: false,
            renomination: true,
            keepalive_interval: Duration::from_secs(2),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            disconnected_timeout: Duration::from_secs(5),
            failed_timeout: Duration::from_secs(25),
            max_pairs: 100,
            max_candidates: 64,
            tid_prefix: None,
        }
    }
}

/// A timing kept in whole milliseconds (saturating at ~49 days): what an agent stores of
/// [`IceConfig`]'s `Duration`s, a quarter of their size, since 100k agents per shard each
/// hold a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ms(u32);

impl Ms {
    fn new(d: Duration) -> Self {
        Ms(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }

    #[inline]
    pub(crate) fn get(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

/// What an agent keeps of its [`IceConfig`] after construction (the credentials and
/// seed are consumed by then): 56 bytes instead of the config's 232.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub lite: bool,
    pub aggressive_nomination: bool,
    pub renomination: bool,
    pub max_binding_requests: u8,
    pub max_pairs: u16,
    pub max_candidates: u16,
    pub tid_prefix: Option<[u8; 6]>,
    pub ta: Ms,
    pub rto: Ms,
    pub max_rto: Ms,
    pub nomination_delay: Ms,
    pub keepalive_interval: Ms,
    pub consent_interval: Ms,
    pub consent_timeout: Ms,
    pub disconnected_timeout: Ms,
    pub failed_timeout: Ms,
}

impl From<&IceConfig> for Settings {
    fn from(c: &IceConfig) -> Self {
        let small = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Settings {
            lite: c.lite,
            aggressive_nomination: c.aggressive_nomination,
            renomination: c.renomination,
            max_binding_requests: c.max_binding_requests,
            max_pairs: small(c.max_pairs),
            max_candidates: small(c.max_candidates),
            tid_prefix: c.tid_prefix,
            ta: Ms::new(c.ta),
            rto: Ms::new(c.rto),
            max_rto: Ms::new(c.max_rto),
            nomination_delay: Ms::new(c.nomination_delay),
            keepalive_interval: Ms::new(c.keepalive_interval),
            consent_interval: Ms::new(c.consent_interval),
            consent_timeout: Ms::new(c.consent_timeout),
            disconnected_timeout: Ms::new(c.disconnected_timeout),
            failed_timeout: Ms::new(c.failed_timeout),
        }
    }
}
