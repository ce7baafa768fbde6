//! Remote sources as a private registry and a corporate network present them, against real
//! servers started here on 127.0.0.1: Debian's docker-registry behind TLS from a CA made
//! here, demanding a client certificate and htpasswd Basic auth; credentials from a password
//! file, a Docker config, a credential helper script and `$REGISTRY_AUTH_FILE`; tinyproxy as
//! forward proxy (its log proves the traffic went through it); nginx mirrors, one of which
//! fails and comes back. No secret may show in any log record, error, status or metric.
//!
//! One test: the scenarios change the process environment (`PATH`, `HTTPS_PROXY`, ...),
//! which the source map reads when it is loaded, so they must not run side by side.

mod common;

use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::ondemand::sources::{self, Blob, FetchError};
use cachefilesd_rs::ondemand::OnDemand;
use cachefilesd_rs::report::{OnDemandReport, Report};
use common::servers::{
    free_port, make_test_ca, sha256_hex, start_nginx, start_nginx_on, start_registry,
    start_registry_with, start_tinyproxy, upload_blob,
};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const PASSWORD: &str = "s3cret-hunter2-pw";
const WRONG: &str = "wrong-hunter3-pw";

/// Every log record of this process that the daemon's loggers would write.
fn captured_log() -> &'static Mutex<Vec<String>> {
    struct Capture(Mutex<Vec<String>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if cachefilesd_rs::logging::wanted(r.metadata()) {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", r.level(), r.args()));
            }
        }
        fn flush(&self) {}
    }
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    let c = CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        c
    });
    &c.0
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 137) ^ (i >> 7)) as u8).collect()
}

/// The source map `[[source]]` + `[fetch]` text, loaded into an engine so that its status
/// report covers the sources.
fn engine(source: &str) -> OnDemand {
    let text = format!("[[source]]\n{source}\n[fetch]\ntimeout = 5\nretries = 0\n");
    let map = SourceMap::parse("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    OnDemand::new(map, Arc::new(|| {}))
}

fn open(od: &OnDemand, fsid: &str) -> Result<Box<dyn Blob>, FetchError> {
    let (_, location) = od.map().resolve(b"images", fsid.as_bytes()).unwrap();
    sources::open(location, fsid, &od.map().fetch)
}

/// Reads the whole blob and compares it.
fn read_all(blob: &dyn Blob, want: &[u8]) {
    assert_eq!(blob.size(), want.len() as u64);
    let mut back = vec![0u8; want.len()];
    for (i, chunk) in back.chunks_mut(1 << 20).enumerate() {
        blob.read_exact_at((i << 20) as u64, chunk).unwrap();
    }
    assert!(back == want, "the bytes read differ from the blob");
}

/// Status text, JSON and metrics of `od`, for the leak checks.
fn status(od: &OnDemand) -> Vec<String> {
    let r = Report {
        ondemand: Some(OnDemandReport::new(od)),
        ..Default::default()
    };
    vec![r.text(), r.json(), r.metrics(), format!("{:?}", od.map())]
}

/// Fails if any of `outputs`, or any log record so far, holds a secret of this test.
fn assert_no_secret(outputs: &[String]) {
    use base64::Engine as _;
    let log = captured_log().lock().unwrap().join("\n");
    let mut secrets = vec![PASSWORD.to_string(), WRONG.to_string()];
    for pw in [PASSWORD, WRONG] {
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}")));
    }
    for out in outputs.iter().chain([&log]) {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "a secret leaked into:\n{out}");
        }
    }
}

/// The registry with `content` of repository `lib/app`, behind TLS (certificates in `pki`),
/// a required client certificate and htpasswd Basic auth for alice.
fn secured_registry(dir: &Path, pki: &Path, content: &[u8]) -> common::servers::LocalServer {
    // Pushed through a plain registry on the same storage first: the client under test
    // only reads.
    {
        let plain = start_registry(dir);
        upload_blob(plain.port, "lib/app", content);
    }
    let hash = std::process::Command::new("python3")
        .args([
            "-c",
            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(hash.status.success());
    std::fs::write(
        dir.join("htpasswd"),
        format!("alice:{}", String::from_utf8(hash.stdout).unwrap().trim()) + "\n",
    )
    .unwrap();
    let p = pki.display();
    let d = dir.display();
    start_registry_with(
        dir,
        &format!(
            "  tls:\n    certificate: {p}/server.crt\n    key: {p}/server.key\n    clientcas:\n      - {p}/ca.crt\n\
             auth:\n  htpasswd:\n    realm: test\n    path: {d}/htpasswd\n"
        ),
    )
}

#[test]
fn private_registries_proxies_and_mirrors() {
    captured_log();
    tls_client_certificates_and_credentials();
    forward_proxies();
    mirrors_fail_over_and_come_back();
    url_credentials_stay_with_their_origin();
}

fn tls_client_certificates_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_test_ca(&pki);
    let reg_dir = dir.path().join("registry");
    std::fs::create_dir(&reg_dir).unwrap();
    let content = data(2 * 1024 * 1024 + 77);
    let hex = sha256_hex(&content);
    let registry = secured_registry(&reg_dir, &pki, &content);
    let port = registry.port;
    let p = pki.display();
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let base = format!("registry = \"https://127.0.0.1:{port}\"\nrepository = \"lib/app\"\n");
    let tls = format!(
        "ca_file = \"{p}/ca.crt\"\nclient_cert = \"{p}/client.crt\"\nclient_key = \"{p}/client.key\"\n"
    );
    let basic = format!(
        "username = \"alice\"\npassword_file = \"{}\"\n",
        pw_file.display()
    );
    let mut outputs = Vec::new();

    // The test CA is not in the system store: refused without ca_file.
    let od = engine(&format!("{base}{basic}"));
    let e = open(&od, &hex)
        .err()
        .expect("an unknown CA must be refused");
    assert_eq!(e.errno(), nix::errno::Errno::EIO, "{e}");
    outputs.push(format!("{e} {e:?}"));
    // The registry demands a client certificate.
    let od = engine(&format!("{base}{basic}ca_file = \"{p}/ca.crt\"\n"));
    let e = open(&od, &hex).err().expect("no client certificate");
    outputs.push(format!("{e} {e:?}"));
    // Without credentials: 401.
    let od = engine(&format!("{base}{tls}"));
    let e = open(&od, &hex).err().expect("no credentials");
    assert_eq!(e.errno(), nix::errno::Errno::EACCES, "{e}");
    outputs.push(format!("{e} {e:?}"));

    // Basic auth from the password file, over the CA and client certificate.
    let od = engine(&format!("{base}{tls}{basic}"));
    read_all(&*open(&od, &hex).unwrap(), &content);
    outputs.extend(status(&od));

    // A wrong password is refused; once the file holds the right one, the next OPEN of the
    // same running source reads it again and succeeds.
    std::fs::write(&pw_file, format!("{WRONG}\n")).unwrap();
    let od = engine(&format!("{base}{tls}{basic}"));
    let e = open(&od, &hex).err().expect("wrong password");
    assert_eq!(e.errno(), nix::errno::Errno::EACCES, "{e}");
    outputs.push(format!("{e} {e:?}"));
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    read_all(&*open(&od, &hex).unwrap(), &content);
    outputs.extend(status(&od));

    // A Docker config's base64 `auth` entry.
    use base64::Engine as _;
    let docker = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    std::fs::write(
        &docker,
        format!(r#"{{"auths": {{"https://127.0.0.1:{port}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    let od = engine(&format!(
        "{base}{tls}auth_file = \"{}\"\n",
        docker.display()
    ));
    read_all(&*open(&od, &hex).unwrap(), &content);
    outputs.extend(status(&od));

    // A credential helper named by `$REGISTRY_AUTH_FILE`'s credHelpers, found on PATH; it
    // gets the registry on stdin.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-cfdtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread reg\necho \"$reg\" > {d}/helper-asked\nif [ \"$reg\" = 127.0.0.1:{port} ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"{PASSWORD}\"}}' \"$reg\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let podman = dir.path().join("auth.json");
    std::fs::write(
        &podman,
        format!(r#"{{"auths": {{}}, "credHelpers": {{"127.0.0.1:{port}": "cfdtest"}}}}"#),
    )
    .unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));
    std::env::set_var("REGISTRY_AUTH_FILE", &podman);
    let od = engine(&format!("{base}{tls}"));
    read_all(&*open(&od, &hex).unwrap(), &content);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("helper-asked")).unwrap(),
        format!("127.0.0.1:{port}\n")
    );
    outputs.extend(status(&od));
    std::env::remove_var("REGISTRY_AUTH_FILE");
    std::env::set_var("PATH", path);

    // insecure: no CA needed, and a warning at every load.
    let before = captured_log().lock().unwrap().len();
    let od = engine(&format!(
        "{base}{basic}client_cert = \"{p}/client.crt\"\nclient_key = \"{p}/client.key\"\ninsecure = true\n"
    ));
    let warned = captured_log().lock().unwrap()[before..]
        .iter()
        .any(|l| l.starts_with("WARN") && l.contains("insecure"));
    assert!(warned, "insecure = true must be warned about");
    read_all(&*open(&od, &hex).unwrap(), &content);

    // The environment's proxy, and NO_PROXY.
    let tp_dir = tempfile::tempdir().unwrap();
    let proxy = start_tinyproxy(tp_dir.path());
    let log = tp_dir.path().join("tinyproxy.log");
    let connects = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(&format!("CONNECT 127.0.0.1:{port} "))
            .count()
    };
    assert_eq!(connects(), 0);
    std::env::set_var("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port));
    let od = engine(&format!("{base}{tls}{basic}"));
    read_all(&*open(&od, &hex).unwrap(), &content);
    let through = connects();
    assert!(through >= 1, "HTTPS_PROXY was not used");
    std::env::set_var("NO_PROXY", "127.0.0.1");
    let od = engine(&format!("{base}{tls}{basic}"));
    read_all(&*open(&od, &hex).unwrap(), &content);
    assert_eq!(connects(), through, "NO_PROXY was not honoured");
    std::env::remove_var("HTTPS_PROXY");
    std::env::remove_var("NO_PROXY");

    assert_no_secret(&outputs);
}

fn forward_proxies() {
    let www = tempfile::tempdir().unwrap();
    let content = data(1024 * 1024 + 3);
    std::fs::create_dir_all(www.path().join("www/blobs")).unwrap();
    std::fs::write(www.path().join("www/blobs/img"), &content).unwrap();
    let nginx = start_nginx(www.path(), "");
    let tp_dir = tempfile::tempdir().unwrap();
    let proxy = start_tinyproxy(tp_dir.path());
    let url = format!("url = \"http://127.0.0.1:{}/blobs/{{fsid}}\"\n", nginx.port);
    let connects = || {
        std::fs::read_to_string(tp_dir.path().join("tinyproxy.log"))
            .unwrap_or_default()
            .matches(&format!("CONNECT 127.0.0.1:{} ", nginx.port))
            .count()
    };
    // Straight to nginx without a proxy setting...
    let od = engine(&url);
    read_all(&*open(&od, "img").unwrap(), &content);
    assert_eq!(connects(), 0);
    // ...through tinyproxy with one.
    let od = engine(&format!(
        "{url}proxy = \"http://127.0.0.1:{}\"\n",
        proxy.port
    ));
    read_all(&*open(&od, "img").unwrap(), &content);
    assert!(connects() >= 1, "the source's proxy was not used");
    // A proxy that is down fails the OPEN, never goes around it.
    let od = engine(&format!(
        "{url}proxy = \"http://127.0.0.1:{}\"\n",
        free_port()
    ));
    assert!(open(&od, "img").is_err());
}

fn mirrors_fail_over_and_come_back() {
    let content = data(512 * 1024 + 9);
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for d in [&first, &second] {
        std::fs::create_dir_all(d.path().join("www/blobs")).unwrap();
        std::fs::write(d.path().join("www/blobs/img"), &content).unwrap();
    }
    let down_port = free_port();
    let up = start_nginx(second.path(), "");
    let od = engine(&format!(
        "urls = [\"http://127.0.0.1:{down_port}/blobs/{{fsid}}\", \"http://127.0.0.1:{}/blobs/{{fsid}}\"]\n",
        up.port
    ));
    let blob = open(&od, "img").unwrap();
    read_all(&*blob, &content);
    let metric = |od: &OnDemand, endpoint: usize| {
        let m = status(od)[2].clone();
        let key =
            format!("cachefilesd_source_endpoint_up{{source=\"1\",endpoint=\"{endpoint}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(key.as_str()).map(str::to_string))
            .unwrap_or_else(|| panic!("{key} missing from\n{m}"))
    };
    assert_eq!(metric(&od, 0), "0");
    assert_eq!(metric(&od, 1), "1");
    let text = &status(&od)[0];
    assert!(
        text.contains("endpoint 0 http://127.0.0.1:")
            && text.contains("down (1 failures in a row)"),
        "{text}"
    );

    // The first mirror comes back; once its backoff ran out it serves again.
    let _back = start_nginx_on(first.path(), down_port, "");
    std::thread::sleep(Duration::from_millis(1100));
    read_all(&*blob, &content);
    assert_eq!(metric(&od, 0), "1");
    let j: serde_json::Value = serde_json::from_str(&status(&od)[1]).unwrap();
    let e0 = &j["ondemand"]["sources"][0]["endpoints"][0];
    assert_eq!(e0["healthy"], true, "{j}");
    assert!(e0["requests"].as_u64().unwrap() >= 2, "{j}");
    assert!(e0["latency_seconds"].as_f64().is_some(), "{j}");
}

fn url_credentials_stay_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(300 * 1024 + 1);
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join("blobs/img"), &content).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("alice:{{PLAIN}}{PASSWORD}\n"),
    )
    .unwrap();
    let port = free_port();
    let nginx = start_nginx_on(
        dir.path(),
        port,
        &format!(
            "    location /private/ {{ alias {r}/blobs/; auth_basic \"t\"; auth_basic_user_file {d}/htpasswd; }}
    location /bearer/ {{ alias {r}/blobs/; if ($http_authorization != \"Bearer {PASSWORD}\") {{ return 401; }} }}
    location /same/ {{ return 302 /private/img; }}
    location /away/ {{ return 302 http://localhost:{port}/private/img; }}
",
            r = root.display(),
            d = dir.path().display()
        ),
    );
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, PASSWORD).unwrap();
    let basic = format!(
        "username = \"alice\"\npassword_file = \"{}\"\n",
        pw_file.display()
    );
    let url = |path: &str| format!("url = \"http://127.0.0.1:{}/{path}\"\n", nginx.port);
    let mut outputs = Vec::new();

    let od = engine(&url("private/{fsid}"));
    let e = open(&od, "img").err().expect("no credentials");
    assert_eq!(e.errno(), nix::errno::Errno::EACCES, "{e}");
    let od = engine(&format!("{}{basic}", url("private/{fsid}")));
    read_all(&*open(&od, "img").unwrap(), &content);
    outputs.extend(status(&od));
    // A redirect on the same origin keeps them; to another origin (localhost is another
    // host name for the same server) they are not sent, so that server refuses.
    let od = engine(&format!("{}{basic}", url("same/{fsid}")));
    read_all(&*open(&od, "img").unwrap(), &content);
    let od = engine(&format!("{}{basic}", url("away/{fsid}")));
    let e = open(&od, "img")
        .err()
        .expect("credentials followed a redirect");
    assert_eq!(e.errno(), nix::errno::Errno::EACCES, "{e}");
    outputs.push(format!("{e} {e:?}"));

    // A static bearer token from token_file.
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{PASSWORD}\n")).unwrap();
    let od = engine(&url("bearer/{fsid}"));
    assert!(open(&od, "img").is_err());
    let od = engine(&format!(
        "{}token_file = \"{}\"\n",
        url("bearer/{fsid}"),
        token.display()
    ));
    read_all(&*open(&od, "img").unwrap(), &content);
    outputs.extend(status(&od));
    assert_no_secret(&outputs);
}
