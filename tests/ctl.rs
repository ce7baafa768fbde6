//! cachefilesctl against cache trees laid out as the kernel lays them out, including planted
//! damage for `check --repair`. Trees live under CARGO_TARGET_TMPDIR (the worktree's
//! filesystem) because they need user xattrs.

use cachefilesd_rs::cachedir::layout::{self, Content, ObjectXattr};
use cachefilesd_rs::cachedir::xattr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `cachefilesctl prefill` of the file `from` as object `key` of `volume`.
fn prefill(dir: &Path, volume: &str, key: &str, from: &Path) -> Output {
    let from = from.to_str().unwrap();
    ctl(
        dir,
        &["prefill", "--volume", volume, "--key", key, "--from", from],
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn xattr_of(p: &Path) -> Option<Vec<u8>> {
    let f = fs::File::open(p).unwrap();
    xattr::get(&f).unwrap()
}

fn set_xattr_on(p: &Path, value: &[u8]) {
    let f = fs::File::open(p).unwrap();
    xattr::set(&f, value).unwrap();
}

/// A volume as cachefiles_acquire_volume makes it: 0700, volume xattr, 256 fanouts.
fn kernel_volume(root: &Path, volume: &str) -> PathBuf {
    fs::create_dir_all(root.join("graveyard")).unwrap();
    let v = root.join("cache").join(format!("I{volume}"));
    fs::create_dir_all(&v).unwrap();
    set_xattr_on(&v, &[0, 0, 0, 0]);
    for i in 0..=255u8 {
        fs::create_dir_all(v.join(layout::fanout_name(i))).unwrap();
    }
    v
}

/// A committed data object as the kernel leaves it: sized to round_up(size, 4096), xattr.
fn kernel_object(root: &Path, volume: &str, key: &[u8], data: &[u8]) -> PathBuf {
    let name = layout::encode_key(key).unwrap();
    let fan = layout::fanout_name(layout::fanout(volume.as_bytes(), key));
    let p = root
        .join("cache")
        .join(format!("I{volume}"))
        .join(fan)
        .join(std::str::from_utf8(&name).unwrap());
    fs::write(&p, data).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(layout::round_up_dio(data.len() as u64)).unwrap();
    let x = ObjectXattr {
        object_size: data.len() as u64,
        zero_point: 0,
        kind: 1,
        content: Content::NoData,
        aux: vec![],
    };
    set_xattr_on(&p, &x.encode());
    p
}

#[test]
fn prefill_lays_out_the_object_as_the_kernel_does() {
    let t = tmp();
    let root = t.path().join("fscache");
    fs::create_dir(&root).unwrap();
    let src = t.path().join("blob");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&src, &data).unwrap();

    let o = prefill(&root, "erofs,testblob", "testblob", &src);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // The path a real 6.12 kernel used for this volume and fsid.
    let obj = root.join("cache/Ierofs,testblob/@7d/Dtestblob");
    assert!(
        stdout(&o).contains("cache/Ierofs,testblob/@7d/Dtestblob"),
        "{}",
        stdout(&o)
    );
    let bytes = fs::read(&obj).unwrap();
    assert_eq!(bytes.len(), 12288);
    assert_eq!(&bytes[..10_000], &data[..]);
    assert!(bytes[10_000..].iter().all(|&b| b == 0));
    let meta = fs::metadata(&obj).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        meta.blocks() * 512 >= 12288,
        "no holes: every page allocated"
    );
    let mut want = 10_000u64.to_be_bytes().to_vec();
    want.extend_from_slice(&[0; 8]);
    want.extend_from_slice(&[1, 0]);
    assert_eq!(xattr_of(&obj).unwrap(), want);
    assert_eq!(
        xattr_of(&root.join("cache/Ierofs,testblob")).unwrap(),
        [0, 0, 0, 0]
    );
    assert_eq!(
        fs::read_dir(root.join("cache/Ierofs,testblob"))
            .unwrap()
            .count(),
        256
    );
    for d in [
        "cache",
        "graveyard",
        "cache/Ierofs,testblob",
        "cache/Ierofs,testblob/@00",
    ] {
        assert_eq!(
            fs::metadata(root.join(d)).unwrap().permissions().mode() & 0o777,
            0o700,
            "{d}"
        );
    }
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);

    let c = ctl(&root, &["check"]);
    assert_eq!(c.status.code(), Some(0), "{}", stdout(&c));

    // Again with other content: the object is replaced, not appended to or left half-written.
    let ino = meta.ino();
    fs::write(&src, b"short").unwrap();
    let o = prefill(&root, "erofs,testblob", "testblob", &src);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("replaced"));
    let bytes = fs::read(&obj).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert_eq!(&bytes[..5], b"short");
    assert_ne!(fs::metadata(&obj).unwrap().ino(), ino);
    assert_eq!(&xattr_of(&obj).unwrap()[..8], &5u64.to_be_bytes());
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);

    let ls = ctl(&root, &["ls", "--json"]);
    assert_eq!(ls.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["volume"], "erofs,testblob");
    assert_eq!(v[0]["fanouts"], 256);
    let obj = &v[0]["objects"][0];
    assert_eq!(obj["key"], "testblob");
    assert_eq!(obj["path"], "cache/Ierofs,testblob/@7d/Dtestblob");
    assert_eq!(obj["object_size"], 5);
    assert_eq!(obj["file_size"], 4096);
    assert_eq!(obj["content"], "no-data");
    assert_eq!(obj["encoding"], "direct");
}

#[test]
fn prefill_refuses_a_volume_the_kernel_would_discard_and_other_netfs() {
    let t = tmp();
    let root = t.path();
    let src = root.join("blob");
    fs::write(&src, b"x").unwrap();
    let v = kernel_volume(root, "erofs,d");
    set_xattr_on(&v, &[0, 0, 0, 1]);
    let o = prefill(root, "erofs,d", "k", &src);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("purge"),
        "{o:?}"
    );
    let o = prefill(root, "9p,x,", "k", &src);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("EROFS"),
        "{o:?}"
    );
}

#[test]
fn ls_decodes_binary_keys_and_du_sums() {
    let t = tmp();
    let root = t.path();
    kernel_volume(root, "9p,fscached,");
    let key = 0x514039u64.to_le_bytes();
    let p = kernel_object(root, "9p,fscached,", &key, &[7u8; 5000]);
    // Measured in a VM: this object was cache/I9p,fscached,/@95/T514039,
    assert!(p.ends_with("cache/I9p,fscached,/@95/T514039,"), "{p:?}");
    kernel_volume(root, "erofs,a");
    kernel_object(root, "erofs,a", b"blob1", &[1u8; 100]);
    let ls = ctl(root, &["ls"]);
    assert_eq!(ls.status.code(), Some(0));
    let text = stdout(&ls);
    assert!(
        text.contains("cache/I9p,fscached,/@95/T514039,  key=0x3940510000000000  size=5000"),
        "{text}"
    );
    let ls = ctl(root, &["ls", "--volume", "erofs,a"]);
    assert!(!stdout(&ls).contains("9p"));
    assert!(stdout(&ls).contains("key=blob1"));
    let du = ctl(root, &["du", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&du.stdout).unwrap();
    assert_eq!(v["total"]["objects"], 2);
    assert_eq!(v["total"]["object_bytes"], 5100);
    assert_eq!(ctl(root, &["check"]).status.code(), Some(0));
    // Binary keys are named with --key-hex.
    let o = ctl(
        root,
        &[
            "invalidate",
            "--volume",
            "9p,fscached,",
            "--key-hex",
            "3940510000000000",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!p.exists());
}

#[test]
fn check_finds_planted_damage_and_repair_never_leaves_the_tree() {
    let t = tmp();
    let root = t.path().join("fscache");
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), b"precious").unwrap();
    fs::create_dir_all(outside.join("Dx")).unwrap();
    fs::write(outside.join("Dx/inner"), b"also precious").unwrap();

    let v = kernel_volume(&root, "erofs,v");
    let good = kernel_object(&root, "erofs,v", b"good", b"fine data");
    let good_ino = fs::metadata(&good).unwrap().ino();
    let right = layout::fanout(b"erofs,v", b"misplaced");
    let wrong = layout::fanout_name(right.wrapping_add(1));
    // Planted damage, one of each.
    let misplaced = kernel_object(&root, "erofs,v", b"misplaced", b"m");
    fs::rename(&misplaced, v.join(&wrong).join("Dmisplaced")).unwrap();
    let fan = |k: &[u8]| v.join(layout::fanout_name(layout::fanout(b"erofs,v", k)));
    fs::write(fan(b"noxattr").join("Dnoxattr"), b"n").unwrap();
    let short = kernel_object(&root, "erofs,v", b"short", b"s");
    set_xattr_on(&short, &[0, 0, 0]);
    let dirty = kernel_object(&root, "erofs,v", b"dirty", b"d");
    let mut x = ObjectXattr::decode(&xattr_of(&dirty).unwrap()).unwrap();
    x.content = Content::Dirty;
    set_xattr_on(&dirty, &x.encode());
    let big = kernel_object(&root, "erofs,v", b"big", b"b");
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(8192)
        .unwrap();
    std::os::unix::fs::symlink(outside.join("canary"), fan(b"link").join("Dlink")).unwrap();
    std::os::unix::fs::symlink(&outside, v.join("@00").join("Dx")).unwrap();
    nix::unistd::mkfifo(&fan(b"fifo").join("Dfifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::create_dir(fan(b"adir").join("Dadir")).unwrap();
    fs::write(v.join("@01").join("Dline\nbreak"), b"l").unwrap();
    let long = "D".to_string() + &"a".repeat(254);
    fs::write(v.join("@02").join(&long), b"l").unwrap();
    fs::write(v.join("@03").join("junk"), b"j").unwrap();
    fs::write(v.join("@04").join("S0001"), b"j").unwrap();
    fs::write(root.join("cache/stray"), b"s").unwrap();
    // A whole volume that is a symlink to outside, and one whose fanout is.
    std::os::unix::fs::symlink(&outside, root.join("cache/Ierofs,evil")).unwrap();
    let v2 = kernel_volume(&root, "erofs,w");
    fs::remove_dir(v2.join("@05")).unwrap();
    std::os::unix::fs::symlink(&outside, v2.join("@05")).unwrap();
    let nox = root.join("cache/Ierofs,nox");
    fs::create_dir(&nox).unwrap();
    fs::write(root.join("graveyard/0000000100000001"), b"old").unwrap();

    let c = ctl(&root, &["check"]);
    assert_eq!(c.status.code(), Some(1));
    let text = stdout(&c);
    let expect = [
        format!("problem: cache/Ierofs,v/{wrong}/Dmisplaced: object in the wrong fanout: its key hashes to @{right:02x}"),
        "Dnoxattr: object xattr user.CacheFiles.cache missing".into(),
        "Dshort: object xattr invalid: xattr of 3 bytes is shorter than its 18-byte header".into(),
        "Ddirty: object xattr invalid: content is dirty".into(),
        "Dbig: file size 8192 is larger than the object size 1 rounded up to 4096".into(),
        "Dlink: symbolic link where the kernel keeps data files".into(),
        "@00/Dx: symbolic link where the kernel keeps data files".into(),
        "Dfifo: fifo where the kernel keeps data files".into(),
        "Dadir: directory where the kernel keeps data files".into(),
        "@01/Dline\\x0abreak: object name the kernel does not make".into(),
        format!("@02/{long}: object name the kernel does not make: cookie key of 254 bytes"),
        "@03/junk: object name the kernel does not make".into(),
        "@04/S0001: object name the kernel does not make: the kernel would name this key differently".into(),
        "problem: cache/stray: name the kernel does not make here".into(),
        "problem: cache/Ierofs,evil: symbolic link where the kernel keeps volume directories".into(),
        "problem: cache/Ierofs,w/@05: symbolic link where the kernel keeps fanout directories".into(),
        "problem: cache/Ierofs,nox: volume xattr user.CacheFiles.cache missing".into(),
        "note: cache/Ierofs,nox: fewer than 256 fanout directories".into(),
        "problem: graveyard: graveyard holds 1 entries".into(),
    ];
    for e in &expect {
        assert!(text.contains(e.as_str()), "missing {e:?} in:\n{text}");
    }
    assert!(!text.contains("Dgood"), "{text}");

    let r = ctl(&root, &["check", "--repair"]);
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    assert!(stdout(&r).contains("all repaired"), "{}", stdout(&r));
    assert_eq!(fs::read(outside.join("canary")).unwrap(), b"precious");
    assert_eq!(
        fs::read(outside.join("Dx/inner")).unwrap(),
        b"also precious"
    );
    assert_eq!(fs::metadata(&good).unwrap().ino(), good_ino);
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);
    assert!(!root.join("cache/Ierofs,nox").exists());
    assert!(v2.join("@04").is_dir() && !v2.join("@05").exists());
    let c = ctl(&root, &["check"]);
    // The volume that lost a fanout is only noted (the kernel remakes fanouts).
    assert_eq!(c.status.code(), Some(0), "{}", stdout(&c));
}

#[test]
fn writing_commands_refuse_while_the_cache_is_locked() {
    let t = tmp();
    let root = t.path();
    kernel_volume(root, "erofs,v");
    kernel_object(root, "erofs,v", b"k", b"data");
    let src = root.join("src");
    fs::write(&src, b"x").unwrap();
    let lock = cachefilesd_rs::lock::lock_cache_dir(root).unwrap();
    for args in [
        &[
            "prefill",
            "--volume",
            "erofs,v",
            "--key",
            "k2",
            "--from",
            src.to_str().unwrap(),
        ][..],
        &["invalidate", "--volume", "erofs,v", "--key", "k"],
        &["purge", "--volume", "erofs,v"],
        &["check", "--repair"],
    ] {
        let o = ctl(root, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "a cachefilesd is running on {}; stop it first",
                root.display()
            )),
            "{err}"
        );
    }
    // Reading is fine.
    assert_eq!(ctl(root, &["ls"]).status.code(), Some(0));
    assert_eq!(ctl(root, &["check"]).status.code(), Some(0));
    drop(lock);
    assert_eq!(
        ctl(root, &["invalidate", "--volume", "erofs,v", "--key", "k"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn invalidate_and_purge() {
    let t = tmp();
    let root = t.path();
    kernel_volume(root, "erofs,v");
    let a = kernel_object(root, "erofs,v", b"a", b"1");
    let b = kernel_object(root, "erofs,v", b"b", b"2");
    let o = ctl(root, &["invalidate", "--volume", "erofs,v", "--key", "a"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!a.exists() && b.exists());
    let o = ctl(root, &["invalidate", "--volume", "erofs,v", "--key", "a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such object"));
    let o = ctl(root, &["purge", "--volume", "erofs,v"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!root.join("cache/Ierofs,v").exists());
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);
    assert_eq!(
        ctl(root, &["purge", "--volume", "erofs,v"]).status.code(),
        Some(1)
    );
}

#[test]
fn usage_and_config() {
    let t = tmp();
    let o = ctl(t.path(), &["bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let conf = t.path().join("c.conf");
    fs::write(&conf, format!("dir {}\ntag x\n", t.path().display())).unwrap();
    kernel_volume(t.path(), "erofs,q");
    let o = Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .args(["-f", conf.to_str().unwrap(), "ls"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).contains("volume erofs,q"));
    let o = Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .args(["-f", "/nonexistent.conf", "ls"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

/// A directory outside the cache root, with a file in it, for tests that must not touch it.
fn canary(t: &Path) -> PathBuf {
    let c = t.join("canary");
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("keep"), b"precious").unwrap();
    c
}

/// Issue 12.1: `purge --volume 'erofs,good/../../../canary'` deleted a directory outside the
/// cache. Every option that names a volume or key now goes through the validated names.
#[test]
fn names_from_the_command_line_never_leave_the_cache() {
    let t = tmp();
    let root = t.path().join("fscache");
    let c = canary(t.path());
    kernel_volume(&root, "erofs,good");
    kernel_object(&root, "erofs,good", b"k", b"data");
    let src = t.path().join("blob");
    fs::write(&src, b"blob").unwrap();
    // cache/Ierofs,good/.. is cache/, then the root, then its parent: the canary's directory.
    let escape = "erofs,good/../../../canary";
    let runs: [&[&str]; 6] = [
        &["purge", "--volume", escape],
        &["invalidate", "--volume", escape, "--key", "k"],
        &[
            "invalidate",
            "--volume",
            "erofs,good",
            "--key",
            "../../../../canary",
        ],
        &["ls", "--volume", escape],
        &[
            "prefill",
            "--volume",
            escape,
            "--key",
            "k",
            "--from",
            src.to_str().unwrap(),
        ],
        &[
            "prefill",
            "--volume",
            "erofs,good",
            "--key",
            "../../../../canary",
            "--from",
            src.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let o = ctl(&root, args);
        assert_eq!(
            fs::read(c.join("keep")).unwrap(),
            b"precious",
            "{args:?}: {o:?}"
        );
        assert!(t.path().join("blob").exists());
        if args.contains(&escape) {
            assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("name contains '/'"),
                "{o:?}"
            );
        }
    }
    // The key with `/` is encoded into one name inside the cache, never used as a path.
    assert!(fs::read_dir(&c).unwrap().count() == 1);
    let ls = ctl(&root, &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let keys: Vec<&str> = v[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert!(keys.contains(&"../../../../canary"), "{keys:?}");
}

/// Issue 12.7: raw names with newlines and escape sequences reached the terminal.
#[test]
fn raw_names_never_reach_the_terminal() {
    let t = tmp();
    let root = t.path();
    let vol = "erofs,\x1b]0;owned\x07\nfake";
    let v = kernel_volume(root, vol);
    fs::write(v.join("@00").join("D\x1b[2Jclear"), b"x").unwrap();
    fs::write(v.join("@01").join("Dnew\nline"), b"x").unwrap();
    for args in [&["ls"][..], &["check"], &["du"]] {
        let o = ctl(root, args);
        let text = stdout(&o);
        assert!(
            !text.contains('\x1b') && !text.contains('\x07'),
            "{args:?}: {text:?}"
        );
        assert!(
            !text.contains("\nfake") && !text.contains("\nline"),
            "{args:?}: {text:?}"
        );
    }
    let text = stdout(&ctl(root, &["check"]));
    assert!(text.contains("@00/D\\x1b[2Jclear: object name"), "{text}");
    assert!(text.contains("@01/Dnew\\x0aline: object name"), "{text}");
    // JSON keeps the exact names (serde escapes them for the terminal).
    let ls = ctl(root, &["ls", "--json"]);
    assert!(!ls.stdout.contains(&0x1b));
    let j: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(j[0]["path"], format!("cache/I{vol}"));
    let names: Vec<&str> = j[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["D\x1b[2Jclear", "Dnew\nline"]);
}

/// Issue 12.7: the du byte sums wrapped (and panicked in debug builds).
#[test]
fn du_sums_saturate_instead_of_wrapping() {
    let t = tmp();
    let root = t.path();
    kernel_volume(root, "erofs,v");
    for key in [&b"a"[..], b"b"] {
        let p = kernel_object(root, "erofs,v", key, b"x");
        let x = ObjectXattr {
            object_size: u64::MAX - 1,
            zero_point: 0,
            kind: 1,
            content: Content::NoData,
            aux: vec![],
        };
        set_xattr_on(&p, &x.encode());
    }
    let du = ctl(root, &["du", "--json"]);
    assert_eq!(du.status.code(), Some(0), "{du:?}");
    let v: serde_json::Value = serde_json::from_slice(&du.stdout).unwrap();
    assert_eq!(v["total"]["objects"], 2);
    assert_eq!(v["total"]["object_bytes"], u64::MAX);
    assert_eq!(v["volumes"][0]["object_bytes"], u64::MAX);
}

fn nest(base: &Path, depth: usize) {
    let mut p = base.to_path_buf();
    for i in 0..depth {
        p.push(format!("d{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("leaf"), b"x").unwrap();
}

/// Issue 12.7: an entry deeper than 32 levels was never reaped and made `purge` and
/// `check --repair` exit 1 with ELOOP.
#[test]
fn deep_trees_are_reaped_by_purge_and_repair() {
    let t = tmp();
    let root = t.path();
    let v = kernel_volume(root, "erofs,deep");
    nest(&v.join("@00"), 40);
    let o = ctl(root, &["purge", "--volume", "erofs,deep"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);
    nest(&root.join("cache/stray"), 40);
    let o = ctl(root, &["check", "--repair"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(!root.join("cache/stray").exists());
    assert_eq!(fs::read_dir(root.join("graveyard")).unwrap().count(), 0);
}

/// Issue 12.7: `prefill --from` a FIFO blocked in open(2) for ever, holding the cache lock.
#[test]
fn prefill_from_a_fifo_is_refused_without_blocking() {
    let t = tmp();
    let root = t.path().join("fscache");
    fs::create_dir(&root).unwrap();
    let fifo = t.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .arg("--dir")
        .arg(&root)
        .args(["prefill", "--volume", "erofs,f", "--key", "f", "--from"])
        .arg(&fifo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("prefill --from a FIFO still blocked after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a regular file"),
        "{o:?}"
    );
}
