#!/usr/bin/env bash
# Builds the initramfs for the test VM:
#   build-initramfs.sh OUT.cpio.gz [BIN...]
#
# Contents:
#   * busybox (Debian's busybox-static) plus a symlink per applet,
#   * mkfs.erofs (erofs-utils) and mke2fs/mkfs.ext4 (e2fsprogs; busybox's mke2fs cannot make ext4),
#   * every BIN given (e.g. target/release/cachefilesd) in /usr/sbin,
#   * every SRC:NAME word of $VM_EXTRA_BINS as /usr/sbin/NAME (e.g. Debian's C daemon as
#     cachefilesd-c, next to ours),
#   * the shared libraries ldd reports for all of the dynamic executables above, at the paths
#     ldd reports (so the loader stays at /lib64/ld-linux-x86-64.so.2),
#   * tests/vm/scenarios/ as /scenarios (plus $VM_EXTRA_SCENARIOS/, if set),
#   * /etc/cachefilesd-features: one word per line from $CACHEFILESD_FEATURES (comma or space
#     separated, default empty); scenarios for optional daemon features skip unless listed,
#   * /etc/vm/object-names: where the kernel puts the objects the scenarios look up, from
#     cachenames.py (the suite's model of the kernel's naming): every `# vm-object:` of the
#     scenarios in the image, and every file of $VM_FSCACHED (the 9p tag fscached) if set,
#   * /init (init.sh).
# Everything else goes to stderr; nothing is printed on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build-initramfs: $*" >&2; }

[ $# -ge 1 ] || { echo "usage: $0 OUT.cpio.gz [BIN...]" >&2; exit 2; }
out=$1
shift
case "$out" in /*) ;; *) out=$PWD/$out ;; esac

busybox=${BUSYBOX:-/bin/busybox}
# The busybox-static binary must really be static: the dynamic one would need its own libraries
# and, worse, a missing one would leave the guest without a shell.
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  # `file` may be missing; ldd says "not a dynamic executable" for static binaries.
  if ldd "$busybox" >/dev/null 2>&1; then
    log "$busybox is not statically linked (install busybox-static)"
    exit 1
  fi
fi
for tool in mkfs.erofs mke2fs; do
  command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
  command -v "$tool" >/dev/null || { log "$tool not found (install erofs-utils / e2fsprogs)"; exit 1; }
done

root=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,run,results,data,mnt,scenarios,var/cache/fscache,srv/erofs,lib64}

# busybox + applet links. `busybox --list` names `busybox` itself: skip it, or the link would
# replace the binary with a symlink to itself. Applets go to /bin; /sbin etc. are in PATH too.
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$root/bin/$applet"
done

# Copies an executable and records it for the library scan.
dynamic=()
add_exe() { # SRC DEST
  install -D -m 0755 "$1" "$root/$2"
  dynamic+=("$1")
}
# e2fsprogs picks its personality from argv[0]: mkfs.ext4 as a link to mke2fs makes ext4.
# These go to /usr/sbin, which comes before /bin in the guest's PATH, so they win over the
# busybox applets of the same name (busybox's mke2fs/mkfs.ext2 cannot make ext4).
add_exe "$(command -v mke2fs)" usr/sbin/mke2fs
ln -sf mke2fs "$root/usr/sbin/mkfs.ext4"
rm -f "$root/bin/mke2fs" "$root/bin/mkfs.ext2"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
add_exe "$(command -v mkfs.erofs)" usr/bin/mkfs.erofs

for bin in "$@"; do
  [ -f "$bin" ] || { log "no such binary: $bin"; exit 1; }
  add_exe "$bin" "usr/sbin/$(basename "$bin")"
  log "added $(basename "$bin")"
done
for spec in ${VM_EXTRA_BINS:-}; do
  src=${spec%%:*}
  name=${spec#*:}
  if [ "$src" = "$spec" ] || [ -z "$name" ] || [ "${name#*/}" != "$name" ]; then
    log "VM_EXTRA_BINS wants SRC:NAME words, got '$spec'"
    exit 2
  fi
  [ -f "$src" ] || { log "no such binary: $src"; exit 1; }
  add_exe "$src" "usr/sbin/$name"
  log "added $src as /usr/sbin/$name"
done

# Shared libraries: copy each path ldd resolves (dereferenced) to the same path in the image.
# Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or, for the loader,
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; static executables make ldd fail, which is fine.
for exe in "${dynamic[@]}"; do
  { ldd "$exe" 2>/dev/null || true; } | awk '
      $2 == "=>" && $3 ~ /^\// { print $3 }
      $1 ~ /^\// { print $1 }' 
done | sort -u | while read -r lib; do
  mkdir -p "$root/$(dirname "$lib")"
  cp -L "$lib" "$root/$lib"
done
[ -e "$root/lib64/ld-linux-x86-64.so.2" ] || log "warning: no dynamic loader copied (all executables static?)"

# Scenarios (including helper subdirectories such as scenarios/lib). VM_EXTRA_SCENARIOS may name
# a directory of additional scenario scripts (used to test the harness itself: failing and
# hanging scenarios that must not live in the real suite).
cp -R "$here/scenarios/." "$root/scenarios/"
if [ -n "${VM_EXTRA_SCENARIOS:-}" ]; then
  cp -R "$VM_EXTRA_SCENARIOS/." "$root/scenarios/"
fi
find "$root/scenarios" -name '*.sh' -exec chmod 0755 {} +

# The object-name table: the model must first reproduce what a real kernel did.
# shellcheck source=SCRIPTDIR/lib/scenario.sh
. "$here/lib/scenario.sh"
"$here/cachenames.py" selftest || { log "cachenames.py disagrees with the kernel's recorded names"; exit 1; }
names_args=()
for f in "$root"/scenarios/*.sh; do
  name=$(basename "$f" .sh)
  scenario_headers "$name" "$f" || exit 2
  while read -r volume key; do
    [ -n "$volume" ] || continue
    [ -n "$key" ] || { log "$f: '# vm-object:' wants VOLUME KEY"; exit 2; }
    names_args+=(--object "$volume" "$key")
  done <<<"$(hdr "$name" object)"
done
if [ -n "${VM_FSCACHED:-}" ]; then
  names_args+=(--9p-tree "$VM_FSCACHED" "9p,fscached,")
fi
mkdir -p "$root/etc/vm"
"$here/cachenames.py" table "${names_args[@]}" >"$root/etc/vm/object-names"
log "object-name table: $(wc -l <"$root/etc/vm/object-names") entries"

# Optional-feature markers for scenarios (see ondemand.sh).
: >"$root/etc/cachefilesd-features"
for feature in $(echo "${CACHEFILESD_FEATURES:-}" | tr ',' ' '); do
  echo "$feature" >>"$root/etc/cachefilesd-features"
done
ln -sf /proc/mounts "$root/etc/mtab"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

# The kernel opens /dev/console before running /init; the node must exist in the image, or init
# starts without stdin/stdout (init re-opens it after mounting devtmpfs as well).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || log "warning: cannot mknod /dev/console"
mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true

# PID 1 (init.sh) and the status codes it shares with the scenarios (scenarios/lib/status.sh,
# copied above with the scenarios).
install -m 0755 "$here/init.sh" "$root/init"

# Owner root, newc format as the kernel wants it; sorted for a stable archive.
mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -n -6) >"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1))"
