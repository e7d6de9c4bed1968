//! The baseline: the same pairs load on webrtc-rs's `webrtc-ice` crate (tokio).
//!
//! Each pair: two `Agent`s (controlled side on one `UDPMuxDefault` per worker, or an
//! ephemeral socket), host candidates on 127.0.0.1 only (mDNS off), gathering, candidate
//! lines exchanged in memory through `marshal`/`unmarshal_candidate`, then `dial` and
//! `accept` together. Latency runs from the first `Agent::new` to both returning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::Candidate;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::mdns::MulticastDnsMode;
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::state::ConnectionState;
use webrtc_ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc_ice::udp_network::UDPNetwork;

use super::{Args, Counts, Load, Setup, Sockets, add_failure, histogram};

/// Two agents and whether each is Connected now (kept by the state callbacks).
type Pair = (Arc<Agent>, Arc<Agent>, Arc<AtomicBool>, Arc<AtomicBool>);

/// webrtc-ice pairs in one worker.
pub struct Pairs {
    rt: tokio::runtime::Runtime,
    mux: Option<Arc<UDPMuxDefault>>,
    concurrency: usize,
    timeout: Duration,
    pairs: Vec<Pair>,
}

impl Pairs {
    pub fn new(args: &Args) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mux = match args.sockets {
            Sockets::MuxDedicated => Some(rt.block_on(async {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(UDPMuxDefault::new(UDPMuxParams::new(sock)))
            })?),
            Sockets::Dedicated => None,
        };
        Ok(Pairs {
            rt,
            mux,
            concurrency: args.concurrency,
            timeout: Duration::from_secs_f64(args.timeout),
            pairs: Vec::new(),
        })
    }
}

fn config(controlling: bool, mux: Option<&Arc<UDPMuxDefault>>) -> AgentConfig {
    AgentConfig {
        network_types: vec![NetworkType::Udp4],
        udp_network: match mux {
            Some(m) => UDPNetwork::Muxed(m.clone()),
            None => UDPNetwork::Ephemeral(Default::default()),
        },
        multicast_dns_mode: MulticastDnsMode::Disabled,
        include_loopback: true,
        ip_filter: Arc::new(Some(Box::new(|ip: std::net::IpAddr| ip.is_loopback()))),
        is_controlling: controlling,
        ..Default::default()
    }
}

/// Gathers and returns the candidate lines once gathering is complete.
async fn gather(agent: &Agent) -> Result<Vec<String>, String> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    agent.on_candidate(Box::new(move |c| {
        if c.is_none() {
            let _ = tx.try_send(());
        }
        Box::pin(async {})
    }));
    agent
        .gather_candidates()
        .map_err(|e| format!("gather: {e}"))?;
    rx.recv().await.ok_or("gather: no end")?;
    let cands = agent
        .get_local_candidates()
        .await
        .map_err(|e| format!("candidates: {e}"))?;
    Ok(cands.iter().map(|c| c.marshal()).collect())
}

/// Keeps `up` true while the agent is Connected.
fn watch(agent: &Agent) -> Arc<AtomicBool> {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    agent.on_connection_state_change(Box::new(move |s| {
        flag.store(s == ConnectionState::Connected, Relaxed);
        Box::pin(async {})
    }));
    up
}

async fn one_pair(mux: Option<Arc<UDPMuxDefault>>) -> Result<Pair, String> {
    let a = Arc::new(
        Agent::new(config(true, None))
            .await
            .map_err(|e| format!("agent: {e}"))?,
    );
    let b = Arc::new(
        Agent::new(config(false, mux.as_ref()))
            .await
            .map_err(|e| format!("agent: {e}"))?,
    );
    let (up_a, up_b) = (watch(&a), watch(&b));
    let (ca, cb) = tokio::join!(gather(&a), gather(&b));
    let (ca, cb) = (ca?, cb?);
    for (to, lines) in [(&b, &ca), (&a, &cb)] {
        for l in lines {
            let c = unmarshal_candidate(l).map_err(|e| format!("unmarshal: {e}"))?;
            let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
            to.add_remote_candidate(&c)
                .map_err(|e| format!("add candidate: {e}"))?;
        }
    }
    let (ua, pa) = a.get_local_user_credentials().await;
    let (ub, pb) = b.get_local_user_credentials().await;
    let (_ca_tx, ca_rx) = mpsc::channel(1);
    let (_cb_tx, cb_rx) = mpsc::channel(1);
    let (da, db) = tokio::join!(a.dial(ca_rx, ub, pb), b.accept(cb_rx, ua, pa));
    da.map_err(|e| format!("dial: {e}"))?;
    db.map_err(|e| format!("accept: {e}"))?;
    Ok((a, b, up_a, up_b))
}

impl Load for Pairs {
    fn connect(&mut self, n: usize, counts: &Counts) -> Setup {
        let sem = Arc::new(Semaphore::new(self.concurrency));
        let timeout = self.timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mux = self.mux.clone();
        let mut setup = Setup {
            latency_us: histogram(),
            failures: Default::default(),
            connected: 0,
        };
        let pairs = &mut self.pairs;
        self.rt.block_on(async {
            for _ in 0..n {
                let permit = sem.clone().acquire_owned().await.expect("open semaphore");
                let tx = tx.clone();
                let mux = mux.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = match tokio::time::timeout(timeout, one_pair(mux)).await {
                        Ok(r) => r,
                        Err(_) => Err("timeout".to_string()),
                    };
                    drop(permit);
                    let _ = tx.send((r, t0.elapsed()));
                });
                while let Ok(r) = rx.try_recv() {
                    tally(r, &mut setup, pairs, counts);
                }
            }
            drop(tx);
            while let Some(r) = rx.recv().await {
                tally(r, &mut setup, pairs, counts);
            }
        });
        setup
    }

    fn alive(&mut self) -> u64 {
        self.pairs
            .iter()
            .filter(|(_, _, a, b)| a.load(Relaxed) && b.load(Relaxed))
            .count() as u64
    }

    fn agents_per_connection(&self) -> u64 {
        2
    }

    fn close(&mut self) {
        let pairs = std::mem::take(&mut self.pairs);
        self.rt.block_on(async {
            for (a, b, _, _) in pairs {
                let _ = a.close().await;
                let _ = b.close().await;
            }
        });
    }
}

fn tally(
    (r, took): (Result<Pair, String>, Duration),
    setup: &mut Setup,
    pairs: &mut Vec<Pair>,
    counts: &Counts,
) {
    match r {
        Ok(p) => {
            pairs.push(p);
            setup.connected += 1;
            let _ = setup.latency_us.record(took.as_micros().max(1) as u64);
            counts.ok.fetch_add(1, Relaxed);
        }
        Err(e) => {
            add_failure(&mut setup.failures, e);
            counts.failed.fetch_add(1, Relaxed);
        }
    }
}
