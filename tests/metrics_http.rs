//! The HTTP scrape endpoint (`metrics_listen`, issue 16 item 9) of a running daemon (fake
//! device): a real HTTP client scrapes it; malformed and oversized requests are answered 400
//! and closed, and the loop serves on.

mod common;

use cachefilesd_rs::config::Config;
use cachefilesd_rs::fake::FakeKernel;
use common::fake_daemon::{wait_for, DaemonThread};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

/// Sends `bytes` as one raw request (then ends the request side if `hang_up`); the whole
/// answer until the server closes.
fn raw_with(addr: SocketAddr, bytes: &[u8], hang_up: bool) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(bytes).unwrap();
    if hang_up {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_with(addr, bytes, false)
}

fn scrape(url: &str) -> String {
    let mut resp = ureq::get(url).call().unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    resp.body_mut().read_to_string().unwrap()
}

#[test]
fn scraped_over_http_and_bad_requests_get_400() {
    let t = tempfile::tempdir().unwrap();
    for d in ["cache", "graveyard"] {
        std::fs::create_dir_all(t.path().join(d)).unwrap();
    }
    // A free loopback port (the daemon binds it again right after).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "dir {}\ncontrol none\nmetrics_listen {addr}\n",
        t.path().display()
    );
    let cfg = Config::parse(Path::new("t.conf"), text.as_bytes()).unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind".into()));
    let daemon = DaemonThread::start(cfg, device, None);
    wait_for("the metrics listener", || TcpStream::connect(addr).is_ok());
    let url = format!("http://{addr}/metrics");

    // A client that connects and never sends holds a slot, not the loop.
    let mut silent = TcpStream::connect(addr).unwrap();
    let connected = std::time::Instant::now();
    let body = scrape(&url);
    assert!(body.contains("# TYPE cachefilesd_"), "{body}");
    assert!(body.contains("cachefilesd_culled_total"), "{body}");

    let tls_hello = raw(
        addr,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    );
    assert!(
        tls_hello.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{tls_hello}"
    );
    let no_version = raw(addr, b"GET /metrics\r\n\r\n");
    assert!(no_version.starts_with("HTTP/1.1 400 "), "{no_version}");
    // A head that never ends: cut off at the bound, answered, closed.
    let oversized = raw(addr, &vec![b'A'; 64 * 1024]);
    assert!(
        oversized.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{oversized}"
    );
    assert!(
        oversized.ends_with("request head too large\n"),
        "{oversized}"
    );
    // Half a request, then the client gives up.
    let half = raw_with(addr, b"GET /metr", true);
    assert!(half.starts_with("HTTP/1.1 400 "), "{half}");
    match ureq::get(&format!("http://{addr}/other")).call() {
        Err(ureq::Error::StatusCode(404)) => {}
        other => panic!("{other:?}"),
    }
    match ureq::post(&url).send("x") {
        Err(ureq::Error::StatusCode(405)) => {}
        other => panic!("{other:?}"),
    }

    // The loop is unharmed: scrapes still work, and it stops cleanly.
    for _ in 0..3 {
        assert!(scrape(&url).contains("cachefilesd_culled_total"));
    }
    // The silent client is let go at its deadline (5 s), not kept for ever.
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap(), 0);
    assert!(connected.elapsed() >= std::time::Duration::from_secs(5));
    daemon.stop_expecting_ok();
}
