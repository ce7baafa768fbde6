//! Real servers on 127.0.0.1 (nginx, the docker registry, tinyproxy) for the HTTP source
//! tests and the HTTP bench, and a test CA made with the openssl CLI.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (the OS picked it), for a server to listen on.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 20 s until something accepts connections on `port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of a server binary from a Debian package, wherever the package puts it.
pub fn find_binary(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(binary);
        if p.exists() {
            return p;
        }
    }
    panic!("{binary} not found: install Debian's {package} package (.ci/run does)");
}

/// A server process listening on 127.0.0.1:`port`, stopped when dropped.
pub struct LocalServer {
    child: Child,
    pub port: u16,
}

impl LocalServer {
    /// Starts `command` (output discarded) and waits until it listens on `port`.
    pub fn spawn(command: &mut Command, port: u16) -> LocalServer {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Owned before waiting, so that a server that never comes up is still stopped.
        let server = LocalServer { child, port };
        wait_port(port);
        server
    }

    /// `http://127.0.0.1:port` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// nginx serving `dir/www` (made here) on a free port, its pid file, logs and temp files in
/// `dir`. `locations` is added to the server block as is.
pub fn start_nginx(dir: &Path, locations: &str) -> LocalServer {
    start_nginx_on(dir, free_port(), locations)
}

/// [`start_nginx`] on a given port (a mirror that comes back where it was).
pub fn start_nginx_on(dir: &Path, port: u16, locations: &str) -> LocalServer {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let d = dir.display();
    let conf = format!(
        "user root; worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    root {root};
{locations}  }}
}}
",
        root = root.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    LocalServer::spawn(
        Command::new(find_binary("nginx", "nginx")).args([
            "-p",
            &d.to_string(),
            "-c",
            &format!("{d}/nginx.conf"),
        ]),
        port,
    )
}

/// Debian's docker-registry (the CNCF distribution registry) on a free port, its storage and
/// config in `dir`.
pub fn start_registry(dir: &Path) -> LocalServer {
    start_registry_with(dir, "")
}

/// [`start_registry`] with more YAML: indented lines for its `http:` section (`  tls: ...`)
/// then top-level sections (`auth: ...`), as `extra` gives them.
pub fn start_registry_with(dir: &Path, extra: &str) -> LocalServer {
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}"
    );
    std::fs::write(dir.join("config.yml"), conf).unwrap();
    LocalServer::spawn(
        Command::new(find_binary("docker-registry", "docker-registry"))
            .args(["serve", &format!("{d}/config.yml")]),
        port,
    )
}

/// tinyproxy, a forward proxy, on a free port; it logs every CONNECT to `dir/tinyproxy.log`.
pub fn start_tinyproxy(dir: &Path) -> LocalServer {
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("tinyproxy.conf"),
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{d}/tinyproxy.log\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\nPidFile \"{d}/tinyproxy.pid\"\n"
        ),
    )
    .unwrap();
    LocalServer::spawn(
        Command::new(find_binary("tinyproxy", "tinyproxy")).args([
            "-d",
            "-c",
            &format!("{d}/tinyproxy.conf"),
        ]),
        port,
    )
}

/// Runs the openssl CLI in `dir`; panics with its output unless it succeeds.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`), a server certificate for 127.0.0.1 (`server.crt`, `server.key`) and a
/// client certificate (`client.crt`, `client.key`) it signed, in `dir`.
pub fn make_test_ca(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=cachefilesd-rs test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let mut req = vec!["req", "-subj"];
        let subj = format!("/CN={who}");
        req.push(&subj);
        req.extend(ec);
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let crt = format!("{who}.crt");
        let ext = format!("{who}.ext");
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
        );
    }
}

/// One HTTP/1.1 request over a fresh connection with std only (the client under test is not
/// used to set the test up): the status and the raw head of the answer.
pub fn plain_request(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    (status, answer)
}

/// Pushes `content` as a blob of `repository`: POST opens an upload session, PUT to its
/// Location with the digest closes it.
pub fn upload_blob(port: u16, repository: &str, content: &[u8]) {
    let (status, head) = plain_request(
        port,
        "POST",
        &format!("/v2/{repository}/blobs/uploads/"),
        b"",
    );
    assert_eq!(status, 202, "{head}");
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap();
    let location = match location.split_once("://") {
        Some((_, rest)) => rest[rest.find('/').unwrap()..].to_string(),
        None => location,
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, head) = plain_request(
        port,
        "PUT",
        &format!("{location}{sep}digest=sha256:{}", sha256_hex(content)),
        content,
    );
    assert_eq!(status, 201, "{head}");
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
