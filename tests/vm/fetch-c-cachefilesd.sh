#!/usr/bin/env bash
# Fetches (once) the C cachefilesd that this project replaces, from the distribution's package
# (Debian bookworm: cachefilesd 0.10.10-0.3), for the side-by-side benchmark (scenarios/cullbench.sh):
#   fetch-c-cachefilesd.sh      prints the path of the extracted binary as its last stdout line
# `apt-get download` into a temporary directory and `dpkg-deb -x`; nothing is installed. The
# binary is cached under ${XDG_CACHE_HOME:-~/.cache}/cachefilesd-rs/c-cachefilesd/<version>/.
set -euo pipefail
log() { echo "fetch-c-cachefilesd: $*" >&2; }
cache=${CACHEFILESD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachefilesd-rs}/c-cachefilesd
# Offline, the newest cached version wins.
version=$(apt-cache show cachefilesd 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1 || true)
if [ -z "$version" ]; then
  version=$(find "$cache" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$version" ] || { log "apt-cache knows no cachefilesd package and nothing is cached"; exit 1; }
fi
out=$cache/$version/cachefilesd
if [ ! -x "$out" ]; then
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/c-cachefilesd.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  chmod 0777 "$tmp" # apt's _apt user downloads into it
  (cd "$tmp" && apt-get download "cachefilesd=$version" >&2)
  dpkg-deb -x "$tmp"/cachefilesd_*.deb "$tmp/x"
  bin=$(find "$tmp/x" -type f -name cachefilesd -path '*sbin/*' | head -n 1)
  [ -n "$bin" ] || { log "no sbin/cachefilesd in the package"; exit 1; }
  mkdir -p "$(dirname "$out")"
  install -m 0755 "$bin" "$out"
  log "cachefilesd $version -> $out"
fi
echo "$out"
