//! `cachefilesd -t` on configs that cachefilesd 0.10.10 accepts: an administrator's file with
//! a keyword appended again, a Latin-1 comment and a cache directory whose name is not UTF-8.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

fn check(conf: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cachefilesd"))
        .arg("-t")
        .arg("-f")
        .arg(conf)
        .output()
        .unwrap()
}

#[test]
fn admin_modified_debian_config_is_accepted_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join(OsStr::from_bytes(b"caf\xe9"));
    std::fs::create_dir(&cache).unwrap();
    let conf = tmp.path().join("cachefilesd.conf");
    let mut text = b"# Cache f\xfcr NFS (Latin-1 comment)\n".to_vec();
    text.extend_from_slice(b"dir ");
    text.extend_from_slice(cache.as_os_str().as_bytes());
    text.extend_from_slice(b"\ntag mycache\nbrun 10%\nbcull 7%\nbstop 3%\n");
    // What `echo 'brun 20%' | tee -a /etc/cachefilesd.conf` leaves behind.
    text.extend_from_slice(b"brun 20%\n");
    std::fs::write(&conf, &text).unwrap();

    let out = check(&conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}, stderr {stderr}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
        "{out:?}"
    );
    let shown = conf.display();
    assert_eq!(
        stderr,
        format!("cachefilesd: warning: {shown}:7: brun given again (before at {shown}:4): the later line is used\n")
    );
}

#[test]
fn a_config_error_still_names_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("cachefilesd.conf");
    std::fs::write(&conf, "dir /\nbrun 5%\nbcull 7%\n").unwrap();
    let out = check(&conf);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "cachefilesd: {}:3: bcull 7% must be below brun 5%\n",
            conf.display()
        )
    );
}
