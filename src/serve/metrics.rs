//! `GET /metrics`: every shard's counters in the Prometheus text format (version 0.0.4),
//! labelled by shard, for `icering serve --metrics ADDR` (coturn: `--prometheus`).
//!
//! Families: `icering_server_*` (the STUN/TURN server's [`ServerStats`], one per field,
//! plus the `icering_server_allocations` gauge), `icering_ice_*` (hosted agents,
//! [`IceStats`]) and `icering_shard_*` (io and TCP/TLS connections). Counters end in
//! `_total`. Values are as of each shard's last loop turn (an idle shard publishes every
//! 100 ms). The scrape reads atomics only: it never waits for a shard.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{HttpThread, ServeError};
use crate::shard::{IceStats, ShardCounters};
use crate::turn::server::ServerStats;

/// Gauges among the ICE counters and among the shard's own (the rest only grow).
const ICE_GAUGES: [&str; 3] = ["agents", "connected", "lent_buffers"];
const SHARD_GAUGES: [&str; 2] = ["relay_port_sockets", "tcp_open"];

/// Shard counters that are no metrics.
const SKIP: [&str; 2] = ["recv_region_start", "recv_region_end"];

/// The Prometheus text of `shards`' counters.
pub fn render(shards: &[Arc<ShardCounters>]) -> String {
    let server: Vec<ServerStats> = shards.iter().map(|c| c.server()).collect();
    let ice: Vec<IceStats> = shards.iter().map(|c| c.ice.load()).collect();
    let own: Vec<_> = shards.iter().map(|c| c.own_fields()).collect();
    let mut out = String::with_capacity(16 * 1024);
    let mut family =
        |name: &str, help: &str, gauge: bool, values: &mut dyn Iterator<Item = u64>| {
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            let help = help.replace('\\', "\\\\");
            let (kind, suffix) = if gauge {
                ("gauge", "")
            } else {
                ("counter", "_total")
            };
            let _ = writeln!(out, "# HELP icering_{name}{suffix} {help}");
            let _ = writeln!(out, "# TYPE icering_{name}{suffix} {kind}");
            for (shard, v) in values.enumerate() {
                let _ = writeln!(out, "icering_{name}{suffix}{{shard=\"{shard}\"}} {v}");
            }
        };
    for (k, (name, _)) in ServerStats::default().fields().iter().enumerate() {
        family(
            &format!("server_{name}"),
            ServerStats::HELP[k],
            false,
            &mut server.iter().map(|s| s.fields()[k].1),
        );
    }
    family(
        "server_allocations",
        "Allocations alive (created - ended).",
        true,
        &mut server.iter().map(ServerStats::allocations),
    );
    for (k, (name, help, _)) in IceStats::default().fields().into_iter().enumerate() {
        family(
            &format!("ice_{name}"),
            help,
            ICE_GAUGES.contains(&name),
            &mut ice.iter().map(|s| s.fields()[k].2),
        );
    }
    if let Some(first) = own.first() {
        for (k, &(name, help, _)) in first.iter().enumerate() {
            if SKIP.contains(&name) {
                continue;
            }
            family(
                &format!("shard_{name}"),
                help,
                SHARD_GAUGES.contains(&name),
                &mut own.iter().map(|f| f[k].2),
            );
        }
    }
    out
}

/// The running metrics endpoint. Stops on [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct MetricsServer {
    http: HttpThread,
}

impl MetricsServer {
    /// Binds `addr` for [`start`](Self::start) (before the shards start, so a taken
    /// port stops the server before anything else listens).
    pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
        super::bind(addr)
    }

    /// Serves `GET /metrics` on `listener` (from [`bind`](Self::bind)) from `shards`'
    /// counters, on a thread of its own (HTTP/1.1; keep it on loopback or a private
    /// network: there is no authentication and no connection limit).
    pub fn start(
        listener: std::net::TcpListener,
        shards: Vec<Arc<ShardCounters>>,
    ) -> Result<MetricsServer, ServeError> {
        let shards: Arc<[Arc<ShardCounters>]> = shards.into();
        let handler = move |req| answer(&shards, req);
        let http = HttpThread::start(listener, "metrics", "metrics-http", handler)?;
        Ok(MetricsServer { http })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Stops serving.
    pub fn shutdown(self) {}
}

fn answer(
    shards: &[Arc<ShardCounters>],
    req: Request<Incoming>,
) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (StatusCode::OK, render(shards)),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
        _ => (StatusCode::NOT_FOUND, "try /metrics\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    std::future::ready(Ok(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family has one HELP and one TYPE line before its samples; every sample is
    /// `name{shard="i"} value` with a name of its family; counters end in `_total`.
    #[test]
    fn the_text_is_well_formed() {
        let shards = vec![Arc::new(ShardCounters::default()), Arc::default()];
        shards[1]
            .tcp_open
            .store(3, std::sync::atomic::Ordering::Relaxed);
        let text = render(&shards);
        let mut family = String::new();
        let mut families = std::collections::HashSet::new();
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap().to_string();
                assert!(!rest[family.len()..].trim().is_empty(), "{line}");
                assert!(families.insert(family.clone()), "{family} twice");
                let mut chars = family.chars();
                assert!(
                    chars
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                );
                assert!(
                    chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{family}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(name, family);
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else {
                let (name, value) = line.split_once(' ').unwrap();
                let (base, label) = name.split_once('{').unwrap();
                assert_eq!(base, family, "{line}");
                assert!(label == "shard=\"0\"}" || label == "shard=\"1\"}", "{line}");
                value.parse::<u64>().unwrap();
                samples += 1;
            }
        }
        assert!(samples > 60, "{samples}");
        assert!(text.contains("icering_shard_tcp_open{shard=\"1\"} 3\n"));
        assert!(text.contains("# TYPE icering_server_allocations_created_total counter\n"));
        assert!(!text.contains("recv_region"));
    }
}
