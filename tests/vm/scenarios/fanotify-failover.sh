#!/bin/sh
# vm-timeout: 300
# vm-kernel: 7.3
# vm-smp: 1
# Failover of the fanotify front end through the fd-holding supervisor (issue 15, item 4):
#   1. `cachefilesd --supervise` with the fanotify front end (7.3 has no `bind ondemand`): the
#      supervisor makes the pre-content group and holds it with the device,
#   2. `cachefilesctl mount` of a 96 MiB blob; a reader streams its big file,
#   3. the worker is killed with SIGKILL mid-read, caught (SIGSTOP, look, SIGCONT) while its record
#      shows a fill in flight; the supervisor starts a new one, which adopts the group, attaches
#      the blob again and fills and allows what the dead worker had recorded in flight,
#   4. the read completes with the right sha256 (never zeros, never EIO), and a second full read
#      of the mount after the takeover is right too,
#   5. SIGTERM: the supervisor exits 0.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

[ -x "$daemon" ] || fail "no $daemon in the initramfs"
[ -x "$ctl" ] || fail "no $ctl in the initramfs"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- in-flight record"; cat /run/cachefilesd/fanotify-inflight 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes"; show_processes
  grep -q ' /mnt ' /proc/mounts && umount /mnt
}

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree /mnt
say "generating a 96 MiB file"
dd if=/dev/urandom of=/tmp/tree/big.bin bs=1M count=96 2>/dev/null
echo small >/tmp/tree/small.txt
expected=$(sha256sum /tmp/tree/big.bin | cut -d' ' -f1)
check "mkfs.erofs /srv/erofs/big" sh -c "mkfs.erofs --quiet /srv/erofs/big /tmp/tree >/dev/null 2>&1"
rm -rf /tmp/tree
# No readahead: each read of the stream is then a fetch of its own, so the worker can be caught
# with one in flight (with readahead, fills ahead of a sequential reader leave none most of the
# time).
printf 'frontend = "fanotify"\n[fetch]\nreadahead = 0\n[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
ondemand_conf

start_daemon --supervise
wait_for 10 "the supervisor has a worker" has_worker
serves_in fanotify
worker=$(worker_of "$daemon_pid")
say "supervisor $daemon_pid, worker $worker"

check "cachefilesctl mount big /mnt" timeout -s KILL 120 "$ctl" -f "$conf" mount big /mnt
blob=$cache/lazy/big/big
(sha256sum /mnt/big.bin >/tmp/sum 2>/tmp/sum.err; echo $? >/tmp/sum.rc) &
reader=$!
filled() { du -k "$blob" | cut -f1; }
under_way() { [ "$(filled)" -gt 8192 ]; }
wait_for 60 "the read is under way (blob file holds > 8 MiB)" under_way
check "the read is still in progress ($(filled) KiB filled)" alive "$reader"
# Catch the worker with a fill in flight (an `event` line in its record): stop it, look, go on.
record=/run/cachefilesd/fanotify-inflight
tries=0
while :; do
  kill -STOP "$worker"
  sleep 0.05
  grep -q '^event ' "$record" && break
  kill -CONT "$worker"
  tries=$((tries + 1))
  [ "$tries" -lt 200 ] || fail "never caught the worker with a read in flight"
  sleep 0.02
done
say "worker stopped with in flight: $(grep '^event ' "$record" | tr '\n' ';')"
kill -KILL "$worker"
say "killed worker $worker with SIGKILL mid-read ($(filled) KiB filled)"
new_worker() { _w=$(worker_of "$daemon_pid") && [ "$_w" != "$worker" ]; }
wait_for 30 "the supervisor started a new worker" new_worker
say "new worker $(worker_of "$daemon_pid")"
reader_done() { ! alive "$reader"; }
wait_for 120 "the reader finished" reader_done
wait "$reader"
check "the read completed without error ($(cat /tmp/sum.err))" test "$(cat /tmp/sum.rc)" = 0
check "sha256 of the 96 MiB file matches" test "$(cut -d' ' -f1 /tmp/sum)" = "$expected"
check "the new worker took the group over" grep -q 'fanotify group taken over' "$daemon_log"
taken=$(grep 'fanotify group taken over:' "$daemon_log" | tail -n 1)
say "$taken"
owed=$(echo "$taken" | sed -n 's/.* and \([0-9]*\) event(s) in flight recorded.*/\1/p')
check "the new worker answered the dead one's recorded read(s) (${owed:-?})" test "${owed:-0}" -ge 1
check "drop caches" sh -c "echo 3 >/proc/sys/vm/drop_caches"
check "a second read after the takeover matches" sh -c "test \"\$(sha256sum /mnt/big.bin | cut -d' ' -f1)\" = $expected"
check "cachefilesctl umount /mnt" "$ctl" -f "$conf" umount /mnt
stop_daemon "$daemon_pid"
check "the supervisor exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
