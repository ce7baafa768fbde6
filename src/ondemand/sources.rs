//! Blob sources: a local file, an HTTP(S) URL read with Range requests, or an OCI registry
//! blob (anonymous bearer-token handshake, redirects to blob storage followed). All of them
//! answer "how big" and "give me exactly these bytes"; anything less is an error.

use super::sourcemap::{FetchSettings, Location};
use nix::errno::Errno;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Io(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Protocol(String),
}

impl FetchError {
    /// The errno an OPEN fails with, so the mount reports something meaningful.
    pub fn errno(&self) -> Errno {
        match self {
            FetchError::NotFound => Errno::ENOENT,
            FetchError::Status(401 | 403) => Errno::EACCES,
            FetchError::Status(404 | 410) => Errno::ENOENT,
            _ => Errno::EIO,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            FetchError::Io(_) => true,
            FetchError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            FetchError::NotFound | FetchError::Protocol(_) => false,
        }
    }
}

pub trait Blob: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `off`; short data is an error.
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError>;
    /// A short description for logs and status: the file or URL.
    fn describe(&self) -> String;
    fn is_remote(&self) -> bool;
}

pub struct LocalBlob {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LocalBlob {
    pub fn open(path: PathBuf) -> Result<LocalBlob, FetchError> {
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::NotFound,
            _ => FetchError::Io(format!("{}: {e}", path.display())),
        })?;
        let meta = file.metadata().map_err(|e| FetchError::Io(e.to_string()))?;
        if !meta.is_file() {
            return Err(FetchError::Protocol(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(LocalBlob {
            path,
            file,
            size: meta.len(),
        })
    }
}

impl Blob for LocalBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FetchError::Io(format!(
                    "{}: shorter than when it was opened",
                    self.path.display()
                )),
                _ => FetchError::Io(format!("{}: {e}", self.path.display())),
            })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_remote(&self) -> bool {
        false
    }
}

pub fn agent(settings: &FetchSettings) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(settings.timeout.min(Duration::from_secs(10)))
        .timeout(settings.timeout)
        .redirects(5)
        .user_agent(concat!("cachefilesd-rs/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn with_retries<T>(
    retries: u32,
    mut f: impl FnMut() -> Result<T, FetchError>,
) -> Result<T, FetchError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if e.retryable() && attempt < retries => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
            }
            other => return other,
        }
    }
}

fn status_error(e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::Status(code, _) => FetchError::Status(code),
        ureq::Error::Transport(t) => FetchError::Io(t.to_string()),
    }
}

/// The `Content-Range: bytes a-b/total` header of a 206.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

/// A blob behind a URL that answers Range requests with 206.
pub struct HttpBlob {
    url: String,
    agent: ureq::Agent,
    size: u64,
    retries: u32,
    /// Registry bearer token, when the server asked for one.
    token: Option<String>,
}

impl HttpBlob {
    pub fn open(
        url: String,
        agent: ureq::Agent,
        settings: &FetchSettings,
    ) -> Result<HttpBlob, FetchError> {
        let size = with_retries(settings.retries, || head_size(&agent, &url, None))?;
        Ok(HttpBlob {
            url,
            agent,
            size,
            retries: settings.retries,
            token: None,
        })
    }
}

fn head_size(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<u64, FetchError> {
    let mut req = agent.head(url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().map_err(status_error)?;
    resp.header("Content-Length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| FetchError::Protocol(format!("{url}: HEAD gave no Content-Length")))
}

fn range_get(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    off: u64,
    buf: &mut [u8],
) -> Result<(), FetchError> {
    let end = off + buf.len() as u64 - 1;
    let mut req = agent.get(url).set("Range", &format!("bytes={off}-{end}"));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = req.call().map_err(status_error)?;
    if resp.status() != 206 {
        return Err(FetchError::Protocol(format!(
            "{url}: expected 206 for a Range request, got {}",
            resp.status()
        )));
    }
    let range = resp.header("Content-Range").and_then(parse_content_range);
    if !matches!(range, Some((a, b, _)) if a == off && b == end) {
        return Err(FetchError::Protocol(format!(
            "{url}: Content-Range {:?} does not match bytes {off}-{end}",
            resp.header("Content-Range")
        )));
    }
    let mut reader = resp.into_reader();
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

impl Blob for HttpBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        if buf.is_empty() {
            return Ok(());
        }
        with_retries(self.retries, || {
            range_get(&self.agent, &self.url, self.token.as_deref(), off, buf)
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn is_remote(&self) -> bool {
        true
    }
}

/// `sha256:<hex>` from an fsid written either way.
pub fn digest_from_fsid(fsid: &str) -> Option<String> {
    let hex = fsid.strip_prefix("sha256:").unwrap_or(fsid);
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| format!("sha256:{hex}"))
}

/// An OCI registry blob: an `HttpBlob` on `/v2/<repo>/blobs/<digest>` plus the token
/// handshake, and a digest check when the blob has been read from start to end.
pub struct RegistryBlob {
    http: HttpBlob,
    digest: String,
    verify: Mutex<(u64, Option<Sha256>)>,
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` → the token URL's parts.
fn parse_bearer_challenge(v: &str) -> Option<(String, Vec<(String, String)>)> {
    let rest = v
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| v.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let mut params = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let (value, after) = after.split_once('"')?;
        let key = key.trim().trim_start_matches(',').trim();
        if key == "realm" {
            realm = Some(value.to_string());
        } else {
            params.push((key.to_string(), value.to_string()));
        }
        s = after.trim_start_matches(',').trim_start();
    }
    Some((realm?, params))
}

fn fetch_token(agent: &ureq::Agent, challenge: &str) -> Result<String, FetchError> {
    let (realm, params) = parse_bearer_challenge(challenge).ok_or_else(|| {
        FetchError::Protocol(format!(
            "unsupported WWW-Authenticate challenge {challenge:?}"
        ))
    })?;
    let mut req = agent.get(&realm);
    for (k, v) in &params {
        req = req.query(k, v);
    }
    let resp = req.call().map_err(|e| match status_error(e) {
        FetchError::Status(code) => {
            FetchError::Protocol(format!("token service refused: HTTP {code}"))
        }
        other => other,
    })?;
    let body: serde_json::Value = serde_json::from_reader(resp.into_reader().take(1 << 20))
        .map_err(|e| FetchError::Protocol(format!("token response: {e}")))?;
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| FetchError::Protocol("token response has no token".into()))
}

impl RegistryBlob {
    pub fn open(
        base: &str,
        repository: &str,
        fsid: &str,
        agent: ureq::Agent,
        settings: &FetchSettings,
    ) -> Result<RegistryBlob, FetchError> {
        let digest = digest_from_fsid(fsid).ok_or(FetchError::NotFound)?;
        let url = format!("{base}/v2/{repository}/blobs/{digest}");
        let mut token = None;
        let size = with_retries(settings.retries, || match agent.head(&url).call() {
            Ok(resp) => resp
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| FetchError::Protocol(format!("{url}: HEAD gave no Content-Length"))),
            Err(ureq::Error::Status(401, resp)) => {
                let challenge = resp.header("WWW-Authenticate").unwrap_or("").to_string();
                let t = fetch_token(&agent, &challenge)?;
                let size = head_size(&agent, &url, Some(&t))?;
                token = Some(t);
                Ok(size)
            }
            Err(e) => Err(status_error(e)),
        })?;
        let http = HttpBlob {
            url,
            agent,
            size,
            retries: settings.retries,
            token,
        };
        Ok(RegistryBlob {
            http,
            digest,
            verify: Mutex::new((0, Some(Sha256::new()))),
        })
    }
}

impl Blob for RegistryBlob {
    fn size(&self) -> u64 {
        self.http.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        self.http.read_exact_at(off, buf)?;
        // Reads usually come in order; when they cover the blob from 0 to its end in
        // sequence the digest is checked. Out-of-order reads simply skip verification.
        let mut v = self.verify.lock().expect("verify lock");
        if v.0 == off {
            if let Some(h) = v.1.as_mut() {
                h.update(&*buf);
                v.0 += buf.len() as u64;
                if v.0 == self.http.size {
                    let hash = v.1.take().expect("present").finalize();
                    let got = format!(
                        "sha256:{}",
                        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    );
                    if got != self.digest {
                        log::error!(
                            "integrity error: {} has digest {got}, expected {}",
                            self.http.url,
                            self.digest
                        );
                    } else {
                        log::debug!("{}: digest verified", self.http.url);
                    }
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.http.url.clone()
    }

    fn is_remote(&self) -> bool {
        true
    }
}

/// Opens the blob a resolved location names.
pub fn open(
    location: Location,
    fsid: &str,
    agent: &ureq::Agent,
    settings: &FetchSettings,
) -> Result<Box<dyn Blob>, FetchError> {
    Ok(match location {
        Location::Path(p) => Box::new(LocalBlob::open(p)?),
        Location::Url(u) => Box::new(HttpBlob::open(u, agent.clone(), settings)?),
        Location::Registry { base, repository } => Box::new(RegistryBlob::open(
            &base,
            &repository,
            fsid,
            agent.clone(),
            settings,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_and_challenges() {
        assert_eq!(
            parse_content_range("bytes 0-4095/10000"),
            Some((0, 4095, Some(10000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        let (realm, params) = parse_bearer_challenge(r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:library/app:pull""#).unwrap();
        assert_eq!(realm, "https://auth.example.org/token");
        assert_eq!(
            params,
            vec![
                ("service".into(), "registry.example.org".into()),
                ("scope".into(), "repository:library/app:pull".into())
            ]
        );
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert_eq!(digest_from_fsid(&hex), Some(format!("sha256:{hex}")));
        assert_eq!(
            digest_from_fsid(&format!("sha256:{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_from_fsid("sha256:abc"), None);
        assert_eq!(digest_from_fsid(&"A".repeat(64)), None);
    }

    #[test]
    fn local_blob_truncated_while_served_is_an_error() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), vec![3u8; 10000]).unwrap();
        let blob = LocalBlob::open(t.path().to_path_buf()).unwrap();
        assert_eq!(blob.size(), 10000);
        let mut buf = vec![0u8; 100];
        blob.read_exact_at(9900, &mut buf).unwrap();
        assert_eq!(buf, vec![3u8; 100]);
        std::fs::write(t.path(), vec![3u8; 5000]).unwrap();
        assert!(blob.read_exact_at(9900, &mut buf).is_err());
        assert!(matches!(
            LocalBlob::open("/nonexistent/blob".into()),
            Err(FetchError::NotFound)
        ));
    }
}
