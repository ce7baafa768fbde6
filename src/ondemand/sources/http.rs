//! HTTP(S) exchanges and the plain-URL blob, with redirects and credentials checked here.
//!
//! ureq never follows a redirect itself: every `Location` goes through
//! [`head::redirect_target`] (http/https only, a host, no user info, never https → http, at
//! most [`head::MAX_REDIRECTS`]), and credentials are attached only to requests for the origin
//! they belong to. Any answer ureq cannot make sense of is an error for that request; a panic
//! inside the client is caught and becomes one too.

use super::head::{self, Origin};
use super::{with_retries, Blob, FetchError};
use crate::ondemand::sourcemap::FetchSettings;
use std::io::Read;
use std::time::Duration;
use ureq::http::Response;
use ureq::Body;

/// The client every source shares (keep-alive connections are pooled per host). Timeouts are
/// fixed per request, so the socket timeout is set once per connection rather than before
/// every read: `timeout` bounds each read and each write, four times it the whole exchange
/// (a server dripping one byte per interval cannot hold a worker forever).
pub fn agent(settings: &FetchSettings) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(settings.timeout.min(Duration::from_secs(10))))
        .timeout_per_read(Some(settings.timeout))
        .timeout_per_write(Some(settings.timeout))
        .timeout_per_call(Some(settings.timeout.saturating_mul(4)))
        .user_agent(concat!("cachefilesd-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// An `Authorization` header value and the one origin it may be sent to.
pub(crate) struct Auth<'a> {
    pub origin: &'a Origin,
    pub header: &'a str,
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
    for hop in 0..=head::MAX_REDIRECTS {
        let target = head::origin(&url).map_err(FetchError::Protocol)?;
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
            req = req.header("Authorization", auth.header);
        }
        let resp = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| req.call())) {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(FetchError::Io(format!("{}: {e}", head::redact(&url)))),
            Err(_) => {
                return Err(FetchError::Protocol(format!(
                    "{}: the HTTP client failed on the answer",
                    head::redact(&url)
                )))
            }
        };
        let answer = Answer { resp, url };
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
pub(crate) fn read_range(answer: Answer, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
    let end = off + buf.len() as u64 - 1;
    if answer.status() != 206 {
        return Err(status_error(&answer, "206 for a Range request"));
    }
    let url = head::redact(&answer.url);
    let range = answer.header("content-range");
    if !matches!(range.and_then(head::parse_content_range), Some((a, b, _)) if a == off && b == end)
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
    let mut reader = answer.resp.into_body().into_reader();
    reader
        .read_exact(buf)
        .map_err(|e| FetchError::Io(format!("{url}: body of bytes {off}-{end}: {e}")))?;
    let mut extra = [0u8; 1];
    if matches!(reader.read(&mut extra), Ok(n) if n > 0) {
        return Err(FetchError::Protocol(format!(
            "{url}: body longer than bytes {off}-{end}"
        )));
    }
    Ok(())
}

/// A blob behind a URL that answers Range requests with 206.
pub struct HttpBlob {
    url: String,
    agent: ureq::Agent,
    size: u64,
    retries: u32,
}

impl HttpBlob {
    pub fn open(
        url: String,
        agent: ureq::Agent,
        settings: &FetchSettings,
    ) -> Result<HttpBlob, FetchError> {
        head::origin(&url).map_err(FetchError::Protocol)?;
        let size = with_retries(settings.retries, || {
            head_size(&send(&agent, Method::Head, &url, &[], None, None)?)
        })?;
        Ok(HttpBlob {
            url,
            agent,
            size,
            retries: settings.retries,
        })
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
            let answer = send(
                &self.agent,
                Method::Get,
                &self.url,
                &[],
                Some((off, end)),
                None,
            )?;
            read_range(answer, off, buf)
        })
    }

    fn describe(&self) -> String {
        head::redact(&self.url)
    }

    fn is_remote(&self) -> bool {
        true
    }
}
