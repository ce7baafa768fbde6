#!/bin/sh
# vm-timeout: 180
# vm-smp: 1
# vm-disk: prefilled-20000
# (One CPU, as in classic.sh: phase 2 reads through 9p cache=fscache, and with two CPUs 6.12.117's
#  netfs read collector sometimes hits a kernel BUG. Timings here are for information only;
#  cullbench.sh is the benchmark.)
# Culling a cache that starts above bcull (free space below the bcull limit), LRU order and
# in-use objects:
#   1. /dev/vda holds 20,000 planted 4 KiB objects with known atimes (make-prefilled-cache.py:
#      object <rank> has atime 1600000000 + rank), a filler file takes free space down to 6.5 %
#      (limits brun 20 %, bcull 10 %, bstop 3 %). `cachefilesd -n -s -f conf` binds; the kernel
#      raises cull at once, and the daemon must bring free space up to brun (time reported),
#      culling exactly the oldest objects (every object left is newer than every one culled),
#      and not many more than needed;
#   2. in-use: a 9p file is read (its object is committed at umount), held open on a new mount,
#      and its object's atime is set to 2015, older than everything planted; more filler (to 4 %,
#      so that more objects must go than one cull table holds and the daemon has to rescan) and
#      a few uncached 9p reads push free space below bcull again. The daemon must cull back to
#      brun, try the held object and skip it (the kernel answers EBUSY; the daemon's report,
#      `cachefilesctl status --json`, counts it), and still cull the planted objects oldest first.
# The planted objects have no cachefiles xattr; the kernel culls them like any other file.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh
# shellcheck source=SCRIPTDIR/lib/prefilled.sh
. /scenarios/lib/prefilled.sh

[ -x "$daemon" ] || fail "no $daemon in the initramfs (build target/release/cachefilesd and rebuild the initramfs)"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 /results/cachefilesd.log 2>/dev/null
  echo "--- df"; df "$cache" 2>/dev/null
  echo "--- graveyard: $(find "$cache/graveyard" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) entries"
  echo "--- dmesg (tail)"; dmesg | tail -n 30
}
daemon_alive() { alive "$daemon_pid"; }
at_brun() { [ "$(fs_bavail "$cache")" -ge "$brun_blocks" ]; }

# Phase 1: start below bcull.
prefilled_mount /dev/vda
run_to_brun cachefilesd 60 "$daemon" -n -s -f "$conf"
daemon_pid=$run_pid
say "cachefilesd: $run_result after $(secs "$run_cs") s (CPU $(secs "$run_cpu_cs") s, user+sys $run_cpu_split)"
check "the daemon brought free space from $start_avail up to brun ($brun_blocks blocks) within 60 s" \
  test "$run_result" = brun
check "dmesg: the cache was bound" sh -c 'dmesg | grep -q "File cache on mycache registered"'
sleep 0.5
check "cachefilesd is still running" daemon_alive
avail=$(fs_bavail "$cache")
survey
check "culled the oldest objects first (LRU order kept)" lru_in_order
check "some planted objects are left" test "$left" -gt 0
# One object frees one block; allow 1 % of the disk (the kernel's flag is read back after each
# cull, so a daemon that stops when told is far below that).
check "not over-culled: $avail free blocks <= brun + 1 % ($((brun_blocks + blocks / 100)))" \
  test "$avail" -le $((brun_blocks + blocks / 100))
say "phase 1: $culled culled for $(( brun_blocks - start_avail )) blocks wanted," \
  "$(secs "$run_cs") s from daemon start to brun (N=$N, 1 vCPU, TCG)"

# Phase 2: an object in use must survive even when it is the oldest.
check "mount 9p tag fscached with cache=fscache" mount_9p
held=d0/f020.bin
check "read $held through 9p" sh -c "cat /mnt/$held >/dev/null"
check "umount 9p (commits its object)" umount /mnt
check "remount 9p" mount_9p
held_path=$(ninep_object_path "/mnt/$held") ||
  fail "no object name for /mnt/$held (inode $(stat -c %i "/mnt/$held")) in $object_names"
held_obj=$cache/$held_path
exec 4<"/mnt/$held"
say "holding /mnt/$held open; object $held_path"
check "the held file's object is where the kernel's naming puts it" test -f "$held_obj"
check "backdate the held object to 2015 (older than every planted object)" touch -t 201501010000 "$held_obj"
say "held object atime now $(stat -c %X "$held_obj")"
left_before=$left
avail=$(fs_bavail "$cache")
# 4 % free: brun is then more than the 4096 objects of a (default) cull table away, so the daemon
# must scan again during this phase, after the held object was backdated, and meets it first.
# shellcheck disable=SC2017 # the same rounding as prefilled_mount's fill target
target=$(( blocks / 1000 * 40 ))
check "more filler: down to 4 % free (more culls needed than one cull table holds)" \
  fallocate -l $(( (avail - target) * $(fs_bsize "$cache") )) "$cache/filler2"
check "free space is below bcull again" test "$(fs_bavail "$cache")" -lt "$bcull_blocks"
# New objects make the kernel check the space and raise cull.
check "read 3 uncached files through 9p (the kernel notices low space)" \
  sh -c 'cat /mnt/d1/f001.bin /mnt/d2/f002.bin /mnt/d3/f003.bin >/dev/null'
wait_for 60 "the daemon culls back to brun ($brun_blocks blocks)" at_brun
check "the held (in-use, oldest) object survived" test -f "$held_obj"
survey
check "more planted objects were culled ($left_before -> $left)" test "$left" -lt "$left_before"
check "planted objects still culled oldest first" lru_in_order
check "cachefilesd is still running" daemon_alive
exec 4<&-
check "umount 9p" umount /mnt

skipped=$(daemon_field culling.skipped_in_use) || fail "the daemon's status has no culling.skipped_in_use"
say "daemon status: culled $(daemon_field culling.culled), skipped in use $skipped"
check "the daemon met the held object and skipped it (culling.skipped_in_use $skipped >= 1)" \
  test "$skipped" -ge 1
stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
daemon_pid=
check "umount the cache disk" umount "$cache"
pass
