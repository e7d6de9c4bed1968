//! `icering serve`'s HTTP session API: the ICE side of a media backend.
//!
//! A session is an agent hosted on the shards ([`Engine::agent`]) on the shard's shared
//! ICE port (`[ice] listen`, thousands of agents per port), ICE-lite or full per `[ice]
//! lite` or the request, whose received data the shard echoes back or sinks
//! ([`DataMode::Echo`] / [`DataMode::Sink`]): no per-session thread or channel. The
//! session is controlled (a lite agent always is, RFC 8445 §6.1.1); its peer dials.
//!
//! | request | answer |
//! |---------|--------|
//! | `POST /sessions` `{"lite"?: bool, "data"?: "echo"\|"sink", "remote"?: {ufrag, pwd, candidates?, end_of_candidates?}}` | 201 `{id, ufrag, pwd, candidates, lite, data, ignored?}` |
//! | `POST /sessions/{id}/remote-credentials` `{"ufrag","pwd"}` (or form fields) | 204 |
//! | `POST /sessions/{id}/remote-candidates` candidate lines / JSON / form, end-of-candidates | 204 |
//! | `POST /sessions/{id}/restart` (ICE restart) | 200 `{id, ufrag, pwd, candidates}` |
//! | `GET /sessions/{id}` | 200 `{id, state, selected_pair, bytes_*, packets_*, rtt_ms}` |
//! | `DELETE /sessions/{id}` | 204 (the agent is closed) |
//! | `GET /sessions`, `GET /stats` | counts, engine counters |
//!
//! Every error is a JSON `{"error": "..."}` with a 4xx status (5xx only when the engine
//! itself is gone). HTTP/1.1 (keep-alive) is hyper on one thread with a current-thread
//! tokio runtime: any number of connections, each request handled in its connection's
//! task (no handler blocks: commands to a shard are channel sends, and the two that wait
//! for a shard's answer, `GET /sessions/{id}` and `restart`, await it). The session table is a mutex held only to
//! insert, look up or remove (never across a shard round trip). See docs/serve-api.md for
//! curl examples.

pub mod metrics;
pub mod routes;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::api::{ApiError, DataMode, Engine, SessionHandle};
use crate::ice::{Candidate, ConnectionState};
use routes::{Data, HttpError, RemoteCandidates, RemoteOffer, Route};

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The admin (or metrics) address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The HTTP thread or its runtime could not be started.
    #[error("cannot start the admin server's thread: {0}")]
    Thread(std::io::Error),
    /// The engine has no `[ice] listen` socket to host sessions on.
    #[error("the session API needs `[ice] listen` addresses (the shared ICE port)")]
    NoIcePort,
}

/// One session as the table keeps it: the agent's signalling handle (one pointer) and
/// two flags, 16 bytes inline in the map, nothing else allocated per session here.
#[derive(Clone)]
struct Session {
    agent: SessionHandle,
    lite: bool,
    data: Data,
}

/// Session id: 128 random bits, shown as 32 hex digits.
type SessionId = u128;

struct Shared {
    engine: Engine,
    default_lite: bool,
    sessions: Mutex<HashMap<SessionId, Session>>,
}

/// The running admin server. Stops on [`shutdown`](Self::shutdown) (or drop), closing
/// every session's agent.
pub struct AdminServer {
    http: HttpThread,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.http.addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `addr` and serves the session API on `engine`'s shards. `default_lite` is
    /// `[ice] lite`: the kind of session created when the request does not say.
    pub fn start(
        addr: SocketAddr,
        engine: Engine,
        default_lite: bool,
    ) -> Result<AdminServer, ServeError> {
        if engine.mux_addrs().is_empty() {
            return Err(ServeError::NoIcePort);
        }
        let listener = bind(addr)?;
        let shared = Arc::new(Shared {
            engine,
            default_lite,
            sessions: Mutex::new(HashMap::new()),
        });
        let serving = shared.clone();
        let handler = move |req| handle(serving.clone(), req);
        let http = HttpThread::start(listener, "session API", "admin-http", handler)?;
        Ok(AdminServer { http, shared })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.addr
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.shared.table().len()
    }

    /// Stops serving and closes every session's agent.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.http.stop();
        for (_, s) in self.shared.table().drain() {
            s.agent.close();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds a non-blocking TCP listener on `addr` for an HTTP server.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    let bind_err = |e: std::io::Error| ServeError::Bind {
        addr,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// An HTTP server's thread: a current-thread tokio runtime running [`serve_http`] on a
/// bound listener until [`stop`](Self::stop) (or drop). Connections are tasks on this
/// one thread, and so are their requests' handlers: each hop to another thread would
/// cost two wake-ups per request.
#[derive(Debug)]
pub(crate) struct HttpThread {
    addr: SocketAddr,
    /// Ends the accept loop (and with the runtime, every connection).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpThread {
    /// Serves `listener` with `handler` on a thread named `thread`; `what` names the
    /// server in logs.
    pub(crate) fn start<F, Fut>(
        listener: std::net::TcpListener,
        what: &'static str,
        thread: &str,
        handler: F,
    ) -> Result<HttpThread, ServeError>
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>>
            + Send
            + 'static,
    {
        let addr = listener.local_addr().map_err(ServeError::Thread)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(thread)
            .build()
            .map_err(ServeError::Thread)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || rt.block_on(serve_http(listener, what, stopped, handler)))
            .map_err(ServeError::Thread)?;
        Ok(HttpThread {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (port 0 resolved).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub(crate) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self, id: &str) -> Result<Session, HttpError> {
        parse_id(id)
            .and_then(|k| self.table().get(&k).cloned())
            .ok_or_else(|| HttpError::not_found(format!("no session `{id}`")))
    }
}

/// The key of an id as [`session_id`] writes it (exactly 32 lowercase hex digits); any
/// other string names no session.
fn parse_id(id: &str) -> Option<SessionId> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if id.len() != 32 {
        return None;
    }
    id.bytes()
        .try_fold(0u128, |k, b| Some(k << 4 | u128::from(hex(b)?)))
}

fn id_string(k: SessionId) -> String {
    format!("{k:032x}")
}

fn api_error(e: ApiError) -> HttpError {
    match e {
        ApiError::Invalid(m) => HttpError::bad(m),
        ApiError::Closed => HttpError {
            status: 410,
            message: "session closed".into(),
        },
        ApiError::EngineStopped => HttpError {
            status: 503,
            message: e.to_string(),
        },
        other => HttpError {
            status: 500,
            message: other.to_string(),
        },
    }
}

/// An HTTP/1.1 accept loop (keep-alive): each connection a task whose requests go to
/// `handler`, until `stopped`. `what` names the server in logs.
pub(crate) async fn serve_http<F, Fut>(
    listener: std::net::TcpListener,
    what: &'static str,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{what}: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors and the like: counted by the kernel, retried.
                Err(e) => {
                    tracing::warn!("{what}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handler);
            // A client that goes away mid-request ends its connection; nothing to do.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: the body (at most [`routes::MAX_BODY`]), then its route, in the
/// connection's task.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let result = match Limited::new(body, routes::MAX_BODY).collect().await {
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError {
            status: 413,
            message: format!("body over {} bytes", routes::MAX_BODY),
        }),
        Err(e) => Err(HttpError::bad(format!("reading the body: {e}"))),
        Ok(body) => match routes::route(method, path, &body.to_bytes()) {
            Ok(r) => dispatch(&shared, r).await,
            Err(e) => Err(e),
        },
    };
    let (status, body) = match result {
        Ok((status, body)) => (status, body.map(|b| b.to_string())),
        Err(e) => (e.status, Some(e.body())),
    };
    let json = body.is_some();
    let mut response = Response::new(Full::new(body.map(Bytes::from).unwrap_or_default()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if json {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    Ok(response)
}

type Answer = (u16, Option<serde_json::Value>);

/// Never blocks the thread: what it sends a shard goes over channels, and the one answer
/// it waits for is awaited.
async fn dispatch(shared: &Shared, route: Route) -> Result<Answer, HttpError> {
    match route {
        Route::Create(c) => create(
            shared,
            c.lite.unwrap_or(shared.default_lite),
            c.data,
            c.remote,
        ),
        Route::List => Ok((200, Some(json!({ "sessions": shared.table().len() })))),
        Route::Stats => {
            let s = shared.engine.stats();
            Ok((
                200,
                Some(json!({
                    "sessions": shared.table().len(),
                    "shards": s.shards,
                    "agents": s.ice.agents,
                    "connected": s.ice.connected,
                    "created": s.ice.created,
                    "closed": s.ice.closed,
                    "data_in": s.ice.data_in,
                    "data_out": s.ice.data_out,
                    "handoffs_in": s.ice.handoffs_in,
                    "drop_unknown_ufrag": s.ice.drop_unknown_ufrag,
                    "drop_agent": s.ice.drop_agent,
                })),
            ))
        }
        Route::Get(id) => {
            let s = shared.session(&id)?;
            let st = s.agent.stats().await.map_err(api_error)?;
            Ok((
                200,
                Some(json!({
                    "id": id,
                    "lite": s.lite,
                    "data": s.data,
                    "state": state_name(st.state),
                    "selected_pair": st.selected.map(|(l, r)| json!({
                        "local": l.to_string(),
                        "remote": r.to_string(),
                    })),
                    "bytes_sent": st.bytes_sent,
                    "bytes_received": st.bytes_received,
                    "packets_sent": st.packets_sent,
                    "packets_received": st.packets_received,
                    "rtt_ms": st.rtt.as_secs_f64() * 1000.0,
                })),
            ))
        }
        Route::RemoteCredentials(id, c) => {
            let s = shared.session(&id)?;
            s.agent
                .set_remote_credentials(&c.ufrag, &c.pwd)
                .map_err(api_error)?;
            Ok((204, None))
        }
        Route::RemoteCandidates(id, c) => {
            let s = shared.session(&id)?;
            let ignored = add_candidates(&s.agent, c).map_err(api_error)?;
            if ignored.is_empty() {
                Ok((204, None))
            } else {
                Ok((200, Some(json!({ "ignored": ignored }))))
            }
        }
        Route::Restart(id) => {
            let s = shared.session(&id)?;
            let r = s.agent.restart().await.map_err(api_error)?;
            Ok((
                200,
                Some(json!({
                    "id": id,
                    "ufrag": r.ufrag,
                    "pwd": r.pwd,
                    "candidates": candidate_lines(&r.candidates),
                })),
            ))
        }
        Route::Delete(id) => {
            let s = parse_id(&id)
                .and_then(|k| shared.table().remove(&k))
                .ok_or_else(|| HttpError::not_found(format!("no session `{id}`")))?;
            s.agent.close();
            Ok((204, None))
        }
    }
}

fn create(
    shared: &Shared,
    lite: bool,
    data: Data,
    remote: Option<RemoteOffer>,
) -> Result<Answer, HttpError> {
    // A bad candidate line is a 400 before any session exists.
    let remote = remote
        .map(|r| {
            RemoteCandidates::from_lines(&r.candidates, r.end_of_candidates)
                .map(|c| (r.ufrag, r.pwd, c))
        })
        .transpose()?;
    let opts = shared
        .engine
        .session_options(match data {
            Data::Echo => DataMode::Echo,
            Data::Sink => DataMode::Sink,
        })
        .with_lite(lite);
    let agent = shared.engine.agent(opts).map_err(api_error)?;
    let (ufrag, pwd) = agent.local_credentials();
    let gathered = agent.gather_candidates().and_then(|c| {
        // Controlled: the session's peer dials (a lite agent is always controlled).
        agent.start(false)?;
        Ok(c)
    });
    // The table keeps only the signalling handle: the `Agent` (options, credentials) is
    // dropped here, and the agent stays hosted on its shard.
    let session = agent.into_session_handle();
    let answered = gathered.and_then(|c| {
        let ignored = match remote {
            Some((ufrag, pwd, theirs)) => {
                session.set_remote_credentials(&ufrag, &pwd)?;
                add_candidates(&session, theirs)?
            }
            None => Vec::new(),
        };
        Ok((c, ignored))
    });
    let (candidates, ignored) = match answered {
        Ok(a) => a,
        Err(e) => {
            session.close();
            return Err(api_error(e));
        }
    };
    let id = session_id();
    let mut body = json!({
        "id": id_string(id),
        "ufrag": ufrag,
        "pwd": pwd,
        "candidates": candidate_lines(&candidates),
        "lite": lite,
        "data": data,
    });
    if !ignored.is_empty() {
        body["ignored"] = json!(ignored);
    }
    shared.table().insert(
        id,
        Session {
            agent: session,
            lite,
            data,
        },
    );
    Ok((201, Some(body)))
}

/// Gives a session the peer's candidates (a `remote-candidates` post, or the offer of a
/// create) and, if it says so, the end of them; the lines it skipped.
fn add_candidates(s: &SessionHandle, c: RemoteCandidates) -> Result<Vec<String>, ApiError> {
    for cand in c.candidates {
        s.add_remote_candidate(cand)?;
    }
    if c.end {
        s.end_of_remote_candidates();
    }
    Ok(c.ignored)
}

/// Candidates as the API gives them: `candidate:` lines (RFC 8839 §5.1).
fn candidate_lines(c: &[Candidate]) -> Vec<String> {
    c.iter()
        .map(|c| format!("candidate:{}", c.to_sdp()))
        .collect()
}

/// 128 unpredictable bits (CSPRNG, shown as 32 hex digits): ids are capabilities, not
/// counters.
fn session_id() -> SessionId {
    let mut b = [0u8; 16];
    crate::api::secure_random(&mut b);
    u128::from_le_bytes(b)
}

/// The state as pion/ice and the W3C name it (lowercase).
pub fn state_name(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::New => "new",
        ConnectionState::Checking => "checking",
        ConnectionState::Connected => "connected",
        ConnectionState::Completed => "completed",
        ConnectionState::Disconnected => "disconnected",
        ConnectionState::Failed => "failed",
        ConnectionState::Closed => "closed",
    }
}
