//! A restarted daemon taking over a bound cache applies the config it reads again (issue 14):
//! changed limits are sent to the kernel, a changed dir rebinds, and a worker of
//! `--supervise` refuses what it cannot rebind.

use cachefilesd_rs::config::Config;
use cachefilesd_rs::daemon::Serving;
use cachefilesd_rs::device::DeviceError;
use cachefilesd_rs::fake::{FakeDevice, FakeKernel};
use cachefilesd_rs::start::{take_over, StartError, Taken};
use cachefilesd_rs::takeover;
use std::cell::Cell;
use std::path::Path;

fn conf(text: &str) -> Config {
    Config::parse(Path::new("/etc/cachefilesd.conf"), text.as_bytes()).unwrap()
}

/// A bound fake cache: its kernel has seen the bind, and the record says what it was given.
fn bound(state: &Path, text: &str) -> (FakeKernel, FakeDevice) {
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind".into()));
    takeover::record(state, &conf(text)).unwrap();
    (kernel, device)
}

fn last(kernel: &FakeKernel, keyword: &str) -> Option<String> {
    kernel.with(|s| {
        s.commands
            .iter()
            .rev()
            .find(|c| c.split(' ').next() == Some(keyword))
            .cloned()
    })
}

#[test]
fn an_edited_brun_is_sent_on_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bound.conf");
    let (kernel, device) = bound(&state, "dir /var/cache/fscache\nbrun 10%\nbcull 7%\n");
    let edited = conf("dir /var/cache/fscache\nbrun 20%\nbcull 15%\nfstop 2%\n");
    let closed = Cell::new(false);
    let (_device, taken, _serving) = take_over(
        &edited,
        true,
        &state,
        device,
        Serving::Classic,
        |_| closed.set(true),
        || -> Result<FakeDevice, StartError> { panic!("no rebind for a changed limit") },
    )
    .unwrap();
    // The kernel counted the limits at bind: the daemon culls by the edited ones itself.
    assert_eq!(taken, Taken::KeptWithBoundLimits);
    assert!(!closed.get());
    assert_eq!(last(&kernel, "brun").as_deref(), Some("brun 20%"));
    assert_eq!(last(&kernel, "bcull").as_deref(), Some("bcull 15%"));
    assert_eq!(last(&kernel, "fstop").as_deref(), Some("fstop 2%"));
    // Nothing that a bound cache refuses.
    assert_eq!(last(&kernel, "dir"), None);
    assert_eq!(
        kernel.with(|s| s.commands.iter().filter(|c| c.starts_with("bind")).count()),
        1
    );
    // The record keeps the limits of the bind (the kernel's counts), so the next takeover
    // knows they still differ.
    assert_eq!(
        takeover::load(&state)
            .unwrap()
            .unwrap()
            .limit(cachefilesd_rs::proto::Limit::Brun),
        10
    );
}

#[test]
fn unchanged_limits_are_the_kernels_own() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bound.conf");
    let text = "dir /var/cache/fscache\nbrun 20%\nbcull 15%\n";
    let (kernel, device) = bound(&state, text);
    let (_device, taken, _serving) = take_over(
        &conf(&format!("{text}debug 1\n")),
        true,
        &state,
        device,
        Serving::Classic,
        |_| panic!("no rebind"),
        || -> Result<FakeDevice, StartError> { panic!("no rebind") },
    )
    .unwrap();
    assert_eq!(taken, Taken::Kept);
    assert_eq!(last(&kernel, "debug").as_deref(), Some("debug 1"));
    assert_eq!(takeover::load(&state).unwrap().unwrap().debug, Some(1));
}

#[test]
fn a_changed_dir_rebinds() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bound.conf");
    let (old_kernel, device) = bound(&state, "dir /var/cache/fscache\n");
    let edited = conf("dir /srv/fscache\ntag mine\n");
    let (new_kernel, new_device) = FakeKernel::new();
    let mut new_device = Some(new_device);
    let closed = Cell::new(false);
    // The old cache's last holder (the fd store) lets go a little later: the kernel lets one
    // process at a time open the device, so the first opens are refused.
    let mut busy = 2;
    let (_device, taken, _serving) = take_over(
        &edited,
        true,
        &state,
        device,
        Serving::Classic,
        |old| {
            closed.set(true);
            drop(old);
        },
        || {
            if busy > 0 {
                busy -= 1;
                return Err(StartError::Device(DeviceError::Busy {
                    path: "/dev/cachefiles".into(),
                }));
            }
            Ok(new_device.take().expect("opened once"))
        },
    )
    .unwrap();
    assert_eq!(taken, Taken::Rebound);
    assert_eq!(busy, 0);
    assert!(
        closed.get(),
        "the old device must be let go for the kernel to unbind"
    );
    assert_eq!(old_kernel.with(|s| s.commands.clone()), ["bind"]);
    let cmds = new_kernel.with(|s| s.commands.clone());
    assert_eq!(cmds.first().map(String::as_str), Some("dir /srv/fscache"));
    assert!(cmds.contains(&"tag mine".to_string()), "{cmds:?}");
    assert_eq!(cmds.last().map(String::as_str), Some("bind"));
    assert_eq!(
        takeover::load(&state).unwrap().unwrap().dir.value,
        Path::new("/srv/fscache")
    );
}

#[test]
fn a_supervised_worker_refuses_a_changed_dir_and_leaves_the_cache_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bound.conf");
    let (kernel, device) = bound(&state, "dir /var/cache/fscache\n");
    let Err(e) = take_over(
        &conf("dir /srv/fscache\n"),
        false,
        &state,
        device,
        Serving::Classic,
        |_| panic!("a worker never closes the supervisor's cache"),
        || -> Result<FakeDevice, StartError> { panic!("a worker cannot open the device") },
    ) else {
        panic!("taken over despite a changed dir");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("dir changed from /var/cache/fscache to /srv/fscache"),
        "{msg}"
    );
    assert!(msg.contains("restart cachefilesd --supervise"), "{msg}");
    assert_eq!(e.exit(), cachefilesd_rs::exit::Exit::Config);
    assert_eq!(kernel.with(|s| s.commands.clone()), ["bind"]);
}

/// Two daemons, two caches, two configs (`-f`): a restart of one takes over its own cache
/// and keeps it, whatever the other recorded since.
#[test]
fn daemons_of_two_caches_keep_their_own_records() {
    let run = tempfile::tempdir().unwrap();
    let parse = |path: &str, text: &str| Config::parse(Path::new(path), text.as_bytes()).unwrap();
    let a = parse("/etc/cachefilesd.conf", "dir /var/cache/fscache\n");
    let b = parse("/etc/cachefilesd-nfs.conf", "dir /srv/nfs-cache\ntag nfs\n");
    let state_a = takeover::state_path_in(run.path(), &a.path);
    let state_b = takeover::state_path_in(run.path(), &b.path);
    assert_eq!(
        state_a,
        run.path().join("bound.conf"),
        "the default's as before"
    );
    // Each bound its cache and recorded it, b last.
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind".into()));
    takeover::record(&state_a, &a).unwrap();
    takeover::record(&state_b, &b).unwrap();
    let (_device, taken, _serving) = take_over(
        &a,
        true,
        &state_a,
        device,
        Serving::Classic,
        |_| panic!("a's cache withdrawn for b's record"),
        || -> Result<FakeDevice, StartError> { panic!("no rebind") },
    )
    .unwrap();
    assert_eq!(taken, Taken::Kept);
    assert_eq!(
        kernel.with(|s| s.commands.iter().filter(|c| *c == "bind").count()),
        1
    );
}
