//! The control socket of a running daemon (fake device): status while culling is in progress,
//! metrics, bad requests, and clients that never send or never read.

mod common;

use cachefilesd_rs::config::Config;
use cachefilesd_rs::control::query;
use cachefilesd_rs::fake::FakeKernel;
use common::fake_daemon::{wait_for, DaemonThread};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn answers_while_culling_and_survives_bad_clients() {
    let t = tempfile::tempdir().unwrap();
    for i in 0..50 {
        let p = t
            .path()
            .join(format!("cache/Ierofs,v/@{:02x}/Dobj{i}", i % 4));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    }
    std::fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let sock = t.path().join("ctl.sock");
    let text = format!(
        "dir {}\ntag mycache\ncontrol {}\n",
        t.path().display(),
        sock.display()
    );
    let cfg = Config::parse(Path::new("t.conf"), text.as_bytes()).unwrap();
    let (kernel, device) = FakeKernel::new();
    // The kernel wants more culled than there is, and holds every object: culling stays active.
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 1000;
        s.in_use = (0..50).map(|i| format!("Dobj{i}").into_bytes()).collect();
    });
    let daemon = DaemonThread::start(cfg, device, None);
    wait_for("the control socket", || sock.exists());

    // A client that connects and never sends, and one that sends and never reads.
    let _silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut deaf = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    deaf.write_all(b"status json\n").unwrap();

    let timeout = Duration::from_secs(5);
    let mut status = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status.contains("skipped in use") || status.contains(" 0 skipped in use") {
        assert!(
            Instant::now() < deadline,
            "no culling progress in status: {status}"
        );
        status = query(&sock, "status", timeout).unwrap();
    }
    assert!(status.contains("culling: active"), "{status}");
    assert!(
        status.contains("cache: ") && status.contains("(tag mycache)"),
        "{status}"
    );
    assert!(
        status.contains("limits: brun 7% bcull 5% bstop 1%"),
        "{status}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&query(&sock, "status json", timeout).unwrap()).unwrap();
    assert_eq!(json["mode"], "classic");
    assert_eq!(json["culling"]["kernel_wants_culling"], true);
    assert!(json["culling"]["objects_last_scan"].as_u64().unwrap() == 50);

    let metrics = query(&sock, "metrics", timeout).unwrap();
    assert!(
        metrics.contains("cachefilesd_culling_active 1\n"),
        "{metrics}"
    );

    let bad = query(&sock, "please delete everything", timeout).unwrap();
    assert!(bad.starts_with("error: unknown request"), "{bad}");
    let long = query(&sock, &"x".repeat(5000), timeout).unwrap_or_else(|e| format!("error: {e}"));
    assert!(long.starts_with("error"), "{long}");

    // Connections come and go: each gets a token of its own and gives it back.
    for i in 0..100 {
        let m = query(&sock, "metrics", timeout).unwrap();
        assert!(m.contains("cachefilesd_uptime_seconds "), "query {i}: {m}");
    }

    daemon.stop_expecting_ok();
    assert!(!sock.exists(), "socket removed on exit");
}
