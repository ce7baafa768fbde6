#!/bin/sh
# vm-timeout: 300
# vm-smp: 1
# (One CPU: see classic.sh for the 9p/netfs kernel BUG seen with two.)
# Failover through the fd-holding supervisor (`cachefilesd --supervise`):
#   on demand: a reader streams a 64 MiB file from an EROFS mount; the worker daemon is killed
#   with SIGKILL mid-read; the supervisor, still holding /dev/cachefiles, starts a new worker,
#   which writes `restore`; the read completes with the right sha256.
#   classic: a 9p cache=fscache mount; the worker is killed; the cache is not withdrawn, and
#   files read after the restart still become cache objects.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

[ -x "$daemon" ] || fail "no $daemon in the initramfs"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes"; show_processes
}

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree
say "generating a 64 MiB file"
dd if=/dev/urandom of=/tmp/tree/big.bin bs=1M count=64 2>/dev/null
echo small >/tmp/tree/small.txt
expected=$(sha256sum /tmp/tree/big.bin | cut -d' ' -f1)
check "mkfs.erofs /srv/erofs/big" sh -c "mkfs.erofs --quiet /srv/erofs/big /tmp/tree >/dev/null 2>&1"
rm -rf /tmp/tree
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
ondemand_conf

start_daemon --supervise
wait_for 10 "the supervisor has a worker" has_worker
worker=$(worker_of "$daemon_pid")
say "supervisor $daemon_pid, worker $worker"

check "mount -o fsid=big" timeout -s KILL 120 mount -t erofs none -o fsid=big /mnt
avail0=$(fs_bavail "$cache")
(sha256sum /mnt/big.bin >/tmp/sum 2>/tmp/sum.err; echo $? >/tmp/sum.rc) &
reader=$!
# Let the read get going: the cache file is an unlinked O_TMPFILE until umount, so watch the
# free blocks of the cache filesystem instead.
backing_grows() { [ $(( avail0 - $(fs_bavail "$cache") )) -gt 1024 ]; }
wait_for 60 "the read is under way (cache holds > 4 MiB)" backing_grows
check "the read is still in progress" alive "$reader"
kill -KILL "$worker"
say "killed worker $worker with SIGKILL mid-read"
new_worker() { _w=$(worker_of "$daemon_pid") && [ "$_w" != "$worker" ]; }
wait_for 30 "the supervisor started a new worker" new_worker
say "new worker $(worker_of "$daemon_pid")"
reader_done() { ! alive "$reader"; }
wait_for 120 "the reader finished" reader_done
wait "$reader"
check "the read completed without error ($(cat /tmp/sum.err))" test "$(cat /tmp/sum.rc)" = 0
check "sha256 of the 64 MiB file matches" test "$(cut -d' ' -f1 /tmp/sum)" = "$expected"
check "the new worker wrote restore" grep -q 'restore: outstanding requests re-delivered' "$daemon_log"
check "the cache was never withdrawn" sh -c "! dmesg | grep -q 'Withdrawing cache'"
check "umount" umount /mnt
stop_daemon "$daemon_pid"
check "the supervisor exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0

# Classic mode: the same on a 9p mount with fscache.
say "classic mode"
printf 'dir %s\ntag mycache\n' "$cache" >"$conf"
dmesg -c >/dev/null
start_daemon --supervise
wait_for 10 "the supervisor has a worker" has_worker
worker=$(worker_of "$daemon_pid")
objects() { find "$cache/cache" -path '*I9p*' -type f | wc -l; }
check "mount 9p with cache=fscache" mount_9p
check "read the first 100 files" sh -c "find /mnt -type f | sort | head -n 100 | xargs cat >/dev/null"
check "umount 9p (commits the objects)" umount /mnt
before=$(objects)
say "objects: $before"
kill -KILL "$worker"
wait_for 30 "the supervisor started a new worker" new_worker
check "the cache was not withdrawn" sh -c "! dmesg | grep -q 'Withdrawing cache'"
check "mount 9p again" mount_9p
check "read every file with the right sha256" sh -c "cd /mnt && sha256sum -c SHA256SUMS >/tmp/v.out 2>&1"
check "umount 9p" umount /mnt
after=$(objects)
say "objects after the restart and a full read: $after"
check "files read after the restart became cache objects ($before -> $after)" test "$after" -gt "$before"
stop_daemon "$daemon_pid"
check "the supervisor exits with status 0 (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
