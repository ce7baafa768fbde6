//! A remote source's client and endpoints: TLS roots, client certificate, proxy, mirrors.
//!
//! Built once per `[[source]]` when the source map is loaded, so a missing CA file or key is a
//! configuration error at start, and `insecure = true` is warned about at every start. The
//! endpoints (a URL and its mirrors, or a registry and its mirrors) are tried in their
//! configured order: the first healthy one serves; one that failed is skipped until its
//! backoff ran out (1 s doubling up to 5 min), then tried again in its place.

use super::auth::{CredentialSpec, Credentials, Secret};
use super::head;
use crate::ondemand::sourcemap::FetchSettings;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig};

/// How a source reaches its servers (the `[[source]]` settings besides the location).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub credentials: CredentialSpec,
    /// Added to the system's CA store.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// No certificate check at all (warned about at every start).
    pub insecure: bool,
    /// A proxy URL (it may carry user info, so it is a secret); else the environment's.
    pub proxy: Option<Secret>,
}

/// Where the system keeps its CA bundle (Debian's first); `SSL_CERT_FILE` overrides.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA certificates, read once; empty when there is no bundle.
static SYSTEM_ROOTS: LazyLock<Vec<Certificate<'static>>> = LazyLock::new(|| {
    let file = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
        .find(|p| p.is_file());
    let Some(file) = file else {
        log::warn!("no system CA bundle found; using the built-in web PKI roots");
        return Vec::new();
    };
    match read_pem(&file) {
        Ok(items) => certificates(items),
        Err(e) => {
            log::warn!("{e}; using the built-in web PKI roots");
            Vec::new()
        }
    }
});

fn read_pem(path: &Path) -> Result<Vec<PemItem<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    ureq::tls::parse_pem(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))
}

fn certificates(items: Vec<PemItem<'static>>) -> Vec<Certificate<'static>> {
    items
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn tls_config(access: &Access) -> Result<TlsConfig, String> {
    let mut roots = SYSTEM_ROOTS.clone();
    if let Some(f) = &access.ca_file {
        let certs = certificates(read_pem(f)?);
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", f.display()));
        }
        roots.extend(certs);
    }
    let root_certs = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&roots)
    };
    let client_cert = match (&access.client_cert, &access.client_key) {
        (Some(c), Some(k)) => {
            let chain = certificates(read_pem(c)?);
            if chain.is_empty() {
                return Err(format!("client_cert {} holds no certificate", c.display()));
            }
            // The key's own errors never quote it.
            let key = read_pem(k)
                .map_err(|_| format!("client_key {} is not a readable PEM key", k.display()))?
                .into_iter()
                .find_map(|i| match i {
                    PemItem::PrivateKey(k) => Some(k),
                    _ => None,
                })
                .ok_or_else(|| format!("client_key {} holds no private key", k.display()))?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
        (None, None) => None,
        _ => return Err("client_cert and client_key go together".into()),
    };
    Ok(TlsConfig::builder()
        .root_certs(root_certs)
        .client_cert(client_cert)
        .disable_verification(access.insecure)
        .build())
}

/// The proxy for a source: its own `proxy`, else `HTTPS_PROXY` (for an https first endpoint)
/// or `HTTP_PROXY`, then `ALL_PROXY`, each also in lower case, minus the hosts in `NO_PROXY`.
fn proxy(access: &Access, https: bool) -> Result<Option<ureq::Proxy>, String> {
    if let Some(p) = &access.proxy {
        return ureq::Proxy::new(p.expose()).map(Some).map_err(|_| {
            format!(
                "proxy {} is not a valid proxy URL",
                head::redact(p.expose())
            )
        });
    }
    let names: &[&str] = if https {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let Some(value) = names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    else {
        return Ok(None);
    };
    let parsed = ureq::Proxy::new(&value).map_err(|_| {
        format!(
            "the environment's proxy {} is not a valid proxy URL",
            head::redact(&value)
        )
    })?;
    let mut b = ureq::Proxy::builder(parsed.protocol())
        .host(parsed.host())
        .port(parsed.port());
    if let Some(u) = parsed.username() {
        b = b.username(u);
    }
    if let Some(p) = parsed.password() {
        b = b.password(p);
    }
    if let Some(np) = ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|n| std::env::var(n).ok())
    {
        for entry in np.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            b = b.no_proxy(entry);
        }
    }
    b.build().map(Some).map_err(|_| {
        format!(
            "the environment's proxy {} is unusable",
            head::redact(&value)
        )
    })
}

/// A client for `settings` and `access`; `https` says which proxy variable applies.
pub fn build_agent(
    settings: &FetchSettings,
    access: &Access,
    https: bool,
) -> Result<ureq::Agent, String> {
    let tls = tls_config(access)?;
    let proxy = proxy(access, https)?;
    Ok(super::http::agent_config(settings)
        .tls_config(tls)
        .proxy(proxy)
        .build()
        .new_agent())
}

/// How one endpoint fared.
#[derive(Debug, Default)]
struct Health {
    /// Failures in a row; 0 when healthy.
    failures: u32,
    retry_at: Option<Instant>,
    requests: u64,
    errors: u64,
    /// Of the last successful request.
    latency: Option<Duration>,
}

/// One URL or registry a source can be served from.
#[derive(Debug)]
pub struct Endpoint {
    /// As configured (a URL template or a registry base URL).
    pub url: String,
    health: Mutex<Health>,
}

/// An endpoint's state for the status report and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointStatus {
    /// Without user info or query.
    pub url: String,
    pub healthy: bool,
    pub failures: u32,
    pub requests: u64,
    pub errors: u64,
    pub latency_seconds: Option<f64>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A remote source: its client, credentials and endpoints.
pub struct Remote {
    pub agent: ureq::Agent,
    pub credentials: Credentials,
    pub endpoints: Vec<Endpoint>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| head::redact(&e.url))
                    .collect::<Vec<_>>(),
            )
            .field("credentials", &self.credentials.spec())
            .finish()
    }
}

/// Two locations are the same when they share one remote.
impl PartialEq for Remote {
    fn eq(&self, other: &Remote) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Remote {}

impl Remote {
    /// `urls` in order of preference; `registry` says whether the default auth files apply.
    pub fn new(
        urls: Vec<String>,
        settings: &FetchSettings,
        access: &Access,
        registry: bool,
    ) -> Result<Arc<Remote>, String> {
        let https = urls.first().is_some_and(|u| u.starts_with("https://"));
        let agent = build_agent(settings, access, https)?;
        if access.insecure {
            log::warn!(
                "{}: insecure = true: TLS certificates are not checked, anyone on the path can read and change what is fetched",
                urls.first().map(|u| head::redact(u)).unwrap_or_default()
            );
        }
        Ok(Arc::new(Remote {
            agent,
            credentials: Credentials::new(access.credentials.clone(), registry),
            endpoints: urls
                .into_iter()
                .map(|url| Endpoint {
                    url,
                    health: Default::default(),
                })
                .collect(),
        }))
    }

    /// A remote with a given client, no credentials (tests, benches, single URLs).
    pub fn with_agent(urls: Vec<String>, agent: ureq::Agent) -> Arc<Remote> {
        Arc::new(Remote {
            agent,
            credentials: Credentials::new(CredentialSpec::Default, false),
            endpoints: urls
                .into_iter()
                .map(|url| Endpoint {
                    url,
                    health: Default::default(),
                })
                .collect(),
        })
    }

    /// Endpoint indexes in the order to try them: those not backing off, as configured,
    /// then those backing off, soonest first (so a request is tried somewhere even when
    /// every endpoint failed lately).
    pub fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut waiting = Vec::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let h = e.health.lock().unwrap_or_else(|e| e.into_inner());
            match h.retry_at {
                Some(t) if t > now => waiting.push((t, i)),
                _ => ready.push(i),
            }
        }
        waiting.sort();
        ready.extend(waiting.into_iter().map(|(_, i)| i));
        ready
    }

    pub fn succeeded(&self, i: usize, latency: Duration) {
        let mut h = self.endpoints[i]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if h.failures > 0 {
            log::info!("{}: answering again", head::redact(&self.endpoints[i].url));
        }
        h.failures = 0;
        h.retry_at = None;
        h.requests += 1;
        h.latency = Some(latency);
    }

    /// An endpoint failed in a way another endpoint may not (a connection or a 5xx).
    pub fn failed(&self, i: usize, why: &str) {
        let mut h = self.endpoints[i]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.requests += 1;
        h.errors += 1;
        h.failures = h.failures.saturating_add(1);
        let backoff = Duration::from_secs(1 << (h.failures - 1).min(9)).min(MAX_BACKOFF);
        h.retry_at = Some(Instant::now() + backoff);
        if self.endpoints.len() > 1 {
            log::warn!(
                "{}: {why}; tried again in {} s, other endpoints serve meanwhile",
                head::redact(&self.endpoints[i].url),
                backoff.as_secs()
            );
        }
    }

    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|e| {
                let h = e.health.lock().unwrap_or_else(|e| e.into_inner());
                EndpointStatus {
                    url: head::redact(&e.url),
                    healthy: h.failures == 0 || h.retry_at.is_some_and(|t| t <= now),
                    failures: h.failures,
                    requests: h.requests,
                    errors: h.errors,
                    latency_seconds: h.latency.map(|d| d.as_secs_f64()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(n: usize) -> Arc<Remote> {
        let urls = (0..n)
            .map(|i| format!("http://127.0.0.1:{}/x", 1000 + i))
            .collect();
        Remote::new(urls, &FetchSettings::default(), &Access::default(), false).unwrap()
    }

    #[test]
    fn the_first_healthy_endpoint_serves_and_failed_ones_back_off() {
        let r = remote(3);
        assert_eq!(r.order(), vec![0, 1, 2]);
        r.failed(0, "down");
        assert_eq!(r.order(), vec![1, 2, 0]);
        r.failed(1, "down");
        assert_eq!(r.order(), vec![2, 0, 1]);
        let s = r.status();
        assert!(!s[0].healthy && !s[1].healthy && s[2].healthy);
        assert_eq!((s[0].errors, s[0].failures), (1, 1));
        // Once the backoff ran out the endpoint is back in its place.
        r.endpoints[0].health.lock().unwrap().retry_at = Some(Instant::now());
        assert_eq!(r.order(), vec![0, 2, 1]);
        r.succeeded(0, Duration::from_millis(3));
        let s = r.status();
        assert!(s[0].healthy && s[0].failures == 0 && s[0].latency_seconds == Some(0.003));
        // Backoff doubles.
        r.failed(1, "down");
        let h = r.endpoints[1].health.lock().unwrap();
        assert_eq!(h.failures, 2);
        assert!(h.retry_at.unwrap() > Instant::now() + Duration::from_millis(1500));
    }

    #[test]
    fn bad_tls_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let access = Access {
            ca_file: Some(junk.clone()),
            ..Default::default()
        };
        let e = tls_config(&access).unwrap_err();
        assert!(
            e.contains("holds no certificate") || e.contains("PEM"),
            "{e}"
        );
        let access = Access {
            client_cert: Some(junk),
            ..Default::default()
        };
        assert!(tls_config(&access).unwrap_err().contains("go together"));
        let e = proxy(
            &Access {
                proxy: Some(Secret::new("ftp://u:hunter2@h:1")),
                ..Default::default()
            },
            true,
        );
        if let Err(e) = e {
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
