//! Real servers on 127.0.0.1 (nginx, the docker registry) for the HTTP source tests and the
//! HTTP bench.

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
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
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
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n"
    );
    std::fs::write(dir.join("config.yml"), conf).unwrap();
    LocalServer::spawn(
        Command::new(find_binary("docker-registry", "docker-registry"))
            .args(["serve", &format!("{d}/config.yml")]),
        port,
    )
}
