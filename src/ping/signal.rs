//! HTTP signalling of pion/ice's `examples/ping-pong`.
//!
//! Each side serves `POST /remoteAuth` (form fields `ufrag`, `pwd`) and
//! `POST /remoteCandidate` (form field `candidate`, one candidate line as pion's
//! `Candidate.Marshal` writes it, with or without the `candidate:` prefix) and posts its own
//! credentials and candidates to the peer's server. Bodies are
//! `application/x-www-form-urlencoded`.
//!
//! The server is a minimal HTTP/1.1 implementation on [`TcpListener`]: one request per
//! connection (`Connection: close`), `Content-Length` bodies only, bounded header and body
//! sizes. Malformed requests get a 4xx answer; nothing here panics on input.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ice::Candidate;

/// Largest accepted request line plus headers.
const MAX_HEAD: usize = 8 * 1024;
/// Largest accepted body.
const MAX_BODY: usize = 64 * 1024;

/// A message the peer signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// `POST /remoteAuth`: the peer's credentials.
    RemoteAuth {
        /// ICE username fragment.
        ufrag: String,
        /// ICE password.
        pwd: String,
    },
    /// `POST /remoteCandidate`: one of the peer's candidates.
    RemoteCandidate(Candidate),
}

/// An HTTP error answer: status code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// Status code.
    pub status: u16,
    /// Short reason, sent as the body.
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> HttpError {
    HttpError {
        status: 400,
        reason,
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Request target (path and optional query).
    pub target: String,
    /// Body bytes (`Content-Length` of them).
    pub body: Vec<u8>,
}

// ------------------------------------------------------------------------ form coding

/// Encodes `application/x-www-form-urlencoded` (as Go's `url.Values.Encode` and the WHATWG
/// serializer do: unreserved bytes as is, space as `+`, everything else `%XX`).
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(&mut out, k);
        out.push('=');
        encode_component(&mut out, v);
    }
    out
}

fn encode_component(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

/// Decodes an `application/x-www-form-urlencoded` body into (name, value) pairs in order.
/// `+` is a space, `%XX` a byte; a malformed escape or non-UTF-8 result is an error.
/// Empty segments (`a=1&&b=2`) are skipped; a segment without `=` has an empty value.
pub fn form_decode(body: &[u8]) -> Result<Vec<(String, String)>, HttpError> {
    let mut out = Vec::new();
    for seg in body.split(|&b| b == b'&') {
        if seg.is_empty() {
            continue;
        }
        let (k, v) = match seg.iter().position(|&b| b == b'=') {
            Some(i) => (&seg[..i], &seg[i + 1..]),
            None => (seg, &[][..]),
        };
        out.push((decode_component(k)?, decode_component(v)?));
    }
    Ok(out)
}

fn decode_component(s: &[u8]) -> Result<String, HttpError> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex);
                let lo = s.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(bad("malformed percent escape")),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("form value is not UTF-8"))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Result<&'a str, HttpError> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or(bad("missing form field"))
}

// ------------------------------------------------------------------------ server side

/// Reads one HTTP/1.x request with a `Content-Length` body (or none).
pub fn read_request<R: BufRead>(r: &mut R) -> Result<Request, HttpError> {
    let mut head = r.take(MAX_HEAD as u64);
    let mut line = Vec::new();
    let mut read_line = |line: &mut Vec<u8>| -> Result<String, HttpError> {
        line.clear();
        let n = head
            .read_until(b'\n', line)
            .map_err(|_| bad("read error"))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(HttpError {
                status: 431,
                reason: "request head truncated or too large",
            });
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(std::mem::take(line)).map_err(|_| bad("request head is not UTF-8"))
    };
    let request_line = read_line(&mut line)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(bad("malformed request line"));
    }
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut content_length: Option<usize> = None;
    loop {
        let h = read_line(&mut line)?;
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad("malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| bad("bad Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(bad("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError {
                status: 411,
                reason: "Content-Length required",
            });
        }
    }
    let len = content_length.unwrap_or(0);
    if len > MAX_BODY {
        return Err(HttpError {
            status: 413,
            reason: "body too large",
        });
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|_| bad("body shorter than Content-Length"))?;
    Ok(Request {
        method,
        target,
        body,
    })
}

/// Maps a request to the signal it carries.
pub fn route(req: &Request) -> Result<Signal, HttpError> {
    let path = req.target.split('?').next().unwrap_or("");
    let known = matches!(path, "/remoteAuth" | "/remoteCandidate");
    if !known {
        return Err(HttpError {
            status: 404,
            reason: "not found",
        });
    }
    if req.method != "POST" {
        return Err(HttpError {
            status: 405,
            reason: "POST only",
        });
    }
    let form = form_decode(&req.body)?;
    if path == "/remoteAuth" {
        let ufrag = field(&form, "ufrag")?.to_owned();
        let pwd = field(&form, "pwd")?.to_owned();
        if ufrag.is_empty() || pwd.is_empty() {
            return Err(bad("empty ufrag or pwd"));
        }
        Ok(Signal::RemoteAuth { ufrag, pwd })
    } else {
        let line = field(&form, "candidate")?;
        Candidate::from_sdp(line)
            .map(Signal::RemoteCandidate)
            .map_err(|_| bad("unparsable candidate"))
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn serve_one(stream: TcpStream, tx: &Sender<Signal>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (status, reason) = match read_request(&mut reader).and_then(|r| route(&r)) {
        Ok(signal) => {
            let _ = tx.send(signal);
            (200, "")
        }
        Err(e) => (e.status, e.reason),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
        status_text(status),
        reason.len()
    )?;
    w.flush()
}

/// Serves the signalling endpoints on `listener` in a background thread, sending every
/// accepted signal to `tx`. The thread ends when `tx`'s receiver is gone (at the next
/// request) or on a listener error.
pub fn spawn_server(listener: TcpListener, tx: Sender<Signal>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("ping-signal".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = serve_one(stream, &tx);
            }
        })
        .expect("spawn signalling thread")
}

// ------------------------------------------------------------------------ client side

/// `http://host:port[/prefix]` split into an address to connect to, the `Host` header and
/// the path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    host: String,
    prefix: String,
}

impl Remote {
    /// Parses an `http://` URL (no TLS, no userinfo).
    pub fn parse(url: &str) -> Result<Remote, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("signalling URL {url:?}: only http:// is supported"))?;
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!("signalling URL {url:?}: bad host"));
        }
        let host = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']')
        {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(Remote {
            host,
            prefix: prefix.to_owned(),
        })
    }

    /// Posts a form to `path`; returns the status code.
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> io::Result<u16> {
        let body = form_encode(fields);
        let addrs: Vec<SocketAddr> = self.host.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut s = stream.ok_or(last)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.prefix,
            self.host,
            body.len()
        )?;
        s.flush()?;
        let mut status_line = String::new();
        BufReader::new(s).read_line(&mut status_line)?;
        status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad HTTP status line"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &raw[..])
    }

    fn post(path: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn form_round_trip_and_escapes() {
        let enc = form_encode(&[("ufrag", "a+b/c d"), ("pwd", "x=y&z%ü")]);
        assert_eq!(enc, "ufrag=a%2Bb%2Fc+d&pwd=x%3Dy%26z%25%C3%BC");
        let dec = form_decode(enc.as_bytes()).unwrap();
        assert_eq!(
            dec,
            vec![
                ("ufrag".into(), "a+b/c d".into()),
                ("pwd".into(), "x=y&z%ü".into())
            ]
        );
        // Unencoded `/` and lower-case escapes, as some clients send them.
        assert_eq!(
            form_decode(b"a=1/2%2f3&&b&c=").unwrap(),
            vec![
                ("a".into(), "1/2/3".into()),
                ("b".into(), String::new()),
                ("c".into(), String::new())
            ]
        );
    }

    #[test]
    fn form_decode_rejects_malformed() {
        for bad in [
            &b"a=%"[..],
            b"a=%4",
            b"a=%zz",
            b"a=%C3",
            b"%G0=1",
            b"a=\xff",
        ] {
            assert_eq!(form_decode(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn routes_auth_and_candidate() {
        let r = req(&post("/remoteAuth", "ufrag=abcd&pwd=p%2Bw%2Fd+x")).unwrap();
        assert_eq!(
            route(&r).unwrap(),
            Signal::RemoteAuth {
                ufrag: "abcd".into(),
                pwd: "p+w/d x".into()
            }
        );
        let line = "1 1 udp 2130706431 127.0.0.1 5000 typ host";
        for c in [line.to_owned(), format!("candidate:{line}")] {
            let body = form_encode(&[("candidate", &c)]);
            let r = req(&post("/remoteCandidate", &body)).unwrap();
            let Signal::RemoteCandidate(cand) = route(&r).unwrap() else {
                panic!("not a candidate")
            };
            assert_eq!(cand.addr, "127.0.0.1:5000".parse().unwrap());
        }
        // aioice's format.
        let body = form_encode(&[(
            "candidate",
            "6815297761 1 udp 659136 127.0.0.1 31102 typ host",
        )]);
        assert!(route(&req(&post("/remoteCandidate", &body)).unwrap()).is_ok());
    }

    #[test]
    fn malformed_requests_are_4xx_never_panic() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"".to_vec(), 431),
            (b"GARBAGE\r\n\r\n".to_vec(), 400),
            (b"POST /remoteAuth HTTP/1.1\r\n".to_vec(), 431),
            (
                b"POST /remoteAuth HTTP/1.1\r\nbad header\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST /remoteAuth HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST /remoteAuth HTTP/1.1\r\nContent-Length: 10\r\n\r\nab".to_vec(),
                400,
            ),
            (
                b"POST /remoteAuth HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
                413,
            ),
            (
                b"POST /remoteAuth HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                411,
            ),
            (vec![b'a'; MAX_HEAD + 10], 431),
            (post("/remoteAuth", "ufrag=abcd"), 400),
            (post("/remoteAuth", "ufrag=&pwd="), 400),
            (post("/remoteAuth", "ufrag=%ZZ&pwd=x"), 400),
            (post("/remoteCandidate", "candidate=not+a+candidate"), 400),
            (post("/remoteCandidate", ""), 400),
            (post("/elsewhere", "a=b"), 404),
            (b"GET /remoteAuth HTTP/1.1\r\n\r\n".to_vec(), 405),
        ];
        for (raw, status) in cases {
            let got = req(&raw).and_then(|r| route(&r)).unwrap_err();
            assert_eq!(got.status, status, "{:?}", String::from_utf8_lossy(&raw));
        }
    }

    #[test]
    fn server_and_client_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_server(listener, tx);
        let remote = Remote::parse(&format!("http://{addr}")).unwrap();
        let st = remote
            .post_form("/remoteAuth", &[("ufrag", "abcd"), ("pwd", "p/w+d")])
            .unwrap();
        assert_eq!(st, 200);
        assert_eq!(
            rx.recv().unwrap(),
            Signal::RemoteAuth {
                ufrag: "abcd".into(),
                pwd: "p/w+d".into()
            }
        );
        let st = remote
            .post_form("/remoteCandidate", &[("candidate", "junk")])
            .unwrap();
        assert_eq!(st, 400);
        // Raw garbage on the socket gets an answer too.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"\x00\x01\x02\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[test]
    fn remote_url_parsing() {
        let r = Remote::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(r.host, "127.0.0.1:9001");
        assert_eq!(r.prefix, "");
        let r = Remote::parse("http://localhost/sig/").unwrap();
        assert_eq!(r.host, "localhost:80");
        assert_eq!(r.prefix, "/sig");
        assert!(Remote::parse("https://x").is_err());
        assert!(Remote::parse("http://").is_err());
    }
}
