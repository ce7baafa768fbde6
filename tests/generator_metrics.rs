//! systemd/cachefilesd-generator with `metrics_listen`: the scrape endpoint gets the host's
//! network, loopback only unless `metrics_listen_public`.

use std::path::Path;
use std::process::Command;

/// The drop-in's settings (comment lines left out) the generator derives from `conf`.
fn generate(conf: &[u8]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/cachefilesd.conf"), conf).unwrap();
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
    std::fs::read_to_string(out.join("cachefilesd.service.d/50-cachefilesd-config.conf"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[test]
fn a_loopback_endpoint_gets_loopback_only_and_a_public_one_the_network() {
    let service = |s: &[String]| s[s.iter().position(|l| l == "[Service]").unwrap() + 1..].to_vec();
    assert_eq!(
        service(&generate(b"dir /c\nmetrics_listen 127.0.0.1:9401\n")),
        [
            "ReadWritePaths=\"-/c\"",
            "PrivateNetwork=no",
            "IPAddressAllow=localhost",
            "RestrictAddressFamilies=AF_INET AF_INET6"
        ]
    );
    assert_eq!(
        service(&generate(
            b"dir /c\nmetrics_listen 0.0.0.0:9401\nmetrics_listen_public\n"
        )),
        [
            "ReadWritePaths=\"-/c\"",
            "PrivateNetwork=no",
            "IPAddressDeny=",
            "RestrictAddressFamilies=AF_INET AF_INET6"
        ]
    );
    // Without it, no network at all.
    assert_eq!(service(&generate(b"dir /c\n")), ["ReadWritePaths=\"-/c\""]);
}
