//! The HTTP scrape endpoint: GET /metrics with the Prometheus text, served on the loop thread.
//!
//! Off unless `metrics_listen` is set. Like the control socket it never blocks the loop: a
//! non-blocking mio listener, at most `MAX_CONNS` connections, each with a bounded request head
//! and a deadline, one request per connection, no thread per connection. Anything but a
//! well-formed `GET /metrics` head within `MAX_HEAD` bytes is answered with a status and
//! closed; the request is never read past its head.

use crate::reactor::Registrar;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAX_CONNS: usize = 16;
/// A scraper's request head is a few hundred bytes.
pub const MAX_HEAD: usize = 8192;
const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// What is read and dropped after the answer before closing anyway.
const MAX_DRAIN: usize = 1 << 20;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    answered: bool,
    /// Our side is shut down: only reading what the client still sends.
    shut: bool,
    drained: usize,
}

pub struct MetricsServer {
    listener: TcpListener,
    token: Token,
    conns: HashMap<Token, Conn>,
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    Metrics,
    /// A status line and a one-line body: what is wrong with the request.
    Refused(u16, &'static str, &'static str),
}

/// Judges a request head (without its final blank line). Strict: one request line of three
/// words, ASCII, an HTTP/1 version; the headers are not needed and are ignored.
pub fn judge(head: &[u8]) -> Asked {
    let bad = Asked::Refused(400, "Bad Request", "malformed request\n");
    let Ok(head) = std::str::from_utf8(head) else {
        return bad;
    };
    let line = head.split("\r\n").next().unwrap_or("");
    let words: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = words.as_slice() else {
        return bad;
    };
    if !version.starts_with("HTTP/1.") || !line.is_ascii() || target.is_empty() {
        return bad;
    }
    if *method != "GET" {
        return Asked::Refused(405, "Method Not Allowed", "only GET /metrics\n");
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Asked::Refused(404, "Not Found", "only GET /metrics\n");
    }
    Asked::Metrics
}

fn response(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn head_end(input: &[u8]) -> Option<usize> {
    input.windows(4).position(|w| w == b"\r\n\r\n")
}

impl MetricsServer {
    /// Binds `addr` and registers the listener; `None` (logged) if either fails: the daemon
    /// runs on without the endpoint, as without its control socket.
    pub fn start(addr: SocketAddr, reg: &mut Registrar) -> Option<MetricsServer> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| log::warn!("metrics_listen {addr}: cannot listen: {e}"))
            .ok()?;
        match reg.register(&mut listener, Interest::READABLE) {
            Ok(token) => {
                log::info!("serving metrics at http://{addr}/metrics");
                Some(MetricsServer {
                    listener,
                    token,
                    conns: HashMap::new(),
                })
            }
            Err(e) => {
                log::warn!("metrics_listen {addr}: {e}");
                None
            }
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Handles an event if `token` is the listener's or a connection's (false otherwise);
    /// `metrics` renders the Prometheus text.
    pub fn on_event(
        &mut self,
        reg: &mut Registrar,
        token: Token,
        metrics: &mut dyn FnMut() -> String,
    ) -> bool {
        if token == self.token {
            self.accept(reg);
            return true;
        }
        let done = match self.conns.get_mut(&token) {
            Some(conn) => serve(conn, metrics),
            None => return false,
        };
        if done {
            if let Some(mut conn) = self.conns.remove(&token) {
                reg.deregister(&mut conn.stream, token);
            }
        }
        true
    }

    fn accept(&mut self, reg: &mut Registrar) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics endpoint: accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNS {
                let _ = stream.write(&response(
                    503,
                    "Service Unavailable",
                    "text/plain",
                    "busy\n",
                ));
                continue;
            }
            let Ok(token) = reg.register(&mut stream, Interest::READABLE | Interest::WRITABLE)
            else {
                continue;
            };
            self.conns.insert(
                token,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    deadline: Instant::now() + CONN_DEADLINE,
                    answered: false,
                    shut: false,
                    drained: 0,
                },
            );
        }
    }

    /// Drops connections past their deadline (clients that never send or never read).
    pub fn expire(&mut self, reg: &mut Registrar, now: Instant) {
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(mut c) = self.conns.remove(&t) {
                reg.deregister(&mut c.stream, t);
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// Advances one connection; true when it is finished.
fn serve(conn: &mut Conn, metrics: &mut dyn FnMut() -> String) -> bool {
    if !conn.answered {
        let mut buf = [0u8; 1024];
        let ended = loop {
            if let Some(end) = head_end(&conn.input) {
                break Some(end);
            }
            if conn.input.len() > MAX_HEAD {
                break None;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        };
        conn.output = match ended.filter(|&end| end <= MAX_HEAD) {
            None if conn.input.len() > MAX_HEAD => {
                response(400, "Bad Request", "text/plain", "request head too large\n")
            }
            None => response(400, "Bad Request", "text/plain", "incomplete request\n"),
            Some(end) => match judge(&conn.input[..end]) {
                Asked::Metrics => response(
                    200,
                    "OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &metrics(),
                ),
                Asked::Refused(code, reason, body) => response(code, reason, "text/plain", body),
            },
        };
        conn.answered = true;
    }
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return true,
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    // Closing with unread input sends a reset, which can overtake the answer at the client
    // (an oversized request is still being sent): end our side, then read what is left until
    // the client closes, up to `MAX_DRAIN` bytes or the deadline.
    if !conn.shut {
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        conn.shut = true;
    }
    let mut buf = [0u8; 4096];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                conn.drained += n;
                if conn.drained > MAX_DRAIN {
                    return true;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: x"), Asked::Metrics);
        assert_eq!(judge(b"GET /metrics?x=1 HTTP/1.0"), Asked::Metrics);
        for bad in [
            &b""[..],
            b"GET /metrics",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"GET /m\xe9trics HTTP/1.1",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(judge(bad), Asked::Refused(400, ..)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            judge(b"POST /metrics HTTP/1.1"),
            Asked::Refused(405, ..)
        ));
        assert!(matches!(
            judge(b"GET /../etc HTTP/1.1"),
            Asked::Refused(404, ..)
        ));
    }
}
