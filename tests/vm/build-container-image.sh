#!/usr/bin/env bash
# Builds (or reuses) the container image of the container-start benchmark (issue 17 item 4c):
# a Debian bookworm root filesystem (debootstrap --variant=minbase plus python3, so that
# `python3 -c 'import json, sqlite3'` runs in it chrooted) turned into an uncompressed EROFS
# image with mkfs.erofs, as a container runtime would pull a layer.
#   build-container-image.sh     prints the image path as its last stdout line
# Cached under ~/.cache/cachefilesd-rs/container-image/<key>/root.erofs, key = hash of this
# script; composition.txt beside it says what the image holds (files, bytes, biggest trees).
# Needs root, debootstrap, erofs-utils and apt with a Debian mirror (debian-mirror.sh, or
# CACHEFILESD_DEBIAN_MIRROR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build-container-image: $*" >&2; }
cache=${CACHEFILESD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachefilesd-rs}/container-image
suite=bookworm
# python3 pulls libpython3.11-stdlib, which carries json and sqlite3 (and libsqlite3-0).
packages=python3

key=$( { cat "$0"; echo "$suite $packages"; } | sha256sum | cut -c1-16)
out=$cache/$key
if [ -s "$out/root.erofs" ]; then
  log "reusing $out/root.erofs (key $key)"
  echo "$out/root.erofs"
  exit 0
fi
[ "$(id -u)" = 0 ] || { log "needs root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
command -v mkfs.erofs >/dev/null || { log "mkfs.erofs is missing: apt-get install erofs-utils"; exit 1; }
PATH=$PATH:/usr/sbin:/sbin
mirror=${CACHEFILESD_DEBIAN_MIRROR:-$("$here/debian-mirror.sh")}

start=$(date +%s)
work=$cache/build.$$
tree=$work/root
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log "debootstrap $suite (minbase + $packages)"
debootstrap --variant=minbase --include="$packages" "$suite" "$tree" "$mirror" >&2
# What a container image does not carry: downloaded .debs and apt's package lists.
rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*_Packages \
  "$tree"/var/cache/apt/*.bin "$tree/debootstrap"
# The image must run what the benchmark runs; fail here rather than in the guest.
chroot "$tree" /usr/bin/python3 -c 'import json, sqlite3' >&2

log "mkfs.erofs of the tree"
mkfs.erofs --quiet "$work/root.erofs" "$tree" >&2
{
  echo "debootstrap --variant=minbase --include=$packages $suite, mkfs.erofs (uncompressed)"
  echo "image bytes: $(stat -c %s "$work/root.erofs")"
  echo "files: $(find "$tree" -type f | wc -l), directories: $(find "$tree" -type d | wc -l), symlinks: $(find "$tree" -type l | wc -l)"
  echo "tree bytes (du -sb): $(du -sb "$tree" | cut -f1)"
  echo "largest trees (du -sb):"
  du -sb "$tree"/usr/lib/python3.11 "$tree"/usr/lib/x86_64-linux-gnu "$tree"/usr/bin \
    "$tree"/usr/share "$tree"/var "$tree"/usr/lib/locale 2>/dev/null | sed "s|$tree||"
} >"$work/composition.txt"
mkdir -p "$out"
mv "$work/composition.txt" "$out/composition.txt"
mv "$work/root.erofs" "$out/root.erofs"
log "built $out/root.erofs in $(( $(date +%s) - start )) s"
echo "$out/root.erofs"
