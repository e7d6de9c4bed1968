//! Continual gathering (pion: `ContinualGatheringPolicy::GatherContinually`): one thread
//! per engine, started by the first agent that asks, reads the interface addresses every
//! few seconds and tells each watching agent's shard what appeared (a dedicated socket and
//! a host candidate, `IceCmd::Gather`; the shard asks the agent's STUN/TURN servers again
//! from it) and what went away (`IceCmd::RemoveLocal`: the
//! agent's candidates on it are removed and its socket closed). Off the data path: a mutex
//! and a sleeping thread are fine here.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::AgentOptions;
use super::agent::{Handle, bind_dedicated, host_candidate};
use super::engine::Inner;
use crate::shard::IceCmd;
use crate::shard::gather::{InterfaceAddr, usable};

/// One agent whose interfaces are watched.
pub(crate) struct Watch {
    pub handle: Weak<Handle>,
    pub opts: AgentOptions,
    pub range: Option<(u16, u16)>,
    /// Local addresses of the agent's dedicated sockets.
    pub bases: Vec<SocketAddr>,
    pub next: Instant,
}

/// The engine's watch list and its thread.
#[derive(Default)]
pub(crate) struct NetMon {
    watches: Mutex<Vec<Watch>>,
    started: AtomicBool,
}

impl std::fmt::Debug for NetMon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetMon")
            .field("started", &self.started.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl NetMon {
    /// Starts watching for one agent (and the thread, the first time).
    pub fn watch(&self, inner: &Arc<Inner>, w: Watch) {
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
        if !self.started.swap(true, Relaxed) {
            let weak = Arc::downgrade(inner);
            let spawned = std::thread::Builder::new()
                .name("icering-netmon".into())
                .spawn(move || run(weak));
            if let Err(e) = spawned {
                tracing::warn!("continual gathering: cannot start its thread: {e}");
                self.started.store(false, Relaxed);
            }
        }
    }

    /// Updates every watch that is due; how long until the next one is.
    fn tick(&self, inner: &Inner) -> Option<Duration> {
        let now = Instant::now();
        let mut ws = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        ws.retain(|w| w.handle.strong_count() > 0);
        if ws.iter().any(|w| w.next <= now) {
            match inner.interface_addrs() {
                Ok(list) => {
                    for w in ws.iter_mut().filter(|w| w.next <= now) {
                        update(w, &list);
                        w.next = now + w.opts.network_monitor_interval;
                    }
                }
                Err(e) => tracing::warn!("continual gathering: cannot read the interfaces: {e}"),
            }
        }
        ws.iter()
            .map(|w| w.next.saturating_duration_since(now))
            .min()
    }
}

/// The thread: runs while the engine lives.
fn run(inner: Weak<Inner>) {
    loop {
        let Some(engine) = inner.upgrade() else {
            return;
        };
        let wait = engine.netmon.tick(&engine);
        drop(engine);
        let wait = wait.unwrap_or(Duration::from_millis(500));
        std::thread::sleep(wait.clamp(Duration::from_millis(10), Duration::from_secs(1)));
    }
}

/// One agent against the current interface list.
fn update(w: &mut Watch, list: &[InterfaceAddr]) {
    let Some(handle) = w.handle.upgrade() else {
        return;
    };
    let o = &w.opts;
    let want: Vec<IpAddr> = list
        .iter()
        .filter(|a| usable(a.ip, o.include_loopback) && o.allows(Some(&a.name), a.ip))
        .map(|a| a.ip)
        .collect();
    let gone: Vec<SocketAddr> = w
        .bases
        .iter()
        .copied()
        .filter(|b| !want.contains(&b.ip()))
        .collect();
    for base in gone {
        tracing::info!(%base, "continual gathering: address gone");
        let _ = handle.send(IceCmd::RemoveLocal {
            key: handle.key,
            base,
        });
        w.bases.retain(|b| *b != base);
    }
    for ip in want {
        if w.bases.iter().any(|b| b.ip() == ip) {
            continue;
        }
        let sock = match bind_dedicated(ip, w.range) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%ip, "continual gathering: {e}");
                continue;
            }
        };
        let Ok(base) = sock.local_addr() else {
            continue;
        };
        tracing::info!(%base, "continual gathering: new address");
        let sent = handle.send(IceCmd::Gather {
            key: handle.key,
            sockets: vec![(sock, base)],
            candidates: vec![host_candidate(o, base)],
            servers: Vec::new(),
            types: o.candidate_types,
            seed: 0,
            continual: true,
        });
        if sent.is_ok() {
            w.bases.push(base);
        }
    }
}
