#!/bin/sh
# vm-timeout: 420
# vm-kernel: 6.12 7.3
# One config (no `frontend` key: auto) and one command, `cachefilesctl mount`, on both kernels:
# on 7.3 (no EROFS over fscache, `bind ondemand` refused) the daemon binds the cache classic and
# serves blobs through its fanotify front end; on 6.12 it binds ondemand and the tool runs the
# fsid= mount. Steps marked [fanotify] are checked on 7.3 only.
#   1. a tree of 500+ files (empty ones, one of 32 MiB + a bit), mkfs.erofs into /srv/erofs,
#   2. cachefilesd with `ondemand MAP`; it must report mode fanotify on 6.14+, on-demand before,
#   3. `cachefilesctl mount testblob /mnt`: [fanotify] the daemon attaches $cache/lazy/testblob/testblob
#      (a hole of the blob's size with a FAN_PRE_ACCESS mark) and the tool mounts EROFS on the
#      file itself (no loop device, whose reads raise no pre-content events); every file has
#      the source's sha256; `cachefilesctl umount` detaches it,
#   4. after drop_caches a second mount reads everything with zero fetches,
#   5. [fanotify] once the whole blob is read it is complete: unmarked and recorded, and a
#      third mount raises no event at all (counted),
#   6. an fsid no source serves is refused cleanly (no mount, the daemon goes on),
#   7. a source that shrinks after attach: reading past its new end fails with EIO (never
#      zeros), and the daemon goes on.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

tree=/tmp/tree
blobs=$cache/lazy

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- blob files"; ls -lsR "$blobs" 2>/dev/null
  echo "--- mounts"; grep -E 'erofs|fscache' /proc/mounts
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  grep -q ' /mnt ' /proc/mounts && umount /mnt
  grep -q ' /mnt2 ' /proc/mounts && umount /mnt2
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
}

major=$(uname -r | cut -d. -f1)
minor=$(uname -r | cut -d. -f2)
want=fanotify
if [ "$major" -lt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -lt 14 ]; }; then
  want=on-demand
fi
[ -x "$daemon" ] || fail "no $daemon in the initramfs"
[ -x "$ctl" ] || fail "no $ctl in the initramfs"

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
printf '[[source]]\ndomain = "*"\nfsid = "*"\npath = "/srv/erofs/{fsid}"\n' >"$map"
ondemand_conf
say "config:"; sed 's/^/    /' "$conf"; sed 's/^/    /' "$map"

start_daemon
say "auto is to choose the $want front end on $(uname -r)"
serves_in "$want"
fan() { [ "$want" = fanotify ]; }

field() { daemon_field "$1" || echo "?"; }
same_file_count() { [ "$(find "${1:-/mnt}" -type f | wc -l)" -eq "$files" ]; }
on_the_file_itself() { grep " $1 erofs " /proc/mounts | grep -q "^$2 "; }
mnt() { timeout -s KILL 120 "$ctl" -f "$conf" mount "$@"; }
umnt() { "$ctl" -f "$conf" umount "$1"; }

check "cachefilesctl mount testblob /mnt" mnt testblob /mnt
if fan; then
  check "EROFS sits on the blob file itself, no loop device" on_the_file_itself /mnt "$blobs/testblob/testblob"
  check "the blob file has the blob's size" test "$(stat -c %s "$blobs/testblob/testblob")" -eq "$size"
  # 7.x reads EROFS metadata through the file (pre-content events): the mount stayed lazy.
  check "this kernel's EROFS raises metadata events: the mount is lazy (got $(field ondemand.fanotify.erofs_meta_events))" \
    test "$(field ondemand.fanotify.erofs_meta_events)" = raised
  check "the blob still has holes after the mount (not filled whole first)" \
    test "$(du -k "$blobs/testblob/testblob" | cut -f1)" -lt "$(( size / 1024 ))"
else
  check "EROFS is mounted with fsid=testblob" sh -c "grep ' /mnt erofs ' /proc/mounts | grep -q 'fsid=testblob'"
fi
check "the mount shows all $files files" same_file_count
check "first read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "cachefilesctl umount /mnt" umnt /mnt
check "nothing is mounted on /mnt any more" sh -c "! grep -q ' /mnt ' /proc/mounts"
bytes1=$(field ondemand.bytes_written)
check "the first pass fetched" test "${bytes1:-0}" -gt 0
if fan; then
  check "umount detached the blob" test "$(daemon_field ondemand.fanotify.detaches)" = 1
  events1=$(field ondemand.fanotify.events)
  say "after the first pass: $events1 events, $bytes1 bytes fetched, $(du -k "$blobs/testblob/testblob" | cut -f1) KiB allocated"
  check "the first pass fetched through events" test "${events1:-0}" -gt 0
fi

echo 3 >/proc/sys/vm/drop_caches
check "mount again" mnt testblob /mnt
check "second read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umnt /mnt
bytes2=$(field ondemand.bytes_written)
check "the second mount fetched nothing (bytes $bytes1 -> $bytes2)" test "$bytes2" = "$bytes1"

# [fanotify] Every byte of the blob read once (by another process than the daemon): complete.
if fan; then
  check "attach testblob (prints its file)" sh -c "'$ctl' -f '$conf' attach testblob >/tmp/attach.out"
  check "attach printed the blob file" test "$(cat /tmp/attach.out)" = "$blobs/testblob/testblob"
  check "read the whole blob file" sh -c "cat '$blobs/testblob/testblob' >/dev/null"
  check "the blob file now equals the source" cmp "$blobs/testblob/testblob" /srv/erofs/testblob
  check "the daemon counted the blob complete" test "$(field ondemand.fanotify.completed)" = 1
  echo 3 >/proc/sys/vm/drop_caches
  events2=$(field ondemand.fanotify.events)
  check "mount the complete blob" mnt testblob /mnt
  check "third read: every file has the source's sha256" verify_sums /tmp/tree.sha
  check "umount" umnt /mnt
  events3=$(field ondemand.fanotify.events)
  check "the complete blob raised no event (events $events2 -> $events3)" test "$events3" = "$events2"
fi

refused() { ! mnt nosuchblob /mnt >/tmp/nosuch.out 2>&1; }
check "cachefilesctl mount of an fsid no source serves fails" refused
say "it said: $(cat /tmp/nosuch.out)"
if fan; then
  check "it says the daemon refused" grep -q "refused" /tmp/nosuch.out
fi
check "nothing is mounted on /mnt" sh -c "! grep -q ' /mnt ' /proc/mounts"
check "cachefilesd is still running" alive "$daemon_pid"

check "mount vanishing on /mnt2" mnt vanishing /mnt2
small=$(find /mnt2 -type f -size -8k | head -n 1)
check "a small file reads before the source shrinks" sh -c "cat '$small' >/dev/null"
truncate -s 8192 /srv/erofs/vanishing
big_read_fails() { ! timeout -s KILL 60 cat /mnt2/big.bin >/tmp/big.out 2>/tmp/big.err; }
check "reading big.bin after the source shrank fails (no hang)" big_read_fails
say "reader saw: $(cat /tmp/big.err)"
check "the failure is an I/O error (EIO)" grep -q 'Input/output error' /tmp/big.err
check "whatever the reader got before the error is the file's own bytes" sh -c "[ ! -s /tmp/big.out ] || cmp -s /tmp/big.out '$tree/big.bin' 2>/dev/null || cmp /tmp/big.out '$tree/big.bin' 2>&1 | grep -q EOF"
failed=$(field ondemand.reads_failed)
check "the daemon counted the failed fill ($failed)" test "${failed:-0}" -gt 0
check "umount /mnt2" umnt /mnt2
check "cachefilesd is still running" alive "$daemon_pid"

check "testblob still mounts and reads after the failure" mnt testblob /mnt
check "fourth read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umnt /mnt

show_status "$conf" "$want"
stop_daemon "$daemon_pid"
daemon_pid=
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
