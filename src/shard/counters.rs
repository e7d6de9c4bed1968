//! Per-shard counters, published by the shard once per loop turn (relaxed stores, no lock,
//! nothing per packet) and read by anyone holding the `Arc`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::ice::IceCounters;
use crate::io::IoStats;
use crate::turn::server::ServerStats;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident),* $(,)?) => {
        /// Counters of one shard: server outcomes (every [`ServerStats`] field, by name),
        /// hosted ICE agents ([`IceCounters`]) and io events.
        #[derive(Debug)]
        pub struct ShardCounters {
            server: Box<[AtomicU64]>,
            /// Hosted ICE agents: gauges, handoffs, drops by reason.
            pub ice: IceCounters,
            $(
                $(#[doc = $doc])*
                pub $field: AtomicU64,
            )*
        }

        impl ShardCounters {
            /// The shard's own counters (not the server's or ICE's) by name, with their
            /// doc comments, as last published.
            pub fn own_fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($field), concat!($($doc),*), self.$field.load(Relaxed))),*]
            }
        }

        impl Default for ShardCounters {
            fn default() -> Self {
                let n = ServerStats::COUNT;
                ShardCounters {
                    server: (0..n).map(|_| AtomicU64::new(0)).collect(),
                    ice: IceCounters::default(),
                    $($field: AtomicU64::new(0),)*
                }
            }
        }
    };
}

counters!(
    /// Datagrams the kernel accepted for sending.
    io_sent,
    /// Sends that failed (the datagram is dropped).
    io_send_errors,
    /// Receive errors (other than ENOBUFS or cancellation).
    io_recv_errors,
    /// Times a multishot receive had to be re-armed (io_uring).
    io_rearms,
    /// Times the provided-buffer ring ran dry (io_uring ENOBUFS).
    io_enobufs,
    /// Datagrams dropped because they did not fit a receive buffer.
    io_truncated,
    /// Sends carrying several datagrams as UDP GSO segments.
    io_gso_sends,
    /// Datagrams sent inside GSO sends.
    io_gso_segments,
    /// Receives carrying several datagrams (UDP GRO).
    io_gro_receives,
    /// Datagrams received inside GRO receives.
    io_gro_segments,
    /// Receive buffers lent to applications.
    io_lends,
    /// Lent receive buffers given back.
    io_lend_returns,
    /// Lends refused (the cap of lent buffers reached): data copied instead.
    io_lend_refused,
    /// Start of the receive buffers' address range (not a metric).
    recv_region_start,
    /// End of the receive buffers' address range (not a metric).
    recv_region_end,
    /// Loop turns of the shard.
    loop_turns,
    /// Shared-port relay sockets open now.
    relay_port_sockets,
    /// STUN/TURN TCP and TLS connections accepted.
    tcp_accepted,
    /// TCP and TLS connections refused at accept (`server.max_tcp_connections` reached).
    tcp_refused,
    /// STUN/TURN TCP and TLS connections open now.
    tcp_open,
    /// Connections closed because their unsent bytes passed the backlog bound.
    tcp_backlog_overflows,
    /// Connections closed holding no allocation at their check
    /// (`server.max_allocate_timeout`).
    tcp_no_allocation_closed,
);

impl ShardCounters {
    pub(crate) fn publish(&self, s: &ServerStats, io: &IoStats, turns: u64) {
        for (slot, (_, v)) in self.server.iter().zip(s.fields()) {
            slot.store(v, Relaxed);
        }
        self.io_sent.store(io.sent, Relaxed);
        self.io_send_errors.store(io.send_errors, Relaxed);
        self.io_recv_errors.store(io.recv_errors, Relaxed);
        self.io_rearms.store(io.rearms, Relaxed);
        self.io_enobufs.store(io.enobufs, Relaxed);
        self.io_truncated.store(io.truncated, Relaxed);
        self.io_gso_sends.store(io.gso_sends, Relaxed);
        self.io_gso_segments.store(io.gso_segments, Relaxed);
        self.io_gro_receives.store(io.gro_receives, Relaxed);
        self.io_gro_segments.store(io.gro_segments, Relaxed);
        self.io_lends.store(io.lends, Relaxed);
        self.io_lend_returns.store(io.lend_returns, Relaxed);
        self.io_lend_refused.store(io.lend_refused, Relaxed);
        self.loop_turns.store(turns, Relaxed);
    }

    /// The STUN/TURN TCP/TLS streams' counters: accepts, refusals (full set), open now,
    /// closes for a full write backlog, and closes by the allocation check
    /// (`[server] max_allocate_timeout`).
    pub(crate) fn publish_tcp(&self, s: &crate::io::StreamStats, open: usize, no_alloc: u64) {
        self.tcp_accepted.store(s.accepted, Relaxed);
        self.tcp_refused.store(s.refused, Relaxed);
        self.tcp_open.store(open as u64, Relaxed);
        self.tcp_backlog_overflows
            .store(s.backlog_overflows, Relaxed);
        self.tcp_no_allocation_closed.store(no_alloc, Relaxed);
    }

    /// Where the shard's io receive buffers live (set once at start), as an address range.
    pub fn recv_region(&self) -> std::ops::Range<usize> {
        self.recv_region_start.load(Relaxed) as usize..self.recv_region_end.load(Relaxed) as usize
    }

    /// The server counters as last published.
    pub fn server(&self) -> ServerStats {
        let mut s = ServerStats::default();
        for (slot, (name, _)) in self.server.iter().zip(ServerStats::default().fields()) {
            s.set(name, slot.load(Relaxed));
        }
        s
    }
}
