//! Per-shard counters, published by the shard once per loop turn (relaxed stores, no lock,
//! nothing per packet) and read by anyone holding the `Arc`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::io::IoStats;
use crate::turn::server::ServerStats;

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// Counters of one shard: server outcomes and io events.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $(
                #[allow(missing_docs)]
                pub $field: AtomicU64,
            )*
        }
    };
}

counters!(
    received,
    answered,
    errors_sent,
    dropped_malformed,
    dropped_bad_fingerprint,
    dropped_not_request,
    dropped_not_stun,
    dropped_no_room,
    io_sent,
    io_send_errors,
    io_recv_errors,
    io_rearms,
    io_enobufs,
    io_truncated,
    loop_turns,
);

impl ShardCounters {
    pub(crate) fn publish(&self, s: &ServerStats, io: &IoStats, turns: u64) {
        self.received.store(s.received, Relaxed);
        self.answered.store(s.answered, Relaxed);
        self.errors_sent.store(s.errors_sent, Relaxed);
        self.dropped_malformed.store(s.dropped_malformed, Relaxed);
        self.dropped_bad_fingerprint
            .store(s.dropped_bad_fingerprint, Relaxed);
        self.dropped_not_request
            .store(s.dropped_not_request, Relaxed);
        self.dropped_not_stun.store(s.dropped_not_stun, Relaxed);
        self.dropped_no_room.store(s.dropped_no_room, Relaxed);
        self.io_sent.store(io.sent, Relaxed);
        self.io_send_errors.store(io.send_errors, Relaxed);
        self.io_recv_errors.store(io.recv_errors, Relaxed);
        self.io_rearms.store(io.rearms, Relaxed);
        self.io_enobufs.store(io.enobufs, Relaxed);
        self.io_truncated.store(io.truncated, Relaxed);
        self.loop_turns.store(turns, Relaxed);
    }

    /// The server counters as last published.
    pub fn server(&self) -> ServerStats {
        ServerStats {
            received: self.received.load(Relaxed),
            answered: self.answered.load(Relaxed),
            errors_sent: self.errors_sent.load(Relaxed),
            dropped_malformed: self.dropped_malformed.load(Relaxed),
            dropped_bad_fingerprint: self.dropped_bad_fingerprint.load(Relaxed),
            dropped_not_request: self.dropped_not_request.load(Relaxed),
            dropped_not_stun: self.dropped_not_stun.load(Relaxed),
            dropped_no_room: self.dropped_no_room.load(Relaxed),
        }
    }
}
