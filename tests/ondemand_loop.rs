//! The on-demand loop against the fake device: every OPEN gets exactly one copen, every READ
//! exactly one completion, data lands page-aligned in the object's fd, failures complete
//! without data, hostile messages are answered where possible.

mod common;

use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::proto::msg::{encode_close, encode_open, encode_read};
use common::fake_daemon::{anon_file, make_ondemand_tree, start_ondemand, wait_for, DaemonThread};
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    kernel: FakeKernel,
    daemon: DaemonThread,
}

/// An on-demand daemon over a fresh temp dir; `ROOT` in `map` stands for that dir.
fn start(map: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    make_ondemand_tree(&root);
    let map =
        SourceMap::parse("t.toml", &map.replace("ROOT", &root.display().to_string())).unwrap();
    let (kernel, daemon) = start_ondemand(&root, map);
    Setup {
        _dir: dir,
        root,
        kernel,
        daemon,
    }
}

fn copens(kernel: &FakeKernel) -> Vec<String> {
    kernel.with(|s| {
        s.commands
            .iter()
            .filter(|c| c.starts_with("copen"))
            .cloned()
            .collect()
    })
}

#[test]
fn serves_opens_and_reads_with_exactly_one_answer_each() {
    let s = start("[[source]]\nfsid = \"*\"\npath = \"ROOT/blobs/{fsid}\"\n[fetch]\nworkers = 2\nreadahead = 8192\n");
    let data = blob(3 * 4096 + 100, 3);
    fs::write(s.root.join("blobs/img1"), &data).unwrap();
    let (fd, inspect) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    let (fd3, _) = anon_file(&s.kernel, &s.root, "anon3");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,img1", b"img1", fd));
        // Unknown fsid, and a name that tries to escape the blob directory.
        k.messages
            .push_back(encode_open(1, 2, b"erofs,x", b"missing", fd2));
        k.messages
            .push_back(encode_open(2, 3, b"erofs,x", b"../../etc/passwd", fd3));
    });
    wait_for("three copens", || copens(&s.kernel).len() == 3);
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(
        c,
        vec![
            format!("copen 0,{}", data.len()),
            "copen 1,-2".into(),
            "copen 2,-2".into()
        ]
    );

    // A READ from the middle of a page to past the blob's end: written from the page start,
    // and the tail zero-padded to a whole page. (A first READ gets no readahead: it is
    // adaptive, grown only once reads are seen to be sequential.)
    s.kernel
        .with(|k| k.messages.push_back(encode_read(3, 1, 5000, 8000)));
    wait_for("completion of READ 3", || {
        s.kernel.with(|k| k.completed.contains(&3))
    });
    let mut got = vec![0u8; 4 * 4096];
    let n = inspect.read_at(&mut got, 0).unwrap();
    assert_eq!(n, 4 * 4096, "written up to the padded end of the blob");
    assert_eq!(
        &got[..4096],
        &[0u8; 4096][..],
        "page before the range untouched"
    );
    assert_eq!(&got[4096..data.len()], &data[4096..]);
    assert!(got[data.len()..].iter().all(|&b| b == 0));

    // The blob is truncated while served: the READ still completes, without data.
    fs::OpenOptions::new()
        .write(true)
        .open(s.root.join("blobs/img1"))
        .unwrap()
        .set_len(5)
        .unwrap();
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(4, 1, 0, 4096));
        // READ for an object we never opened: logged, nothing to complete it with.
        k.messages.push_back(encode_read(5, 99, 0, 4096));
        k.messages.push_back(encode_close(6, 1));
    });
    wait_for("completion of READ 4", || {
        s.kernel.with(|k| k.completed.contains(&4))
    });
    std::thread::sleep(Duration::from_millis(100));
    let stats = s.daemon.stop_expecting_ok();
    assert_eq!(
        s.kernel.with(|k| k.completed.clone()),
        vec![3, 4],
        "exactly one completion per READ"
    );
    assert_eq!(copens(&s.kernel).len(), 3, "exactly one copen per OPEN");
    assert!(stats.contains("reads 3 (1 failed)"), "{stats}");
    assert!(stats.contains("0 objects open"), "{stats}");
}

#[test]
fn hostile_messages_are_answered_and_survived() {
    let s = start("[[source]]\npath = \"ROOT/blobs/{fsid}\"\n");
    fs::write(s.root.join("blobs/b"), blob(8192, 1)).unwrap();
    let (fd, _) = anon_file(&s.kernel, &s.root, "a");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "b2");
    s.kernel.with(|k| {
        // An OPEN whose key sizes overflow: the fd is closed, the OPEN refused.
        let mut bad = encode_open(10, 1, b"erofs,b", b"b", fd);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        k.messages.push_back(bad);
        k.messages.push_back(vec![1, 2, 3]);
        let mut unknown = encode_close(11, 1);
        unknown[4] = 77;
        k.messages.push_back(unknown);
        let mut short = encode_read(12, 1, 0, 1);
        short[8] = 40;
        k.messages.push_back(short);
        k.messages
            .push_back(encode_open(13, 2, b"erofs,b", b"b", fd2));
        // OPENs naming fds that are not anonymous object fds: never used, never closed.
        k.messages
            .push_back(encode_open(14, 3, b"erofs,b", b"b", 9999));
        k.messages
            .push_back(encode_open(15, 4, b"erofs,b", b"b", 1));
    });
    wait_for("four copens", || copens(&s.kernel).len() == 4);
    // The same READ twice (as after `restore`): one completion.
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(20, 2, 0, 4096));
        k.messages.push_back(encode_read(20, 2, 0, 4096));
        k.messages.push_back(encode_read(21, 2, 4096, 4096));
    });
    wait_for("completions", || s.kernel.with(|k| k.completed.len() >= 2));
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(
        c,
        vec![
            "copen 10,-22",
            "copen 13,8192",
            "copen 14,-9",
            "copen 15,-9"
        ]
    );
    let mut done = s.kernel.with(|k| k.completed.clone());
    done.sort();
    assert_eq!(done, vec![20, 21]);
    assert!(stats.contains("6 bad messages"), "{stats}");
    assert!(stats.contains("1 duplicates"), "{stats}");
    // stdout (fd 1) must still be open.
    assert!(nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_GETFD).is_ok());
}

/// Issue 12.4: an OPEN (well-formed or damaged) naming the anon fd a live object owns must be
/// refused without closing that fd; otherwise the next object gets its number and a READ for
/// the first object writes into the second object's cache file.
#[test]
fn an_open_naming_an_owned_fd_leaves_it_to_its_object() {
    let s = start("[[source]]\npath = \"ROOT/blobs/{fsid}\"\n[fetch]\nreadahead = 0\n");
    let data = blob(8192, 5);
    fs::write(s.root.join("blobs/one"), &data).unwrap();
    let (fd1, inspect1) = anon_file(&s.kernel, &s.root, "anon1");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,one", b"one", fd1))
    });
    wait_for("copen 0", || copens(&s.kernel).len() == 1);
    s.kernel.with(|k| {
        // Well-formed, for a blob that does not exist: refused, and before the fix the fd
        // was closed after the copen.
        k.messages
            .push_back(encode_open(1, 2, b"erofs,missing", b"missing", fd1));
        // Damaged (key sizes overflow), naming the same fd.
        let mut bad = encode_open(2, 3, b"erofs,one", b"one", fd1);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        k.messages.push_back(bad);
        // Well-formed, for the same blob: would make a second object on the same fd.
        k.messages
            .push_back(encode_open(3, 4, b"erofs,one", b"one", fd1));
    });
    wait_for("four copens", || copens(&s.kernel).len() == 4);
    // A new object now; before the fix it got fd1's number.
    let (fd5, inspect5) = anon_file(&s.kernel, &s.root, "anon5");
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(4, 1, 0, 8192));
    });
    wait_for("completion of READ 4", || {
        s.kernel.with(|k| k.completed.contains(&4))
    });
    let stats = s.daemon.stop_expecting_ok();
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(
        c,
        vec!["copen 0,8192", "copen 1,-9", "copen 2,-22", "copen 3,-9"],
        "{stats}"
    );
    assert_ne!(fd5, fd1, "object 1's fd number was freed while it was open");
    let mut got = vec![0u8; 8192];
    inspect1.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(
        got, data,
        "READ for object 1 lands in object 1's cache file"
    );
    assert_eq!(
        inspect5.metadata().unwrap().len(),
        0,
        "nothing written to another object's file"
    );
    assert!(stats.contains("3 bad messages"), "{stats}");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 with hostile answers: for `/boom-open` HEAD redirects to
/// a `file:` URL, for `/boom-read` HEAD is fine and every GET redirects so; `/good` is an
/// honest 8 KiB blob of 6s, and `/slow` the same after a second. ureq 2.12 panics on a redirect to a URL without a host: the fetch
/// job panics in the worker (issue 12.2).
fn hostile_http_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut out = conn;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut range = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            let (a, b) = r.trim().split_once('-').unwrap();
                            range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
                        }
                    }
                    let mut words = request.split(' ');
                    let (method, path) = (words.next().unwrap(), words.next().unwrap());
                    let redirect = "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n";
                    if path == "/slow" {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    let answer: Vec<u8> = match (method, path, range) {
                        ("HEAD", "/boom-open", _) => redirect.into(),
                        ("HEAD", _, _) => "HTTP/1.1 200 OK\r\nContent-Length: 8192\r\n\r\n".into(),
                        ("GET", "/good" | "/slow", Some((a, b))) => {
                            let mut r = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/8192\r\nContent-Length: {}\r\n\r\n",
                                b - a + 1
                            )
                            .into_bytes();
                            r.extend(std::iter::repeat_n(6u8, (b - a + 1) as usize));
                            r
                        }
                        _ => redirect.into(),
                    };
                    if out.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The daemon with one URL source on [`hostile_http_server`], no retries and no readahead
/// (each READ is exactly the range asked for); `fetch` adds `[fetch]` lines.
fn start_behind_hostile_server(fetch: &str) -> Setup {
    let port = hostile_http_server();
    start(&format!(
        "[[source]]\nurl = \"http://127.0.0.1:{port}/{{fsid}}\"\n[fetch]\n{fetch}retries = 0\nreadahead = 0\n"
    ))
}

/// A fetch job that panics (here: inside the HTTP client, on a hostile redirect) answers its
/// OPEN or READ with an error, and the only worker goes on serving the next request.
#[test]
fn a_panicking_fetch_is_answered_and_its_worker_survives() {
    let s = start_behind_hostile_server("workers = 1\n");
    let (fd1, _) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    let (fd3, inspect3) = anon_file(&s.kernel, &s.root, "anon3");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,x", b"boom-open", fd1));
        k.messages
            .push_back(encode_open(1, 2, b"erofs,x", b"boom-read", fd2));
        k.messages
            .push_back(encode_open(2, 3, b"erofs,x", b"good", fd3));
    });
    wait_for("three copens", || copens(&s.kernel).len() == 3);
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(3, 2, 0, 4096));
        k.messages.push_back(encode_read(4, 3, 0, 8192));
    });
    wait_for("two completions", || {
        s.kernel.with(|k| k.completed.len() == 2)
    });
    let stats = s.daemon.stop_expecting_ok();
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(c[1..], ["copen 1,8192", "copen 2,8192"], "{stats}");
    assert!(
        c[0].starts_with("copen 0,-"),
        "the OPEN whose fetch failed is refused: {c:?}"
    );
    let mut done = s.kernel.with(|k| k.completed.clone());
    done.sort();
    assert_eq!(done, vec![3, 4]);
    let mut got = vec![0u8; 8192];
    inspect3.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, vec![6u8; 8192], "the READ after the panics was served");
    assert!(stats.contains("reads 2 (1 failed)"), "{stats}");
}

/// Issue 12.4, duplicate path: an OPEN re-delivered while the first delivery is still being
/// answered, but naming a live object's fd, neither closes that fd nor gets a second copen.
#[test]
fn a_duplicate_open_naming_an_owned_fd_is_ignored() {
    let s = start_behind_hostile_server("");
    let (fd1, inspect1) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,x", b"good", fd1))
    });
    wait_for("copen 0", || copens(&s.kernel).len() == 1);
    s.kernel.with(|k| {
        // Its HEAD takes a second: msg_id 1 is in flight when its damaged twin arrives.
        k.messages
            .push_back(encode_open(1, 2, b"erofs,x", b"slow", fd2));
        k.messages
            .push_back(encode_open(1, 2, b"erofs,x", b"slow", fd1));
    });
    wait_for("copen 1", || copens(&s.kernel).len() == 2);
    s.kernel
        .with(|k| k.messages.push_back(encode_read(2, 1, 0, 8192)));
    wait_for("completion of READ 2", || {
        s.kernel.with(|k| k.completed.contains(&2))
    });
    std::thread::sleep(Duration::from_millis(100));
    let stats = s.daemon.stop_expecting_ok();
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(c, vec!["copen 0,8192", "copen 1,8192"], "{stats}");
    let mut got = vec![0u8; 8192];
    inspect1.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(
        got,
        vec![6u8; 8192],
        "object 1's fd still fills object 1's file"
    );
    assert!(stats.contains("reads 1 (0 failed)"), "{stats}");
    assert!(stats.contains("1 bad messages"), "{stats}");
}

/// A damaged re-delivery (an undecodable message) of an OPEN that is still in flight, with a
/// fresh fd of its own: its copen comes from the pending reply. Answering it at once as a bad
/// message gave msg_id 1 two copens, the second for whatever request the kernel had given that
/// id by then.
#[test]
fn a_damaged_redelivery_of_an_open_in_flight_gets_no_second_copen() {
    let s = start_behind_hostile_server("");
    let (fd1, inspect1) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    s.kernel.with(|k| {
        // Its HEAD takes a second: msg_id 1 is in flight when its damaged twin arrives.
        k.messages
            .push_back(encode_open(1, 1, b"erofs,x", b"slow", fd1));
        let mut bad = encode_open(1, 1, b"erofs,x", b"slow", fd2);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        k.messages.push_back(bad);
    });
    wait_for("a copen", || !copens(&s.kernel).is_empty());
    // The slow HEAD answers after a second; give the pending reply time to answer too.
    std::thread::sleep(Duration::from_millis(1500));
    s.kernel
        .with(|k| k.messages.push_back(encode_read(2, 1, 0, 8192)));
    wait_for("completion of READ 2", || {
        s.kernel.with(|k| k.completed.contains(&2))
    });
    let stats = s.daemon.stop_expecting_ok();
    assert_eq!(copens(&s.kernel), vec!["copen 1,8192"], "{stats}");
    let mut got = vec![0u8; 8192];
    inspect1.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, vec![6u8; 8192]);
    // The damaged delivery's own fd was the kernel's gift to this daemon: closed, not leaked.
    // Its number may be open again already (the tests run in parallel): by another file.
    let anon2 = std::fs::metadata(s.root.join("anon2")).unwrap();
    let leaked = nix::sys::stat::fstat(fd2 as i32).is_ok_and(|st| {
        use std::os::unix::fs::MetadataExt;
        st.st_dev == anon2.dev() && st.st_ino == anon2.ino()
    });
    assert!(!leaked, "fd {fd2} still holds the damaged delivery's file");
    assert!(stats.contains("1 bad messages"), "{stats}");
}

/// A read of the device that fails without killing the cache (the kernel fails an OPEN whose
/// fd it cannot install with EMFILE, and drops that request) must not strand the requests
/// queued behind it: the device is edge-triggered, and the kernel signals only new requests,
/// so before the fix they waited for the next request to arrive (a reader blocked on one of
/// them waited for ever).
#[test]
fn requests_behind_a_failed_device_read_are_still_served() {
    let s = start("[[source]]\npath = \"ROOT/blobs/{fsid}\"\n[fetch]\nreadahead = 0\n");
    fs::write(s.root.join("blobs/one"), blob(4096, 1)).unwrap();
    let (fd0, _) = anon_file(&s.kernel, &s.root, "anon0");
    let (fd1, _) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    // The loop is running and has read everything: one wake-up is one edge from here on.
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 3, b"erofs,x", b"one", fd0))
    });
    wait_for("copen 0", || copens(&s.kernel).len() == 1);
    std::thread::sleep(Duration::from_millis(100));
    s.kernel.with(|k| {
        k.fail_next_read = Some(nix::errno::Errno::EMFILE);
        k.messages
            .push_back(encode_open(1, 1, b"erofs,x", b"one", fd1));
        k.messages
            .push_back(encode_open(2, 2, b"erofs,x", b"one", fd2));
    });
    // Looked at without `with`, which would wake the daemon as a new request does.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let answered = loop {
        let c = s.kernel.state.lock().unwrap().commands.clone();
        if c.iter().any(|c| c.starts_with("copen 2,")) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stats = s.daemon.stop_expecting_ok();
    assert!(answered, "OPEN 2 stranded behind the failed read: {stats}");
    assert_eq!(
        copens(&s.kernel),
        vec!["copen 0,4096", "copen 2,4096"],
        "{stats}"
    );
}

/// A damaged READ (a short body, `off + len` overflowing) for an object that is open is
/// answerable: it is completed without data, so the reader gets EIO. Left unanswered, the
/// kernel's reader waited for ever (killable only).
#[test]
fn a_damaged_read_for_an_open_object_is_completed() {
    let s = start("[[source]]\npath = \"ROOT/blobs/{fsid}\"\n[fetch]\nreadahead = 0\n");
    fs::write(s.root.join("blobs/one"), blob(8192, 2)).unwrap();
    let (fd1, inspect1) = anon_file(&s.kernel, &s.root, "anon1");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,x", b"one", fd1))
    });
    wait_for("copen 0", || copens(&s.kernel).len() == 1);
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(5, 1, u64::MAX - 1, 10));
        let mut short = encode_read(6, 1, 0, 4096);
        short.truncate(short.len() - 4);
        let n = short.len() as u32;
        short[8..12].copy_from_slice(&n.to_le_bytes());
        k.messages.push_back(short);
        // Damaged, for an object that is not open: nothing to complete it through.
        let mut other = encode_read(7, 9, 0, 4096);
        other.truncate(other.len() - 4);
        let n = other.len() as u32;
        other[8..12].copy_from_slice(&n.to_le_bytes());
        k.messages.push_back(other);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while s.kernel.with(|k| k.completed.len()) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let stats = s.daemon.stop_expecting_ok();
    let mut done = s.kernel.with(|k| k.completed.clone());
    done.sort();
    assert_eq!(done, vec![5, 6], "{stats}");
    assert_eq!(inspect1.metadata().unwrap().len(), 0, "nothing written");
    assert!(stats.contains("3 bad messages"), "{stats}");
}
