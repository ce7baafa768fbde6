//! Helpers the fanotify benches share: settings from the environment and this process's CPU.

use nix::sys::resource::{getrusage, UsageWho};
use std::time::Duration;

/// The number in the environment variable `name`, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User and system CPU time of this process, all its threads (the engine's loop and fetch
/// workers; a reader started as a child is not counted).
pub fn cpu() -> (Duration, Duration) {
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    (t(u.user_time()), t(u.system_time()))
}
