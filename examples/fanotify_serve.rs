//! A bare driver of the fanotify front end, for the VM scenarios until the daemon has one:
//!
//!   fanotify_serve serve MAP.toml CACHE_DIR FSID...   attach CACHE_DIR/FSID for each FSID,
//!       print `attached FSID PATH` (or `failed FSID`) for each, serve events until
//!       SIGTERM/SIGINT; on SIGUSR1 and at the end print
//!       `stats events=.. present=.. own=.. unknown=.. bad=.. bytes=.. fills_failed=..`
//!   fanotify_serve mount BLOB_FILE DIR                mount(2) EROFS read-only on the file
//!
//! `mount` exists because busybox's mount (and util-linux's) put a loop device under a
//! regular file, and a loop device reads its file with no pre-content events: the reader
//! would get zeros from the holes. EROFS takes the file itself (file-backed mount, 6.12+). It
//! must run in another process than `serve`: events of the serving process are allowed
//! unfilled (see `ondemand::fanotify`).

use cachefilesd_rs::ondemand::engine::Engine;
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["mount", blob, dir] => nix::mount::mount(
            Some(blob),
            dir,
            Some("erofs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("mount {blob} on {dir}: {e}")),
        ["serve", map, cache, ref fsids @ ..] if !fsids.is_empty() => serve(map, cache, fsids),
        _ => Err("usage: fanotify_serve serve MAP CACHE_DIR FSID... | mount BLOB DIR".into()),
    };
    if let Err(e) = result {
        eprintln!("fanotify_serve: {e}");
        std::process::exit(1);
    }
}

fn serve(map: &str, cache: &str, fsids: &[&str]) -> Result<(), String> {
    cachefilesd_rs::logging::init(true, 0);
    let text = std::fs::read_to_string(map).map_err(|e| format!("{map}: {e}"))?;
    let map = SourceMap::parse(map, &text).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    let dump = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump.clone())
        .map_err(|e| e.to_string())?;
    // Workers wake the loop through a pipe.
    let (wake_rx, wake_tx) = nix::unistd::pipe().map_err(|e| e.to_string())?;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&wake_rx),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| e.to_string())?;
    let wake_tx: Arc<OwnedFd> = Arc::new(wake_tx);
    let wake = Arc::new(move || {
        let _ = nix::unistd::write(&*wake_tx, &[1]);
    });
    let mut group = Group::new().map_err(|e| e.to_string())?;
    let mut engine: Engine<Fanotify> = Engine::new(map, wake);
    let mut pending: Vec<(u32, &str, std::path::PathBuf)> = Vec::new();
    for fsid in fsids {
        let path = Path::new(cache).join(fsid);
        let id = engine
            .attach(&mut group, &path, fsid.as_bytes(), fsid.as_bytes())
            .map_err(|e| e.to_string())?;
        pending.push((id, fsid, path));
    }
    while !stop.load(Ordering::Relaxed) {
        {
            let mut fds = [
                PollFd::new(group.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(200u8)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        let mut sink = [0u8; 64];
        while matches!(nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&wake_rx), &mut sink), Ok(n) if n > 0)
        {
        }
        engine.drain_group(&mut group).map_err(|e| e.to_string())?;
        engine.drain_done(&mut group).map_err(|e| e.to_string())?;
        pending.retain(|(id, fsid, path)| {
            if engine.objects().contains_key(id) {
                println!("attached {fsid} {}", path.display());
                false
            } else if engine.in_flight() == 0 {
                // Nothing pending, so its attach was answered: refused (logged).
                println!("failed {fsid}");
                false
            } else {
                true
            }
        });
        if dump.swap(false, Ordering::Relaxed) {
            print_stats(&group, &engine);
        }
    }
    print_stats(&group, &engine);
    Ok(())
}

fn print_stats(group: &Group, engine: &Engine<Fanotify>) {
    let g = &group.stats;
    let s = &engine.stats;
    println!(
        "stats events={} present={} own={} unknown={} bad={} bytes={} fills_failed={}",
        g.events, g.present, g.own, g.unknown, g.bad_events, s.bytes_written, s.reads_failed
    );
}
