//! The worker → parent reports (one JSON object per line) and the histogram encoding.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// After the setup phase.
#[derive(Serialize, Deserialize)]
pub struct Connected {
    /// Connections up.
    pub connected: u64,
    /// Agents in this process that belong to them.
    pub agents: u64,
    /// Failed setups by reason.
    pub failures: BTreeMap<String, u64>,
    /// Wall time of the setup phase.
    pub elapsed_s: f64,
    /// This process's CPU time over the setup phase.
    pub cpu_s: f64,
    /// VmRSS before the first setup (bytes).
    pub rss_before: u64,
    /// VmRSS once all setups finished (bytes).
    pub rss_connected: u64,
    /// Setup latencies, microseconds: (value, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
}

/// After the hold phase.
#[derive(Serialize, Deserialize)]
pub struct Held {
    /// Wall time held.
    pub held_s: f64,
    /// This process's CPU time over the hold.
    pub cpu_s: f64,
    /// Highest VmRSS sampled during the hold (bytes).
    pub rss_max: u64,
    /// VmRSS at the end of the hold (bytes).
    pub rss_end: u64,
    /// Connections still connected at the end.
    pub alive: u64,
}

/// A histogram as (value, count) pairs.
pub fn encode(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs into `h`.
pub fn decode_into(pairs: &[(u64, u64)], h: &mut Histogram<u64>) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.max(1), n);
    }
}
