//! An agent's event queue, shard → application: candidates, state changes, the selected
//! pair, gathering errors — a handful per agent's life, off the data path.
//!
//! A tokio unbounded channel allocates its first 32-slot block and its cache-padded
//! state up front, ~2 KB per agent whether or not an event is ever read; this queue is a
//! mutex-guarded `VecDeque` that allocates only for events waiting (~80 B empty). The
//! lock is held for a push or a pop, and only events take it (data goes through the
//! connection's lock-free queue).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::AgentEvent;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<AgentEvent>,
    waker: Option<Waker>,
    /// The sending side (the shard's hosting of the agent) is gone.
    closed: bool,
    /// The receiving side is gone: events are dropped instead of queued.
    deaf: bool,
}

#[derive(Debug, Default)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiving end: an agent's events, in order ([`Agent::take_events`]).
///
/// [`Agent::take_events`]: super::Agent::take_events
#[derive(Debug)]
pub struct Events {
    shared: Arc<Shared>,
}

/// The sending end, kept by the shard with the agent.
#[derive(Debug)]
pub(crate) struct EventSender {
    shared: Arc<Shared>,
}

/// A new queue.
pub(crate) fn queue() -> (EventSender, Events) {
    let shared = Arc::new(Shared::default());
    (
        EventSender {
            shared: shared.clone(),
        },
        Events { shared },
    )
}

impl Events {
    /// The next event; `None` once the agent is gone and every event was read.
    pub async fn recv(&mut self) -> Option<AgentEvent> {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if let Some(ev) = s.items.pop_front() {
                return Poll::Ready(Some(ev));
            }
            if s.closed {
                return Poll::Ready(None);
            }
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<AgentEvent> {
        self.shared.lock().items.pop_front()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.deaf = true;
        s.items = VecDeque::new();
    }
}

impl EventSender {
    /// Queues `ev` (dropped if the application no longer listens).
    pub fn send(&self, ev: AgentEvent) {
        let waker = {
            let mut s = self.shared.lock();
            if s.deaf {
                return;
            }
            s.items.push_back(ev);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ice::ConnectionState;

    #[test]
    fn delivers_in_order_then_ends_when_the_sender_goes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = queue();
            let waiter = tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(AgentEvent::State(s)) = rx.recv().await {
                    got.push(s);
                }
                got
            });
            tokio::task::yield_now().await; // the receiver is waiting now
            tx.send(AgentEvent::State(ConnectionState::Checking));
            tx.send(AgentEvent::State(ConnectionState::Connected));
            drop(tx);
            assert_eq!(
                waiter.await.unwrap(),
                [ConnectionState::Checking, ConnectionState::Connected]
            );
        });
    }

    #[test]
    fn a_gone_receiver_stops_the_queue_growing() {
        let (tx, rx) = queue();
        tx.send(AgentEvent::State(ConnectionState::Checking));
        drop(rx);
        tx.send(AgentEvent::State(ConnectionState::Connected));
        assert!(tx.shared.lock().items.is_empty());
    }
}
