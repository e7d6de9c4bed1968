//! Request routing and bodies of the session API: pure functions, no engine, no sockets.

use serde::{Deserialize, Serialize};

use crate::ice::{Candidate, IceError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// An HTTP error: status and a short message, answered as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// Status code (4xx for the client's mistakes).
    pub status: u16,
    /// What is wrong.
    pub message: String,
}

impl HttpError {
    /// 400 Bad Request.
    pub fn bad(message: impl Into<String>) -> Self {
        HttpError {
            status: 400,
            message: message.into(),
        }
    }
    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        HttpError {
            status: 404,
            message: message.into(),
        }
    }
    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /sessions`.
    Create(CreateSession),
    /// `GET /sessions`: how many sessions exist.
    List,
    /// `GET /sessions/{id}`.
    Get(String),
    /// `POST /sessions/{id}/remote-credentials`.
    RemoteCredentials(String, RemoteCredentials),
    /// `POST /sessions/{id}/remote-candidates`.
    RemoteCandidates(String, RemoteCandidates),
    /// `POST /sessions/{id}/restart`: ICE restart (RFC 8445 §9).
    Restart(String),
    /// `DELETE /sessions/{id}`.
    Delete(String),
    /// `GET /stats`: engine counters.
    Stats,
}

/// Where a session's received data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Data {
    /// Sent straight back on the selected pair.
    #[default]
    Echo,
    /// Counted and dropped.
    Sink,
}

/// `POST /sessions` body (all fields optional; an empty body is `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// ICE-lite, or a full (controlled) agent; default: `[ice] lite`.
    pub lite: Option<bool>,
    /// `echo` (default) or `sink`.
    #[serde(default)]
    pub data: Data,
    /// The peer's offer, answered in the same exchange (one request per session, as
    /// WHIP does): its credentials and candidates are applied as the two `POST`s below
    /// would apply them.
    pub remote: Option<RemoteOffer>,
}

/// The peer's side in `POST /sessions` (`remote`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteOffer {
    /// Remote username fragment.
    pub ufrag: String,
    /// Remote password.
    pub pwd: String,
    /// Candidate lines, as `remote-candidates` takes them.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// The peer has no more candidates (RFC 8838).
    #[serde(default)]
    pub end_of_candidates: bool,
}

/// `POST /sessions/{id}/remote-credentials` body: JSON `{"ufrag", "pwd"}` or the form
/// fields `ufrag` and `pwd` (as pion's ping-pong example posts them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteCredentials {
    /// Remote username fragment.
    pub ufrag: String,
    /// Remote password.
    pub pwd: String,
}

/// `POST /sessions/{id}/remote-candidates` body: candidates (pion's line format, with
/// or without `candidate:`) and/or end-of-candidates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteCandidates {
    /// Parsed candidates, in order.
    pub candidates: Vec<Candidate>,
    /// The peer has no more candidates (RFC 8838 end-of-candidates).
    pub end: bool,
    /// Lines that are valid candidates of a kind the agent does not use, skipped: the
    /// mDNS `.local` host names browsers send (the agent does not resolve them; the
    /// browser's checks still reach it, as peer-reflexive candidates).
    pub ignored: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidatesJson {
    candidate: Option<String>,
    #[serde(default)]
    candidates: Vec<String>,
    #[serde(default)]
    end_of_candidates: bool,
}

/// Parses one candidate line (with or without `candidate:` / `a=candidate:`).
pub fn parse_candidate(line: &str) -> Result<Candidate, HttpError> {
    Candidate::from_sdp(line).map_err(|e| HttpError::bad(format!("candidate `{line}`: {e}")))
}

impl RemoteCandidates {
    /// Candidate lines given as a list (JSON), each taken as [`take`](Self::take) does.
    pub fn from_lines(lines: &[String], end: bool) -> Result<Self, HttpError> {
        let mut out = RemoteCandidates {
            end,
            ..Default::default()
        };
        for l in lines {
            out.take(l)?;
        }
        Ok(out)
    }

    /// Takes one posted candidate line: a candidate, an empty line (W3C's end of
    /// candidates: an `RTCIceCandidate` whose `candidate` is `""`), or a valid line of a
    /// kind the agent does not use (ignored, reported back). Anything else is a 400.
    fn take(&mut self, line: &str) -> Result<(), HttpError> {
        let bare = line.trim();
        let bare = bare.strip_prefix("a=").unwrap_or(bare);
        if bare.is_empty() || bare == "candidate:" {
            self.end = true;
            return Ok(());
        }
        match Candidate::from_sdp(line) {
            Ok(c) => self.candidates.push(c),
            Err(IceError::Unsupported(_)) => self.ignored.push(line.to_owned()),
            Err(e) => return Err(HttpError::bad(format!("candidate `{line}`: {e}"))),
        }
        Ok(())
    }
}

/// Parses the body of `remote-candidates`, whatever its Content-Type says (curl sends
/// form-encoded by default): JSON if it starts with `{` (`{"candidate": L}`,
/// `{"candidates": [L, ..]}`, `{"end_of_candidates": true}`, combinable); form fields if it
/// holds a `=` (a candidate line never does): `candidate=L` as pion's ping-pong posts it,
/// and `end_of_candidates`; otherwise plain text: one candidate line per line,
/// `end-of-candidates` (or `a=end-of-candidates`) as a line of its own.
pub fn parse_candidates(body: &[u8]) -> Result<RemoteCandidates, HttpError> {
    let text = std::str::from_utf8(body).map_err(|_| HttpError::bad("body is not UTF-8"))?;
    let trimmed = text.trim_start();
    let mut out = RemoteCandidates::default();
    let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
    fn bare(l: &str) -> &str {
        l.strip_prefix("a=").unwrap_or(l)
    }
    let is_end = |l: &str| bare(l) == "end-of-candidates";
    if trimmed.starts_with('{') {
        let j: CandidatesJson =
            serde_json::from_str(text).map_err(|e| HttpError::bad(format!("JSON: {e}")))?;
        for l in j.candidate.iter().chain(&j.candidates) {
            out.take(l)?;
        }
        out.end |= j.end_of_candidates;
    } else if lines().all(|l| !bare(l).contains('=')) {
        for line in lines() {
            if is_end(line) {
                out.end = true;
            } else {
                out.take(line)?;
            }
        }
    } else {
        for (k, v) in form_decode(text)? {
            match k.as_str() {
                "candidate" => out.take(&v)?,
                "end_of_candidates" | "end-of-candidates" => out.end = true,
                _ => return Err(HttpError::bad(format!("unknown form field `{k}`"))),
            }
        }
    }
    if out.candidates.is_empty() && out.ignored.is_empty() && !out.end {
        return Err(HttpError::bad("no candidate and no end-of-candidates"));
    }
    Ok(out)
}

/// Parses `remote-credentials`: JSON if the body starts with `{`, else form fields
/// `ufrag` and `pwd` (form-encoded, so `+` and `/` in them arrive intact when escaped).
pub fn parse_credentials(body: &[u8]) -> Result<RemoteCredentials, HttpError> {
    let text = std::str::from_utf8(body).map_err(|_| HttpError::bad("body is not UTF-8"))?;
    let c = if !text.trim_start().starts_with('{') {
        let mut ufrag = None;
        let mut pwd = None;
        for (k, v) in form_decode(text)? {
            match k.as_str() {
                "ufrag" => ufrag = Some(v),
                "pwd" => pwd = Some(v),
                _ => return Err(HttpError::bad(format!("unknown form field `{k}`"))),
            }
        }
        RemoteCredentials {
            ufrag: ufrag.ok_or_else(|| HttpError::bad("missing `ufrag`"))?,
            pwd: pwd.ok_or_else(|| HttpError::bad("missing `pwd`"))?,
        }
    } else {
        serde_json::from_str(text).map_err(|e| HttpError::bad(format!("JSON: {e}")))?
    };
    if c.ufrag.is_empty() || c.pwd.is_empty() {
        return Err(HttpError::bad("empty ufrag or pwd"));
    }
    Ok(c)
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
pub fn form_decode(s: &str) -> Result<Vec<(String, String)>, HttpError> {
    fn unescape(s: &str) -> Result<String, HttpError> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| HttpError::bad("bad %-escape in form body"))?;
                    out.push(hex);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| HttpError::bad("form value is not UTF-8"))
    }
    s.trim()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((unescape(k)?, unescape(v)?))
        })
        .collect()
}

/// Routes a request. `body` is the whole body (at most [`MAX_BODY`]).
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Route, HttpError> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = |s: &str| -> Result<String, HttpError> {
        if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(HttpError::not_found(format!("no session `{s}`")));
        }
        Ok(s.to_string())
    };
    match (method, parts.as_slice()) {
        ("POST", ["sessions"]) => {
            let text =
                std::str::from_utf8(body).map_err(|_| HttpError::bad("body is not UTF-8"))?;
            let c = if text.trim().is_empty() {
                CreateSession::default()
            } else {
                serde_json::from_str(text).map_err(|e| HttpError::bad(format!("JSON: {e}")))?
            };
            Ok(Route::Create(c))
        }
        ("GET", ["sessions"]) => Ok(Route::List),
        ("GET", ["stats"]) => Ok(Route::Stats),
        ("GET", ["sessions", s]) => Ok(Route::Get(id(s)?)),
        ("DELETE", ["sessions", s]) => Ok(Route::Delete(id(s)?)),
        ("POST", ["sessions", s, "remote-credentials"]) => {
            Ok(Route::RemoteCredentials(id(s)?, parse_credentials(body)?))
        }
        ("POST", ["sessions", s, "remote-candidates"]) => {
            Ok(Route::RemoteCandidates(id(s)?, parse_candidates(body)?))
        }
        ("POST", ["sessions", s, "restart"]) => Ok(Route::Restart(id(s)?)),
        (_, ["sessions"] | ["stats"] | ["sessions", _] | ["sessions", _, _]) => Err(HttpError {
            status: 405,
            message: format!("{method} not allowed on {path}"),
        }),
        _ => Err(HttpError::not_found(format!("no route {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "1234 1 udp 2130706431 127.0.0.1 5000 typ host";

    #[test]
    fn candidates_in_every_accepted_shape() {
        let plain = parse_candidates(LINE.as_bytes()).unwrap();
        let prefixed = parse_candidates(format!("candidate:{LINE}").as_bytes()).unwrap();
        assert_eq!(plain.candidates, prefixed.candidates);
        assert_eq!(plain.candidates[0].addr, "127.0.0.1:5000".parse().unwrap());
        assert!(!plain.end);
        let both = format!("a=candidate:{LINE}\na=end-of-candidates\n");
        let r = parse_candidates(both.as_bytes()).unwrap();
        assert_eq!((r.candidates.len(), r.end), (1, true));
        let json = format!(r#"{{"candidates":["candidate:{LINE}"],"end_of_candidates":true}}"#);
        let r = parse_candidates(json.as_bytes()).unwrap();
        assert_eq!((r.candidates.len(), r.end), (1, true));
        let form = "candidate=candidate%3A1234+1+udp+2130706431+127.0.0.1+5000+typ+host";
        let r = parse_candidates(form.as_bytes()).unwrap();
        assert_eq!(r.candidates, plain.candidates);
    }

    /// What browsers post: mDNS host names (valid lines the agent does not resolve) are
    /// skipped and reported, not a 400 that would lose the batch's other candidates; an
    /// empty candidate (W3C's end of candidates, Firefox's end of a generation) ends.
    #[test]
    fn browsers_mdns_names_are_ignored_and_an_empty_candidate_ends() {
        let mdns = "candidate:1 1 udp 2113937151 3f4a9c1e-7d2b-4e8f-9a61-0c5d2e7b8f90.local 54321 typ host";
        let json = format!(r#"{{"candidates":["{mdns}","candidate:{LINE}"]}}"#);
        let r = parse_candidates(json.as_bytes()).unwrap();
        assert_eq!((r.candidates.len(), r.end), (1, false));
        assert_eq!(r.ignored, [mdns]);
        let r = parse_candidates(format!("{mdns}\n").as_bytes()).unwrap();
        assert_eq!((r.candidates.len(), r.ignored.len()), (0, 1));
        let r = parse_candidates(br#"{"candidate": ""}"#).unwrap();
        assert_eq!((r.candidates.len(), r.ignored.len(), r.end), (0, 0, true));
        // Still a 400: a line that is no candidate at all.
        assert!(parse_candidates(b"candidate:1 1 udp 1 nowhere").is_err());
    }

    #[test]
    fn bad_bodies_are_400_not_panics() {
        for body in [
            &b""[..],
            b"{",
            b"{\"candidate\": 5}",
            b"1 1 udp",
            b"\xff\xfe",
            b"{\"nope\": true}",
        ] {
            let e = route("POST", "/sessions/abc/remote-candidates", body).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
            assert!(serde_json::from_str::<serde_json::Value>(&e.body()).is_ok());
        }
        let e = route("POST", "/sessions", b"{\"data\":\"loud\"}").unwrap_err();
        assert_eq!(e.status, 400);
        let e = route(
            "POST",
            "/sessions/x/remote-credentials",
            b"{\"ufrag\":\"a\"}",
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route("POST", "/sessions", b"").unwrap(),
            Route::Create(CreateSession::default())
        );
        assert_eq!(
            route("POST", "/sessions", br#"{"lite":false,"data":"sink"}"#).unwrap(),
            Route::Create(CreateSession {
                lite: Some(false),
                data: Data::Sink,
                remote: None,
            })
        );
        let offer = br#"{"remote":{"ufrag":"abcd","pwd":"0123456789012345678901","candidates":["1 1 udp 1 127.0.0.1 9 typ host"]}}"#;
        let Route::Create(c) = route("POST", "/sessions", offer).unwrap() else {
            panic!("a create");
        };
        let r = c.remote.expect("the offer");
        assert_eq!(
            (r.ufrag.as_str(), r.candidates.len(), r.end_of_candidates),
            ("abcd", 1, false)
        );
        assert_eq!(
            route("POST", "/sessions", br#"{"remote":{"ufrag":"abcd"}}"#)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            route("GET", "/sessions/ab12", b"").unwrap(),
            Route::Get("ab12".into())
        );
        assert_eq!(
            route("DELETE", "/sessions/ab12/", b"").unwrap(),
            Route::Delete("ab12".into())
        );
        let form = "ufrag=a%2Bb&pwd=c%2Fd+e";
        assert_eq!(
            route("POST", "/sessions/s1/remote-credentials", form.as_bytes()).unwrap(),
            Route::RemoteCredentials(
                "s1".into(),
                RemoteCredentials {
                    ufrag: "a+b".into(),
                    pwd: "c/d e".into()
                }
            )
        );
        assert_eq!(
            route("POST", "/sessions/s1/restart", b"").unwrap(),
            Route::Restart("s1".into())
        );
        assert_eq!(
            route("GET", "/sessions/s1/restart", b"")
                .unwrap_err()
                .status,
            405
        );
        assert_eq!(route("PUT", "/sessions", b"").unwrap_err().status, 405);
        assert_eq!(route("GET", "/nothing", b"").unwrap_err().status, 404);
        assert!((400..500).contains(&route("GET", "/sessions/../x", b"").unwrap_err().status));
        assert_eq!(
            route("GET", "/sessions/a%20b", b"").unwrap_err().status,
            404
        );
    }
}
