//! Fetching a whole 256 MiB blob from nginx on 127.0.0.1 through `HttpBlob` + `serve_read`
//! (1 MiB Range GETs over ureq's keep-alive Agent, written into a file, as the engine does)
//! against `curl -s -o FILE URL` (one GET).
//!
//! cargo bench --bench http          # needs nginx and curl (Debian packages nginx, curl)

use cachefilesd_rs::ondemand::serve_read;
use cachefilesd_rs::ondemand::sourcemap::FetchSettings;
use cachefilesd_rs::ondemand::sources::{self, Blob, HttpBlob};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BLOB: u64 = 256 << 20;
const RUNS: usize = 3;

fn main() {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let server = nginx(dir.path());
    let blob_path = dir.path().join("www/blob");
    let data: Vec<u8> = (0..BLOB as usize)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
        .collect();
    std::fs::write(&blob_path, &data).unwrap();
    drop(data);
    let url = format!("http://127.0.0.1:{}/blob", server.port);
    let out = dir.path().join("out");

    let settings = FetchSettings::default();
    let agent = sources::agent(&settings);
    let ours = || {
        let t = Instant::now();
        let blob = HttpBlob::open(url.clone(), agent.clone(), &settings).unwrap();
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&out)
            .unwrap()
            .into();
        let n = serve_read(&blob, &fd, 0, blob.size(), 0).unwrap();
        let d = t.elapsed();
        assert_eq!(n, BLOB);
        d
    };
    let curl = || {
        let t = Instant::now();
        let st = Command::new("curl")
            .args(["-s", "-o"])
            .arg(&out)
            .arg(&url)
            .status()
            .expect("running curl (apt-get install curl)");
        let d = t.elapsed();
        assert!(st.success());
        d
    };
    ours();
    curl();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        a.push(ours());
        b.push(curl());
    }
    // The last run was ours: check the file holds the blob.
    let check = std::fs::File::open(&blob_path).unwrap();
    let got = std::fs::File::open(&out).unwrap();
    for off in [0, BLOB / 2 + 12345, BLOB - 4096] {
        let (mut x, mut y) = ([0u8; 4096], [0u8; 4096]);
        check.read_at(&mut x, off).unwrap();
        got.read_at(&mut y, off).unwrap();
        assert_eq!(x, y, "bytes at {off}");
    }
    let (ma, mb) = (median(&mut a), median(&mut b));
    let mbs = |d: Duration| BLOB as f64 / d.as_secs_f64() / 1e6;
    println!("# HTTP bench: {} MiB blob from nginx on 127.0.0.1, {RUNS} alternating runs each after one warm-up run, medians", BLOB >> 20);
    println!();
    println!("| fetch | ours (median) | ours MB/s | curl (median) | curl MB/s | ours/curl (throughput) |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| whole blob, 1 MiB Range GETs vs one GET | {:.0} ms | {:.0} | {:.0} ms | {:.0} | {:.2}x |",
        ma.as_secs_f64() * 1e3,
        mbs(ma),
        mb.as_secs_f64() * 1e3,
        mbs(mb),
        mb.as_secs_f64() / ma.as_secs_f64()
    );
    eprintln!("  ours {a:?} curl {b:?}");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// nginx serving `dir/www` on a free port, configured as tests/http_sources.rs does.
fn nginx(dir: &Path) -> Server {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    let conf = format!(
        "user root; worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
",
        root = root.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx (apt-get install nginx)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, port }
}
