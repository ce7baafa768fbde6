#!/usr/bin/env bash
# Builds (or reuses) a test kernel: Debian's linux-source-SERIES, fetched with a private apt state
# so the system's apt never sees trixie, tinyconfig + that series' fragment.
# Usage: build-kernel.sh [SERIES]
#   6.12 (default): trixie, kernel.config (cachefiles on-demand, EROFS over fscache)
#   7.3: trixie-backports, kernel-7.3.config (fanotify pre-content, file-backed EROFS)
# Prints the path of the cached bzImage on stdout; everything else goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CACHEFILESD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachefilesd-rs}
series=${1:-6.12}
case "$series" in
  6.12) suite=trixie fragment=$here/kernel.config ;;
  7.3) suite=trixie-backports fragment=$here/kernel-7.3.config ;;
  *) echo "build-kernel: unknown kernel series '$series' (6.12 or 7.3)" >&2; exit 2 ;;
esac
pkg=linux-source-$series
jobs=${JOBS:-$(nproc)}
log() { echo "build-kernel: $*" >&2; }

apt_state=$cache/apt
mkdir -p "$apt_state/lists/partial" "$apt_state/archives/partial"
mirror=${CACHEFILESD_DEBIAN_MIRROR:-$("$here/debian-mirror.sh")}
echo "deb $mirror $suite main" >"$apt_state/$suite.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_state/$suite.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_state/lists" -o "Dir::Cache::Archives=$apt_state/archives"
  -o "Dir::Cache=$apt_state" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
  -o APT::Get::List-Cleanup=false)

# The key uses the package version when apt can tell it; offline, the newest cached source of
# this series wins (every Debian version of linux-source-X.Y starts with "X.Y.").
version=""
if [ -z "${CACHEFILESD_VM_OFFLINE:-}" ]; then
  if apt-get "${apt_opts[@]}" -qq update >&2; then
    version=$(apt-cache "${apt_opts[@]}" show "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n1)
  fi
fi
if [ -z "$version" ]; then
  version=$(find "$cache/src" -mindepth 1 -maxdepth 1 -name "$series.*" -printf '%f\n' 2>/dev/null | sort -V | tail -n1)
  [ -n "$version" ] || { log "cannot determine $pkg version (no network and no cached source)"; exit 1; }
fi
frag_hash=$(sha256sum "$fragment" | cut -c1-16)
key="$version-$frag_hash"
out=$cache/kernel/$key
if [ -s "$out/bzImage" ]; then
  log "reusing $out/bzImage (key $key)"
  echo "$out/bzImage"
  exit 0
fi

src=$cache/src/$version
if [ ! -f "$src/Makefile" ]; then
  log "fetching $pkg $version"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  (cd "$tmp" && apt-get "${apt_opts[@]}" -qq download "$pkg=$version" >&2)
  dpkg-deb --fsys-tarfile "$tmp/${pkg}_"*.deb | tar -x -C "$tmp" "./usr/src/$pkg.tar.xz"
  mkdir -p "$src.tmp"
  tar -xJf "$tmp/usr/src/$pkg.tar.xz" -C "$src.tmp" --strip-components=1
  rm -rf "$tmp" "$src"
  mv "$src.tmp" "$src"
fi

build=$cache/build/$key
rm -rf "$build"
mkdir -p "$build"
log "configuring in $build"
make -s -C "$src" O="$build" tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >&2
make -s -C "$src" O="$build" olddefconfig >&2
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  if ! grep -qxF "$line" "$build/.config"; then
    log "option did not survive olddefconfig: $line"
    missing=1
  fi
done <"$fragment"
[ "$missing" = 0 ] || exit 1
log "building bzImage with -j$jobs (about 8 minutes on 2 cores)"
start=$(date +%s)
make -s -C "$src" O="$build" -j"$jobs" bzImage >&2
log "built in $(( $(date +%s) - start )) s"
mkdir -p "$out"
cp "$build/arch/x86/boot/bzImage" "$out/bzImage.tmp"
cp "$build/.config" "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
rm -rf "$build"
echo "$out/bzImage"
