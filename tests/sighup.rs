//! SIGHUP: the daemon (its real signal pipes, a real signal) makes its sources read their
//! credentials again at once, so a changed password file is used by the very next request,
//! not a minute later. The server is a tiny std-only HTTP server that takes one password at
//! a time. One test per binary: the signal handlers are process-wide.

mod common;

use base64::Engine as _;
use cachefilesd_rs::config::Config;
use cachefilesd_rs::daemon::{Daemon, Serving, SignalPipes};
use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::proto::msg::{encode_open, encode_read};
use common::fake_daemon::{anon_file, make_ondemand_tree, wait_for};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SIZE: usize = 8192;

/// Serves a blob of `SIZE` bytes of 0x5a at any path, to requests whose Basic password is
/// the one in `accepted` (user `alice`), else 401. Records each request's method and the
/// password it carried.
fn server(accepted: Arc<Mutex<String>>, seen: Arc<Mutex<Vec<(String, String)>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let (mut auth, mut range) = (String::new(), None);
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("authorization: basic ") {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(line["authorization: basic ".len()..].trim())
                        .unwrap_or_default();
                    auth = String::from_utf8_lossy(&raw).into_owned();
                }
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                }
            }
            let method = request.split(' ').next().unwrap_or("").to_string();
            let password = auth.strip_prefix("alice:").unwrap_or("").to_string();
            seen.lock()
                .unwrap()
                .push((method.clone(), password.clone()));
            let ok = password == *accepted.lock().unwrap();
            let answer = match (ok, method.as_str(), range) {
                (false, _, _) => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                (true, "HEAD", _) => format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"),
                (true, _, Some((a, b))) => {
                    let b = b.min(SIZE - 1);
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{SIZE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                        b + 1 - a,
                        "Z".repeat(b + 1 - a)
                    )
                }
                (true, _, None) => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn sighup_makes_a_changed_password_file_count_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    make_ondemand_tree(&root);
    let pw = root.join("pw");
    std::fs::write(&pw, "old-secret\n").unwrap();
    let accepted = Arc::new(Mutex::new("old-secret".to_string()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = server(accepted.clone(), seen.clone());
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "[[source]]\nurl = \"http://127.0.0.1:{port}/{{fsid}}\"\nusername = \"alice\"\npassword_file = \"{}\"\n[fetch]\nreadahead = 0\nretries = 0\n",
            pw.display()
        ),
    )
    .unwrap();
    let cfg = Config::parse(
        Path::new("test.conf"),
        format!(
            "dir {}\nondemand /unused.toml\nnocull\ncontrol none\n",
            root.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let (kernel, mut device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind ondemand".into()));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let pipes = SignalPipes::install().unwrap();
        let mut daemon =
            Daemon::new(&cfg, &mut device, true, Some(pipes), Serving::OnDemand(map)).unwrap();
        tx.send(daemon.stop_handle()).unwrap();
        let result = daemon.run().map_err(|e| e.to_string());
        (result, daemon.stats_line())
    });
    let stop = rx.recv().unwrap();

    let (fd, inspect) = anon_file(&kernel, &root, "anon1");
    kernel.with(|k| {
        k.messages
            .push_back(encode_open(1, 1, b"erofs,blob", b"blob", fd))
    });
    wait_for("the copen", || {
        kernel.with(|k| k.commands.iter().any(|c| c.starts_with("copen")))
    });
    assert!(
        kernel.with(|k| k.commands.contains(&format!("copen 1,{SIZE}"))),
        "{:?}",
        kernel.with(|k| k.commands.clone())
    );

    // The password is rotated: the server takes only the new one from now on. Without a
    // SIGHUP the daemon would present the old one for up to a minute.
    std::fs::write(&pw, "new-secret\n").unwrap();
    *accepted.lock().unwrap() = "new-secret".into();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    // The signal is in the daemon's pipe once raise returns; give its loop a moment to
    // take it before the READ arrives.
    std::thread::sleep(Duration::from_millis(500));
    kernel.with(|k| k.messages.push_back(encode_read(2, 1, 0, 4096)));
    wait_for("the READ's completion", || {
        kernel.with(|k| k.completed.contains(&2))
    });
    stop.stop();
    let (result, stats) = thread.join().unwrap();
    result.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.last().map(|(m, p)| (m.as_str(), p.as_str())),
        Some(("GET", "new-secret")),
        "{seen:?}"
    );
    assert!(stats.contains("reads 1 (0 failed)"), "{stats}");
    let mut got = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&inspect, &mut got, 0).unwrap();
    assert!(got.iter().all(|&b| b == b'Z'));
}
