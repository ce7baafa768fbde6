//! Credentials for remote sources: configured files, Docker/Podman auth files, credential helpers.
//!
//! Every secret is a [`Secret`], whose `Debug` and `Display` print `<redacted>`, so no log
//! line, status report or error message can carry one by accident. Credentials are read when
//! they are first needed, again after a server refused them, at most a minute after the
//! last read, and at once after a SIGHUP (`SourceMap::reload_credentials`): a rotated
//! password file or a `docker login` takes effect at the next token fetch.

use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A password, token or other secret: printable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a source presents to a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP Basic; for registries also what the token service is asked with.
    Basic { username: String, password: Secret },
    /// A static bearer token sent as is.
    Bearer(Secret),
    /// An OAuth2 refresh token (`identitytoken`): exchanged at the token service.
    Identity(Secret),
}

impl Credential {
    /// The `Authorization` header value sent to the server itself (not for `Identity`).
    pub fn header(&self) -> Option<Secret> {
        match self {
            Credential::Basic { username, password } => Some(Secret(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()))
            ))),
            Credential::Bearer(t) => Some(Secret(format!("Bearer {}", t.expose()))),
            Credential::Identity(_) => None,
        }
    }
}

/// Where a source's credentials come from (the `[[source]]` settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CredentialSpec {
    /// Nothing configured: registries look themselves up in the usual auth files.
    #[default]
    Default,
    /// `username` + `password_file`.
    Basic {
        username: String,
        password_file: PathBuf,
    },
    /// `token_file`: a static bearer token.
    TokenFile(PathBuf),
    /// `auth_file`: one Docker/Podman-style auth file.
    AuthFile(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("credential helper docker-credential-{helper}: {message}")]
    Helper { helper: String, message: String },
}

fn file_error(path: &Path, message: impl Into<String>) -> AuthError {
    AuthError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Largest credential file or helper answer read.
const MAX_CREDENTIAL_BYTES: u64 = 1 << 20;
/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

fn read_small(path: &Path) -> Result<String, AuthError> {
    let f = std::fs::File::open(path).map_err(|e| file_error(path, e.to_string()))?;
    let mut s = String::new();
    f.take(MAX_CREDENTIAL_BYTES)
        .read_to_string(&mut s)
        .map_err(|e| file_error(path, e.to_string()))?;
    Ok(s)
}

/// A secret file's content without its trailing newline; one printable line.
fn read_secret_file(path: &Path) -> Result<Secret, AuthError> {
    let s = read_small(path)?;
    let s = s.trim_end_matches(['\n', '\r']);
    if s.is_empty() || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(file_error(
            path,
            "must hold one line of printable ASCII (not shown)",
        ));
    }
    Ok(Secret(s.to_string()))
}

/// The auth files looked at when a registry source names none, in order: like podman, then
/// docker.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        files.push(Path::new(&d).join("config.json"));
    } else if let Some(h) = std::env::var_os("HOME") {
        files.push(Path::new(&h).join(".docker/config.json"));
    }
    files
}

/// `host[:port]` as auth files key a registry: the port only when it is not the default.
pub fn registry_key(host: &str, port: u16, https: bool) -> String {
    if port == if https { 443 } else { 80 } {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// An auth file's key reduced to `host[:port][/path]`, lowercase host.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    // Docker Hub's legacy key carries an API path that is not a namespace.
    let k = k.strip_suffix("/v1").or(k.strip_suffix("/v2")).unwrap_or(k);
    match k.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.to_ascii_lowercase()),
        None => k.to_ascii_lowercase(),
    }
}

/// The credential for `registry` (`host[:port]`) and `repository` in one auth file: the
/// `auths` entry with the longest matching key (`host`, `host/namespace`, ...), else its
/// credential helper. `Ok(None)` when the file has none, or does not exist.
pub fn from_auth_file(
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credential>, AuthError> {
    let text = match read_small(path) {
        Ok(t) => t,
        Err(_) if !path.exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_error(path, format!("not JSON: {e}")))?;
    // Docker Hub is served by registry-1.docker.io but keyed as index.docker.io (docker
    // login) or docker.io (podman login).
    let registry = match registry {
        "registry-1.docker.io" | "index.docker.io" => "docker.io",
        r => r,
    };
    let full = format!("{registry}/{repository}");
    let mut best: Option<(usize, &serde_json::Value)> = None;
    if let Some(auths) = json.get("auths").and_then(|a| a.as_object()) {
        for (key, entry) in auths {
            let k = match normalize_key(key) {
                k if k == "index.docker.io" || k == "registry-1.docker.io" => "docker.io".into(),
                k => k,
            };
            let matches =
                k == registry || (full.starts_with(&k) && full[k.len()..].starts_with('/'));
            if matches && best.is_none_or(|(len, _)| k.len() > len) {
                best = Some((k.len(), entry));
            }
        }
    }
    if let Some((_, entry)) = best {
        if let Some(c) = auth_entry(path, entry)? {
            return Ok(Some(c));
        }
    }
    let helper = json
        .get("credHelpers")
        .and_then(|h| h.get(registry))
        .or_else(|| json.get("credsStore"))
        .and_then(|h| h.as_str());
    // What docker asks its helpers for Docker Hub.
    let server = match registry {
        "docker.io" => "https://index.docker.io/v1/",
        r => r,
    };
    match helper {
        Some(h) => run_helper(h, server),
        None => Ok(None),
    }
}

/// One `auths` entry: `identitytoken`, or base64 `auth` of `user:password`, or
/// `username` + `password`.
fn auth_entry(path: &Path, entry: &serde_json::Value) -> Result<Option<Credential>, AuthError> {
    let s = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let Some(t) = s("identitytoken") {
        return Ok(Some(Credential::Identity(Secret(t.to_string()))));
    }
    if let Some(a) = s("auth") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| file_error(path, "an auth entry is not base64 (not shown)"))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| file_error(path, "an auth entry is not UTF-8 (not shown)"))?;
        let (user, pw) = raw
            .split_once(':')
            .ok_or_else(|| file_error(path, "an auth entry is not user:password (not shown)"))?;
        return Ok(Some(Credential::Basic {
            username: user.to_string(),
            password: Secret(pw.to_string()),
        }));
    }
    if let (Some(u), Some(p)) = (s("username"), s("password")) {
        return Ok(Some(Credential::Basic {
            username: u.to_string(),
            password: Secret(p.to_string()),
        }));
    }
    Ok(None)
}

/// Runs `docker-credential-NAME get` with `registry` on stdin: its answer's `Username` and
/// `Secret` (`<token>` as user name marks an identity token). Output is bounded and the
/// helper is killed after [`HELPER_TIMEOUT`]. "credentials not found" is `Ok(None)`.
pub fn run_helper(name: &str, registry: &str) -> Result<Option<Credential>, AuthError> {
    let err = |message: String| AuthError::Helper {
        helper: name.to_string(),
        message,
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(err("not a valid helper name".into()));
    }
    run_program(
        name,
        std::ffi::OsStr::new(&format!("docker-credential-{name}")),
        registry,
        HELPER_TIMEOUT,
    )
}

/// `run_helper` with the program to run (found on PATH unless a path) and its time limit.
fn run_program(
    name: &str,
    program: &std::ffi::OsStr,
    registry: &str,
    timeout: Duration,
) -> Result<Option<Credential>, AuthError> {
    let err = |message: String| AuthError::Helper {
        helper: name.to_string(),
        message,
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A helper that exits without reading is judged by its answer below.
        let _ = stdin.write_all(registry.as_bytes());
    }
    // Read here, non-blocking, between polls of the helper: a child it leaves behind (an
    // agent it started) may hold the pipe open for ever, so its end is not waited for.
    // What the helper wrote before exiting is in the pipe once it has exited.
    let mut stdout = child.stdout.take().expect("piped");
    let nonblocking = rustix::fs::fcntl_getfl(&stdout)
        .and_then(|fl| rustix::fs::fcntl_setfl(&stdout, fl | rustix::fs::OFlags::NONBLOCK));
    if let Err(e) = nonblocking {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err(format!("cannot read its answer: {e}")));
    }
    let mut out = Vec::new();
    let mut reading = true;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if reading {
            reading = read_available(&mut stdout, &mut out);
        }
        match child.try_wait() {
            Ok(Some(s)) => {
                if reading {
                    read_available(&mut stdout, &mut out);
                }
                break s;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!(
                    "no answer within {} s; killed",
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(err(e.to_string())),
        }
    };
    if !status.success() {
        // docker's helpers say this on stdout; anything else is not quoted (it may hold a
        // secret).
        if String::from_utf8_lossy(&out).contains("credentials not found") {
            return Ok(None);
        }
        return Err(err(format!("failed ({status})")));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out).map_err(|_| err("answer is not JSON (not shown)".into()))?;
    let user = json.get("Username").and_then(|v| v.as_str()).unwrap_or("");
    let secret = json
        .get("Secret")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("answer has no Secret".into()))?;
    Ok(Some(if user == "<token>" {
        Credential::Identity(Secret(secret.to_string()))
    } else {
        Credential::Basic {
            username: user.to_string(),
            password: Secret(secret.to_string()),
        }
    }))
}

/// Reads what a non-blocking pipe holds into `out`, up to [`MAX_CREDENTIAL_BYTES`]; false
/// once nothing more is to be read from it (closed, failed or over the bound).
fn read_available(pipe: &mut impl Read, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() as u64 > MAX_CREDENTIAL_BYTES {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// A source's credentials: read on first use per registry, kept until a server refuses them
/// or for [`CREDENTIAL_TTL`].
#[derive(Debug, Default)]
pub struct Credentials {
    spec: CredentialSpec,
    /// Whether the default auth files are looked at when `spec` is `Default`.
    auth_files: bool,
    cache: Mutex<HashMap<String, (Option<Credential>, Instant)>>,
}

/// How long credentials read are used before they are read again (a token service is asked
/// about as often: registry tokens typically live a minute or a few).
const CREDENTIAL_TTL: Duration = Duration::from_secs(60);

impl Credentials {
    pub fn new(spec: CredentialSpec, auth_files: bool) -> Credentials {
        Credentials {
            spec,
            auth_files,
            cache: Default::default(),
        }
    }

    pub fn spec(&self) -> &CredentialSpec {
        &self.spec
    }

    /// The credential for `registry` (`host[:port]`) and `repository`, if any.
    pub fn get(&self, registry: &str, repository: &str) -> Result<Option<Credential>, AuthError> {
        let key = format!("{registry}/{repository}");
        if let Some((c, read_at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if read_at.elapsed() < CREDENTIAL_TTL {
                return Ok(c.clone());
            }
        }
        let c = self.read(registry, repository)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (c.clone(), Instant::now()));
        Ok(c)
    }

    /// Forgets what was read: the next `get` reads the files (or asks the helper) again.
    pub fn refresh(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn read(&self, registry: &str, repository: &str) -> Result<Option<Credential>, AuthError> {
        match &self.spec {
            CredentialSpec::Basic {
                username,
                password_file,
            } => Ok(Some(Credential::Basic {
                username: username.clone(),
                password: read_secret_file(password_file)?,
            })),
            CredentialSpec::TokenFile(p) => Ok(Some(Credential::Bearer(read_secret_file(p)?))),
            CredentialSpec::AuthFile(p) => from_auth_file(p, registry, repository),
            CredentialSpec::Default if self.auth_files => {
                for f in default_auth_files() {
                    if let Some(c) = from_auth_file(&f, registry, repository)? {
                        return Ok(Some(c));
                    }
                }
                Ok(None)
            }
            CredentialSpec::Default => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let c = Credential::Basic {
            username: "alice".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{c:?} {} {:?}", Secret::new("hunter2"), c.header());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
        assert_eq!(c.header().unwrap().expose(), "Basic YWxpY2U6aHVudGVyMg==");
    }

    #[test]
    fn auth_files_match_the_longest_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(
            &f,
            r#"{"auths": {
                "https://reg.test:5000/v2/": {"auth": "YWxpY2U6cHcx"},
                "reg.test:5000/team": {"username": "bob", "password": "pw2"},
                "other.test": {"identitytoken": "idtok"}
            }}"#,
        )
        .unwrap();
        let basic = |u: &str, p: &str| {
            Some(Credential::Basic {
                username: u.into(),
                password: Secret::new(p),
            })
        };
        assert_eq!(
            from_auth_file(&f, "reg.test:5000", "lib/app").unwrap(),
            basic("alice", "pw1")
        );
        assert_eq!(
            from_auth_file(&f, "reg.test:5000", "team/app").unwrap(),
            basic("bob", "pw2")
        );
        assert_eq!(
            from_auth_file(&f, "reg.test:5000", "teamx/app").unwrap(),
            basic("alice", "pw1")
        );
        assert_eq!(
            from_auth_file(&f, "other.test", "a").unwrap(),
            Some(Credential::Identity(Secret::new("idtok")))
        );
        assert_eq!(from_auth_file(&f, "reg.test", "a").unwrap(), None);
        let hub = dir.path().join("hub.json");
        std::fs::write(
            &hub,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "YWxpY2U6cHcx"}}}"#,
        )
        .unwrap();
        assert_eq!(
            from_auth_file(&hub, "registry-1.docker.io", "library/app").unwrap(),
            basic("alice", "pw1")
        );
        assert_eq!(
            from_auth_file(&dir.path().join("missing"), "reg.test", "a").unwrap(),
            None
        );
        std::fs::write(&f, r#"{"auths": {"reg.test": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        let e = from_auth_file(&f, "reg.test", "a").unwrap_err().to_string();
        assert!(e.contains("not user:password"), "{e}");
        assert!(!e.contains("nocolon"), "{e}");
    }

    #[test]
    fn secret_files_are_one_printable_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), Secret::new("s3cret"));
        std::fs::write(&f, "s3cret\nmore\n").unwrap();
        let e = read_secret_file(&f).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::write(&f, "").unwrap();
        assert!(read_secret_file(&f).is_err());
    }

    #[test]
    fn a_helper_whose_child_keeps_its_output_open_is_given_up_on() {
        // The helper answers and exits, but leaves a child holding its stdout (a helper
        // that starts an agent): the answer must not wait for that child.
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-lingers");
        std::fs::write(
            &helper,
            "#!/bin/sh\nsleep 30 &\nprintf '{\"Username\":\"alice\",\"Secret\":\"pw\"}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let started = Instant::now();
        let got = run_program(
            "lingers",
            helper.as_os_str(),
            "reg.test",
            Duration::from_secs(2),
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "waited {took:?} for the helper's child"
        );
        assert_eq!(
            got.unwrap(),
            Some(Credential::Basic {
                username: "alice".into(),
                password: Secret::new("pw"),
            })
        );
    }

    #[test]
    fn helper_names_are_checked() {
        for bad in ["", "../x", "a b", "x/y"] {
            assert!(run_helper(bad, "reg.test").is_err(), "{bad}");
        }
    }
}
