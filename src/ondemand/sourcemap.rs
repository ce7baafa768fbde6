//! The on-demand source map: which `[[source]]` serves a blob, matched on domain and fsid.
//!
//! An ordered list of `[[source]]` entries in a TOML file; the first whose `domain` and `fsid`
//! globs match serves the blob. `{fsid}` and `{domain}` are substituted only after validation,
//! so a mount option can never steer the daemon outside the configured place.

use super::prefetch::PrefetchSpec;
use super::sources::auth::{CredentialSpec, Secret};
use super::sources::head::redact;
use super::sources::{Access, Remote};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a blob comes from. Remote locations carry their source's client and endpoints; in a
/// [`Source`] the URLs are templates, in what [`SourceMap::resolve`] answers they are filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Path(PathBuf),
    /// The blob's URL at each endpoint of `remote` (`url`, or `urls` in order).
    Url {
        urls: Vec<String>,
        remote: Arc<Remote>,
    },
    /// The registries are the endpoints of `remote` (`registry`, then `mirrors`).
    Registry {
        repository: String,
        verify: Verify,
        remote: Arc<Remote>,
    },
}

/// How a registry blob's bytes are checked against its digest (`verify` in a `[[source]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// Served as fetched; reads that cover the blob in order are hashed, and a mismatch fails
    /// that read and every later one.
    #[default]
    InOrder,
    /// The whole blob is fetched and its sha256 checked before the OPEN succeeds.
    Digest,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub index: usize,
    pub domain: glob::Pattern,
    pub fsid: glob::Pattern,
    pub location: Location,
    /// What to fill in the background after each OPEN (or attach) of a blob it serves.
    pub prefetch: Option<PrefetchSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    pub workers: usize,
    /// The largest readahead, bytes beyond the asked range (a multiple of the page size):
    /// each object's window grows up to it while read sequentially (`readahead.rs`).
    pub readahead: u64,
    pub timeout: Duration,
    pub retries: u32,
    /// Where `verify = "digest"` spools whole blobs (unlinked files); the system temp dir
    /// when unset.
    pub spool: Option<PathBuf>,
    /// The cap on all background prefetch together, bytes per second (0: none).
    pub prefetch_rate: u64,
}

/// `[fetch] prefetch_rate` unless set: about a fifth of a gigabit link, so a prefetch leaves
/// most of a typical network to foreground reads and everything else on the host.
pub const DEFAULT_PREFETCH_RATE: u64 = 20 << 20;

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            workers: 4,
            // Measured in the VM (ondemand-bench): a cold read of a 256 MiB image reached
            // 0.36x a loop mount's throughput with 0, 0.76x with 1 MiB, 1.10x with 2 MiB;
            // each kernel READ asks for 128 KiB and every round trip costs. Now the maximum of
            // the adaptive window: random reads get none.
            readahead: 2 << 20,
            timeout: Duration::from_secs(30),
            retries: 3,
            spool: None,
            prefetch_rate: DEFAULT_PREFETCH_RATE,
        }
    }
}

/// Which kernel interface serves the blobs (`frontend` in the map).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FrontEndChoice {
    /// `bind ondemand` where the kernel has it, else fanotify: a refused `bind ondemand`
    /// fails with EINVAL ("'bind' command doesn't take an argument", fs/cachefiles/daemon.c,
    /// kernels without CONFIG_CACHEFILES_ONDEMAND and every kernel from 7.2 on).
    #[default]
    Auto,
    /// `bind ondemand` (EROFS over fscache, `fsid=` mounts; Linux 5.19 to 7.1).
    Cachefiles,
    /// FAN_PRE_ACCESS on a sparse file per attached blob (file-backed EROFS; Linux 6.14+).
    Fanotify,
}

impl FrontEndChoice {
    fn parse(s: &str) -> Result<FrontEndChoice, String> {
        match s {
            "auto" => Ok(FrontEndChoice::Auto),
            "cachefiles" => Ok(FrontEndChoice::Cachefiles),
            "fanotify" => Ok(FrontEndChoice::Fanotify),
            _ => Err(format!(
                "frontend {s:?} must be \"auto\", \"cachefiles\" or \"fanotify\""
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceMap {
    pub sources: Vec<Source>,
    pub fetch: FetchSettings,
    pub frontend: FrontEndChoice,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    frontend: Option<String>,
    #[serde(default)]
    source: Vec<RawSource>,
    fetch: Option<RawFetch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default = "star")]
    domain: String,
    #[serde(default = "star")]
    fsid: String,
    path: Option<String>,
    url: Option<String>,
    urls: Option<Vec<String>>,
    registry: Option<String>,
    mirrors: Option<Vec<String>>,
    repository: Option<String>,
    verify: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    token_file: Option<String>,
    auth_file: Option<String>,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    insecure: Option<bool>,
    proxy: Option<String>,
    prefetch: Option<toml::Value>,
}

fn star() -> String {
    "*".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    workers: Option<u64>,
    readahead: Option<u64>,
    /// Seconds.
    timeout: Option<f64>,
    retries: Option<u32>,
    spool: Option<String>,
    /// Bytes per second.
    prefetch_rate: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SourceMapError {
    pub path: String,
    pub message: String,
}

/// Longest fsid or domain accepted (the kernel's key limit is NAME_MAX-ish too).
pub const MAX_NAME: usize = 255;

/// A name that is safe to put into a path component or a URL path segment unescaped.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && !name.windows(2).any(|w| w == b"..")
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~:+,=@".contains(&b))
}

impl RawSource {
    /// The `n`th `[[source]]` (from 1), checked; the error names it.
    fn validate(self, n: usize, fetch: &FetchSettings) -> Result<Source, String> {
        let pattern = |what: &str, p: &str| {
            glob::Pattern::new(p).map_err(|e| format!("source {n}: {what} pattern {p:?}: {e}"))
        };
        if self.verify.is_some() && self.registry.is_none() {
            return Err(format!(
                "source {n}: verify applies to registry sources only"
            ));
        }
        if self.mirrors.is_some() && self.registry.is_none() {
            return Err(format!(
                "source {n}: mirrors apply to registry sources only"
            ));
        }
        let access = self.access(n)?;
        let prefetch = (self.prefetch.as_ref())
            .map(PrefetchSpec::from_toml)
            .transpose()
            .map_err(|e| format!("source {n}: {e}"))?;
        let url = match (self.url, self.urls) {
            (Some(u), None) => Some(vec![u]),
            (None, Some(us)) if us.is_empty() => return Err(format!("source {n}: urls is empty")),
            (None, us) => us,
            (Some(_), Some(_)) => return Err(format!("source {n}: give url or urls, not both")),
        };
        let location = match (self.path, url, self.registry, self.repository) {
            (Some(p), None, None, None) => {
                if access != Access::default() {
                    return Err(format!(
                        "source {n}: credentials, TLS and proxy settings apply to url and registry sources only"
                    ));
                }
                path_location(n, p)?
            }
            (None, Some(us), None, None) => url_location(n, us, fetch, &access)?,
            (None, None, Some(r), Some(repo)) => {
                let mut all = vec![r];
                all.extend(self.mirrors.unwrap_or_default());
                registry_location(n, all, repo, self.verify.as_deref(), fetch, &access)?
            }
            (None, None, Some(_), None) => {
                return Err(format!("source {n}: registry needs a repository"))
            }
            (None, None, None, Some(_)) => {
                return Err(format!("source {n}: repository needs a registry"))
            }
            (None, None, None, None) => {
                return Err(format!("source {n}: needs one of path, url or registry"))
            }
            _ => {
                return Err(format!(
                    "source {n}: give only one of path, url or registry"
                ))
            }
        };
        Ok(Source {
            index: n,
            domain: pattern("domain", &self.domain)?,
            fsid: pattern("fsid", &self.fsid)?,
            location,
            prefetch,
        })
    }

    /// The credential, TLS and proxy settings, checked.
    fn access(&self, n: usize) -> Result<Access, String> {
        let abs = |what: &str, p: &Option<String>| -> Result<Option<PathBuf>, String> {
            match p {
                Some(p) if !p.starts_with('/') => {
                    Err(format!("source {n}: {what} {p:?} must be absolute"))
                }
                p => Ok(p.as_ref().map(PathBuf::from)),
            }
        };
        let password_file = abs("password_file", &self.password_file)?;
        let token_file = abs("token_file", &self.token_file)?;
        let auth_file = abs("auth_file", &self.auth_file)?;
        let credentials = match (&self.username, password_file, token_file, auth_file) {
            (None, None, None, None) => CredentialSpec::Default,
            (Some(u), Some(p), None, None) => {
                if u.is_empty() || u.contains(':') || u.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "source {n}: username {u:?} must be non-empty, without ':' or control characters"
                    ));
                }
                CredentialSpec::Basic {
                    username: u.clone(),
                    password_file: p,
                }
            }
            (Some(_), None, None, None) => {
                return Err(format!("source {n}: username needs a password_file"))
            }
            (None, Some(_), None, None) => {
                return Err(format!("source {n}: password_file needs a username"))
            }
            (None, None, Some(t), None) => CredentialSpec::TokenFile(t),
            (None, None, None, Some(a)) => CredentialSpec::AuthFile(a),
            _ => {
                return Err(format!(
                    "source {n}: give only one of username + password_file, token_file or auth_file"
                ))
            }
        };
        let proxy = match &self.proxy {
            Some(p)
                if !(p.starts_with("http://")
                    || p.starts_with("https://")
                    || p.starts_with("socks5://")) =>
            {
                return Err(format!(
                    "source {n}: proxy {:?} must start with http://, https:// or socks5://",
                    redact(p)
                ))
            }
            p => p.clone().map(Secret::new),
        };
        Ok(Access {
            credentials,
            ca_file: abs("ca_file", &self.ca_file)?,
            client_cert: abs("client_cert", &self.client_cert)?,
            client_key: abs("client_key", &self.client_key)?,
            insecure: self.insecure.unwrap_or(false),
            proxy,
        })
    }
}

fn path_location(n: usize, p: String) -> Result<Location, String> {
    if !p.starts_with('/') {
        return Err(format!("source {n}: path {p:?} must be absolute"));
    }
    check_template(&p).map_err(|m| format!("source {n}: path {p:?}: {m}"))?;
    Ok(Location::Path(PathBuf::from(p)))
}

fn url_location(
    n: usize,
    urls: Vec<String>,
    fetch: &FetchSettings,
    access: &Access,
) -> Result<Location, String> {
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!(
                "source {n}: url {:?} must start with http:// or https://",
                redact(u)
            ));
        }
        check_template(u).map_err(|m| format!("source {n}: url {:?}: {m}", redact(u)))?;
    }
    let remote =
        Remote::new(urls.clone(), fetch, access, false).map_err(|e| format!("source {n}: {e}"))?;
    Ok(Location::Url { urls, remote })
}

fn registry_location(
    n: usize,
    registries: Vec<String>,
    repo: String,
    verify: Option<&str>,
    fetch: &FetchSettings,
    access: &Access,
) -> Result<Location, String> {
    let mut bases = Vec::new();
    for r in registries {
        if !(r.starts_with("http://") || r.starts_with("https://")) {
            return Err(format!(
                "source {n}: registry {:?} must start with http:// or https://",
                redact(&r)
            ));
        }
        if let Err(e) = super::sources::head::origin(&r) {
            return Err(format!("source {n}: registry: {e}"));
        }
        bases.push(r.trim_end_matches('/').to_string());
    }
    if repo.is_empty() || repo.split('/').any(|c| !is_safe_name(c.as_bytes())) {
        return Err(format!(
            "source {n}: repository {repo:?} is not a valid repository name"
        ));
    }
    let verify = match verify {
        None | Some("in-order") => Verify::InOrder,
        Some("digest") => Verify::Digest,
        Some(v) => {
            return Err(format!(
                "source {n}: verify {v:?} must be \"digest\" or \"in-order\""
            ))
        }
    };
    let remote = Remote::new(bases, fetch, access, true).map_err(|e| format!("source {n}: {e}"))?;
    Ok(Location::Registry {
        repository: repo,
        verify,
        remote,
    })
}

impl RawFetch {
    /// The `[fetch]` table, checked, over the defaults.
    fn validate(self) -> Result<FetchSettings, String> {
        let mut fetch = FetchSettings::default();
        if let Some(w) = self.workers {
            if !(1..=256).contains(&w) {
                return Err(format!("fetch.workers {w} must be 1..256"));
            }
            fetch.workers = w as usize;
        }
        if let Some(r) = self.readahead {
            if r % 4096 != 0 || r > 64 << 20 {
                return Err(format!(
                    "fetch.readahead {r} must be a multiple of 4096 up to 64 MiB"
                ));
            }
            fetch.readahead = r;
        }
        if let Some(t) = self.timeout {
            if !(t > 0.0 && t <= 3600.0) {
                return Err(format!(
                    "fetch.timeout {t} must be between 0 and 3600 seconds"
                ));
            }
            fetch.timeout = Duration::from_secs_f64(t);
        }
        if let Some(r) = self.retries {
            if r > 10 {
                return Err(format!("fetch.retries {r} must be at most 10"));
            }
            fetch.retries = r;
        }
        if let Some(d) = self.spool {
            if !d.starts_with('/') {
                return Err(format!("fetch.spool {d:?} must be absolute"));
            }
            fetch.spool = Some(PathBuf::from(d));
        }
        if let Some(r) = self.prefetch_rate {
            if r != 0 && r < 64 << 10 {
                return Err(format!(
                    "fetch.prefetch_rate {r} must be 0 (no cap) or at least 65536 bytes/s"
                ));
            }
            fetch.prefetch_rate = r;
        }
        Ok(fetch)
    }
}

impl SourceMap {
    pub fn load(path: &Path) -> Result<SourceMap, SourceMapError> {
        let text = std::fs::read_to_string(path).map_err(|e| SourceMapError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        SourceMap::parse(&path.display().to_string(), &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<SourceMap, SourceMapError> {
        let err = |message: String| SourceMapError {
            path: name.to_string(),
            message,
        };
        let raw: RawMap =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if raw.source.is_empty() {
            return Err(err("no [[source]] entries".into()));
        }
        // First: each remote source's client is built with these timeouts.
        let fetch = match raw.fetch {
            Some(f) => f.validate().map_err(err)?,
            None => FetchSettings::default(),
        };
        let mut sources = Vec::new();
        for (i, s) in raw.source.into_iter().enumerate() {
            sources.push(s.validate(i + 1, &fetch).map_err(err)?);
        }
        let frontend = match raw.frontend {
            Some(f) => FrontEndChoice::parse(&f).map_err(err)?,
            None => FrontEndChoice::Auto,
        };
        Ok(SourceMap {
            sources,
            fetch,
            frontend,
        })
    }

    /// The first source matching, and its location with the names substituted. `None` when
    /// nothing matches or a name is unsafe.
    pub fn resolve(&self, domain: &[u8], fsid: &[u8]) -> Option<(&Source, Location)> {
        if !is_safe_name(domain) || !is_safe_name(fsid) {
            return None;
        }
        let domain = std::str::from_utf8(domain).ok()?;
        let fsid = std::str::from_utf8(fsid).ok()?;
        let source = self
            .sources
            .iter()
            .find(|s| s.domain.matches(domain) && s.fsid.matches(fsid))?;
        let fill = |t: &str| t.replace("{fsid}", fsid).replace("{domain}", domain);
        let location = match &source.location {
            Location::Path(p) => Location::Path(PathBuf::from(fill(&p.to_string_lossy()))),
            Location::Url { urls, remote } => Location::Url {
                urls: urls.iter().map(|u| fill(u)).collect(),
                remote: remote.clone(),
            },
            registry @ Location::Registry { .. } => registry.clone(),
        };
        Some((source, location))
    }

    /// Makes every remote source read its credentials again at its next request (SIGHUP):
    /// a rotated password or token file, a new `docker login`. What was reloaded, one line
    /// per source, without secrets.
    pub fn reload_credentials(&self) -> Vec<String> {
        let mut done = Vec::new();
        for s in &self.sources {
            let remote = match &s.location {
                Location::Path(_) => continue,
                Location::Url { remote, .. } | Location::Registry { remote, .. } => remote,
            };
            remote.credentials.refresh();
            let what = match remote.credentials.spec() {
                CredentialSpec::Default => "the default auth files".to_string(),
                CredentialSpec::Basic { password_file, .. } => {
                    format!("password_file {}", password_file.display())
                }
                CredentialSpec::TokenFile(p) => format!("token_file {}", p.display()),
                CredentialSpec::AuthFile(p) => format!("auth_file {}", p.display()),
            };
            done.push(format!("source {}: {what}", s.index));
        }
        done
    }

    /// Whether any source fetches over the network (the unit then needs network access).
    pub fn uses_network(&self) -> bool {
        self.sources
            .iter()
            .any(|s| !matches!(s.location, Location::Path(_)))
    }
}

fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        if !(after.starts_with("{fsid}") || after.starts_with("{domain}")) {
            return Err("only {fsid} and {domain} may appear in braces".into());
        }
        rest = &rest[i + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::prefetch::ByteRange;
    use super::*;

    /// Load errors reach the terminal and the log: a URL in them is shown without user info
    /// or query, as everywhere else (SECURITY.md, "Secrets in output").
    #[test]
    fn errors_never_quote_a_urls_secrets() {
        for map in [
            "[[source]]\nurl = \"https://u:hunter2@h.test/{bad}?sig=hunter2\"\n",
            "[[source]]\nurl = \"ftp://u:hunter2@h.test/{fsid}?sig=hunter2\"\n",
            "[[source]]\nregistry = \"ftp://u:hunter2@r.test\"\nrepository = \"a\"\n",
        ] {
            let e = SourceMap::parse("t.toml", map).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("h.test") || e.contains("r.test"), "{e}");
        }
    }

    const EXAMPLE: &str = r#"
[[source]]
domain = "images"
fsid = "app-*"
path = "/srv/erofs/{domain}/{fsid}.img"
prefetch = "all"

[[source]]
fsid = "sha256:*"
registry = "https://registry.example.org/"
repository = "library/app"
verify = "digest"

[[source]]
url = "https://blobs.example.org/{domain}/{fsid}"
prefetch = ["0-1048576", "4194304-"]

[fetch]
workers = 8
readahead = 131072
timeout = 2.5
retries = 1
spool = "/var/tmp"
prefetch_rate = 1048576
"#;

    #[test]
    fn first_match_wins_and_names_are_substituted() {
        let m = SourceMap::parse("t.toml", EXAMPLE).unwrap();
        assert_eq!(
            m.fetch,
            FetchSettings {
                workers: 8,
                readahead: 131072,
                timeout: Duration::from_millis(2500),
                retries: 1,
                spool: Some("/var/tmp".into()),
                prefetch_rate: 1 << 20,
            }
        );
        assert_eq!(m.sources[0].prefetch, Some(PrefetchSpec::All));
        assert_eq!(m.sources[1].prefetch, None);
        assert_eq!(
            m.sources[2].prefetch,
            Some(PrefetchSpec::Ranges(vec![
                ByteRange {
                    start: 0,
                    end: Some(1 << 20)
                },
                ByteRange {
                    start: 4 << 20,
                    end: None
                }
            ]))
        );
        let (s, loc) = m.resolve(b"images", b"app-1").unwrap();
        assert_eq!(s.index, 1);
        assert_eq!(loc, Location::Path("/srv/erofs/images/app-1.img".into()));
        let (s, loc) = m.resolve(b"images", b"sha256:abcd").unwrap();
        assert_eq!(s.index, 2);
        let Location::Registry {
            repository,
            verify,
            remote,
        } = loc
        else {
            panic!("{loc:?}")
        };
        assert_eq!(
            (repository.as_str(), verify),
            ("library/app", Verify::Digest)
        );
        assert_eq!(remote.endpoints[0].url, "https://registry.example.org");
        let (_, loc) = m.resolve(b"other", b"blob1").unwrap();
        let Location::Url { urls, .. } = loc else {
            panic!("{loc:?}")
        };
        assert_eq!(urls, ["https://blobs.example.org/other/blob1"]);
        assert!(m.uses_network());
    }

    #[test]
    fn mirrors_credentials_tls_and_proxy_settings() {
        let m = SourceMap::parse(
            "t.toml",
            r#"
[[source]]
urls = ["http://a.test/{fsid}", "http://b.test/x/{fsid}"]
username = "alice"
password_file = "/etc/pw"
proxy = "http://u:hunter2@127.0.0.1:3128"

[[source]]
registry = "https://r.test"
mirrors = ["https://m1.test/", "http://m2.test:5000"]
repository = "lib/app"
auth_file = "/run/auth.json"
insecure = true
"#,
        )
        .unwrap();
        let (_, loc) = m.resolve(b"d", b"f1").unwrap();
        let Location::Url { urls, remote } = loc else {
            panic!()
        };
        assert_eq!(urls, ["http://a.test/f1", "http://b.test/x/f1"]);
        assert_eq!(remote.endpoints.len(), 2);
        assert_eq!(
            remote.credentials.spec(),
            &CredentialSpec::Basic {
                username: "alice".into(),
                password_file: "/etc/pw".into()
            }
        );
        let Location::Registry { remote, .. } = &m.sources[1].location else {
            panic!()
        };
        let bases: Vec<_> = remote.endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            bases,
            ["https://r.test", "https://m1.test", "http://m2.test:5000"]
        );
        assert_eq!(
            remote.credentials.spec(),
            &CredentialSpec::AuthFile("/run/auth.json".into())
        );
        // A proxy URL may carry a password: never in a message.
        let e = SourceMap::parse(
            "t.toml",
            "[[source]]
url = \"http://a/{fsid}\"
proxy = \"ftp://u:hunter2@p\"
",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("proxy") && !e.contains("hunter2"), "{e}");
        let debug = format!("{m:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(m.uses_network());
        assert_eq!(m.frontend, FrontEndChoice::Auto);
    }

    #[test]
    fn the_front_end_is_chosen_by_name() {
        for (name, choice) in [
            ("auto", FrontEndChoice::Auto),
            ("cachefiles", FrontEndChoice::Cachefiles),
            ("fanotify", FrontEndChoice::Fanotify),
        ] {
            let text = format!("frontend = \"{name}\"\n[[source]]\npath = \"/a\"\n");
            assert_eq!(SourceMap::parse("t", &text).unwrap().frontend, choice);
        }
    }

    #[test]
    fn hostile_names_never_resolve() {
        let m = SourceMap::parse("t.toml", "[[source]]\npath = \"/srv/{fsid}\"\n").unwrap();
        for bad in [
            &b"../etc/passwd"[..],
            b"..",
            b".",
            b"a/b",
            b"a\0b",
            b"a\nb",
            b"",
            b"a b",
            b"x?y",
            b"x#y",
            &[b'a'; 256][..],
            b"caf\xc3\xa9",
        ] {
            assert!(
                m.resolve(b"d", bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(m.resolve(bad, b"ok").is_none());
        }
        assert_eq!(
            m.resolve(b"d", b"ok.img").unwrap().1,
            Location::Path("/srv/ok.img".into())
        );
    }

    #[test]
    fn errors_are_clear() {
        let cases = [
            ("", "no [[source]] entries"),
            (
                "[[source]]\npath = \"/a\"\nprefetch = [\"/usr/bin/app\"]\n",
                "source 1: prefetch range \"/usr/bin/app\" must be START-END or START-",
            ),
            (
                "[[source]]\npath = \"/a\"\nprefetch = \"everything\"\n",
                "source 1: prefetch must be \"all\" or a list of 1 to 256 ranges",
            ),
            (
                "[[source]]\npath = \"/a\"\n[fetch]\nprefetch_rate = 1000\n",
                "fetch.prefetch_rate 1000 must be 0 (no cap) or at least 65536 bytes/s",
            ),
            (
                "[[source]]\n",
                "source 1: needs one of path, url or registry",
            ),
            (
                "[[source]]\npath = \"rel/{fsid}\"\n",
                "source 1: path \"rel/{fsid}\" must be absolute",
            ),
            (
                "[[source]]\npath = \"/a\"\nurl = \"http://x\"\n",
                "source 1: give only one of path, url or registry",
            ),
            (
                "[[source]]\nurl = \"ftp://x\"\n",
                "source 1: url \"ftp://x\" must start with http:// or https://",
            ),
            (
                "[[source]]\nregistry = \"http://r\"\n",
                "source 1: registry needs a repository",
            ),
            (
                "[[source]]\npath = \"/a/{key}\"\n",
                "source 1: path \"/a/{key}\": only {fsid} and {domain} may appear in braces",
            ),
            (
                "[[source]]\npath = \"/a\"\nfsid = \"[\"\n",
                "source 1: fsid pattern \"[\"",
            ),
            (
                "[[source]]\npath = \"/a\"\n[fetch]\nreadahead = 100\n",
                "fetch.readahead 100 must be a multiple of 4096",
            ),
            (
                "[[source]]\npath = \"/a\"\n[fetch]\nworkers = 0\n",
                "fetch.workers 0 must be 1..256",
            ),
            (
                "[[source]]\nregistry = \"https:///v2\"\nrepository = \"a\"\n",
                "source 1: registry: https:///v2 is not a valid URL",
            ),
            (
                "[[source]]\npath = \"/a\"\nverify = \"digest\"\n",
                "source 1: verify applies to registry sources only",
            ),
            (
                "[[source]]\nregistry = \"http://r\"\nrepository = \"a\"\nverify = \"sometimes\"\n",
                "source 1: verify \"sometimes\" must be \"digest\" or \"in-order\"",
            ),
            (
                "[[source]]\npath = \"/a\"\n[fetch]\nspool = \"tmp\"\n",
                "fetch.spool \"tmp\" must be absolute",
            ),
            (
                "[[source]]\npath = \"/a\"\nbogus = 1\n",
                "unknown field `bogus`",
            ),
            (
                "[[source]]\nurl = \"http://a\"\nusername = \"u\"\n",
                "source 1: username needs a password_file",
            ),
            (
                "[[source]]\nurl = \"http://a\"\ntoken_file = \"/t\"\nauth_file = \"/a\"\n",
                "give only one of username + password_file, token_file or auth_file",
            ),
            (
                "[[source]]\nurl = \"http://a\"\ntoken_file = \"t\"\n",
                "source 1: token_file \"t\" must be absolute",
            ),
            (
                "[[source]]\npath = \"/a\"\ninsecure = true\n",
                "apply to url and registry sources only",
            ),
            (
                "[[source]]\nurl = \"http://a\"\nmirrors = [\"http://b\"]\n",
                "source 1: mirrors apply to registry sources only",
            ),
            (
                "[[source]]\nurl = \"http://a\"\nurls = [\"http://b\"]\n",
                "source 1: give url or urls, not both",
            ),
            (
                "[[source]]\nurl = \"https://a\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "source 1: cannot read /nonexistent/ca.pem",
            ),
            (
                "[[source]]\nurl = \"https://a\"\nclient_cert = \"/c.pem\"\n",
                "client_cert and client_key go together",
            ),
            (
                "frontend = \"fuse\"\n[[source]]\npath = \"/a\"\n",
                "frontend \"fuse\" must be \"auto\", \"cachefiles\" or \"fanotify\"",
            ),
        ];
        for (text, expected) in cases {
            let e = SourceMap::parse("t.toml", text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}
