//! OCI registry blobs: `/v2/<repository>/blobs/<digest>`, Basic and bearer auth, the digest
//! check.
//!
//! A registry's 401 says what it wants: `Basic` gets the source's credentials, `Bearer` a
//! token from its realm (asked with the credentials, or with an identity token as an OAuth2
//! refresh token, or anonymously). A static `token_file` is sent as is. What a registry asked
//! for is remembered per (registry, repository), so later blobs skip the refused first try.
//!
//! Tokens live in one process-wide cache keyed by (registry origin, repository, scope, the
//! credential they were asked with), shared by every blob; a token is used until shortly
//! before its `expires_in` runs out, and a 401 on a request that carried one fetches a fresh
//! token and retries that request once.
//!
//! The digest: with `verify = "digest"` the whole blob is fetched into an unlinked spool file
//! and its sha256 compared before the OPEN succeeds, so no unverified byte is ever served.
//! Otherwise bytes are hashed in blob order as reads pass (the bytes of reads ahead of the
//! hashed prefix are kept, bounded, until the gap closes; the reads themselves are served at
//! once), and once the whole blob is hashed a mismatch fails that READ and poisons the digest:
//! every later read of the blob fails, and so does every later OPEN of it.

use super::auth::{Credential, Secret};
use super::head::{self, Origin};
use super::http::{
    exchange_deadline, head_size, read_body, read_range, send, Answer, Auth, Method,
};
use super::remote::Remote;
use super::{with_retries, Blob, FetchError};
use crate::ondemand::sourcemap::{FetchSettings, Verify};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Digest mismatches detected since the process started (OPENs refused under
/// `verify = "digest"` plus blobs poisoned while streaming).
static INTEGRITY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many registry blobs failed their digest check so far.
pub fn integrity_failures() -> u64 {
    INTEGRITY_FAILURES.load(Ordering::Relaxed)
}

/// Digests whose blob failed its check, refused at every later OPEN: the bytes served before
/// the mismatch stay in the kernel's cache file, so a later mount would ask only for the
/// missing ranges, never hash the blob again, and serve it without a word.
static POISONED: LazyLock<Mutex<std::collections::HashSet<String>>> =
    LazyLock::new(Default::default);

fn poisoned(digest: &str) -> bool {
    POISONED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(digest)
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

fn sha256_string(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    registry: Origin,
    repository: String,
    scope: String,
    /// sha256 of the credential the token was asked with (zero: anonymous), so a token
    /// granted to one source's credentials never serves a source with other or none.
    credential: [u8; 32],
}

fn credential_id(cred: Option<&Credential>) -> [u8; 32] {
    let Some(c) = cred else { return [0; 32] };
    let mut h = Sha256::new();
    match c {
        Credential::Basic { username, password } => {
            h.update(b"basic\0");
            h.update(username.as_bytes());
            h.update(b"\0");
            h.update(password.expose().as_bytes());
        }
        Credential::Bearer(t) => {
            h.update(b"bearer\0");
            h.update(t.expose().as_bytes());
        }
        Credential::Identity(t) => {
            h.update(b"identity\0");
            h.update(t.expose().as_bytes());
        }
    }
    h.finalize().into()
}

/// What a registry's 401 told us: where to get a token and for what, or plain Basic.
#[derive(Debug)]
enum Challenge {
    Bearer {
        realm: String,
        params: Vec<(String, String)>,
        key: TokenKey,
    },
    Basic,
}

struct CachedToken {
    /// The whole `Authorization` value, `Bearer <token>`.
    header: Arc<Secret>,
    usable_until: Instant,
}

static TOKENS: LazyLock<Mutex<HashMap<TokenKey, CachedToken>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The token service's answer when it names no lifetime (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: u64 = 60;
/// Upper bound on a token lifetime taken from a server.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;

/// A token header for the Bearer challenge `realm`/`params`/`key`, from the cache unless it
/// is about to expire or is `stale` (the one a request was just refused with).
fn token_for(
    agent: &ureq::Agent,
    realm: &str,
    params: &[(String, String)],
    key: &TokenKey,
    cred: Option<&Credential>,
    stale: Option<&Secret>,
) -> Result<Arc<Secret>, FetchError> {
    let key = &TokenKey {
        credential: credential_id(cred),
        ..key.clone()
    };
    {
        let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tokens.get(key) {
            if Instant::now() < t.usable_until && stale != Some(&*t.header) {
                return Ok(t.header.clone());
            }
        }
    }
    let (value, lifetime) = fetch_token(agent, realm, params, key, cred)?;
    let header = Arc::new(Secret::new(format!("Bearer {}", value.expose())));
    // Renewed once 90 % of its life has passed, so a request never carries a token that
    // expires on its way.
    let usable_until = Instant::now() + lifetime.mul_f64(0.9);
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    tokens.retain(|_, t| t.usable_until > now);
    tokens.insert(
        key.clone(),
        CachedToken {
            header: header.clone(),
            usable_until,
        },
    );
    Ok(header)
}

/// Asks the token service; the response's `token` (or `access_token`) and its lifetime.
/// Basic credentials go along as such; an identity token is exchanged with an OAuth2
/// `refresh_token` POST. Error messages never quote the response: it may hold a token.
fn fetch_token(
    agent: &ureq::Agent,
    realm: &str,
    params: &[(String, String)],
    key: &TokenKey,
    cred: Option<&Credential>,
) -> Result<(Secret, Duration), FetchError> {
    let realm_origin = head::origin(realm).map_err(FetchError::Protocol)?;
    let shown = head::redact(realm);
    let deadline = exchange_deadline(agent);
    let resp = match cred {
        Some(Credential::Identity(refresh)) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
                ("client_id", "cachefilesd-rs"),
            ];
            form.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            agent
                .post(realm)
                .send_form(form)
                .map_err(|e| FetchError::Io(format!("{shown}: {e}")))?
        }
        _ => {
            let header = cred.and_then(|c| c.header());
            let auth = header.as_ref().map(|h| Auth {
                origin: &realm_origin,
                header: h,
            });
            send(agent, Method::Get, realm, params, None, auth.as_ref())?.resp
        }
    };
    if resp.status() != 200 {
        return Err(FetchError::Protocol(format!(
            "token service refused: HTTP {}",
            resp.status().as_u16()
        )));
    }
    let mut body = Vec::new();
    read_body(resp.into_body().into_reader(), &mut body, 1 << 20, deadline)
        .map_err(|e| FetchError::Io(format!("{shown}: token response: {e}")))?;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| FetchError::Protocol(format!("{shown}: token response is not valid JSON")))?;
    let token = json
        .get("token")
        .or_else(|| json.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| FetchError::Protocol(format!("{shown}: token response has no token")))?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::Protocol(format!(
            "{shown}: token response holds a token that is not printable ASCII"
        )));
    }
    let lifetime = json
        .get("expires_in")
        .and_then(|v| v.as_u64())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME)
        .min(MAX_TOKEN_LIFETIME);
    log::debug!(
        "{shown}: new token for {} of {}, valid {lifetime} s",
        key.scope,
        key.repository
    );
    Ok((Secret::new(token), Duration::from_secs(lifetime)))
}

/// One registry (the source's or a mirror) a blob can come from.
struct RegEndpoint {
    url: String,
    origin: Origin,
    /// `host[:port]`, as auth files name the registry.
    key: String,
    /// Where the challenge learnt from this registry's 401 is kept for every blob.
    challenge_key: ChallengeKey,
}

/// A registry and a repository of it.
type ChallengeKey = (Origin, String);

/// What each registry (and repository) asked for in its last 401: later requests, from any
/// blob, carry the answer at once instead of being refused first.
static CHALLENGES: LazyLock<Mutex<HashMap<ChallengeKey, Arc<Challenge>>>> =
    LazyLock::new(Default::default);

/// An OCI registry blob.
pub struct RegistryBlob {
    remote: Arc<Remote>,
    /// One per endpoint of `remote`, in its order.
    endpoints: Vec<RegEndpoint>,
    repository: String,
    digest: String,
    size: u64,
    retries: u32,
    data: Data,
}

enum Data {
    /// Served from the registry; reads that arrive in order are hashed.
    Streamed {
        in_order: Mutex<InOrder>,
        poisoned: AtomicBool,
    },
    /// Served from a spool file whose digest matched before the OPEN succeeded.
    Spooled(File),
}

/// The streaming digest check: bytes are hashed in blob order. Reads that arrive ahead of the
/// hashed prefix (several workers, readahead) wait here, up to `MAX_PENDING` bytes per blob
/// and `MAX_PENDING_TOTAL` for all blobs together (lazy loading reads sparsely, so a blob's
/// gap may never close); past that the check is given up for this blob (its bytes are never
/// asked for again once cached) and the memory freed.
struct InOrder {
    /// Bytes `[0, next)` are hashed.
    next: u64,
    /// `None` once the digest was computed or the check given up.
    hasher: Option<Sha256>,
    pending: std::collections::BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
}

const MAX_PENDING: usize = 8 << 20;
const MAX_PENDING_TOTAL: usize = 64 << 20;
static PENDING_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl InOrder {
    fn new() -> InOrder {
        InOrder {
            next: 0,
            hasher: Some(Sha256::new()),
            pending: Default::default(),
            pending_bytes: 0,
        }
    }

    /// Takes the bytes read at `off`; the blob's digest once all `size` bytes were hashed.
    fn feed(&mut self, off: u64, data: &[u8], size: u64) -> Option<String> {
        self.hasher.as_ref()?;
        let end = off + data.len() as u64;
        if end <= self.next {
            return None;
        }
        if off > self.next {
            if self.pending_bytes + data.len() > MAX_PENDING
                || PENDING_TOTAL.load(Ordering::Relaxed) + data.len() > MAX_PENDING_TOTAL
            {
                log::debug!("digest check given up: reads too far out of order");
                self.hasher = None;
                self.release(usize::MAX);
                return None;
            }
            if self.pending.get(&off).is_none_or(|p| p.len() < data.len()) {
                if let Some(old) = self.pending.insert(off, data.to_vec()) {
                    self.release(old.len());
                }
                self.pending_bytes += data.len();
                PENDING_TOTAL.fetch_add(data.len(), Ordering::Relaxed);
            }
            return None;
        }
        self.hash_from(off, data);
        while let Some((&o, _)) = self.pending.first_key_value() {
            if o > self.next {
                break;
            }
            let d = self.pending.remove(&o).expect("present");
            self.release(d.len());
            if o + d.len() as u64 > self.next {
                self.hash_from(o, &d);
            }
        }
        if self.next >= size {
            self.release(usize::MAX);
            return self.hasher.take().map(sha256_string);
        }
        None
    }

    /// Accounts for `n` pending bytes dropped; `usize::MAX` drops them all.
    fn release(&mut self, n: usize) {
        let n = if n == usize::MAX {
            self.pending.clear();
            self.pending_bytes
        } else {
            n
        };
        self.pending_bytes -= n;
        PENDING_TOTAL.fetch_sub(n, Ordering::Relaxed);
    }

    /// Hashes the part of `data` (read at `off <= next`) beyond `next`.
    fn hash_from(&mut self, off: u64, data: &[u8]) {
        let skip = (self.next - off) as usize;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&data[skip..]);
        }
        self.next = off + data.len() as u64;
    }
}

impl Drop for InOrder {
    fn drop(&mut self) {
        self.release(usize::MAX);
    }
}

impl RegistryBlob {
    /// Opens a blob served straight from the registry `base` with the plain client `agent`
    /// (in-order reads are verified).
    pub fn open(
        base: &str,
        repository: &str,
        fsid: &str,
        agent: ureq::Agent,
        settings: &FetchSettings,
    ) -> Result<RegistryBlob, FetchError> {
        Self::open_with(base, repository, fsid, agent, settings, Verify::InOrder)
    }

    /// [`RegistryBlob::open`] with a choice of check.
    pub fn open_with(
        base: &str,
        repository: &str,
        fsid: &str,
        agent: ureq::Agent,
        settings: &FetchSettings,
        verify: Verify,
    ) -> Result<RegistryBlob, FetchError> {
        let remote = Remote::with_agent(vec![base.to_string()], agent);
        Self::open_remote(remote, repository, fsid, settings, verify)
    }

    /// Opens a blob from the registries of `remote`; with `Verify::Digest` the whole blob is
    /// fetched and checked first.
    pub fn open_remote(
        remote: Arc<Remote>,
        repository: &str,
        fsid: &str,
        settings: &FetchSettings,
        verify: Verify,
    ) -> Result<RegistryBlob, FetchError> {
        let digest = digest_from_fsid(fsid).ok_or(FetchError::NotFound)?;
        let mut endpoints = Vec::new();
        for e in &remote.endpoints {
            let url = format!(
                "{}/v2/{repository}/blobs/{digest}",
                e.url.trim_end_matches('/')
            );
            let origin = head::origin(&url).map_err(FetchError::Protocol)?;
            endpoints.push(RegEndpoint {
                key: super::auth::registry_key(&origin.host, origin.port, origin.https),
                url,
                challenge_key: (origin.clone(), repository.to_string()),
                origin,
            });
        }
        if poisoned(&digest) {
            return Err(FetchError::Integrity(format!(
                "{} failed its digest check before; refused",
                head::redact(&endpoints[0].url)
            )));
        }
        let mut blob = RegistryBlob {
            remote,
            endpoints,
            repository: repository.to_string(),
            digest,
            size: 0,
            retries: settings.retries,
            data: Data::Streamed {
                in_order: Mutex::new(InOrder::new()),
                poisoned: AtomicBool::new(false),
            },
        };
        blob.size = with_retries(settings.retries, || {
            blob.on_endpoints(|ep| head_size(&blob.request(ep, Method::Head, None)?))
        })?;
        if verify == Verify::Digest {
            let dir = settings.spool.clone().unwrap_or_else(std::env::temp_dir);
            let file = blob.spool(&dir)?;
            blob.data = Data::Spooled(file);
        }
        Ok(blob)
    }

    /// The URL shown in logs: the endpoint that serves now.
    fn shown(&self) -> String {
        head::redact(&self.endpoints[self.remote.order()[0]].url)
    }

    /// Runs `f` against the registries in the remote's order until one answers; failures
    /// another registry may not share (connection errors, 5xx) move on to the next.
    fn on_endpoints<T>(
        &self,
        mut f: impl FnMut(&RegEndpoint) -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut last = None;
        for i in self.remote.order() {
            let started = Instant::now();
            match f(&self.endpoints[i]) {
                Ok(v) => {
                    self.remote.succeeded(i, started.elapsed());
                    return Ok(v);
                }
                Err(e) if e.retryable() => {
                    self.remote.failed(i, &e.to_string());
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(FetchError::NotFound))
    }

    /// The challenge of a 401, checked: Basic, or a Bearer realm on http(s), never plain
    /// http for an https registry (credentials and the token would travel in clear).
    fn challenge_of(&self, ep: &RegEndpoint, answer: &Answer) -> Result<Challenge, FetchError> {
        let header = answer.header("www-authenticate").unwrap_or("").trim();
        if header
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
            || header.eq_ignore_ascii_case("basic")
        {
            return Ok(Challenge::Basic);
        }
        let (realm, mut params) = head::parse_bearer_challenge(header).ok_or_else(|| {
            FetchError::Protocol(format!(
                "{}: 401 without a supported Basic or Bearer challenge",
                head::redact(&ep.url)
            ))
        })?;
        let realm_origin = head::origin(&realm)
            .map_err(|e| FetchError::Protocol(format!("token realm refused: {e}")))?;
        if ep.origin.https && !realm_origin.https {
            return Err(FetchError::Protocol(format!(
                "token realm refused: {} is plain http for an https registry",
                head::redact(&realm)
            )));
        }
        let scope = match params.iter().find(|(k, _)| k == "scope") {
            Some((_, s)) => s.clone(),
            None => {
                let s = format!("repository:{}:pull", self.repository);
                params.push(("scope".into(), s.clone()));
                s
            }
        };
        Ok(Challenge::Bearer {
            realm,
            params,
            key: TokenKey {
                registry: ep.origin.clone(),
                repository: self.repository.clone(),
                scope,
                credential: [0; 32],
            },
        })
    }

    fn credential(&self, ep: &RegEndpoint) -> Result<Option<Credential>, FetchError> {
        self.remote
            .credentials
            .get(&ep.key, &self.repository)
            .map_err(|e| FetchError::Protocol(e.to_string()))
    }

    /// The `Authorization` value for a request to `ep` under `challenge`; `stale` is the one
    /// just refused.
    fn auth_header(
        &self,
        challenge: Option<&Challenge>,
        cred: Option<&Credential>,
        stale: Option<&Secret>,
    ) -> Result<Option<Arc<Secret>>, FetchError> {
        Ok(match (challenge, cred) {
            (_, Some(c @ Credential::Bearer(_))) => c.header().map(Arc::new),
            (None, _) => None,
            (Some(Challenge::Basic), Some(c)) => c.header().map(Arc::new),
            (Some(Challenge::Basic), None) => None,
            (Some(Challenge::Bearer { realm, params, key }), cred) => Some(token_for(
                &self.remote.agent,
                realm,
                params,
                key,
                cred,
                stale,
            )?),
        })
    }

    /// One request to the registry `ep`, with what it asks for: a 401 learns the challenge,
    /// reads the credentials again (a rotated file takes effect here), fetches a fresh token
    /// and retries the request once.
    fn request(
        &self,
        ep: &RegEndpoint,
        method: Method,
        range: Option<(u64, u64)>,
    ) -> Result<Answer, FetchError> {
        let known = CHALLENGES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ep.challenge_key)
            .cloned();
        let used = match &known {
            Some(_) => self.auth_header(known.as_deref(), self.credential(ep)?.as_ref(), None)?,
            None => match self.credential(ep)? {
                Some(c @ Credential::Bearer(_)) => c.header().map(Arc::new),
                _ => None,
            },
        };
        let answer = self.send_with(ep, method, range, used.as_deref())?;
        if answer.status() != 401 {
            return Ok(answer);
        }
        let ch = Arc::new(self.challenge_of(ep, &answer)?);
        CHALLENGES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ep.challenge_key.clone(), ch.clone());
        if used.is_some() {
            self.remote.credentials.refresh();
        }
        let cred = self.credential(ep)?;
        let Some(fresh) = self.auth_header(Some(&ch), cred.as_ref(), used.as_deref())? else {
            return Err(FetchError::Status(401));
        };
        if used.as_deref() == Some(&*fresh) {
            self.remote.credentials.refresh();
            return Err(FetchError::Status(401));
        }
        let answer = self.send_with(ep, method, range, Some(&fresh))?;
        match answer.status() {
            401 => {
                // Refused: whatever the files say next time is read then.
                self.remote.credentials.refresh();
                Err(FetchError::Status(401))
            }
            _ => Ok(answer),
        }
    }

    fn send_with(
        &self,
        ep: &RegEndpoint,
        method: Method,
        range: Option<(u64, u64)>,
        header: Option<&Secret>,
    ) -> Result<Answer, FetchError> {
        let auth = header.map(|h| Auth {
            origin: &ep.origin,
            header: h,
        });
        send(
            &self.remote.agent,
            method,
            &ep.url,
            &[],
            range,
            auth.as_ref(),
        )
    }

    fn fetch(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        let end = off + buf.len() as u64 - 1;
        with_retries(self.retries, || {
            self.on_endpoints(|ep| {
                let answer = self.request(ep, Method::Get, Some((off, end)))?;
                read_range(answer, off, buf, self.size)
            })
        })
    }

    fn mismatch(&self, got: &str) -> FetchError {
        INTEGRITY_FAILURES.fetch_add(1, Ordering::Relaxed);
        POISONED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.digest.clone());
        FetchError::Integrity(format!(
            "{} has digest {got}, expected {}",
            self.shown(),
            self.digest
        ))
    }

    /// Fetches the whole blob into an unlinked file in `dir`, hashing it on the way.
    fn spool(&self, dir: &Path) -> Result<File, FetchError> {
        const PIECE: u64 = 4 << 20;
        let file = spool_file(dir)?;
        let free = nix::sys::statvfs::fstatvfs(&file)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        if free < self.size {
            return Err(FetchError::Io(format!(
                "spooling {} needs {} bytes, {} has {free} free",
                self.shown(),
                self.size,
                dir.display()
            )));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; PIECE.min(self.size) as usize];
        let mut off = 0;
        while off < self.size {
            let n = PIECE.min(self.size - off) as usize;
            self.fetch(off, &mut buf[..n])?;
            hasher.update(&buf[..n]);
            file.write_all_at(&buf[..n], off)
                .map_err(|e| FetchError::Io(format!("spool in {}: {e}", dir.display())))?;
            off += n as u64;
        }
        let got = sha256_string(hasher);
        if got != self.digest {
            let e = self.mismatch(&got);
            log::error!("integrity error: {e}; the OPEN is refused");
            return Err(e);
        }
        log::debug!("{}: digest verified", self.shown());
        Ok(file)
    }
}

/// An anonymous file in `dir`: `O_TMPFILE` where the filesystem has it, else a fresh name
/// unlinked at once. Either way nothing is left behind when the daemon dies.
fn spool_file(dir: &Path) -> Result<File, FetchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| FetchError::Io(format!("spool in {}: {e}", dir.display()));
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(OFlag::O_TMPFILE.bits())
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e) if e.raw_os_error() == Some(Errno::EOPNOTSUPP as i32) => {}
        Err(e) if e.raw_os_error() == Some(Errno::EISDIR as i32) => {}
        Err(e) => return Err(err(e)),
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = dir.join(format!(
        ".cachefilesd-spool-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&name)
        .map_err(err)?;
    std::fs::remove_file(&name).map_err(err)?;
    Ok(f)
}

impl Blob for RegistryBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        super::check_read(self.size, off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let (in_order, poisoned) = match &self.data {
            Data::Spooled(file) => {
                return file
                    .read_exact_at(buf, off)
                    .map_err(|e| FetchError::Io(format!("spooled {}: {e}", self.shown())))
            }
            Data::Streamed { in_order, poisoned } => (in_order, poisoned),
        };
        let refuse = || {
            FetchError::Integrity(format!(
                "{} failed its digest check; no read of it is served",
                self.shown()
            ))
        };
        if poisoned.load(Ordering::Acquire) {
            return Err(refuse());
        }
        self.fetch(off, buf)?;
        let mut v = in_order.lock().unwrap_or_else(|e| e.into_inner());
        if poisoned.load(Ordering::Acquire) {
            return Err(refuse());
        }
        match v.feed(off, buf, self.size) {
            Some(got) if got != self.digest => {
                poisoned.store(true, Ordering::Release);
                let e = self.mismatch(&got);
                log::error!("integrity error: {e}; every further read of it fails");
                Err(e)
            }
            Some(_) => {
                log::debug!("{}: digest verified", self.shown());
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn describe(&self) -> String {
        self.shown()
    }

    fn is_remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            sha256_string(Sha256::new()),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn reads_out_of_order_and_overlapping_are_hashed_in_blob_order() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        let want = sha256_string(Sha256::new_with_prefix(&blob));
        let size = blob.len() as u64;
        let piece = |a: usize, b: usize| (a as u64, &blob[a..b]);
        let mut v = InOrder::new();
        // Ahead of the prefix, overlapping each other and the prefix, one repeated.
        for (off, data) in [
            piece(6000, 10_000),
            piece(3000, 7000),
            piece(3000, 5000),
            piece(9000, 10_000),
        ] {
            assert_eq!(v.feed(off, data, size), None);
        }
        assert_eq!(v.feed(0, &blob[..3500], size), Some(want.clone()));
        assert_eq!(v.pending_bytes, 0);
        // Done: nothing more is reported.
        assert_eq!(v.feed(0, &blob[..100], size), None);

        // In order, and a wrong byte gives another digest.
        let mut v = InOrder::new();
        assert_eq!(v.feed(0, &blob[..5000], size), None);
        let mut bad = blob[5000..].to_vec();
        bad[17] ^= 1;
        let got = v.feed(5000, &bad, size).unwrap();
        assert_ne!(got, want);

        // Too much waiting ahead: the check is given up and the memory freed.
        let big = vec![0u8; MAX_PENDING / 2 + 1];
        let mut v = InOrder::new();
        let size = 3 * big.len() as u64;
        assert_eq!(v.feed(big.len() as u64, &big, size), None);
        assert_eq!(v.feed(2 * big.len() as u64, &big, size), None);
        assert!(v.hasher.is_none() && v.pending.is_empty() && v.pending_bytes == 0);
        assert_eq!(v.feed(0, &big, size), None);
        // Waiting bytes of a blob that is dropped are returned to the shared budget (no other
        // test in this binary feeds an InOrder).
        let mut v = InOrder::new();
        assert_eq!(v.feed(10, &blob[10..20], 100), None);
        assert_eq!(PENDING_TOTAL.load(Ordering::Relaxed), 10);
        drop(v);
        assert_eq!(PENDING_TOTAL.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn spool_files_leave_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let f = spool_file(dir.path()).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        let mut back = [0u8; 3];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"abc");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
