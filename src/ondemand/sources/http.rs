//! HTTP(S) exchanges and the plain-URL blob, with redirects and credentials checked here.
//!
//! ureq never follows a redirect itself: every `Location` goes through
//! [`head::redirect_target`] (http/https only, a host, no user info, never https → http, at
//! most [`head::MAX_REDIRECTS`]), and credentials are attached only to requests for the origin
//! they belong to. Any answer ureq cannot make sense of is an error for that request; a panic
//! inside the client is caught and becomes one too.

use super::auth::Secret;
use super::head::{self, Origin};
use super::remote::Remote;
use super::{with_retries, Blob, FetchError};
use crate::ondemand::sourcemap::FetchSettings;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ureq::http::Response;
use ureq::Body;

/// The plain client (keep-alive connections are pooled per host); remote sources build their
/// own from the same settings. Timeouts are fixed per read, so the socket timeout is set
/// once per connection rather than before every read: `timeout` bounds each read and each
/// write, four times it the whole exchange (a server dripping one byte per interval cannot
/// hold a worker forever).
pub fn agent(settings: &FetchSettings) -> ureq::Agent {
    agent_config(settings).build().new_agent()
}

/// The settings every client shares; [`super::remote::build_agent`] adds TLS and proxy.
pub(crate) fn agent_config(
    settings: &FetchSettings,
) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(settings.timeout.min(Duration::from_secs(10))))
        .timeout_per_read(Some(settings.timeout))
        .timeout_per_write(Some(settings.timeout))
        // Not `timeout_per_call`: a deadline that shrinks with every read makes ureq set
        // SO_RCVTIMEO before each read and resolve every request's host on a new thread.
        // The whole exchange is bounded by `exchange_deadline` instead, checked between
        // reads of the body.
        .timeout_recv_response(Some(exchange_limit(settings.timeout)))
        .user_agent(concat!("cachefilesd-rs/", env!("CARGO_PKG_VERSION")))
}

/// How long one exchange (request, redirects, answer and body) may take.
fn exchange_limit(timeout: Duration) -> Duration {
    timeout.saturating_mul(4)
}

/// When an exchange started now with `agent` must be over.
pub(crate) fn exchange_deadline(agent: &ureq::Agent) -> Instant {
    let limit = agent
        .config()
        .timeouts()
        .recv_response
        .unwrap_or(exchange_limit(FetchSettings::default().timeout));
    Instant::now() + limit
}

/// Reads `reader` to the end into `out`, at most `max` bytes (more is an error), giving up at
/// `deadline` (checked between reads, each of which its own timeout bounds).
pub(crate) fn read_body(
    mut reader: impl Read,
    out: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        if out.len() + n > max {
            return Err(std::io::Error::other(format!(
                "body longer than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk[..n]);
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the answer took too long",
            ));
        }
    }
}

/// An `Authorization` header value and the one origin it may be sent to.
pub(crate) struct Auth<'a> {
    pub origin: &'a Origin,
    pub header: &'a Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Head,
    Get,
}

/// A response and the URL that gave it (after redirects).
pub(crate) struct Answer {
    pub resp: Response<Body>,
    pub url: String,
    /// When reading the body must have finished.
    pub deadline: Instant,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.resp.status().as_u16()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.resp.headers().get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request, following validated redirects. `query` is added to the first URL only.
pub(crate) fn send(
    agent: &ureq::Agent,
    method: Method,
    url: &str,
    query: &[(String, String)],
    range: Option<(u64, u64)>,
    auth: Option<&Auth<'_>>,
) -> Result<Answer, FetchError> {
    let mut url = url.to_string();
    let deadline = exchange_deadline(agent);
    for hop in 0..=head::MAX_REDIRECTS {
        let target = head::origin(&url).map_err(FetchError::Protocol)?;
        let request = || {
            let mut req = match method {
                Method::Head => agent.head(&url),
                Method::Get => agent.get(&url),
            };
            if hop == 0 {
                for (k, v) in query {
                    req = req.query(k, v);
                }
            }
            if let Some((a, b)) = range {
                req = req.header("Range", format!("bytes={a}-{b}"));
            }
            if let Some(auth) = auth.filter(|a| *a.origin == target) {
                req = req.header("Authorization", auth.header.expose());
            }
            req
        };
        let resp = match call_once_more_if_dropped(agent, request) {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(FetchError::Io(format!("{}: {e}", head::redact(&url)))),
            Err(_) => {
                return Err(FetchError::Protocol(format!(
                    "{}: the HTTP client failed on the answer",
                    head::redact(&url)
                )))
            }
        };
        let answer = Answer {
            resp,
            url,
            deadline,
        };
        if !matches!(answer.status(), 301 | 302 | 303 | 307 | 308) {
            return Ok(answer);
        }
        let Some(location) = answer.header("location") else {
            return Ok(answer);
        };
        url = head::redirect_target(&answer.url, location)
            .map_err(|e| FetchError::Protocol(format!("{}: {e}", head::redact(&answer.url))))?;
    }
    Err(FetchError::Protocol(format!(
        "{}: more than {} redirects",
        head::redact(&url),
        head::MAX_REDIRECTS
    )))
}

/// Sends `req`, and sends it once more when the connection dropped at once, before any
/// answer: a pooled keep-alive connection the server closed (its idle timeout) just as the
/// request went out says nothing about the server or the blob, so it must not use up
/// `retries` or fail a read with `retries = 0`. A drop after a wait longer than a connect
/// timeout is the server's answer, and sending again would stretch the exchange's bound.
/// A panic inside the client is caught (`Err`).
fn call_once_more_if_dropped(
    agent: &ureq::Agent,
    request: impl Fn() -> ureq::RequestBuilder<ureq::typestate::WithoutBody>,
) -> std::thread::Result<Result<Response<Body>, ureq::Error>> {
    let call = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request().call()));
    let at_once = agent
        .config()
        .timeouts()
        .connect
        .unwrap_or(FetchSettings::default().timeout);
    let started = Instant::now();
    match call() {
        Ok(Err(ureq::Error::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) && started.elapsed() < at_once =>
        {
            call()
        }
        other => other,
    }
}

/// An error for a status that is not the one expected.
pub(crate) fn status_error(answer: &Answer, what: &str) -> FetchError {
    match answer.status() {
        s if s >= 400 => FetchError::Status(s),
        s => FetchError::Protocol(format!(
            "{}: expected {what}, got {s}",
            head::redact(&answer.url)
        )),
    }
}

/// The blob size a HEAD answered: 200 with a Content-Length the kernel can take.
pub(crate) fn head_size(answer: &Answer) -> Result<u64, FetchError> {
    if answer.status() != 200 {
        return Err(status_error(answer, "200 for HEAD"));
    }
    let url = head::redact(&answer.url);
    let len = answer
        .header("content-length")
        .ok_or_else(|| FetchError::Protocol(format!("{url}: HEAD gave no Content-Length")))?;
    let len = head::parse_content_length(len).ok_or_else(|| {
        FetchError::Protocol(format!("{url}: HEAD gave a bad Content-Length {len:?}"))
    })?;
    head::check_size(len).map_err(|e| FetchError::Protocol(format!("{url}: {e}")))
}

/// Fills `buf` from the answer to a Range request for it at `off`: a 206 with exactly that
/// Content-Range (and Content-Length, when given) and a body of exactly that length.
pub(crate) fn read_range(
    answer: Answer,
    off: u64,
    buf: &mut [u8],
    size: u64,
) -> Result<(), FetchError> {
    let end = off + buf.len() as u64 - 1;
    if answer.status() != 206 {
        return Err(status_error(&answer, "206 for a Range request"));
    }
    let url = head::redact(&answer.url);
    let range = answer.header("content-range");
    // A total that differs is another blob (a mirror out of step): never mixed in.
    if !matches!(range.and_then(head::parse_content_range),
        Some((a, b, total)) if a == off && b == end && total.is_none_or(|t| t == size))
    {
        return Err(FetchError::Protocol(format!(
            "{url}: Content-Range {range:?} does not match bytes {off}-{end}"
        )));
    }
    if let Some(len) = answer.header("content-length") {
        if head::parse_content_length(len) != Some(buf.len() as u64) {
            return Err(FetchError::Protocol(format!(
                "{url}: Content-Length {len:?} does not match bytes {off}-{end}"
            )));
        }
    }
    let deadline = answer.deadline;
    let mut reader = answer.resp.into_body().into_reader();
    // Straight into `buf`, in whatever pieces ureq's 128 KiB buffer yields.
    let mut done = 0;
    while done < buf.len() {
        let n = match reader.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(FetchError::Io(format!(
                    "{url}: body of bytes {off}-{end} ended after {done} bytes"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FetchError::Io(format!(
                    "{url}: body of bytes {off}-{end}: {e}"
                )))
            }
        };
        done += n;
        if done < buf.len() && Instant::now() > deadline {
            return Err(FetchError::Io(format!(
                "{url}: body of bytes {off}-{end} took too long"
            )));
        }
    }
    let mut extra = [0u8; 1];
    if matches!(reader.read(&mut extra), Ok(n) if n > 0) {
        return Err(FetchError::Protocol(format!(
            "{url}: body longer than bytes {off}-{end}"
        )));
    }
    Ok(())
}

/// A blob behind a URL (and its mirrors) that answers Range requests with 206.
pub struct HttpBlob {
    /// One per endpoint of `remote`, in its order.
    urls: Vec<String>,
    remote: Arc<Remote>,
    size: u64,
    retries: u32,
}

impl HttpBlob {
    /// A single URL with the plain client `agent` (no credentials, no mirrors).
    pub fn open(
        url: String,
        agent: ureq::Agent,
        settings: &FetchSettings,
    ) -> Result<HttpBlob, FetchError> {
        let remote = Remote::with_agent(vec![url.clone()], agent);
        HttpBlob::open_remote(vec![url], remote, settings)
    }

    /// `urls[i]` is what endpoint `i` of `remote` serves the blob at.
    pub fn open_remote(
        urls: Vec<String>,
        remote: Arc<Remote>,
        settings: &FetchSettings,
    ) -> Result<HttpBlob, FetchError> {
        for u in &urls {
            head::origin(u).map_err(FetchError::Protocol)?;
        }
        let mut blob = HttpBlob {
            urls,
            remote,
            size: 0,
            retries: settings.retries,
        };
        blob.size = with_retries(settings.retries, || {
            blob.on_endpoints(|url, auth| {
                head_size(&send(
                    &blob.remote.agent,
                    Method::Head,
                    url,
                    &[],
                    None,
                    auth,
                )?)
            })
        })?;
        Ok(blob)
    }

    /// Runs `f` against the endpoints in the remote's order until one answers; failures
    /// another endpoint may not share (connection errors, 5xx) move on to the next.
    fn on_endpoints<T>(
        &self,
        mut f: impl FnMut(&str, Option<&Auth<'_>>) -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut last = None;
        for i in self.remote.order() {
            let url = &self.urls[i];
            let origin = head::origin(url).map_err(FetchError::Protocol)?;
            let key = super::auth::registry_key(&origin.host, origin.port, origin.https);
            let cred = self
                .remote
                .credentials
                .get(&key, "")
                .map_err(|e| FetchError::Protocol(e.to_string()))?;
            let header = cred.and_then(|c| c.header());
            let auth = header.as_ref().map(|h| Auth {
                origin: &origin,
                header: h,
            });
            let started = Instant::now();
            match f(url, auth.as_ref()) {
                Ok(v) => {
                    self.remote.succeeded(i, started.elapsed());
                    return Ok(v);
                }
                Err(e) => {
                    if matches!(e, FetchError::Status(401 | 403)) {
                        // Read again before the next try: the file may have changed.
                        self.remote.credentials.refresh();
                    }
                    if !e.retryable() {
                        return Err(e);
                    }
                    self.remote.failed(i, &e.to_string());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(FetchError::NotFound))
    }
}

impl Blob for HttpBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        super::check_read(self.size, off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = off + buf.len() as u64 - 1;
        with_retries(self.retries, || {
            self.on_endpoints(|url, auth| {
                let answer = send(
                    &self.remote.agent,
                    Method::Get,
                    url,
                    &[],
                    Some((off, end)),
                    auth,
                )?;
                read_range(answer, off, buf, self.size)
            })
        })
    }

    fn describe(&self) -> String {
        head::redact(&self.urls[self.remote.order()[0]])
    }

    fn is_remote(&self) -> bool {
        true
    }
}
