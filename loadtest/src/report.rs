//! Results shared by the load generators: counts, an HDR latency histogram, the server's
//! CPU time (from /proc/PID/stat) and the human/JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The io backend `--io` names (`auto` picks io_uring when the kernel allows it), said on
/// stderr unless the output is JSON.
pub fn backend(io: &str, json: bool) -> Result<icering::io::BackendKind, String> {
    let choice: icering::io::BackendChoice = io
        .parse()
        .map_err(|e: icering::io::IoError| e.to_string())?;
    let (kind, why) = icering::io::select_backend(choice).map_err(|e| e.to_string())?;
    if !json {
        eprintln!("{why}");
    }
    Ok(kind)
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn process_cpu(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let parse = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "malformed /proc stat".into())
    };
    let ticks = parse(11)? + parse(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Per-thread tallies, merged at the end.
pub struct Tally {
    pub sent: u64,
    pub answered: u64,
    pub invalid: u64,
    pub late_or_duplicate: u64,
    pub lost: u64,
    pub send_failed: u64,
    pub latency_us: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            sent: 0,
            answered: 0,
            invalid: 0,
            late_or_duplicate: 0,
            lost: 0,
            send_failed: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.invalid += o.invalid;
        self.late_or_duplicate += o.late_or_duplicate;
        self.lost += o.lost;
        self.send_failed += o.send_failed;
        self.latency_us.add(&o.latency_us).expect("same bounds");
    }
}

#[derive(Serialize)]
pub struct Report {
    pub target: String,
    pub mode: String,
    pub threads: usize,
    pub io_backend: String,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub answered_per_s: f64,
    pub invalid: u64,
    pub late_or_duplicate: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub send_failed: u64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub server_pid: Option<u32>,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_ns_per_answer: Option<f64>,
    /// `turn`: allocations (flows) that got no datagram back at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows_without_answer: Option<u64>,
    /// `turn`: datagrams the local echo peer could not send back (no free send slot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_echo_dropped: Option<u64>,
    /// `turn`: CPU time of the load generator itself (all its threads, the echo peer
    /// included) during the load, to show whether it or the server was the bottleneck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_cpu_s: Option<f64>,
    /// `turn`: datagrams that are not answers (not in `invalid`): from a source other than
    /// the target, or late STUN responses to retransmitted setup requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stray: Option<u64>,
    /// `turn`: allocations whose Refresh with LIFETIME 0 was not confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_deleted: Option<u64>,
}

impl Report {
    pub fn new(
        t: &Tally,
        elapsed: Duration,
        header: (String, String, usize, String),
        server: Option<(u32, Duration)>,
    ) -> Self {
        let (target, mode, threads, io_backend) = header;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = &t.latency_us;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        let resolved = t.answered + t.lost;
        Report {
            target,
            mode,
            threads,
            io_backend,
            duration_s: secs,
            sent: t.sent,
            answered: t.answered,
            answered_per_s: t.answered as f64 / secs,
            invalid: t.invalid,
            late_or_duplicate: t.late_or_duplicate,
            lost: t.lost,
            loss_pct: if resolved == 0 {
                0.0
            } else {
                100.0 * t.lost as f64 / resolved as f64
            },
            send_failed: t.send_failed,
            latency_us_p50: q(0.50),
            latency_us_p90: q(0.90),
            latency_us_p99: q(0.99),
            latency_us_p999: q(0.999),
            latency_us_max: if h.is_empty() { 0 } else { h.max() },
            server_pid: server.map(|(p, _)| p),
            server_cpu_s: server.map(|(_, c)| c.as_secs_f64()),
            server_cpu_ns_per_answer: server
                .map(|(_, c)| c.as_nanos() as f64 / (t.answered.max(1)) as f64),
            flows_without_answer: None,
            peer_echo_dropped: None,
            load_cpu_s: None,
            stray: None,
            not_deleted: None,
        }
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("serialisable"));
            return;
        }
        println!(
            "target          {} ({}, {} threads, io {})",
            self.target, self.mode, self.threads, self.io_backend
        );
        println!("duration        {:.2} s", self.duration_s);
        println!("sent            {}", self.sent);
        println!(
            "answered        {}  ({:.0}/s)",
            self.answered, self.answered_per_s
        );
        println!("lost            {}  ({:.3}%)", self.lost, self.loss_pct);
        println!("invalid         {}", self.invalid);
        println!("late/duplicate  {}", self.late_or_duplicate);
        println!("send failed     {}", self.send_failed);
        println!(
            "latency us      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.latency_us_p50,
            self.latency_us_p90,
            self.latency_us_p99,
            self.latency_us_p999,
            self.latency_us_max
        );
        if let (Some(pid), Some(cpu), Some(per)) = (
            self.server_pid,
            self.server_cpu_s,
            self.server_cpu_ns_per_answer,
        ) {
            println!("server pid {pid}  cpu {cpu:.3} s  = {per:.0} ns per answered request");
        }
    }
}
