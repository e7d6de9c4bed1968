//! One shard's thread: its backend, its sockets, its sans-IO server, its loop.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{Control, ShardCounters, ShardError};
use crate::io::{self, Backend, BackendKind, SendQueue, SocketId, Waker};
use crate::turn::server::{DropReason, Outcome, Server, ServerConfig};

/// Everything a shard thread is started with.
pub(super) struct Params {
    pub index: usize,
    pub core: Option<usize>,
    pub backend: BackendKind,
    pub io: io::Config,
    pub server: ServerConfig,
    pub sockets: Vec<UdpSocket>,
    pub control: Receiver<Control>,
    pub counters: Arc<ShardCounters>,
}

/// Longest sleep when nothing is scheduled, so counters stay fresh for observers.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Builds the shard's backend, reports readiness (with its waker) and runs the loop.
pub(super) fn run(
    mut p: Params,
    ready: Sender<Result<Waker, ShardError>>,
) -> Result<(), ShardError> {
    if let Some(core) = p.core
        && let Err(e) = io::pin_current_thread(core)
    {
        tracing::warn!(shard = p.index, core, "cannot pin shard thread: {e}");
    }
    let sockets = std::mem::take(&mut p.sockets);
    let mut backend = match setup(&p, sockets) {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(ShardError::Thread(p.index, msg));
        }
    };
    let _ = ready.send(Ok(backend.waker()));
    tracing::debug!(shard = p.index, core = ?p.core, "shard running");

    let mut server = Server::new(p.server.clone());
    let mut turns = 0u64;
    loop {
        let shutdown = match p.control.try_recv() {
            Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => true,
            Err(TryRecvError::Empty) => false,
        };
        // On shutdown, one last non-blocking turn answers what already arrived.
        let timeout = if shutdown { Duration::ZERO } else { IDLE_TICK };
        backend.poll(Some(timeout), &mut |sendq, sock, from, data| {
            answer(&mut server, sendq, sock, from, data)
        })?;
        backend.flush()?;
        turns += 1;
        p.counters.publish(server.stats(), &backend.stats(), turns);
        if shutdown {
            break;
        }
    }
    tracing::debug!(shard = p.index, "shard stopped");
    Ok(())
}

/// The hot path: the answer is written straight into a send slot, no copy, no allocation.
#[inline]
fn answer(
    server: &mut Server,
    sendq: &mut SendQueue,
    sock: SocketId,
    from: std::net::SocketAddr,
    data: &mut [u8],
) {
    match sendq.slot() {
        Some(slot) => {
            if let Outcome::Reply(n) = server.handle(from, data, slot) {
                sendq.commit(sock, from, n);
            }
        }
        None => server.note_drop(DropReason::NoRoom),
    }
}

fn setup(p: &Params, sockets: Vec<UdpSocket>) -> Result<Backend, ShardError> {
    let mut backend = Backend::new(p.backend, &p.io)?;
    for s in sockets {
        backend.add_socket(s)?;
    }
    Ok(backend)
}
