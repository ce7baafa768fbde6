//! Taking over a bound cache after a restart: what it was bound with, what changed, what to do.
//!
//! A restarted daemon (systemd's fd store, `--supervise`) gets the bound device back, so the
//! config it reads again never went through `bind`. The kernel (fs/cachefiles/daemon.c, 6.12)
//! refuses a second `dir` (EEXIST), `tag` (EEXIST) and `secctx` (EINVAL), and the mode is
//! fixed by `bind`; it accepts `debug` and the six limits at any time, each checked against
//! the current values. What was applied is recorded at bind in a state file (written
//! atomically, read back through the config parser, so it is validated like the config) and
//! compared with the config on takeover: limits are sent again, anything the kernel cannot
//! change on a bound cache calls for a rebind.
//!
//! One limit of the kernel's: it turns the limit percentages into block and file counts only
//! at bind (`cachefiles_add_cache`), so on a bound classic cache a new limit is recorded by the
//! kernel but its cull signal keeps the old counts until the next bind. The record then keeps
//! the bound limits, and the daemon culls by the config's itself, from statfs, as it always
//! does on demand (`CullDriver::follow_limits`).

use crate::config::{Config, ConfigError};
use crate::device::{Device, DeviceError};
use crate::proto::{Command, Limit};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Next to the control socket, in the directory systemd keeps across a restart
/// (`RuntimeDirectoryPreserve=restart`): the record of the daemon of the default config.
pub const STATE_PATH: &str = "/run/cachefilesd/bound.conf";

/// The record of the daemon started with the config at `config` (see [`state_path_in`]).
pub fn state_path(config: &Path) -> std::path::PathBuf {
    state_path_in(
        Path::new(STATE_PATH).parent().unwrap_or(Path::new("/")),
        config,
    )
}

/// One record per config file in `run_dir`: daemons of several caches (`-f`) each bind their
/// own, and one's record read by another would look like a changed dir and rebind a cache
/// that needed nothing. `bound.conf` for the default config; `bound-HASH.conf` for another.
/// The same file named differently finds no record, which keeps the cache bound.
pub fn state_path_in(run_dir: &Path, config: &Path) -> std::path::PathBuf {
    if config == Path::new(crate::config::DEFAULT_PATH) {
        return run_dir.join("bound.conf");
    }
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(config.as_os_str().as_bytes());
    run_dir.join(format!("bound-{}.conf", hex::encode(&hash[..8])))
}

const FAMILIES: [[Limit; 3]; 2] = [
    [Limit::Brun, Limit::Bcull, Limit::Bstop],
    [Limit::Frun, Limit::Fcull, Limit::Fstop],
];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the record of the bound cache is invalid: {0}")]
    Invalid(#[from] ConfigError),
}

/// The settings a bound cache was bound with, in cachefilesd.conf syntax: every limit
/// spelled out, so that reading it back does not depend on defaults.
pub fn render(config: &Config) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"# written by cachefilesd at bind: what the bound cache was given\n");
    out.extend_from_slice(b"dir ");
    out.extend_from_slice(config.dir.value.as_os_str().as_bytes());
    out.push(b'\n');
    if let Some(tag) = &config.tag {
        out.extend_from_slice(format!("tag {tag}\n").as_bytes());
    }
    if let Some(secctx) = &config.secctx {
        out.extend_from_slice(b"secctx ");
        out.extend_from_slice(secctx.as_bytes());
        out.push(b'\n');
    }
    if let Some(debug) = config.debug {
        out.extend_from_slice(format!("debug {debug}\n").as_bytes());
    }
    for limit in FAMILIES.iter().flatten() {
        out.extend_from_slice(
            format!("{} {}%\n", limit.keyword(), config.limit(*limit)).as_bytes(),
        );
    }
    if let Some(map) = &config.ondemand {
        out.extend_from_slice(b"ondemand ");
        out.extend_from_slice(map.value.as_os_str().as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"control none\n");
    out
}

/// Records what `config` bound, atomically (a crash leaves the old record or the new one).
pub fn record(path: &Path, config: &Config) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.display().to_string(),
        source,
    };
    crate::rundir::replace(path, &render(config)).map_err(err)
}

/// The recorded settings, validated as a config is; `None` when there is no record.
pub fn load(path: &Path) -> Result<Option<Config>, StateError> {
    let err = |source| StateError::Read {
        path: path.display().to_string(),
        source,
    };
    // Not followed if a link stands there; a record is a few hundred bytes, so reading more
    // than a config can hold means it is not one.
    let Some(bytes) = crate::rundir::read(path, MAX_RECORD).map_err(err)? else {
        return Ok(None);
    };
    if bytes.len() as u64 > MAX_RECORD {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than any record",
        )));
    }
    Ok(Some(Config::parse(path, &bytes)?))
}

/// Eleven lines of at most 4095 bytes each.
const MAX_RECORD: u64 = 64 << 10;

/// Forgets the record (the cache it describes is gone).
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// What a takeover does about the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Keep the bound cache and send the limits again; `changes` says what differs from the
    /// record (empty: nothing, or no record).
    Keep { changes: Vec<String> },
    /// The config changes what a bound cache cannot change: unbind and bind afresh.
    Rebind { reasons: Vec<String> },
}

fn mode(config: &Config) -> &'static str {
    if config.ondemand.is_some() {
        "on-demand"
    } else {
        "classic"
    }
}

/// Compares the record of the bound cache with the config read now.
pub fn plan(applied: Option<&Config>, config: &Config) -> Plan {
    let Some(old) = applied else {
        return Plan::Keep { changes: vec![] };
    };
    let shown = |v: Option<&[u8]>| match v {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "(unset)".to_string(),
    };
    let mut reasons = Vec::new();
    if old.dir.value != config.dir.value {
        reasons.push(format!(
            "dir changed from {} to {}",
            old.dir.value.display(),
            config.dir.value.display()
        ));
    }
    if old.tag != config.tag {
        reasons.push(format!(
            "tag changed from {} to {}",
            shown(old.tag.as_deref().map(str::as_bytes)),
            shown(config.tag.as_deref().map(str::as_bytes))
        ));
    }
    if old.secctx != config.secctx {
        reasons.push(format!(
            "secctx changed from {} to {}",
            shown(old.secctx.as_deref().map(|s| s.as_bytes())),
            shown(config.secctx.as_deref().map(|s| s.as_bytes()))
        ));
    }
    if mode(old) != mode(config) {
        reasons.push(format!(
            "mode changed from {} to {}",
            mode(old),
            mode(config)
        ));
    }
    if !reasons.is_empty() {
        return Plan::Rebind { reasons };
    }
    let mut changes: Vec<String> = FAMILIES
        .iter()
        .flatten()
        .filter(|l| old.limit(**l) != config.limit(**l))
        .map(|l| {
            format!(
                "{} {}% -> {}%",
                l.keyword(),
                old.limit(*l),
                config.limit(*l)
            )
        })
        .collect();
    if old.debug != config.debug {
        changes.push(format!(
            "debug {} -> {}",
            old.debug.unwrap_or(0),
            config.debug.unwrap_or(0)
        ));
    }
    Plan::Keep { changes }
}

/// The commands that set a bound cache's limits (and debug mask) to `config`'s whatever they
/// are now (a debug mask the record has and the config no longer has is set back to 0): per
/// family, stop to 0 and run to 99 first (each valid from any valid state, as the
/// kernel checks `stop < cull < run < 100` at every command), then cull, run, stop to their
/// targets. A record that is missing or stale cannot make the kernel refuse one.
pub fn resend_commands(applied: Option<&Config>, config: &Config) -> Vec<Command> {
    let mut out = Vec::new();
    match (config.debug, applied.and_then(|a| a.debug)) {
        (Some(debug), _) => out.push(Command::Debug(debug)),
        (None, Some(_)) => out.push(Command::Debug(0)),
        (None, None) => {}
    }
    for [run, cull, stop] in FAMILIES {
        out.push(Command::Limit(stop, 0));
        out.push(Command::Limit(run, 99));
        out.push(Command::Limit(cull, config.limit(cull)));
        out.push(Command::Limit(run, config.limit(run)));
        out.push(Command::Limit(stop, config.limit(stop)));
    }
    out
}

/// Sends `resend_commands` to a bound device; on failure, the command refused.
pub fn resend(
    applied: Option<&Config>,
    config: &Config,
    device: &mut dyn Device,
) -> Result<(), (Command, DeviceError)> {
    for command in resend_commands(applied, config) {
        device.send(&command).map_err(|e| (command, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Config {
        Config::parse(Path::new("/etc/cachefilesd.conf"), text.as_bytes()).unwrap()
    }

    #[test]
    fn the_record_reads_back_as_the_settings_it_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bound.conf");
        assert!(load(&path).unwrap().is_none());
        let c = conf(
            "dir /var/cache/fé\ntag t\nsecctx lbl\nbrun 20%\nbcull 15%\nfstop 2%\ndebug 0x4\n",
        );
        record(&path, &c).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.dir.value, c.dir.value);
        assert_eq!(
            (back.tag.clone(), back.secctx.clone(), back.debug),
            (c.tag.clone(), c.secctx.clone(), c.debug)
        );
        for l in FAMILIES.iter().flatten() {
            assert_eq!(back.limit(*l), c.limit(*l), "{l:?}");
        }
        assert_eq!(plan(Some(&back), &c), Plan::Keep { changes: vec![] });
    }

    #[test]
    fn a_damaged_record_is_an_error_not_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bound.conf");
        std::fs::write(&path, "dir /x\nbrun 5%\nbcull 9%\n").unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid(_))));
        std::fs::write(&path, "brun 9%\n").unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid(_))));
        // A link in its place is not followed.
        let target = dir.path().join("elsewhere.conf");
        record(&target, &conf("dir /c\n")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(load(&path), Err(StateError::Read { .. })));
    }

    #[test]
    fn limits_are_changes_and_dir_tag_secctx_mode_are_rebinds() {
        let old = conf("dir /c\nbrun 10%\n");
        assert_eq!(
            plan(Some(&old), &conf("dir /c\nbrun 20%\n")),
            Plan::Keep {
                changes: vec!["brun 10% -> 20%".into()]
            }
        );
        for (text, why) in [
            ("dir /d\nbrun 10%\n", "dir changed from /c to /d"),
            (
                "dir /c\nbrun 10%\ntag x\n",
                "tag changed from (unset) to \"x\"",
            ),
            ("dir /c\nbrun 10%\nsecctx s\n", "secctx changed"),
            (
                "dir /c\nbrun 10%\nondemand /m.toml\n",
                "mode changed from classic to on-demand",
            ),
        ] {
            match plan(Some(&old), &conf(text)) {
                Plan::Rebind { reasons } => {
                    assert_eq!(reasons.len(), 1, "{text}");
                    assert!(reasons[0].starts_with(why), "{reasons:?}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(plan(None, &old), Plan::Keep { changes: vec![] });
    }

    /// The kernel's check, as in fs/cachefiles/daemon.c: each command against the current
    /// values of its family.
    fn kernel_accepts(current: &mut [u8; 3], limit: Limit, v: u8) -> bool {
        let i = FAMILIES
            .iter()
            .find_map(|f| f.iter().position(|l| *l == limit))
            .unwrap();
        let [run, cull, stop] = *current;
        let ok = match i {
            0 => v > cull && v < 100,
            1 => v > stop && v < run,
            _ => v < cull,
        };
        if ok {
            current[i] = v;
        }
        ok
    }

    #[test]
    fn a_debug_mask_taken_out_of_the_config_is_cleared() {
        let debug = |c: &[Command]| -> Vec<String> {
            c.iter()
                .filter(|c| matches!(c, Command::Debug(_)))
                .map(|c| c.to_string())
                .collect()
        };
        let old = conf("dir /c\ndebug 4\n");
        let new = conf("dir /c\n");
        assert_eq!(debug(&resend_commands(Some(&old), &new)), ["debug 0"]);
        assert_eq!(debug(&resend_commands(Some(&new), &old)), ["debug 4"]);
        assert!(debug(&resend_commands(Some(&new), &new)).is_empty());
        assert!(debug(&resend_commands(None, &new)).is_empty());
    }

    #[test]
    fn the_resent_limits_are_accepted_from_any_valid_state() {
        let targets = [(7, 5, 1), (99, 98, 97), (3, 2, 0), (50, 10, 5)];
        for (r, c, s) in targets {
            let config = conf(&format!("dir /c\nbrun {r}%\nbcull {c}%\nbstop {s}%\n"));
            for start in [[7, 5, 1], [99, 98, 97], [2, 1, 0], [60, 40, 20]] {
                let mut current = start;
                for cmd in resend_commands(None, &config) {
                    if let Command::Limit(l, v) = cmd {
                        if matches!(l, Limit::Brun | Limit::Bcull | Limit::Bstop) {
                            assert!(kernel_accepts(&mut current, l, v), "{start:?} -> {cmd}");
                        }
                    }
                }
                assert_eq!(current, [r, c, s]);
            }
        }
    }
}
