//! HTTP(S) and OCI registry sources against real servers started here: nginx for plain
//! HTTP Range requests, the CNCF distribution registry (Debian's docker-registry) for
//! registry blobs, and tiny hand-rolled TCP servers for misbehaviour nginx will not produce
//! (stalls, lying Content-Range, hostile redirects and heads, expiring bearer tokens, a CDN
//! that must never see the token, blobs that do not match their digest). .ci/run installs
//! nginx and docker-registry.

mod common;

use cachefilesd_rs::ondemand::serve_read;
use cachefilesd_rs::ondemand::sourcemap::FetchSettings;
use cachefilesd_rs::ondemand::sources::{self, Blob, FetchError, HttpBlob, RegistryBlob};
use common::servers::{sha256_hex, start_nginx, start_registry, upload_blob, LocalServer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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
        ..FetchSettings::default()
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

#[test]
fn registry_blobs_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path());
    let port = server.port;

    let content = data(3 * 1024 * 1024 + 5);
    let hex = sha256_hex(&content);
    let base = server.url("");
    upload_blob(port, "test/app", &content);

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

/// Every log record of this test process that the daemon's loggers would write (they pass
/// records through `logging::wanted`), for the checks that secrets never reach a log.
fn captured_log() -> &'static std::sync::Mutex<Vec<String>> {
    struct Capture(std::sync::Mutex<Vec<String>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            if !cachefilesd_rs::logging::wanted(r.metadata()) {
                return;
            }
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.args()));
        }
        fn flush(&self) {}
    }
    static CAPTURE: std::sync::OnceLock<&'static Capture> = std::sync::OnceLock::new();
    let c = CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Default::default())));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        c
    });
    &c.0
}

/// The request line's path.
fn path_of(req: &str) -> String {
    req.split(' ').nth(1).unwrap_or("").to_string()
}

fn header_of(req: &str, name: &str) -> Option<String> {
    req.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `bytes=a-b` of a Range request.
fn range_of(req: &str) -> Option<(usize, usize)> {
    let r = header_of(req, "range")?;
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A 206 answer for a Range request on `body`, or 200 with its size for HEAD.
fn serve_body(req: &str, body: &[u8], c: &mut std::net::TcpStream) {
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
    let (a, b) = range_of(req).unwrap();
    let mut reply = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        b - a + 1
    )
    .into_bytes();
    reply.extend_from_slice(&body[a..=b]);
    let _ = c.write_all(&reply);
}

/// A server with one hostile answer per path (see the match below).
fn hostile_server(hits: std::sync::Arc<std::sync::atomic::AtomicU32>) -> u16 {
    raw_server(move |req, c| {
        let path = path_of(req);
        let head = req.starts_with("HEAD");
        let redirect = |to: &str| {
            format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        };
        let reply: Vec<u8> = match path.as_str() {
            "/file" => redirect("file:///etc/passwd"),
            "/nohost" => redirect("http:///etc/passwd"),
            "/nohost2" => redirect("http://"),
            "/userinfo" => redirect("http://user:pw@127.0.0.1:1/x"),
            "/scheme" => redirect("gopher://127.0.0.1/x"),
            p if p.starts_with("/endless") => {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                redirect(&format!("{p}x"))
            }
            "/garbage" => b"HTTP/1.1 two hundred OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "/binary" => b"\x00\xff\xfe garbage\r\n\r\n".to_vec(),
            "/huge" => b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\nConnection: close\r\n\r\n".to_vec(),
            "/loff" => b"HTTP/1.1 200 OK\r\nContent-Length: 9223372036854775808\r\nConnection: close\r\n\r\n".to_vec(),
            "/negative" => b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\nConnection: close\r\n\r\n".to_vec(),
            _ if head => b"HTTP/1.1 200 OK\r\nContent-Length: 8192\r\nConnection: close\r\n\r\n".to_vec(),
            "/short" => {
                let mut r = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4095/8192\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n".to_vec();
                r.extend(vec![b'x'; 100]);
                r
            }
            "/wrongrange" => {
                let mut r = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 4096-8191/8192\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n".to_vec();
                r.extend(vec![b'x'; 4096]);
                r
            }
            "/wronglength" => {
                let mut r = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4095/8192\r\nContent-Length: 18446744073709551615\r\nConnection: close\r\n\r\n".to_vec();
                r.extend(vec![b'x'; 4096]);
                r
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        };
        let _ = c.write_all(&reply);
    })
}

#[test]
fn hostile_answers_fail_the_request_never_the_worker() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let port = hostile_server(hits.clone());
    let s = settings(2000, 1);
    let agent = sources::agent(&s);
    let open = |path: &str| {
        let started = Instant::now();
        let r = HttpBlob::open(format!("http://127.0.0.1:{port}{path}"), agent.clone(), &s);
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
        r
    };
    for (path, why) in [
        ("/file", "redirect refused"),
        ("/nohost", "redirect refused"),
        ("/nohost2", "redirect refused"),
        ("/userinfo", "redirect refused"),
        ("/scheme", "redirect refused"),
        ("/endless", "redirects"),
        ("/garbage", ""),
        ("/binary", ""),
        ("/huge", "beyond the largest blob"),
        ("/loff", "beyond the largest blob"),
        ("/negative", "content-length"),
    ] {
        let e = open(path).err().unwrap_or_else(|| panic!("{path} opened"));
        assert!(e.to_string().contains(why), "{path}: {e}");
        assert_eq!(e.errno(), nix::errno::Errno::EIO, "{path}: {e}");
    }
    let endless = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=6).contains(&endless),
        "{endless} requests for /endless"
    );

    let mut buf = vec![0u8; 4096];
    for (path, why) in [
        ("/short", "body of bytes 0-4095"),
        ("/wrongrange", "does not match bytes 0-4095"),
        ("/wronglength", "does not match bytes 0-4095"),
    ] {
        let blob = open(path).unwrap();
        assert_eq!(blob.size(), 8192);
        let started = Instant::now();
        let e = blob.read_exact_at(0, &mut buf).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
        assert!(e.to_string().contains(why), "{path}: {e}");
    }
}

#[test]
fn hostile_opens_through_the_engine_are_answered_with_an_error() {
    use cachefilesd_rs::ondemand::sourcemap::SourceMap;
    use cachefilesd_rs::proto::msg::encode_open;
    use common::fake_daemon::{anon_file, make_ondemand_tree, start_ondemand, wait_for};

    let port = hostile_server(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_ondemand_tree(root);
    nix::unistd::mkfifo(&root.join("blobs/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "[[source]]\ndomain = \"web\"\nurl = \"http://127.0.0.1:{port}/{{fsid}}\"\n\
             [[source]]\ndomain = \"local\"\npath = \"{}/blobs/{{fsid}}\"\n\
             [fetch]\ntimeout = 2\nretries = 0\n",
            root.display()
        ),
    )
    .unwrap();
    let (kernel, daemon) = start_ondemand(root, map);
    let opens = [
        (b"erofs,web".as_slice(), b"file".as_slice()),
        (b"erofs,web", b"nohost"),
        (b"erofs,web", b"endless"),
        (b"erofs,web", b"huge"),
        (b"erofs,web", b"garbage"),
        (b"erofs,local", b"fifo"),
    ];
    for (i, (volume, fsid)) in opens.iter().enumerate() {
        let (fd, _) = anon_file(&kernel, root, &format!("anon{i}"));
        kernel.with(|k| {
            k.messages
                .push_back(encode_open(i as u32, i as u32 + 1, volume, fsid, fd))
        });
    }
    kernel.wake();
    let copens = || {
        kernel.with(|k| {
            let mut c: Vec<String> = k
                .commands
                .iter()
                .filter(|c| c.starts_with("copen"))
                .cloned()
                .collect();
            c.sort();
            c
        })
    };
    wait_for("a copen for every hostile OPEN", || {
        copens().len() == opens.len()
    });
    let expected: Vec<String> = (0..opens.len()).map(|i| format!("copen {i},-5")).collect();
    assert_eq!(copens(), expected);
    daemon.stop_expecting_ok();
}

/// A registry whose blobs need a bearer token that expires, and its token service.
struct TokenRegistry {
    registry: u16,
    /// Tokens handed out so far.
    issued: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Tokens issued before this are refused by the registry (a revocation).
    revoked_before: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    /// Requests that reached the blob store, and those of them that carried credentials.
    cdn_hits: std::sync::Arc<std::sync::atomic::AtomicU32>,
    cdn_auth: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

/// Long enough that the steps before the wait cannot outlive it on a loaded machine.
const TOKEN_LIFETIME: Duration = Duration::from_secs(5);

/// Blob GETs are redirected to a separate blob store (another origin: `localhost` and its own
/// port) with a signed query, as registries do with their CDN; `/v2/app/blobs/…` only.
fn token_registry(content: Vec<u8>) -> TokenRegistry {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    let issued = Arc::new(AtomicU32::new(0));
    let when: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Default::default();
    let (i2, w2) = (issued.clone(), when.clone());
    let token = raw_server(move |req, c| {
        if !(req.starts_with("GET /token?") && req.contains("scope=repository%3Aapp%3Apull")) {
            let _ = c.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let n = i2.fetch_add(1, Ordering::SeqCst) + 1;
        let tok = format!("s3cr3t-tok-{n}");
        w2.lock().unwrap().insert(tok.clone(), Instant::now());
        let body = format!(
            "{{\"token\":\"{tok}\",\"expires_in\":{}}}",
            TOKEN_LIFETIME.as_secs()
        );
        let _ = c.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    });
    let cdn_hits = Arc::new(AtomicU32::new(0));
    let cdn_auth = Arc::new(AtomicU32::new(0));
    let (h2, a2) = (cdn_hits.clone(), cdn_auth.clone());
    let body = content.clone();
    let cdn = raw_server(move |req, c| {
        h2.fetch_add(1, Ordering::SeqCst);
        if header_of(req, "authorization").is_some() {
            a2.fetch_add(1, Ordering::SeqCst);
        }
        if path_of(req).starts_with("/fail") {
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        serve_body(req, &body, c);
    });
    let revoked_before: Arc<Mutex<Option<Instant>>> = Default::default();
    let r2 = revoked_before.clone();
    let registry = raw_server(move |req, c| {
        let valid = header_of(req, "authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
            .and_then(|t| issued_at(&when, &t))
            .is_some_and(|at| {
                at.elapsed() < TOKEN_LIFETIME && r2.lock().unwrap().is_none_or(|r| at > r)
            });
        if !valid {
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{token}/token\",service=\"reg\",scope=\"repository:app:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = c.write_all(reply.as_bytes());
            return;
        }
        let path = path_of(req);
        if req.starts_with("HEAD") {
            serve_body(req, &content, c);
            return;
        }
        let blob = path.rsplit('/').next().unwrap_or("");
        let target = if blob.starts_with("sha256:1111") {
            "fail"
        } else {
            "blob"
        };
        let reply = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://localhost:{cdn}/{target}?X-Amz-Signature=s3cr3t-sig\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = c.write_all(reply.as_bytes());
    });
    TokenRegistry {
        registry,
        issued,
        revoked_before,
        cdn_hits,
        cdn_auth,
    }
}

fn issued_at(
    when: &std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    token: &str,
) -> Option<Instant> {
    when.lock().unwrap().get(token).copied()
}

#[test]
fn bearer_tokens_are_shared_renewed_and_never_leak() {
    use std::sync::atomic::Ordering;
    let log = captured_log();
    let content = data(2 * 4096 + 10);
    let hex = sha256_hex(&content);
    let r = token_registry(content.clone());
    let s = settings(5000, 0);
    let agent = sources::agent(&s);
    let base = format!("http://127.0.0.1:{}", r.registry);
    let open = |digest: &str| RegistryBlob::open(&base, "app", digest, agent.clone(), &s);

    // Two blobs of one repository share one token.
    let a = open(&hex).unwrap();
    let b = open(&format!("sha256:{hex}")).unwrap();
    assert_eq!(a.size(), content.len() as u64);
    assert_eq!(b.size(), content.len() as u64);
    assert_eq!(
        r.issued.load(Ordering::SeqCst),
        1,
        "one token for both blobs"
    );
    let (file, fd) = write_target();
    serve_read(&a, &fd, 0, content.len() as u64, 0).unwrap();
    let mut back = vec![0u8; content.len()];
    file.as_file().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, content);
    assert_eq!(r.issued.load(Ordering::SeqCst), 1);

    // The blob store got the reads, never the registry's token.
    assert!(r.cdn_hits.load(Ordering::SeqCst) > 0);
    assert_eq!(
        r.cdn_auth.load(Ordering::SeqCst),
        0,
        "token sent to the CDN"
    );

    // Past the token's lifetime a new one is fetched before the request, not after a 401.
    std::thread::sleep(TOKEN_LIFETIME + Duration::from_millis(100));
    let mut buf = vec![0u8; 4096];
    b.read_exact_at(4096, &mut buf).unwrap();
    assert_eq!(buf, &content[4096..8192]);
    assert_eq!(r.issued.load(Ordering::SeqCst), 2);

    // A token the registry stops accepting before its time: refreshed on the 401, the
    // request retried once.
    *r.revoked_before.lock().unwrap() = Some(Instant::now());
    std::thread::sleep(Duration::from_millis(10));
    a.read_exact_at(0, &mut buf).unwrap();
    assert_eq!(buf, &content[..4096]);
    assert_eq!(r.issued.load(Ordering::SeqCst), 3);

    // Errors name the blob store's URL without its signed query.
    let failing = open(&"1".repeat(64)).unwrap();
    let e = failing.read_exact_at(0, &mut buf).unwrap_err();
    let text = format!("{e} {e:?} {}", failing.describe());
    assert!(text.contains("/fail"), "{text}");

    // No token or signature in any error, description or log line.
    let mut everything = vec![text, a.describe(), b.describe()];
    everything.extend(log.lock().unwrap().iter().cloned());
    assert!(everything.len() > 3, "nothing was logged");
    for line in &everything {
        assert!(!line.contains("s3cr3t"), "secret leaked: {line}");
    }
}

/// A registry without auth that serves `content` under whatever digest is asked.
fn lying_registry(content: Vec<u8>) -> u16 {
    raw_server(move |req, c| serve_body(req, &content, c))
}

#[test]
fn a_digest_mismatch_fails_the_read_and_poisons_the_blob() {
    let content = data(3 * 1024 * 1024 + 5);
    let claimed = sha256_hex(b"something else entirely");
    let port = lying_registry(content.clone());
    let s = settings(5000, 0);
    let agent = sources::agent(&s);
    let base = format!("http://127.0.0.1:{port}");
    let blob = RegistryBlob::open(&base, "app", &claimed, agent, &s).unwrap();
    let (_file, fd) = write_target();
    // In order from the start: the read that completes the blob finds the mismatch.
    let e = serve_read(&blob, &fd, 0, content.len() as u64, 0).unwrap_err();
    assert!(e.contains("integrity error"), "{e}");
    // Every later read fails, wherever it is.
    let mut buf = vec![0u8; 4096];
    for off in [0, 4096, 2 << 20] {
        let e = blob.read_exact_at(off, &mut buf).unwrap_err();
        assert!(e.to_string().contains("failed its digest check"), "{e}");
    }

    // Reads from the end backwards (as several workers may finish them): the one that
    // closes the gap at the start finds the mismatch. (Another claimed digest: the first is
    // refused at OPEN from now on.)
    let agent = sources::agent(&s);
    let claimed = sha256_hex(b"something else again");
    let blob = RegistryBlob::open(&base, "app", &claimed, agent, &s).unwrap();
    let mut chunks: Vec<u64> = (0..content.len() as u64).step_by(1 << 20).collect();
    chunks.reverse();
    let last = chunks.pop().unwrap();
    for off in chunks {
        let mut piece = vec![0u8; (content.len() as u64 - off).min(1 << 20) as usize];
        blob.read_exact_at(off, &mut piece).unwrap();
    }
    let mut piece = vec![0u8; 1 << 20];
    let e = blob.read_exact_at(last, &mut piece).unwrap_err();
    assert!(e.to_string().contains("integrity error"), "{e}");
    assert!(blob.read_exact_at(4096, &mut buf).is_err());
}

/// A blob found not to match its digest is refused at its next OPEN. Poisoning was per open
/// object: the kernel keeps what was served in the cache file, so on the next mount it asks
/// only for the ranges still missing, their reads run ahead of a hash that never starts, and
/// the blob (short of the one failed read) was served again without a word.
#[test]
fn a_blob_that_failed_its_digest_is_refused_when_opened_again() {
    let content = data(2 * 1024 * 1024 + 5);
    let claimed = sha256_hex(b"a lie told once");
    let port = lying_registry(content.clone());
    let s = settings(5000, 0);
    let base = format!("http://127.0.0.1:{port}");
    let blob = RegistryBlob::open(&base, "app", &claimed, sources::agent(&s), &s).unwrap();
    let (_file, fd) = write_target();
    let e = serve_read(&blob, &fd, 0, content.len() as u64, 0).unwrap_err();
    assert!(e.contains("integrity error"), "{e}");
    drop(blob);
    // The next mount: the first MiB is cached, the read is for the rest.
    let e = RegistryBlob::open(&base, "app", &claimed, sources::agent(&s), &s)
        .err()
        .expect("a blob that failed its digest opened again");
    assert!(matches!(e, FetchError::Integrity(_)), "{e:?}");
    assert_eq!(e.errno(), nix::errno::Errno::EIO);
    // The same under verify = "digest", and another digest of the same server still opens.
    use cachefilesd_rs::ondemand::sourcemap::Verify;
    let again = RegistryBlob::open_with(
        &base,
        "app",
        &claimed,
        sources::agent(&s),
        &s,
        Verify::Digest,
    );
    assert!(matches!(again, Err(FetchError::Integrity(_))));
    assert!(
        RegistryBlob::open(&base, "app", &sha256_hex(&content), sources::agent(&s), &s).is_ok()
    );
}

#[test]
fn verify_digest_never_serves_a_mismatching_blob() {
    use cachefilesd_rs::ondemand::sourcemap::Verify;
    let content = data(3 * 1024 * 1024 + 5);
    let port = lying_registry(content.clone());
    let spool = tempfile::tempdir().unwrap();
    let s = FetchSettings {
        spool: Some(spool.path().to_path_buf()),
        ..settings(5000, 0)
    };
    let agent = sources::agent(&s);
    let base = format!("http://127.0.0.1:{port}");
    let before = sources::integrity_failures();
    let claimed = sha256_hex(b"not this blob at all");
    let e = RegistryBlob::open_with(&base, "app", &claimed, agent.clone(), &s, Verify::Digest)
        .err()
        .unwrap();
    assert!(matches!(e, FetchError::Integrity(_)), "{e:?}");
    assert_eq!(e.errno(), nix::errno::Errno::EIO);
    assert!(sources::integrity_failures() > before);
    // The streaming mode counts its mismatches too (another digest: that one is refused now).
    let claimed = sha256_hex(b"nor this one");
    let streamed = RegistryBlob::open(&base, "app", &claimed, agent.clone(), &s).unwrap();
    let (_file, fd) = write_target();
    let counted = sources::integrity_failures();
    serve_read(&streamed, &fd, 0, content.len() as u64, 0).unwrap_err();
    assert!(sources::integrity_failures() > counted);

    // The right digest opens, and nothing is left in the spool directory.
    let blob = RegistryBlob::open_with(
        &base,
        "app",
        &sha256_hex(&content),
        agent,
        &s,
        Verify::Digest,
    )
    .unwrap();
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    let (file, fd) = write_target();
    serve_read(&blob, &fd, 0, content.len() as u64, 0).unwrap();
    let mut back = vec![0u8; content.len()];
    file.as_file().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, content);
}

#[test]
fn verify_digest_against_the_registry_serves_from_the_spool() {
    use cachefilesd_rs::ondemand::sourcemap::Verify;
    let dir = tempfile::tempdir().unwrap();
    let server = start_registry(dir.path());
    let port = server.port;
    let content = data(5 * 1024 * 1024 + 77);
    upload_blob(port, "test/app", &content);
    let spool = tempfile::tempdir().unwrap();
    let s = FetchSettings {
        spool: Some(spool.path().to_path_buf()),
        ..settings(5000, 0)
    };
    let blob = RegistryBlob::open_with(
        &server.url(""),
        "test/app",
        &sha256_hex(&content),
        sources::agent(&s),
        &s,
        Verify::Digest,
    )
    .unwrap();
    // Verified whole before the OPEN: the registry is no longer needed.
    drop(server);
    let (file, fd) = write_target();
    serve_read(&blob, &fd, 4096, content.len() as u64, 0).unwrap();
    let mut back = vec![0u8; content.len() - 4096];
    file.as_file().read_exact_at(&mut back, 4096).unwrap();
    assert_eq!(back, &content[4096..]);
}

#[test]
fn a_registry_refusing_every_token_fails_after_one_retry() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let fetched = std::sync::Arc::new(AtomicU32::new(0));
    let f2 = fetched.clone();
    let token = raw_server(move |_, c| {
        f2.fetch_add(1, Ordering::SeqCst);
        let body = "{\"token\":\"never-good\",\"expires_in\":300}";
        let _ = c.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    });
    let asked = std::sync::Arc::new(AtomicU32::new(0));
    let a2 = asked.clone();
    let registry = raw_server(move |_, c| {
        a2.fetch_add(1, Ordering::SeqCst);
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{token}/token\",service=\"r\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = c.write_all(reply.as_bytes());
    });
    let s = settings(2000, 3);
    let e = RegistryBlob::open(
        &format!("http://127.0.0.1:{registry}"),
        "app",
        &"b".repeat(64),
        sources::agent(&s),
        &s,
    )
    .err()
    .unwrap();
    assert_eq!(e.errno(), nix::errno::Errno::EACCES, "{e}");
    assert_eq!(fetched.load(Ordering::SeqCst), 1, "one token fetched");
    assert_eq!(asked.load(Ordering::SeqCst), 2, "the request and one retry");
}

/// A token service that hands `token` out only for the credentials the test configured: an
/// OAuth2 refresh-token POST carrying the identity token, or a GET with Basic credentials;
/// and a registry serving `content` only with that token. Returns the registry's port.
fn credential_token_registry(content: Vec<u8>) -> u16 {
    let token = raw_server(|req, c| {
        let len = req
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).unwrap();
        let body = String::from_utf8_lossy(&body);
        // alice:basic-pw-hunter2
        let basic = req.lines().any(|l| {
            l.eq_ignore_ascii_case("authorization: Basic YWxpY2U6YmFzaWMtcHctaHVudGVyMg==")
        });
        let refresh = req.starts_with("POST /token ")
            && body.contains("grant_type=refresh_token")
            && body.contains("refresh_token=id-tok-hunter2")
            && body.contains("scope=repository%3Aapp%3Apull");
        let reply = if (req.starts_with("GET /token?") && basic) || refresh {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 34\r\nConnection: close\r\n\r\n{\"access_token\":\"granted-hunter2\"}"
        } else {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        };
        let _ = c.write_all(reply.as_bytes());
    });
    raw_server(move |req, c| {
        if !req
            .lines()
            .any(|l| l.eq_ignore_ascii_case("authorization: Bearer granted-hunter2"))
        {
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{token}/token\",service=\"reg\",scope=\"repository:app:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = c.write_all(reply.as_bytes());
            return;
        }
        serve_body(req, &content, c);
    })
}

#[test]
fn identity_tokens_and_basic_credentials_get_tokens() {
    use cachefilesd_rs::ondemand::sourcemap::SourceMap;
    let log_start = captured_log().lock().unwrap().len();
    let content = data(2 * 4096 + 5);
    let hex = sha256_hex(&content);
    let port = credential_token_registry(content.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (name, entry, ok) in [
        ("none", "{}".to_string(), false),
        (
            "identity",
            r#"{"identitytoken": "id-tok-hunter2"}"#.to_string(),
            true,
        ),
        (
            "basic",
            r#"{"auth": "YWxpY2U6YmFzaWMtcHctaHVudGVyMg=="}"#.to_string(),
            true,
        ),
        (
            "wrong",
            r#"{"username": "alice", "password": "bad-hunter2"}"#.to_string(),
            false,
        ),
    ] {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(
            &file,
            format!(r#"{{"auths": {{"127.0.0.1:{port}": {entry}}}}}"#),
        )
        .unwrap();
        let map = SourceMap::parse(
            "t.toml",
            &format!(
                "[[source]]\nregistry = \"http://127.0.0.1:{port}\"\nrepository = \"app\"\nauth_file = \"{}\"\n[fetch]\nretries = 0\ntimeout = 5\n",
                file.display()
            ),
        )
        .unwrap();
        let fsid = format!("sha256:{hex}");
        let (_, location) = map.resolve(b"d", fsid.as_bytes()).unwrap();
        match sources::open(location, &fsid, &map.fetch) {
            Ok(blob) => {
                assert!(ok, "{name}: served without the right credentials");
                let mut back = vec![0u8; content.len()];
                blob.read_exact_at(0, &mut back).unwrap();
                assert_eq!(back, content, "{name}");
            }
            Err(e) => {
                assert!(!ok, "{name}: {e}");
                outputs.push(format!("{e} {e:?}"));
            }
        }
        outputs.push(format!("{map:?}"));
    }
    let log = captured_log().lock().unwrap()[log_start..].join("\n");
    for out in outputs.iter().chain([&log]) {
        assert!(!out.contains("hunter2"), "a secret leaked: {out}");
    }
}

#[test]
fn a_body_dripping_within_the_read_timeout_is_cut_off_at_four_times_it() {
    // Each byte arrives well within the 300 ms read timeout, the whole never: 100 ms per
    // byte for a 64 KiB range. The exchange is given up after 4 x 300 ms.
    let drip = raw_server(|req, c| {
        if req.starts_with("HEAD") {
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n");
            return;
        }
        let _ = c.write_all(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-65535/65536\r\nContent-Length: 65536\r\n\r\n",
        );
        for _ in 0..100 {
            if c.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let s = settings(300, 0);
    let blob =
        HttpBlob::open(format!("http://127.0.0.1:{drip}/b"), sources::agent(&s), &s).unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 65536];
    let e = blob.read_exact_at(0, &mut buf).unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_millis(2500),
        "{took:?}: {e}"
    );
    assert!(e.to_string().contains("took too long"), "{e}");
}

#[test]
fn a_kept_alive_connection_the_server_closed_is_not_a_failed_read() {
    // A server's idle timeout can close a pooled connection just as the next request goes out
    // on it: the request meets a reset or an EOF before any answer. That says nothing about the
    // blob, so it must not cost a read even with `retries = 0`. This server answers the first
    // request of each connection and closes the connection on the second without answering.
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = served.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let counted = counted.clone();
            std::thread::spawn(move || {
                for nth in 0.. {
                    let mut req = Vec::new();
                    let mut byte = [0u8; 1];
                    while !req.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1)
                    {
                        req.push(byte[0]);
                    }
                    if req.is_empty() || nth > 0 {
                        return;
                    }
                    let head = String::from_utf8_lossy(&req);
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let reply: &[u8] = if head.starts_with("HEAD") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"
                    } else {
                        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-7/8\r\nContent-Length: 8\r\n\r\nabcdefgh"
                    };
                    let _ = conn.write_all(reply);
                }
            });
        }
    });
    let s = settings(2000, 0);
    let blob =
        HttpBlob::open(format!("http://127.0.0.1:{port}/b"), sources::agent(&s), &s).unwrap();
    for round in 0..5 {
        let mut buf = [0u8; 8];
        blob.read_exact_at(0, &mut buf)
            .unwrap_or_else(|e| panic!("read {round}: {e}"));
        assert_eq!(&buf, b"abcdefgh", "read {round}");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 6);
}

#[test]
fn a_connection_dropped_after_a_long_wait_is_not_sent_again() {
    // A server that drips the start of an answer's head within each 500 ms read timeout for
    // 1.6 s and then closes: that drop is the server's answer, and sending again would make
    // the exchange take twice as long.
    let port = raw_server(|_, c| {
        for b in b"HTTP" {
            if c.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let s = settings(500, 0);
    let started = Instant::now();
    let e = HttpBlob::open(format!("http://127.0.0.1:{port}/b"), sources::agent(&s), &s)
        .err()
        .expect("a server that never answers gives no blob");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3000),
        "{took:?}: {e}"
    );
}
