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
#   * /init (below).
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
  [ "$src" != "$spec" ] && [ -n "$name" ] && [ "${name#*/}" = "$name" ] ||
    { log "VM_EXTRA_BINS wants SRC:NAME words, got '$spec'"; exit 2; }
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

cat >"$root/init" <<'EOF'
#!/bin/sh
# PID 1 of the test VM: set up the mounts, run /scenarios/<scenario>.sh (scenario=NAME on the
# kernel command line), record its exit status in /results/status, then leave qemu via
# `reboot -f` (qemu runs with -no-reboot, so a reboot ends it). /results/status is the only
# pass/fail signal the host uses: if it is missing, the run failed.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
umask 022

# DEVTMPFS_MOUNT does not apply to an initramfs root: mount /dev ourselves.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /root /var/run

die() {
  echo "init: $*"
  # Without /results there is nowhere to report: the missing status file marks the failure.
  reboot -f
  sleep 10
}

if ! mount -t 9p -o trans=virtio,version=9p2000.L results /results; then
  die "cannot mount the 9p share 'results'"
fi
# The optional read-only data share (run-vm.sh --data). Look for the tag in sysfs first (the
# attribute holds the tag plus a NUL): mounting an absent tag logs "no channels available".
has_data=
for tag in /sys/bus/virtio/devices/*/mount_tag; do
  [ "$(tr -d '\000' <"$tag" 2>/dev/null)" = data ] && has_data=1
done
if [ -n "$has_data" ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L,ro data /data || echo "init: cannot mount 'data'"
fi

scenario=
vmtimeout=
for word in $(cat /proc/cmdline); do
  case "$word" in
    scenario=*) scenario=${word#scenario=} ;;
    vmtimeout=*) vmtimeout=${word#vmtimeout=} ;;
  esac
done
script=/scenarios/$scenario.sh
start=$(cut -d' ' -f1 /proc/uptime)
echo "init: scenario '$scenario' starting at uptime ${start}s, $(grep -c ^processor /proc/cpuinfo) CPU(s)"

finish() { # STATUS
  dmesg >/results/dmesg.txt 2>/dev/null
  echo "$1" >/results/status
  sync
  echo "init: scenario '$scenario' exit status $1 (uptime $start -> $(cut -d' ' -f1 /proc/uptime))"
  umount /results 2>/dev/null
  reboot -f
  sleep 10
}

if [ -z "$scenario" ] || [ ! -f "$script" ]; then
  echo "init: no such scenario '$scenario' (want scenario=NAME on the kernel command line)" | tee /results/output.log
  finish 2
fi

# Guest-side watchdog, a little shorter than the host's hard timeout, so that a hanging scenario
# still leaves dmesg and a process list behind. Status 124 like timeout(1).
if [ -n "$vmtimeout" ]; then
  (
    sleep "$vmtimeout"
    echo "init: scenario '$scenario' timed out after ${vmtimeout}s; processes:"
    ps -o pid,stat,args 2>/dev/null | grep -v ' \['
    for p in /proc/[0-9]*; do
      [ -r "$p/wchan" ] && echo "  ${p#/proc/} $(cat "$p/wchan" 2>/dev/null) $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
    done
    finish 124
  ) &
fi

# The scenario runs as a plain `sh` child (no -x), output both on the console and in
# /results/output.log (the SKIP reason is its last line). Init polls for the status file instead
# of waiting for the pipeline: tee only sees EOF once every process that inherited the pipe is
# gone, and a scenario may leave a background `sleep` behind.
( cd / && sh "$script"; echo $? >/tmp/scenario.status.tmp; mv /tmp/scenario.status.tmp /tmp/scenario.status ) 2>&1 |
  tee /results/output.log &
while [ ! -e /tmp/scenario.status ]; do
  sleep 0.2
done
sleep 0.2 # let tee write the last lines
finish "$(cat /tmp/scenario.status)"
EOF
chmod 0755 "$root/init"

# Owner root, newc format as the kernel wants it; sorted for a stable archive.
mkdir -p "$(dirname "$out")"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -n -6) >"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1))"
