//! HTTP(S) and OCI registry sources against real servers started here: nginx for plain
//! HTTP Range requests, the CNCF distribution registry (Debian's docker-registry) for
//! registry blobs, and tiny hand-rolled TCP servers for misbehaviour nginx will not produce
//! (stalls, lying Content-Range). .ci/run installs nginx and docker-registry.

mod common;

use cachefilesd_rs::ondemand::serve_read;
use cachefilesd_rs::ondemand::sourcemap::FetchSettings;
use cachefilesd_rs::ondemand::sources::{self, Blob, FetchError, HttpBlob, RegistryBlob};
use common::servers::{find_binary, free_port, start_nginx, LocalServer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// nginx on a temp dir, with the locations the tests below request besides `/blobs/`.
struct Nginx {
    server: LocalServer,
    root: PathBuf,
    // Last: removed after nginx is stopped.
    _dir: tempfile::TempDir,
}

fn nginx_with_test_locations() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let locations = format!(
        "    location /norange/ {{ alias {root}/blobs/; max_ranges 0; }}
    location /moved/ {{ return 302 /blobs/big; }}
    location /loop/ {{ return 302 /loop/again; }}
",
        root = root.display()
    );
    let server = start_nginx(dir.path(), &locations);
    Nginx {
        server,
        root,
        _dir: dir,
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 131) ^ (i >> 9)) as u8).collect()
}

fn settings(timeout_ms: u64, retries: u32) -> FetchSettings {
    FetchSettings {
        workers: 1,
        readahead: 0,
        timeout: Duration::from_millis(timeout_ms),
        retries,
    }
}

fn write_target() -> (tempfile::NamedTempFile, OwnedFd) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap()
        .into();
    (f, fd)
}

#[test]
fn nginx_range_requests_serve_exact_bytes() {
    let nginx = nginx_with_test_locations();
    let content = data(5 * 1024 * 1024 + 123);
    std::fs::write(nginx.root.join("blobs/big"), &content).unwrap();
    let s = settings(5000, 1);
    let agent = sources::agent(&s);
    let open = |path: &str| HttpBlob::open(nginx.server.url(path), agent.clone(), &s);
    let blob = open("/blobs/big").unwrap();
    assert_eq!(blob.size(), content.len() as u64);
    let (file, fd) = write_target();
    // A read spanning several 1 MiB chunks and the blob's unaligned end.
    let written = serve_read(&blob, &fd, 4096 * 3 + 17, content.len() as u64, 0).unwrap();
    assert_eq!(
        written,
        (content.len() as u64).div_ceil(4096) * 4096 - 4096 * 3
    );
    let mut back = vec![0u8; content.len() - 4096 * 3];
    file.as_file().read_exact_at(&mut back, 4096 * 3).unwrap();
    assert_eq!(back, &content[4096 * 3..]);

    // A redirect to the blob is followed.
    let moved = open("/moved/x").unwrap();
    assert_eq!(moved.size(), content.len() as u64);

    // 404 fails the OPEN with ENOENT.
    let missing = open("/blobs/none").err().unwrap();
    assert_eq!(missing.errno(), nix::errno::Errno::ENOENT, "{missing}");

    // A server that ignores Range (200 with the whole body) is an error, not silent garbage.
    let norange = open("/norange/big").unwrap();
    let mut buf = vec![0u8; 4096];
    let e = norange.read_exact_at(4096, &mut buf).unwrap_err();
    assert!(e.to_string().contains("expected 206"), "{e}");

    // A redirect loop ends in an error, bounded.
    let started = Instant::now();
    let e = open("/loop/x").err().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
}

/// A one-shot-per-connection TCP server answering every request with `reply(request)`.
fn raw_server(reply: impl Fn(&str, &mut std::net::TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                req.push(byte[0]);
            }
            reply(&String::from_utf8_lossy(&req), &mut conn);
        }
    });
    port
}

#[test]
fn misbehaving_servers_fail_within_the_timeout() {
    // HEAD says 1 MiB; GETs stall after a few bytes of the body.
    let stall = raw_server(|req, c| {
        if req.starts_with("HEAD") {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n");
        } else {
            let _ = c.write_all(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4095/1048576\r\nContent-Length: 4096\r\n\r\nabc");
            std::thread::sleep(Duration::from_secs(30));
        }
    });
    let s = settings(700, 1);
    let agent = sources::agent(&s);
    let blob = HttpBlob::open(format!("http://127.0.0.1:{stall}/b"), agent.clone(), &s).unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let e = blob.read_exact_at(0, &mut buf).unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stalled read took {took:?}: {e}"
    );
    assert!(matches!(e, FetchError::Io(_)), "{e:?}");

    // A Content-Range for other bytes than asked is rejected.
    let liar = raw_server(|req, c| {
        if req.starts_with("HEAD") {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8192\r\n\r\n");
        } else {
            let mut r = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4096-8191/8192\r\nContent-Length: 4096\r\n\r\n".to_vec();
            r.extend(vec![b'x'; 4096]);
            let _ = c.write_all(&r);
        }
    });
    let blob = HttpBlob::open(format!("http://127.0.0.1:{liar}/b"), agent.clone(), &s).unwrap();
    let e = blob.read_exact_at(0, &mut buf).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");

    // 500s are retried a bounded number of times, then reported.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c2 = count.clone();
    let failing = raw_server(move |_, c| {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = c.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let e = HttpBlob::open(format!("http://127.0.0.1:{failing}/b"), agent, &s)
        .err()
        .unwrap();
    assert!(matches!(e, FetchError::Status(500)), "{e:?}");
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one try plus one retry"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn registry_blobs_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}/data\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("config.yml"), conf).unwrap();
    let server = LocalServer::spawn(
        Command::new(find_binary("docker-registry", "docker-registry"))
            .args(["serve", &format!("{}/config.yml", dir.path().display())]),
        port,
    );

    let content = data(3 * 1024 * 1024 + 5);
    let hex = sha256_hex(&content);
    let base = server.url("");
    // Upload: POST opens a session, PUT to its Location with the digest closes it.
    let session = ureq::post(&format!("{base}/v2/test/app/blobs/uploads/"))
        .call()
        .unwrap();
    assert_eq!(session.status(), 202);
    let location = session.header("Location").unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = ureq::put(&format!("{location}{sep}digest=sha256:{hex}"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(&content)
        .unwrap();
    assert_eq!(resp.status(), 201);

    let s = settings(5000, 1);
    let agent = sources::agent(&s);
    let blob = RegistryBlob::open(&base, "test/app", &hex, agent.clone(), &s).unwrap();
    assert_eq!(blob.size(), content.len() as u64);
    let (file, fd) = write_target();
    serve_read(&blob, &fd, 0, content.len() as u64, 0).unwrap();
    let mut back = vec![0u8; content.len()];
    file.as_file().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, content);

    let other = "0".repeat(64);
    let e = RegistryBlob::open(&base, "test/app", &other, agent.clone(), &s)
        .err()
        .unwrap();
    assert_eq!(e.errno(), nix::errno::Errno::ENOENT, "{e}");
    let e = RegistryBlob::open(&base, "test/app", "not-a-digest", agent, &s)
        .err()
        .unwrap();
    assert_eq!(e.errno(), nix::errno::Errno::ENOENT, "{e}");
}

#[test]
fn tls_failures_and_token_refusals_fail_the_open_cleanly() {
    let s = settings(2000, 1);
    let agent = sources::agent(&s);
    // https:// to a server that speaks plain HTTP: the TLS handshake fails.
    let plain = raw_server(|_, c| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let started = Instant::now();
    let e = HttpBlob::open(format!("https://127.0.0.1:{plain}/b"), agent.clone(), &s)
        .err()
        .unwrap();
    assert!(matches!(e, FetchError::Io(_)), "{e:?}");
    assert_eq!(e.errno(), nix::errno::Errno::EIO);
    assert!(started.elapsed() < Duration::from_secs(10));

    // A registry that demands a bearer token from a token service that refuses it.
    let token = raw_server(|_, c| {
        let _ = c
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let registry = raw_server(move |_, c| {
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{token}/token\",service=\"r\",scope=\"repository:app:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = c.write_all(reply.as_bytes());
    });
    let digest = "a".repeat(64);
    let e = RegistryBlob::open(
        &format!("http://127.0.0.1:{registry}"),
        "app",
        &digest,
        agent,
        &s,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string().contains("token service refused: HTTP 403"),
        "{e}"
    );
    assert_eq!(e.errno(), nix::errno::Errno::EIO);
}

#[test]
fn registry_bearer_token_handshake() {
    // The token service hands out a token; the registry serves the blob only with it.
    let content = data(3 * 4096 + 10);
    let hex = sha256_hex(&content);
    let token = raw_server(|req, c| {
        let ok = req.starts_with("GET /token?") && req.contains("scope=repository%3Aapp%3Apull");
        let reply = if ok {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 22\r\nConnection: close\r\n\r\n{\"token\":\"s3cr3t-tok\"}"
        } else {
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        };
        let _ = c.write_all(reply.as_bytes());
    });
    let body = content.clone();
    let registry = raw_server(move |req, c| {
        if !req.contains("Authorization: Bearer s3cr3t-tok")
            && !req.contains("authorization: Bearer s3cr3t-tok")
        {
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{token}/token\",service=\"reg\",scope=\"repository:app:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = c.write_all(reply.as_bytes());
            return;
        }
        if req.starts_with("HEAD") {
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            return;
        }
        let range = req
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("range: bytes=")
                    .map(str::to_string)
            })
            .unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        let mut reply = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            b - a + 1
        )
        .into_bytes();
        reply.extend_from_slice(&body[a..=b]);
        let _ = c.write_all(&reply);
    });
    let s = settings(5000, 0);
    let agent = sources::agent(&s);
    let blob = RegistryBlob::open(
        &format!("http://127.0.0.1:{registry}"),
        "app",
        &format!("sha256:{hex}"),
        agent,
        &s,
    )
    .unwrap();
    assert_eq!(blob.size(), content.len() as u64);
    let (file, fd) = write_target();
    serve_read(&blob, &fd, 0, content.len() as u64, 0).unwrap();
    let mut back = vec![0u8; content.len()];
    file.as_file().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, content);
}
