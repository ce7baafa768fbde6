//! `invalidate` and `purge` against a running daemon (issue 16, item 8): through the control
//! socket the daemon removes with the kernel's `cull`, so an object the kernel holds is refused
//! and left intact; cachefilesctl goes through the daemon when one serves the cache and works
//! offline otherwise.
//!
//! One test: the daemon changes the process's cwd to cull, so two daemons in one test process
//! would race.

mod common;

use cachefilesd_rs::cachedir::names::fanout_dir_of;
use cachefilesd_rs::cachedir::{ObjectName, VolumeName};
use cachefilesd_rs::config::Config;
use cachefilesd_rs::control::query;
use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::live::Target;
use common::fake_daemon::{wait_for, DaemonThread};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// An object as the kernel lays it out; its path.
fn object(root: &Path, volume: &str, key: &str) -> PathBuf {
    let v = VolumeName::new(volume.as_bytes()).unwrap();
    let fan = fanout_dir_of(&v, key.as_bytes());
    let name = ObjectName::for_key(key.as_bytes()).unwrap();
    let p = root
        .join("cache")
        .join(format!("I{volume}"))
        .join(std::str::from_utf8(fan.as_bytes()).unwrap())
        .join(std::str::from_utf8(name.name().as_bytes()).unwrap());
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"data").unwrap();
    p
}

fn ctl(conf: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .arg("-f")
        .arg(conf)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn removals_go_through_the_running_daemon_and_spare_objects_in_use() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::create_dir_all(root.join("graveyard")).unwrap();
    let free = object(root, "nfs,srv", "free-object");
    let busy = object(root, "nfs,srv", "busy-object");
    let other = object(root, "9p,old,", "k");
    let sock = root.join("ctl.sock");
    let conf = root.join("c.conf");
    let conf_text = format!("dir {}\ncontrol {}\n", root.display(), sock.display());
    std::fs::write(&conf, &conf_text).unwrap();
    let cfg = Config::parse(&conf, conf_text.as_bytes()).unwrap();
    let (kernel, device) = FakeKernel::new();
    let busy_name = busy.file_name().unwrap().as_encoded_bytes().to_vec();
    kernel.with(|s| {
        s.commands.push("bind".into());
        s.in_use.insert(busy_name.clone());
    });
    let daemon = DaemonThread::start(cfg, device, None);
    wait_for("the control socket", || sock.exists());
    let timeout = Duration::from_secs(5);

    // The socket protocol: a free object goes, through the kernel's cull.
    let volume = VolumeName::new(b"nfs,srv").unwrap();
    let req = Target::Object {
        volume: volume.clone(),
        key: b"free-object".to_vec(),
    }
    .request();
    let reply = query(&sock, &req, timeout).unwrap();
    assert!(reply.starts_with("removed cache/Infs,srv/@"), "{reply}");
    assert!(!free.exists());
    let culled = kernel.with(|s| s.commands.clone());
    let free_name = free.file_name().unwrap().to_str().unwrap();
    assert!(culled.contains(&format!("cull {free_name}")), "{culled:?}");
    // A busy one is refused with the reason, and is still whole.
    let req = Target::Object {
        volume: volume.clone(),
        key: b"busy-object".to_vec(),
    }
    .request();
    let reply = query(&sock, &req, timeout).unwrap();
    assert!(
        reply.starts_with("error: object cache/Infs,srv/"),
        "{reply}"
    );
    assert!(reply.contains("is in use by the kernel"), "{reply}");
    assert_eq!(std::fs::read(&busy).unwrap(), b"data");
    // Gone already, and names that are no names.
    let reply = query(
        &sock,
        &Target::Volume(VolumeName::new(b"none").unwrap()).request(),
        timeout,
    )
    .unwrap();
    assert!(
        reply.starts_with("error: no such volume: cache/Inone"),
        "{reply}"
    );
    let reply = query(&sock, "purge 2e2e2f6574632f", timeout).unwrap();
    assert!(reply.starts_with("error: bad request"), "{reply}");

    // cachefilesctl takes the daemon's route: the busy object is refused (offline, nothing
    // would have stopped it), a whole volume goes through cull.
    let o = ctl(
        &conf,
        &["invalidate", "--volume", "nfs,srv", "--key", "busy-object"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("is in use by the kernel"),
        "{}",
        text(&o.stderr)
    );
    assert!(busy.exists());
    let o = ctl(&conf, &["purge", "--volume", "9p,old,"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "removed cache/I9p,old,\n");
    assert!(!other.exists() && !root.join("cache/I9p,old,").exists());
    assert!(kernel.with(|s| s.commands.contains(&"cull I9p,old,".to_string())));
    // The loop is unharmed: it still answers.
    assert!(query(&sock, "status", timeout).unwrap().contains("cache: "));

    // Without a daemon, the offline path (under the cache lock) removes it.
    daemon.stop_expecting_ok();
    assert!(!sock.exists());
    let o = ctl(
        &conf,
        &["invalidate", "--volume", "nfs,srv", "--key", "busy-object"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!busy.exists());
}
