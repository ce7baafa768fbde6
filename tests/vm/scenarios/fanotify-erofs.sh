#!/bin/sh
# vm-timeout: 420
# vm-default: no
# Lazy EROFS through the fanotify pre-content front end (kernel 7.2+, where EROFS has no fscache
# backend): a file-backed EROFS mount over a sparse blob file that the front end fills on
# demand. Not in the default run: it needs the 7.3 test kernel and the front end's bare driver
# (the daemon has no fanotify wiring yet):
#   cargo build --release --example fanotify_serve
#   KERNEL=$(tests/vm/build-kernel.sh 7.3 | tail -n 1) \
#   VM_EXTRA_BINS="target/release/examples/fanotify_serve:fanotify_serve" \
#     tests/vm/run-suite.sh fanotify-erofs
#   1. a tree of 500+ files (empty ones, one of 32 MiB + a bit), mkfs.erofs into /srv/erofs,
#   2. `fanotify_serve serve` attaches /var/cache/fscache/fanotify/FSID on the ext4 cache disk
#      (a hole of the blob's size with a FAN_PRE_ACCESS mark) for testblob, vanishing and
#      nosuchblob (no source: must be refused),
#   3. `fanotify_serve mount` (mount(2) on the file itself: busybox mount would put a loop
#      device under it, which reads with no pre-content events) must show every file with the
#      source's sha256; after umount + drop_caches a second mount reads everything from the
#      file with zero bytes fetched,
#   4. a source that shrinks after attach: reading past its new end fails with EIO (never
#      zeros), and the server goes on; it is unmounted before the server is stopped (closing
#      the group would allow every pending read).
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

tree=/tmp/tree
serve=/usr/sbin/fanotify_serve
blobs=$cache/fanotify
serve_log=/results/fanotify_serve.log
serve_pid=

on_fail() {
  echo "--- fanotify_serve log (tail)"; tail -n 40 "$serve_log" 2>/dev/null
  echo "--- blob files"; ls -ls "$blobs" 2>/dev/null
  echo "--- mounts"; grep -E 'erofs|fscache' /proc/mounts
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  grep -q ' /mnt ' /proc/mounts && umount /mnt
  grep -q ' /mnt2 ' /proc/mounts && umount /mnt2
  [ -n "$serve_pid" ] && kill -TERM "$serve_pid" 2>/dev/null
}

major=$(uname -r | cut -d. -f1)
minor=$(uname -r | cut -d. -f2)
if [ "$major" -lt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -lt 14 ]; }; then
  skip "kernel $(uname -r) has no FAN_PRE_ACCESS (6.14+; run with KERNEL=\$(tests/vm/build-kernel.sh 7.3))"
fi
[ -x "$serve" ] || fail "no $serve in the initramfs (VM_EXTRA_BINS=target/release/examples/fanotify_serve:fanotify_serve)"

# The same deterministic tree as ondemand.sh (see there): no 4 KiB page repeats in big.bin.
seq -w 0 299999 >/tmp/U
head -c 1048576 /tmp/U >/tmp/U1
make_file() { # PATH SIZE INDEX
  if [ "$2" -eq 0 ]; then
    : >"$1"
  else
    tail -c +$(( ($3 * 7919 * 13) % 1048576 + 1 )) /tmp/U | head -c "$2" >"$1"
  fi
}
say "generating the source tree in $tree"
i=0
while [ $i -lt 520 ]; do
  dir=$tree/d$((i % 16))/s$((i % 3))
  mkdir -p "$dir"
  if [ $((i % 40)) -eq 7 ]; then
    size=0
  elif [ $((i % 50)) -eq 3 ]; then
    size=$((262144 + (i * 40503) % 786432))
  else
    size=$(( (i * 2654435761) % 65536 + 1 ))
  fi
  make_file "$dir/f$i" "$size" "$i"
  i=$((i + 1))
done
k=0
while [ $k -lt 32 ]; do
  r=$((k % 10))
  rot=$(echo 01234567890123456789 | cut -c $((r + 1))-$((r + 10)))
  case $((k / 10)) in 0) nl='\n' ;; 1) nl=':' ;; 2) nl=';' ;; *) nl='#' ;; esac
  tr "0123456789\n" "$rot$nl" </tmp/U1
  k=$((k + 1))
done >"$tree/big.bin"
tail -c +1048577 /tmp/U | head -c 12345 >>"$tree/big.bin"
(cd "$tree" && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
files=$(grep -c . /tmp/tree.sha)
say "tree: $files files, $(du -sk "$tree" | cut -f1) KiB"
check "the source tree has at least 500 files" test "$files" -ge 500

mkdir -p /srv/erofs /etc/cachefilesd "$cache" /mnt /mnt2
check "mkfs.erofs /srv/erofs/testblob" sh -c "mkfs.erofs --quiet /srv/erofs/testblob '$tree' >/tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; false; }"
cp /srv/erofs/testblob /srv/erofs/vanishing
size=$(stat -c %s /srv/erofs/testblob)
say "blob: $size bytes"

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
mkdir -p "$blobs"
printf '[[source]]\ndomain = "*"\nfsid = "*"\npath = "/srv/erofs/{fsid}"\n' >"$map"

"$serve" serve "$map" "$blobs" testblob vanishing nosuchblob >"$serve_log" 2>&1 &
serve_pid=$!
say "started fanotify_serve, pid $serve_pid (log: results/fanotify_serve.log)"
wait_for 30 "testblob attached" grep -q '^attached testblob ' "$serve_log"
wait_for 30 "vanishing attached" grep -q '^attached vanishing ' "$serve_log"
wait_for 30 "nosuchblob refused (no source)" grep -q '^failed nosuchblob$' "$serve_log"
check "the blob file has the blob's size" test "$(stat -c %s "$blobs/testblob")" -eq "$size"
check "the blob file starts as a hole (0 blocks)" test "$(stat -c %b "$blobs/testblob")" -eq 0

# stats FIELD: the server's counter, printed on SIGUSR1.
stats() {
  _n=$(grep -c '^stats ' "$serve_log")
  kill -USR1 "$serve_pid"
  _i=0
  while [ "$(grep -c '^stats ' "$serve_log")" -le "$_n" ] && [ $_i -lt 50 ]; do sleep 0.1; _i=$((_i + 1)); done
  grep '^stats ' "$serve_log" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$1=//p"
}
same_file_count() { [ "$(find "${1:-/mnt}" -type f | wc -l)" -eq "$files" ]; }
not_a_loop_mount() { grep " $1 erofs " /proc/mounts | grep -q "^$2 "; }

check "fanotify_serve mount $blobs/testblob /mnt" timeout -s KILL 120 "$serve" mount "$blobs/testblob" /mnt
check "EROFS sits on the file itself, no loop device" not_a_loop_mount /mnt "$blobs/testblob"
check "the mount shows all $files files" same_file_count
check "first read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt
bytes1=$(stats bytes)
events1=$(stats events)
say "after the first pass: $events1 events, $bytes1 bytes fetched, $(du -k "$blobs/testblob" | cut -f1) KiB allocated"
check "the first pass fetched through events" test "${bytes1:-0}" -gt 0 -a "${events1:-0}" -gt 0

echo 3 >/proc/sys/vm/drop_caches
check "mount again" timeout -s KILL 120 "$serve" mount "$blobs/testblob" /mnt
check "second read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt
bytes2=$(stats bytes)
present=$(stats present)
check "the second pass fetched nothing (bytes $bytes1 -> $bytes2; $present ranges allowed as present)" test "$bytes2" = "$bytes1"

check "mount vanishing on /mnt2" timeout -s KILL 120 "$serve" mount "$blobs/vanishing" /mnt2
small=$(find /mnt2 -type f -size -8k | head -n 1)
check "a small file reads before the source shrinks" sh -c "cat '$small' >/dev/null"
truncate -s 8192 /srv/erofs/vanishing
big_read_fails() { ! timeout -s KILL 60 cat /mnt2/big.bin >/tmp/big.out 2>/tmp/big.err; }
check "reading big.bin after the source shrank fails (no hang)" big_read_fails
say "reader saw: $(cat /tmp/big.err)"
check "the failure is an I/O error (EIO)" grep -q 'Input/output error' /tmp/big.err
check "whatever the reader got before the error is the file's own bytes" sh -c "[ ! -s /tmp/big.out ] || cmp -s /tmp/big.out '$tree/big.bin' 2>/dev/null || cmp /tmp/big.out '$tree/big.bin' 2>&1 | grep -q EOF"
failed=$(stats fills_failed)
check "the server counted the failed fill ($failed)" test "${failed:-0}" -gt 0
check "umount /mnt2" umount /mnt2
check "fanotify_serve is still running" alive "$serve_pid"

check "testblob still mounts and reads after the failure" timeout -s KILL 120 "$serve" mount "$blobs/testblob" /mnt
check "third read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt

say "final: $(grep '^stats ' "$serve_log" | tail -n 1)"
stop_daemon "$serve_pid"
serve_pid=
check "fanotify_serve exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
