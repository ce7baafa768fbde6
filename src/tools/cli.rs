//! cachefilesctl's command line: parsing into [`Invocation`] and running it.
//!
//! Exit status: 0 done / clean, 1 problems found or a failure, 2 usage.

use super::check::check;
use super::inventory::{usage, walk, Finding, Keep};
use super::mount::Attached;
use super::prefill::{prefill, Prefill};
use super::remove::{invalidate, purge};
use super::{show_bytes, ToolError};
use crate::cachedir::{CacheDir, Escaped, ObjectName, VolumeName};
use crate::config::{Config, ConfigError, DEFAULT_PATH};
use crate::live::Target;
use crate::lock::lock_cache_dir;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: cachefilesctl [--dir DIR | -f CONF] COMMAND [ARGS]
  --dir DIR     the cache directory (default: `dir` of CONF)
  -f CONF       cachefilesd configuration (default /etc/cachefilesd.conf)
commands:
  ls [--volume V] [--json]      volumes and objects with their keys, sizes, content, atime
  du [--json]                   totals per volume
  check [--repair]              validate the tree; --repair buries broken entries
  prefill --volume erofs,DOMAIN --key FSID --from FILE
                                store FILE as the cached EROFS blob FSID
  invalidate --volume V (--key K | --key-hex HEX)
                                remove one object
  purge --volume V              remove a whole volume
                                (both through the running daemon when it serves this
                                cache: objects in use are refused, not removed)
  status [--json] [--socket S]  ask the running daemon how it is doing
  metrics [--socket S]          the daemon's counters in Prometheus text format
  attach [--domain D] FSID      have the daemon attach a lazy EROFS blob; prints its file
                                (fanotify front end) for fstab or a mount unit
  mount [--domain D] FSID MOUNTPOINT [-o OPTS]
                                attach and mount EROFS read-only (on the blob's file, or
                                with fsid= on the cachefiles front end)
  umount MOUNTPOINT             unmount and detach the blob
  (status, metrics, attach, mount and umount take --socket S)
Writing commands refuse to run while a cachefilesd holds the cache.
exit status: 0 ok, 1 problems found or failure, 2 usage
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ls {
        volume: Option<VolumeName>,
        json: bool,
    },
    Du {
        json: bool,
    },
    Check {
        repair: bool,
    },
    Prefill {
        volume: VolumeName,
        key: Vec<u8>,
        from: PathBuf,
    },
    Invalidate {
        volume: VolumeName,
        key: Vec<u8>,
    },
    Purge {
        volume: VolumeName,
    },
    /// Asks the running daemon over its control socket.
    Status {
        json: bool,
        socket: Option<PathBuf>,
    },
    Metrics {
        socket: Option<PathBuf>,
    },
    Attach {
        domain: Option<String>,
        fsid: String,
        socket: Option<PathBuf>,
    },
    Mount {
        domain: Option<String>,
        fsid: String,
        mountpoint: PathBuf,
        options: Option<String>,
        socket: Option<PathBuf>,
    },
    Umount {
        mountpoint: PathBuf,
        socket: Option<PathBuf>,
    },
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirSource {
    Dir(PathBuf),
    Config(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub dir: DirSource,
    pub command: Command,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage_err(s: impl Into<String>) -> UsageError {
    UsageError(s.into())
}

fn parse_hex(s: &[u8]) -> Result<Vec<u8>, UsageError> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return Err(usage_err("--key-hex needs an even number of hex digits"));
    }
    hex::decode(s).map_err(|_| usage_err("--key-hex: not hex"))
}

/// A `--volume` value: one directory `I<volume>` in `cache/`, nothing else.
fn volume(v: &[u8]) -> Result<VolumeName, UsageError> {
    VolumeName::new(v).map_err(|e| usage_err(format!("--volume {}: {e}", Escaped(v))))
}

/// A cookie key: anything the kernel can name an object after.
fn key(k: Vec<u8>) -> Result<Vec<u8>, UsageError> {
    ObjectName::for_key(&k).map_err(|e| usage_err(format!("key {}: {e}", show_bytes(&k))))?;
    Ok(k)
}

/// Options given, by name, with their value if they take one; each is taken by the command
/// it applies to, and one left over is an error.
type Opts = Vec<(String, Option<Vec<u8>>)>;

/// The arguments, sorted: global options, the words (command and extra), the command's options.
struct Args {
    dir: Option<PathBuf>,
    conf: Option<PathBuf>,
    words: Vec<Vec<u8>>,
    opts: Opts,
}

/// Parses the arguments after the program name. Global options may come anywhere.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, UsageError> {
    let Args {
        dir,
        conf,
        words,
        mut opts,
    } = sort_args(args)?;
    if dir.is_some() && conf.is_some() {
        return Err(usage_err("give --dir or -f, not both"));
    }
    let dir = match dir {
        Some(d) => DirSource::Dir(d),
        None => DirSource::Config(conf.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))),
    };
    let Some(word) = words.first() else {
        return Err(usage_err("no command given"));
    };
    let operands = match word.as_slice() {
        b"attach" => 1,
        b"mount" => 2,
        b"umount" => 1,
        _ => 0,
    };
    if words.len() > 1 + operands && word != b"help" {
        return Err(usage_err(format!(
            "unexpected argument {}",
            String::from_utf8_lossy(&words[1 + operands])
        )));
    }
    let command = match word.as_slice() {
        b"attach" | b"mount" | b"umount" => mount_command(word, &words[1..], &mut opts)?,
        _ => command(word, &mut opts)?,
    };
    if let Some((name, _)) = opts.first() {
        return Err(usage_err(format!(
            "{name} does not apply to {}",
            String::from_utf8_lossy(word)
        )));
    }
    Ok(Invocation { dir, command })
}

fn sort_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, UsageError> {
    let mut args = args.into_iter().map(OsString::into_vec);
    let mut dir = None;
    let mut conf = None;
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut opts: Opts = Vec::new();
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| usage_err(format!("{name} needs a value")))
        };
        match a.as_slice() {
            b"--dir" => dir = Some(PathBuf::from(OsString::from_vec(value("--dir")?))),
            b"-f" | b"--config" => conf = Some(PathBuf::from(OsString::from_vec(value("-f")?))),
            b"-h" | b"--help" => words.insert(0, b"help".to_vec()),
            b"--volume" | b"--key" | b"--key-hex" | b"--from" | b"--socket" | b"--domain"
            | b"-o" => {
                let name = String::from_utf8_lossy(&a).into_owned();
                let v = value(&name)?;
                opts.push((name, Some(v)));
            }
            b"--json" | b"--repair" => opts.push((String::from_utf8_lossy(&a).into_owned(), None)),
            _ if a.starts_with(b"-") => {
                return Err(usage_err(format!(
                    "unknown option {}",
                    String::from_utf8_lossy(&a)
                )))
            }
            _ => words.push(a),
        }
    }
    Ok(Args {
        dir,
        conf,
        words,
        opts,
    })
}

/// The command `word` names, with the options it takes out of `opts`.
fn command(word: &[u8], opts: &mut Opts) -> Result<Command, UsageError> {
    let mut take = |name: &str| -> Option<Option<Vec<u8>>> {
        let i = opts.iter().position(|(n, _)| n == name)?;
        Some(opts.remove(i).1)
    };
    let need = |v: Option<Option<Vec<u8>>>, name: &str| -> Result<Vec<u8>, UsageError> {
        v.flatten()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| usage_err(format!("{name} is required")))
    };
    Ok(match word {
        b"help" => Command::Help,
        b"ls" => Command::Ls {
            volume: take("--volume").flatten().map(|v| volume(&v)).transpose()?,
            json: take("--json").is_some(),
        },
        b"du" => Command::Du {
            json: take("--json").is_some(),
        },
        b"check" => Command::Check {
            repair: take("--repair").is_some(),
        },
        b"prefill" => Command::Prefill {
            volume: volume(&need(take("--volume"), "--volume")?)?,
            key: key(need(take("--key"), "--key")?)?,
            from: os_path(need(take("--from"), "--from")?),
        },
        b"invalidate" => {
            let volume = volume(&need(take("--volume"), "--volume")?)?;
            let key = key(
                match (take("--key").flatten(), take("--key-hex").flatten()) {
                    (Some(k), None) if !k.is_empty() => k,
                    (None, Some(h)) => parse_hex(&h)?,
                    _ => return Err(usage_err("invalidate needs one of --key or --key-hex")),
                },
            )?;
            Command::Invalidate { volume, key }
        }
        b"purge" => Command::Purge {
            volume: volume(&need(take("--volume"), "--volume")?)?,
        },
        b"status" => Command::Status {
            json: take("--json").is_some(),
            socket: take("--socket").flatten().map(os_path),
        },
        b"metrics" => Command::Metrics {
            socket: take("--socket").flatten().map(os_path),
        },
        other => {
            return Err(usage_err(format!(
                "unknown command {}",
                String::from_utf8_lossy(other)
            )))
        }
    })
}

/// `attach`, `mount` and `umount`, with their operands. Names are only checked for UTF-8
/// here: the daemon validates them (one type, `BlobKey`).
fn mount_command(
    word: &[u8],
    operands: &[Vec<u8>],
    opts: &mut Opts,
) -> Result<Command, UsageError> {
    let mut take = |name: &str| -> Option<Vec<u8>> {
        let i = opts.iter().position(|(n, _)| n == name)?;
        opts.remove(i).1
    };
    let text = |v: Vec<u8>, what: &str| {
        String::from_utf8(v).map_err(|_| usage_err(format!("{what} must be UTF-8")))
    };
    let socket = take("--socket").map(os_path);
    let name = |i: usize, what: &str| -> Result<Vec<u8>, UsageError> {
        operands
            .get(i)
            .cloned()
            .ok_or_else(|| usage_err(format!("{} needs {what}", String::from_utf8_lossy(word))))
    };
    Ok(match word {
        b"umount" => Command::Umount {
            mountpoint: os_path(name(0, "MOUNTPOINT")?),
            socket,
        },
        _ => {
            let domain = take("--domain").map(|d| text(d, "--domain")).transpose()?;
            let fsid = text(name(0, "FSID")?, "FSID")?;
            if word == b"attach" {
                Command::Attach {
                    domain,
                    fsid,
                    socket,
                }
            } else {
                Command::Mount {
                    domain,
                    fsid,
                    mountpoint: os_path(name(1, "MOUNTPOINT")?),
                    options: take("-o").map(|o| text(o, "-o")).transpose()?,
                    socket,
                }
            }
        }
    })
}

fn os_path(v: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(v))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot reach the daemon at {path}: {error} (is cachefilesd running?)")]
    Daemon { path: String, error: std::io::Error },
    #[error("control socket is disabled in {0} (control none)")]
    NoControl(String),
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Mount(#[from] super::mount::MountError),
}

/// The control socket: --socket, else the config's `control`, else the default.
fn control_socket(dir: &DirSource, socket: &Option<PathBuf>) -> Result<PathBuf, RunError> {
    if let Some(s) = socket {
        return Ok(s.clone());
    }
    match dir {
        DirSource::Config(path) if path.exists() => Config::load(path)?
            .control
            .ok_or_else(|| RunError::NoControl(path.display().to_string())),
        _ => Ok(PathBuf::from(crate::control::DEFAULT_PATH)),
    }
}

fn ask_daemon(inv: &Invocation, out: &mut dyn Write) -> Result<bool, RunError> {
    let (request, socket) = match &inv.command {
        Command::Status {
            json: false,
            socket,
        } => ("status", socket),
        Command::Status { json: true, socket } => ("status json", socket),
        Command::Metrics { socket } => ("metrics", socket),
        _ => unreachable!("only called for daemon queries"),
    };
    let path = control_socket(&inv.dir, socket)?;
    let reply = crate::control::query(&path, request, std::time::Duration::from_secs(10)).map_err(
        |error| RunError::Daemon {
            path: path.display().to_string(),
            error,
        },
    )?;
    out.write_all(reply.as_bytes())?;
    Ok(!reply.starts_with("error:"))
}

/// Where `invalidate`/`purge` run: in the daemon that serves the cache, if one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Through the control socket at this path.
    Daemon(PathBuf),
    /// Offline, under the cache lock (a daemon without a reachable socket makes the lock
    /// refuse, as before).
    Offline,
}

/// A daemon answers on the control socket and serves the cache at `dir` (compared after
/// resolving both paths): removals go through it. No socket, no answer or another cache:
/// offline.
pub fn route(inv: &Invocation, dir: &std::path::Path) -> Route {
    let Ok(path) = control_socket(&inv.dir, &None) else {
        return Route::Offline;
    };
    let timeout = std::time::Duration::from_secs(10);
    let Ok(reply) = crate::control::query(&path, "status json", timeout) else {
        return Route::Offline;
    };
    let served = serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v.get("dir")?.as_str().map(PathBuf::from));
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    match served {
        Some(served) if same(&served, dir) => Route::Daemon(path),
        _ => Route::Offline,
    }
}

/// Sends a removal to the daemon; its `removed ...` line is the output, an `error: ...` line
/// an error.
fn remove_live(
    socket: &std::path::Path,
    target: &Target,
    out: &mut dyn Write,
) -> Result<bool, RunError> {
    let reply = crate::control::query(
        socket,
        &target.request(),
        std::time::Duration::from_secs(30),
    )
    .map_err(|error| RunError::Daemon {
        path: socket.display().to_string(),
        error,
    })?;
    match reply.strip_prefix("error: ") {
        Some(e) => Err(RunError::Refused(e.trim_end().to_string())),
        None => {
            out.write_all(reply.as_bytes())?;
            Ok(true)
        }
    }
}

fn cache_dir(source: &DirSource) -> Result<PathBuf, ConfigError> {
    match source {
        DirSource::Dir(d) => Ok(d.clone()),
        DirSource::Config(path) => Ok(Config::load(path)?.dir.value),
    }
}

/// Runs a parsed invocation; `Ok(false)` means problems were found (exit 1).
pub fn run(inv: &Invocation, out: &mut dyn Write) -> Result<bool, RunError> {
    if inv.command == Command::Help {
        out.write_all(USAGE.as_bytes())?;
        return Ok(true);
    }
    if matches!(
        inv.command,
        Command::Status { .. } | Command::Metrics { .. }
    ) {
        return ask_daemon(inv, out);
    }
    match &inv.command {
        Command::Attach {
            domain,
            fsid,
            socket,
        } => {
            let socket = control_socket(&inv.dir, socket)?;
            match super::mount::attach_ready(&socket, domain.as_deref(), fsid)? {
                Attached::File(path) => writeln!(out, "{}", path.display())?,
                Attached::Fscache => writeln!(
                    out,
                    "fscache: mount -t erofs -o fsid={fsid}{} none MOUNTPOINT",
                    domain
                        .as_ref()
                        .map_or(String::new(), |d| format!(",domain_id={d}"))
                )?,
            }
            return Ok(true);
        }
        Command::Mount {
            domain,
            fsid,
            mountpoint,
            options,
            socket,
        } => {
            let socket = control_socket(&inv.dir, socket)?;
            super::mount::mount(
                &socket,
                domain.as_deref(),
                fsid,
                mountpoint,
                options.as_deref(),
            )?;
            return Ok(true);
        }
        Command::Umount { mountpoint, socket } => {
            let socket = control_socket(&inv.dir, socket)?;
            super::mount::umount(&socket, mountpoint)?;
            return Ok(true);
        }
        _ => {}
    }
    let path = cache_dir(&inv.dir)?;
    let live = match &inv.command {
        Command::Invalidate { volume, key } => Some(Target::Object {
            volume: volume.clone(),
            key: key.clone(),
        }),
        Command::Purge { volume } => Some(Target::Volume(volume.clone())),
        _ => None,
    };
    if let Some(target) = live {
        if let Route::Daemon(socket) = route(inv, &path) {
            return remove_live(&socket, &target, out);
        }
    }
    let writes = match &inv.command {
        Command::Check { repair } => *repair,
        Command::Prefill { .. } | Command::Invalidate { .. } | Command::Purge { .. } => true,
        _ => false,
    };
    // Held until the command is done; the daemon takes the same lock for its whole life.
    let _lock = if writes {
        Some(lock_cache_dir(&path).map_err(ToolError::from)?)
    } else {
        None
    };
    let root = CacheDir::open(&path).map_err(ToolError::from)?;
    match &inv.command {
        Command::Help
        | Command::Status { .. }
        | Command::Metrics { .. }
        | Command::Attach { .. }
        | Command::Mount { .. }
        | Command::Umount { .. } => {
            unreachable!("handled above")
        }
        Command::Ls { volume, json } => ls(&root, volume.as_ref(), *json, out),
        Command::Du { json } => du(&root, *json, out),
        Command::Check { repair } => check_and_show(&root, *repair, out),
        Command::Prefill { volume, key, from } => {
            let o = prefill(&root, &Prefill { volume, key, from })?;
            writeln!(
                out,
                "prefilled {}: {} bytes{}{}",
                o.path,
                o.object_size,
                if o.volume_created { ", new volume" } else { "" },
                if o.replaced {
                    ", replaced the old object"
                } else {
                    ""
                }
            )?;
            Ok(true)
        }
        Command::Invalidate { volume, key } => {
            let p = invalidate(&root, volume, key)?;
            writeln!(out, "removed {p} (key {})", show_bytes(key))?;
            Ok(true)
        }
        Command::Purge { volume } => {
            let p = purge(&root, volume)?;
            writeln!(out, "removed {p}")?;
            Ok(true)
        }
    }
}

/// `ls`: volumes and their objects, as text or JSON.
fn ls(
    root: &CacheDir,
    volume: Option<&VolumeName>,
    json: bool,
    out: &mut dyn Write,
) -> Result<bool, RunError> {
    let s = walk(root, volume, Keep::LS)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &s.volumes).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for v in &s.volumes {
            writeln!(
                out,
                "volume {}  {}  ({} fanouts, {} objects)",
                v.volume,
                Escaped(v.path.as_bytes()),
                v.fanouts,
                v.objects.len()
            )?;
            for o in &v.objects {
                writeln!(
                    out,
                    "  {}  key={}  size={}  allocated={}  content={}  atime={}",
                    Escaped(o.path.as_bytes()),
                    o.key.as_deref().unwrap_or("?"),
                    o.object_size.map_or("?".into(), |n| n.to_string()),
                    o.allocated,
                    o.content.map_or("?".into(), |c| c.to_string()),
                    utc(o.atime)
                )?;
            }
        }
    }
    Ok(true)
}

/// `du`: totals per volume and in all, as text or JSON.
fn du(root: &CacheDir, json: bool, out: &mut dyn Write) -> Result<bool, RunError> {
    let (per, total) = usage(root)?;
    if json {
        let v = serde_json::json!({ "volumes": per, "total": total });
        serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:>10} {:>14} {:>14}  volume",
            "objects", "object-bytes", "allocated"
        )?;
        for u in per.iter().chain([&total]) {
            writeln!(
                out,
                "{:>10} {:>14} {:>14}  {}",
                u.objects, u.object_bytes, u.allocated_bytes, u.volume
            )?;
        }
    }
    Ok(true)
}

/// `check [--repair]`: each finding, what the repair did and what remains, then a summary.
fn check_and_show(root: &CacheDir, repair: bool, out: &mut dyn Write) -> Result<bool, RunError> {
    let r = check(root, repair)?;
    let show = |out: &mut dyn Write, f: &Finding| -> std::io::Result<()> {
        let tag = if f.is_problem() { "problem" } else { "note" };
        let problem = f.problem.to_string();
        writeln!(out, "{tag}: {}: {}", f.show(), Escaped(problem.as_bytes()))
    };
    for f in &r.found.findings {
        show(out, f)?;
    }
    if let Some((report, after)) = &r.repaired {
        for p in &report.buried {
            writeln!(out, "repaired: {p}: moved into the graveyard")?;
        }
        for p in &report.skipped {
            writeln!(out, "skipped: {p}: gone or replaced since the check")?;
        }
        writeln!(
            out,
            "repaired: graveyard: {} entries deleted",
            report.reaped
        )?;
        for f in after.findings.iter().filter(|f| f.is_problem()) {
            let problem = f.problem.to_string();
            writeln!(
                out,
                "remaining {}: {}",
                f.show(),
                Escaped(problem.as_bytes())
            )?;
        }
    }
    let objects: u64 = r.found.volumes.iter().map(|v| v.usage.objects).sum();
    let problems = r.found.findings.iter().filter(|f| f.is_problem()).count();
    writeln!(
        out,
        "{}: {} volumes, {objects} objects, {problems} problems{}",
        Escaped(root.path().as_os_str().as_encoded_bytes()),
        r.found.volumes.len(),
        if r.repaired.is_some() {
            if r.clean() {
                ", all repaired"
            } else {
                ", some remain"
            }
        } else if problems == 0 {
            ": clean"
        } else {
            ""
        }
    )?;
    Ok(r.clean())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (days-to-civil from Howard Hinnant's date algorithms).
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_commands_and_global_options_anywhere() {
        assert_eq!(
            p(&["ls", "--dir", "/c", "--volume", "erofs,x", "--json"]).unwrap(),
            Invocation {
                dir: DirSource::Dir("/c".into()),
                command: Command::Ls {
                    volume: Some(VolumeName::new(b"erofs,x").unwrap()),
                    json: true
                }
            }
        );
        assert_eq!(
            p(&["check"]).unwrap().dir,
            DirSource::Config(DEFAULT_PATH.into())
        );
        assert_eq!(
            p(&[
                "-f",
                "/x.conf",
                "invalidate",
                "--volume",
                "9p,a,",
                "--key-hex",
                "0x3940510000000000"
            ])
            .unwrap()
            .command,
            Command::Invalidate {
                volume: VolumeName::new(b"9p,a,").unwrap(),
                key: vec![0x39, 0x40, 0x51, 0, 0, 0, 0, 0]
            }
        );
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--dir"][..],
            &[],
            &["frobnicate"],
            &["ls", "extra"],
            &["check", "--json"],
            &["prefill", "--volume", "erofs,x", "--key", "k"],
            &["invalidate", "--volume", "v"],
            &["invalidate", "--volume", "v", "--key-hex", "abc"],
            &["invalidate", "--volume", "v", "--key-hex", "+f+f"],
            &["invalidate", "--volume", "v", "--key-hex", "0x"],
            &["--dir", "/a", "-f", "/b", "ls"],
            &["ls", "--bogus"],
            // Volume names that are not one directory of cache/ (issue 12.1).
            &["purge", "--volume", "erofs,good/../../../canary"],
            &["purge", "--volume", "/"],
            &["ls", "--volume", "a/b"],
            &["invalidate", "--volume", "x/..", "--key", "k"],
            &[
                "prefill",
                "--volume",
                "erofs,a/b",
                "--key",
                "k",
                "--from",
                "/f",
            ],
            &[
                "invalidate",
                "--volume",
                "v",
                "--key-hex",
                &"ff".repeat(253),
            ],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert_eq!(p(&["--help"]).unwrap().command, Command::Help);
    }

    #[test]
    fn mount_commands_take_their_operands() {
        assert_eq!(
            p(&["mount", "--domain", "d", "app", "/mnt/app", "-o", "directio"])
                .unwrap()
                .command,
            Command::Mount {
                domain: Some("d".into()),
                fsid: "app".into(),
                mountpoint: "/mnt/app".into(),
                options: Some("directio".into()),
                socket: None,
            }
        );
        assert_eq!(
            p(&["attach", "app", "--socket", "/s"]).unwrap().command,
            Command::Attach {
                domain: None,
                fsid: "app".into(),
                socket: Some("/s".into()),
            }
        );
        assert_eq!(
            p(&["umount", "/mnt/app"]).unwrap().command,
            Command::Umount {
                mountpoint: "/mnt/app".into(),
                socket: None,
            }
        );
        for bad in [
            &["attach"][..],
            &["attach", "a", "b"],
            &["mount", "a"],
            &["mount", "a", "/m", "/x"],
            &["umount"],
            &["umount", "/m", "-o", "x"],
            &["ls", "--domain", "d"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
