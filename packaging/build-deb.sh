#!/usr/bin/env bash
# Builds the Debian package (cargo-deb, metadata in Cargo.toml) into target/debian/, then checks
# it: lintian (errors fail, warnings are listed), and systemd-analyze verify on the unit as
# packaged, alone and with the drop-in its generator writes for a config with remote sources,
# with the packaged man pages on MANPATH so Documentation= is checked too.
# Needs cargo-deb (cargo install cargo-deb --locked), lintian, dpkg-dev; systemd-analyze if present.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }
command -v lintian >/dev/null || { echo "lintian is missing: apt-get install lintian" >&2; exit 1; }

# cachefilesctl is packaged when Cargo.toml has that binary (the `ctl` variant adds it and its
# man page to the same package).
args=(--locked --strip)
with_ctl=no
if cargo metadata --no-deps --format-version 1 --locked | grep -q '"name":"cachefilesctl"'; then
  with_ctl=yes
  args+=(--variant ctl)
  echo "packaging with cachefilesctl"
else
  echo "no cachefilesctl binary in Cargo.toml: packaging cachefilesd only"
fi

rm -f target/debian/cachefilesd-rs_*.deb
cargo deb "${args[@]}"
deb=$(ls -t target/debian/cachefilesd-rs_*.deb | head -n1)
# cargo-deb writes no DEBIAN/md5sums, so dpkg --verify could not tell a changed file from an
# intact one: add it (for every file but conffiles, which dpkg tracks itself, as dh_md5sums).
pkgdir=$(mktemp -d)
dpkg-deb -R "$deb" "$pkgdir/pkg"
(
  cd "$pkgdir/pkg"
  find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
    grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles 2>/dev/null || true) |
    tr '\n' '\0' | xargs -0 md5sum >DEBIAN/md5sums
)
dpkg-deb --root-owner-group -Zxz -b "$pkgdir/pkg" "$deb" >/dev/null
rm -rf "$pkgdir"
echo "built $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

echo "--- lintian"
# Errors fail the build; warnings (and info) are printed. Run as root, lintian first prints
# "running with root privileges is not recommended!": a notice, not a finding.
lintian --fail-on error --display-info --tag-display-limit 0 "$deb"

if command -v systemd-analyze >/dev/null; then
  echo "--- systemd-analyze verify"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dpkg-deb -x "$deb" "$tmp/root"
  mkdir -p "$tmp/units"
  # The unit as packaged, with ExecStart pointing at the packaged binary (not yet in /usr/sbin).
  sed "s|/usr/sbin/cachefilesd|$tmp/root/usr/sbin/cachefilesd|" \
    "$tmp/root/usr/lib/systemd/system/cachefilesd.service" > "$tmp/units/cachefilesd.service"
  verify() { MANPATH="$tmp/root/usr/share/man:" systemd-analyze verify "$tmp/units/cachefilesd.service" 2>&1 || true; }
  out=$(verify)
  # The sandbox's exposure (classic mode, no drop-in): the unit says why each remaining item
  # stays; a change that raises the score must say why too, here.
  level=$(systemd-analyze security --offline=true --no-pager "$tmp/units/cachefilesd.service" 2>/dev/null |
    sed -n 's/.*Overall exposure level for cachefilesd.service: \([0-9.]*\).*/\1/p')
  echo "systemd-analyze security: exposure ${level:-unknown}"
  if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l > 1.5) }'; then
    echo "exposure $level is above 1.5" >&2
    exit 1
  fi
  # Again with what the packaged generator derives from a config with the cache elsewhere (a
  # blank in its name) and a source map with a remote source: the drop-in must load cleanly.
  mkdir -p "$tmp/conf/etc/cachefilesd" "$tmp/gen"
  printf 'dir /srv/fs cache\ncontrol /var/lib/cachefilesd/control.sock\nondemand /etc/cachefilesd/ondemand.toml\n' \
    >"$tmp/conf/etc/cachefilesd.conf"
  printf '[[source]]\nurl = "https://blobs.example.org/{fsid}"\n' >"$tmp/conf/etc/cachefilesd/ondemand.toml"
  CACHEFILESD_GENERATOR_ROOT="$tmp/conf" "$tmp/root/usr/lib/systemd/system-generators/cachefilesd-generator" "$tmp/gen"
  mkdir -p "$tmp/units/cachefilesd.service.d"
  cp "$tmp/gen/cachefilesd.service.d/"*.conf "$tmp/units/cachefilesd.service.d/"
  grep -q 'RequiresMountsFor="/srv/fs cache"' "$tmp/units/cachefilesd.service.d/"*.conf
  grep -q '^PrivateNetwork=no$' "$tmp/units/cachefilesd.service.d/"*.conf
  out+=$'\n'$(verify)
  out=$(sort -u <<<"$out" | sed '/^$/d')
  if [ "$with_ctl" = no ]; then
    # Documentation= names cachefilesctl(8), which is packaged only together with its binary.
    out=$(grep -v "'man cachefilesctl(8)'" <<<"$out" || true)
  fi
  if [ -n "$out" ]; then
    echo "$out"
    exit 1
  fi
  echo "clean"
fi
