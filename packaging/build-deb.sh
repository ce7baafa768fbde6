#!/usr/bin/env bash
# Builds the Debian package (cargo-deb, metadata in Cargo.toml) into target/debian/, then checks
# it: lintian (errors fail, warnings are listed), and systemd-analyze verify on the unit as
# packaged, alone and with the network drop-in example, with the packaged man pages on MANPATH
# so Documentation= is checked too.
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
  # Again with the network drop-in example in place.
  mkdir -p "$tmp/units/cachefilesd.service.d"
  cp "$tmp/root/usr/share/doc/cachefilesd-rs/examples/network.conf" "$tmp/units/cachefilesd.service.d/"
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
