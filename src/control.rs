//! The control socket: `status`, `status json`, `metrics`, `invalidate`, `purge`, on the loop thread.
//!
//! A root-only Unix stream socket, one request per connection. Served from the event loop
//! without ever blocking it: every connection is non-blocking, bounded in size and in time, so
//! a client that connects and never reads cannot stall the daemon.

use crate::ondemand::fanotify::{BlobKey, Detach, MetaEvents};
use crate::reactor::Registrar;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_PATH: &str = "/run/cachefilesd/control.sock";
const MAX_CONNS: usize = 16;
/// Room for an `invalidate` line: a volume key and a cookie key, both in hex.
const MAX_REQUEST: usize = 4096;
const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// The largest reply `query` accepts: far above any report (a status listing 100,000
/// on-demand objects is about 15 MB), far below what would hurt the client.
pub const MAX_REPLY: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    StatusJson,
    Metrics,
    /// `invalidate VOLUME_HEX KEY_HEX` or `purge VOLUME_HEX` (see [`crate::live`]).
    Remove(crate::live::Target),
    /// `attach [--domain D] FSID`: the fanotify front end's blob file for a mount.
    Attach(BlobKey),
    /// `detach PATH|[--domain D] FSID`.
    Detach(Detach),
    /// `meta-events [raised|not-raised]`: what `cachefilesctl mount` found out about the
    /// kernel's EROFS (`None`: asks what is known). The reply is the verdict held after it.
    MetaEvents(Option<MetaEvents>),
    /// `meta-events raised [--domain D] FSID`: a probe mount of that blob found its
    /// superblock filled. Taken only where a reader's event asked for it (`Lazy::superblock_asked`).
    MetaEventsRaisedBy(BlobKey),
}

/// `[--domain D] FSID`, validated. No name may start with `-`: `--domain X X` is written
/// `X` (the default domain), which would then read as an option.
fn blob_key(args: &[&str]) -> Result<BlobKey, String> {
    let plain = |name: &&str| !name.starts_with('-');
    match args {
        ["--domain", d, fsid] if plain(d) && plain(fsid) => BlobKey::new(Some(d), fsid),
        [fsid] if plain(fsid) => BlobKey::new(None, fsid),
        _ => Err("expected [--domain DOMAIN] FSID".into()),
    }
}

pub fn parse_request(line: &str) -> Result<Request, String> {
    // A blob's path is the rest of the line: a cache directory may hold a space, and
    // `cachefilesctl umount` sends the path mountinfo shows.
    if let Some(path) = line
        .trim_end_matches(['\n', '\r'])
        .strip_prefix("detach ")
        .map(str::trim_start)
        .filter(|p| p.starts_with('/'))
    {
        return Ok(Request::Detach(Detach::Path(PathBuf::from(path))));
    }
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["status"] => Ok(Request::Status),
        ["status", "json"] => Ok(Request::StatusJson),
        ["metrics"] => Ok(Request::Metrics),
        [word @ ("invalidate" | "purge"), args @ ..] => parse_remove(word, args),
        ["attach", args @ ..] => blob_key(args)
            .map(Request::Attach)
            .map_err(|e| format!("error: attach: {e}\n")),
        ["detach", path] if path.starts_with('/') => {
            Ok(Request::Detach(Detach::Path(PathBuf::from(path))))
        }
        ["meta-events"] => Ok(Request::MetaEvents(None)),
        ["meta-events", "not-raised"] => Ok(Request::MetaEvents(Some(MetaEvents::NotRaised))),
        ["meta-events", "raised", args @ ..] => blob_key(args)
            .map(Request::MetaEventsRaisedBy)
            .map_err(|e| format!("error: meta-events raised: {e}\n")),
        ["detach", args @ ..] => blob_key(args)
            .map(|k| Request::Detach(Detach::Key(k)))
            .map_err(|e| format!("error: detach: {e}\n")),
        _ => Err(format!(
            "error: unknown request {:?} (try: status, status json, metrics, invalidate, purge, attach, detach, meta-events)\n",
            line.trim()
        )),
    }
}

fn parse_remove(word: &str, args: &[&str]) -> Result<Request, String> {
    crate::live::Target::parse(word, args)
        .map(Request::Remove)
        .map_err(|e| format!("error: {e}\n"))
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
    answered: bool,
}

pub struct ControlServer {
    listener: UnixListener,
    /// The listener's token once registered.
    token: Option<Token>,
    path: PathBuf,
    conns: HashMap<Token, Conn>,
}

impl ControlServer {
    /// Binds the socket, replacing a stale one; only root (the owner) may connect.
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        // The mode is set by mkdir itself, not by a later chmod through the path.
        crate::rundir::create_parent(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(std::io::Error::new(
                        ErrorKind::AddrInUse,
                        "another daemon answers on this socket",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ))
            }
            Err(_) => {}
        }
        Ok(ControlServer {
            listener: bind_private(path)?,
            token: None,
            path: path.to_path_buf(),
            conns: HashMap::new(),
        })
    }

    /// Binds `path` and registers the listener; `None` (logged) if either fails: the daemon
    /// runs on without its control socket.
    pub fn start(path: &Path, reg: &mut Registrar) -> Option<ControlServer> {
        let mut server = ControlServer::bind(path)
            .map_err(|e| log::warn!("control socket {} not available: {e}", path.display()))
            .ok()?;
        match reg.register(&mut server.listener, Interest::READABLE) {
            Ok(token) => {
                server.token = Some(token);
                Some(server)
            }
            Err(e) => {
                log::warn!("control socket {}: {e}", path.display());
                None
            }
        }
    }

    /// Handles an event if `token` is the listener's or a connection's (false otherwise);
    /// `answer` renders a request.
    pub fn on_event(
        &mut self,
        reg: &mut Registrar,
        token: Token,
        answer: &mut dyn FnMut(Request) -> String,
    ) -> bool {
        if Some(token) == self.token {
            self.accept(reg);
            return true;
        }
        let done = match self.conns.get_mut(&token) {
            Some(conn) => serve(conn, answer),
            None => return false,
        };
        if done {
            if let Some(mut conn) = self.conns.remove(&token) {
                reg.deregister(&mut conn.stream, token);
            }
        }
        true
    }

    fn accept(&mut self, reg: &mut Registrar) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    return;
                }
            };
            if !peer_is_privileged(&stream) || self.conns.len() >= MAX_CONNS {
                let _ = stream.write(b"error: refused\n");
                continue;
            }
            let Ok(token) = reg.register(&mut stream, Interest::READABLE | Interest::WRITABLE)
            else {
                continue;
            };
            self.conns.insert(
                token,
                Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    deadline: Instant::now() + CONN_DEADLINE,
                    answered: false,
                },
            );
        }
    }

    /// Drops connections past their deadline (clients that never send or never read).
    pub fn expire(&mut self, reg: &mut Registrar, now: Instant) {
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(t, _)| *t)
            .collect();
        for t in late {
            if let Some(mut c) = self.conns.remove(&t) {
                reg.deregister(&mut c.stream, t);
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a listening socket that only its owner may connect to. The mode is set on the socket
/// before bind (Linux creates the socket file with the socket inode's mode, less the umask), so
/// no chmod ever goes through the path, which a symlink may have replaced by then.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    nix::sys::stat::fchmod(
        fd.as_raw_fd(),
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    socket::listen(&fd, Backlog::new(128)?)?;
    Ok(UnixListener::from_std(
        std::os::unix::net::UnixListener::from(fd),
    ))
}

fn peer_is_privileged(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(cred) => cred.uid() == 0 || cred.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

/// Advances one connection; true when it is finished.
fn serve(conn: &mut Conn, answer: &mut dyn FnMut(Request) -> String) -> bool {
    if !conn.answered {
        let mut buf = [0u8; 128];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    if conn.input.is_empty() {
                        return true;
                    }
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    if conn.input.contains(&b'\n') || conn.input.len() > MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        let reply = if conn.input.len() > MAX_REQUEST {
            "error: request too long\n".to_string()
        } else {
            let line = String::from_utf8_lossy(&conn.input);
            let line = line.split('\n').next().unwrap_or("");
            match parse_request(line) {
                Ok(r) => answer(r),
                Err(e) => e,
            }
        };
        conn.output = reply.into_bytes();
        conn.answered = true;
    }
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return true,
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    true
}

/// The client side, for `cachefilesctl status`/`metrics`.
pub fn query(path: &Path, request: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut out = String::new();
    (&mut s)
        .take(MAX_REPLY as u64 + 1)
        .read_to_string(&mut out)?;
    if out.len() > MAX_REPLY {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "the reply exceeds {} MiB: not a cachefilesd socket",
                MAX_REPLY >> 20
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_larger_than_any_report_is_refused_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let chunk = vec![b'x'; 1 << 20];
            // Stops once the client hangs up (a write error), or after 4x the cap.
            for _ in 0..((4 * MAX_REPLY) >> 20) {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let e = query(&path, "status", Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        server.join().unwrap();
    }

    #[test]
    fn the_socket_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ctl.sock");
        let server = ControlServer::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A second daemon is refused while the first answers.
        let e = ControlServer::bind(&path).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::AddrInUse);
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request("status"), Ok(Request::Status));
        assert_eq!(parse_request(" status   json "), Ok(Request::StatusJson));
        assert_eq!(parse_request("metrics\r"), Ok(Request::Metrics));
        assert!(parse_request("rm -rf /")
            .unwrap_err()
            .starts_with("error: unknown request"));
        assert!(parse_request("").is_err());
        let purge = parse_request("purge 6e66732c737276").unwrap();
        assert_eq!(
            purge,
            Request::Remove(crate::live::Target::Volume(
                crate::cachedir::VolumeName::new(b"nfs,srv").unwrap()
            ))
        );
        // "a/b" is no volume: refused before anything is looked up.
        assert!(parse_request("purge 612f62")
            .unwrap_err()
            .starts_with("error: bad request"));
        assert!(parse_request("invalidate 61").is_err());
    }

    /// Each request is refused with the "error: " reply a client shows as it is.
    fn assert_refused(requests: &[&str]) {
        for bad in requests {
            let e = parse_request(bad).unwrap_err();
            assert!(e.starts_with("error: "), "{bad}: {e}");
        }
    }

    #[test]
    fn attach_and_detach_names_are_validated() {
        assert_eq!(
            parse_request("attach --domain d1 blob.img"),
            Ok(Request::Attach(
                BlobKey::new(Some("d1"), "blob.img").unwrap()
            ))
        );
        assert_eq!(
            parse_request("detach /var/cache/fscache/lazy/a/a"),
            Ok(Request::Detach(Detach::Path(
                "/var/cache/fscache/lazy/a/a".into()
            )))
        );
        // The path mountinfo shows for a cache directory with a space in its name.
        assert_eq!(
            parse_request("detach /srv/my cache/lazy/a/a"),
            Ok(Request::Detach(Detach::Path(
                "/srv/my cache/lazy/a/a".into()
            )))
        );
        assert_eq!(parse_request("meta-events"), Ok(Request::MetaEvents(None)));
        assert_eq!(
            parse_request("meta-events not-raised"),
            Ok(Request::MetaEvents(Some(MetaEvents::NotRaised)))
        );
        assert_eq!(
            parse_request("meta-events raised --domain d a"),
            Ok(Request::MetaEventsRaisedBy(
                BlobKey::new(Some("d"), "a").unwrap()
            ))
        );
        assert_eq!(
            parse_request("detach a"),
            Ok(Request::Detach(Detach::Key(
                BlobKey::new(None, "a").unwrap()
            )))
        );
        assert_refused(&[
            "attach",
            "attach ../x",
            "attach --domain .. x",
            "attach a/b",
            "attach --domain",
            "attach a b",
            "detach ..",
            "meta-events unknown",
            "meta-events raised",
            "meta-events raised x y",
        ]);
    }

    /// Found by the control_request fuzz target: `attach --domain --dom --dom` was taken,
    /// and its canonical text `attach --dom` (the default domain leaves `--domain` out) was
    /// refused. A name starting with `-` is refused in every form.
    #[test]
    fn names_that_read_as_options_are_refused_in_every_form() {
        assert_refused(&[
            "attach --domain --dom --dom",
            "attach --dom",
            "attach --domain -d x",
            "attach --domain d -x",
            "detach --domain -x -x",
            "meta-events raised --domain -x -x",
        ]);
    }
}
