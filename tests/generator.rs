//! systemd/cachefilesd-generator: the drop-in it derives from cachefilesd.conf and
//! /etc/default/cachefilesd, run on configuration trees in a temporary root.

use std::path::Path;
use std::process::Command;

/// Writes `files` (path under the root, contents) and runs the generator; returns the drop-in
/// (empty when none was written) and the generator's stderr.
fn generate(files: &[(&str, &[u8])]) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for (path, contents) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
    let out = tmp.path().join("out");
    let o =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/cachefilesd-generator"))
            .arg(&out)
            .arg(tmp.path().join("early"))
            .arg(tmp.path().join("late"))
            .env("CACHEFILESD_GENERATOR_ROOT", &root)
            .output()
            .unwrap();
    assert!(o.status.success(), "{o:?}");
    let dropin =
        std::fs::read_to_string(out.join("cachefilesd.service.d/50-cachefilesd-config.conf"))
            .unwrap_or_default();
    (dropin, String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The drop-in's settings, without its comment line.
fn settings(dropin: &str) -> Vec<&str> {
    dropin.lines().filter(|l| !l.starts_with('#')).collect()
}

#[test]
fn default_config_gives_the_cache_directory_and_no_network() {
    let conf = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/cachefilesd.conf"
    ))
    .unwrap();
    let (dropin, stderr) = generate(&[("/etc/cachefilesd.conf", &conf)]);
    assert_eq!(
        settings(&dropin),
        [
            "[Unit]",
            "RequiresMountsFor=\"/var/cache/fscache\"",
            "[Service]",
            "ReadWritePaths=\"-/var/cache/fscache\""
        ]
    );
    assert_eq!(stderr, "");
}

#[test]
fn the_last_dir_counts_and_specifiers_are_escaped() {
    let (dropin, _) = generate(&[(
        "/etc/cachefilesd.conf",
        b"dir /var/cache/fscache\n  dir   /srv/fs%cache  \ntag t\n",
    )]);
    assert_eq!(
        settings(&dropin),
        [
            "[Unit]",
            "RequiresMountsFor=\"/srv/fs%%cache\"",
            "[Service]",
            "ReadWritePaths=\"-/srv/fs%%cache\""
        ]
    );
}

#[test]
fn remote_sources_open_the_network_local_ones_do_not() {
    let conf: &[u8] =
        b"dir /srv/c\nondemand /etc/cachefilesd/map.toml\ncontrol /var/lib/cfd/ctl.sock\n";
    let (dropin, _) = generate(&[
        ("/etc/cachefilesd.conf", conf),
        (
            "/etc/cachefilesd/map.toml",
            b"[[source]]\ndomain = \"*\"\n  registry = \"https://registry.example.org\"\nrepository = \"a/b\"\n",
        ),
    ]);
    assert_eq!(
        settings(&dropin),
        [
            "[Unit]",
            "RequiresMountsFor=\"/srv/c\"",
            "Wants=network-online.target",
            "After=network-online.target",
            "[Service]",
            "ReadWritePaths=\"-/srv/c\"",
            "ReadWritePaths=\"-/var/lib/cfd\"",
            "PrivateNetwork=no",
            "IPAddressDeny=",
            "RestrictAddressFamilies=AF_INET AF_INET6"
        ]
    );
    let (dropin, _) = generate(&[
        ("/etc/cachefilesd.conf", conf),
        (
            "/etc/cachefilesd/map.toml",
            b"[[source]]\n# url = \"https://x\"\npath = \"/srv/erofs/{fsid}.img\"\n",
        ),
    ]);
    assert!(!dropin.contains("PrivateNetwork"), "{dropin}");
}

#[test]
fn daemon_opts_may_name_another_config() {
    for opts in [
        "DAEMON_OPTS=\"-d -f /etc/other.conf\"",
        "DAEMON_OPTS='-dnf/etc/other.conf'",
        "DAEMON_OPTS=\"-f /etc/cachefilesd.conf -N -f /etc/other.conf\"",
    ] {
        let defaults = format!("RUN=yes\n{opts}\n");
        let (dropin, _) = generate(&[
            ("/etc/cachefilesd.conf", b"dir /var/cache/fscache\n"),
            ("/etc/other.conf", b"dir /srv/other\n"),
            ("/etc/default/cachefilesd", defaults.as_bytes()),
        ]);
        assert!(
            dropin.contains("RequiresMountsFor=\"/srv/other\"\n"),
            "{opts}: {dropin}"
        );
    }
}

#[test]
fn unusable_paths_are_left_to_the_administrator_with_a_message() {
    let (dropin, stderr) = generate(&[("/etc/cachefilesd.conf", b"dir /srv/caf\xe9\n")]);
    assert_eq!(settings(&dropin), ["[Unit]", "[Service]"]);
    assert!(stderr.contains("systemctl edit cachefilesd"), "{stderr}");
    let (dropin, stderr) = generate(&[]);
    assert_eq!(dropin, "");
    assert!(
        stderr.contains("cannot read /etc/cachefilesd.conf"),
        "{stderr}"
    );
}
