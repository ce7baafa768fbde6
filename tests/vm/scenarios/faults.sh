#!/bin/sh
# vm-timeout: 300
# Kernel fault injection (/proc/sys/cachefiles/error_injection: bit 1 = ENOSPC on writes,
# bit 2 = EIO on reads, writes and removals):
#   1. on demand, ENOSPC while serving: reads of uncached data fail cleanly (EIO to the reader,
#      no hang), the daemon stays up, and the same reads work once the fault is cleared;
#   2. on demand, EIO while a new blob is looked up: the kernel marks the cache dead; the
#      daemon logs one clear line and exits with status 1 (so a service manager restarts it);
#   3. classic, EIO while culling: the kernel's unlink fails but the cache lives on: the daemon
#      pauses culling (no busy loop, no exit) and culls again once the fault is cleared.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

inject=/proc/sys/cachefiles/error_injection

on_fail() {
  echo 0 >"$inject" 2>/dev/null
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes"; show_processes
}

check "error injection is available ($inject)" test -w "$inject"
check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree/d
dd if=/dev/urandom of=/tmp/tree/big.bin bs=1M count=8 2>/dev/null
i=0; while [ $i -lt 20 ]; do head -c $((i * 1000 + 1)) /tmp/tree/big.bin >/tmp/tree/d/f$i; i=$((i + 1)); done
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
check "mkfs.erofs two images" sh -c "mkfs.erofs --quiet /srv/erofs/img /tmp/tree >/dev/null 2>&1 && cp /srv/erofs/img /srv/erofs/other"
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
ondemand_conf

"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
wait_for 30 "the daemon bound the cache" bound_or_dead
check "mount -o fsid=img" timeout -s KILL 60 mount -t erofs none -o fsid=img /mnt
check "a small file reads before the fault" cat /mnt/d/f1 >/dev/null

say "1. ENOSPC on cache writes"
echo 1 >"$inject"
read_fails() { ! timeout -s KILL 60 cat /mnt/big.bin >/dev/null 2>/tmp/err; }
check "reading uncached data fails while writes get ENOSPC (no hang)" read_fails
say "reader saw: $(cat /tmp/err)"
check "the daemon is still running" alive "$daemon_pid"
echo 0 >"$inject"
check "after the fault is cleared every file reads with the right sha256" verify_sums /tmp/tree.sha
check "the daemon is still running" alive "$daemon_pid"
check "umount" umount /mnt

say "2. EIO while a new blob is looked up: the cache dies"
# The volume must exist already (a failed volume lookup only fails the mount): keep one image
# of the shared domain mounted, then look up a second one with EIO injected.
mkdir -p /mnt2
check "mount -o domain_id=dom,fsid=img" timeout -s KILL 60 mount -t erofs none -o domain_id=dom,fsid=img /mnt
echo 2 >"$inject"
timeout -s KILL 60 mount -t erofs none -o domain_id=dom,fsid=other /mnt2 2>/tmp/mount.err && umount /mnt2
say "mount with EIO injected: $(cat /tmp/mount.err)"
check "the kernel marked the cache dead" sh -c "dmesg | grep -q 'CacheFiles: I/O Error'"
exited() { ! alive "$daemon_pid"; }
wait_for 10 "the daemon exits once the cache is dead" exited
wait "$daemon_pid"
rc=$?
echo 0 >"$inject"
check "exit status 1 (got $rc)" test "$rc" -eq 1
umount /mnt 2>/dev/null
check "one clear log line says the cache is dead" test "$(grep -c 'cache is dead' "$daemon_log")" -eq 1
say "log: $(grep 'cache is dead' "$daemon_log")"

say "3. classic mode, EIO while culling"
umount "$cache"
mkfs.ext4 -q -F -m 0 -b 4096 /dev/vda
check "a fresh cache filesystem" mount -t ext4 /dev/vda "$cache"
# Objects planted in the kernel's layout (cull removes plain files too).
i=0; while [ $i -lt 50 ]; do
  d=$cache/cache/Ierofs,planted/@$(printf %02x $((i % 256)))
  mkdir -p "$d"; head -c 65536 /dev/urandom >"$d/Dobj$i"; i=$((i + 1))
done
printf 'dir %s\ntag mycache\nbrun 20%%\nbcull 10%%\nbstop 3%%\n' "$cache" >"$conf"
dmesg -c >/dev/null
"$daemon" -n -s -f "$conf" >>"$daemon_log" 2>&1 &
daemon_pid=$!
wait_for 30 "the daemon bound the cache in classic mode" bound_or_dead
echo 2 >"$inject"
bcull_blocks=$(threshold "$(fs_blocks "$cache")" 10)
target=$(( bcull_blocks / 2 ))
fill=$(( $(fs_bavail "$cache") - target ))
dd if=/dev/zero of="$cache/filler" bs=4096 count="$fill" 2>/dev/null
say "free blocks now $(fs_bavail "$cache") (bcull $bcull_blocks)"
# The kernel's unlink now fails with EIO ("Internal error: -5"), but the cache stays alive:
# the daemon must neither exit nor spin; culling resumes when the fault is gone.
failed_cull() { grep -q 'the cache is alive, culling paused' "$daemon_log"; }
wait_for 20 "a cull failed with EIO and the daemon paused culling" failed_cull
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
t0=$(cpu_ticks "$daemon_pid"); sleep 3; t1=$(cpu_ticks "$daemon_pid")
say "daemon CPU over 3 s with the fault on: $((t1 - t0)) ticks"
check "no busy loop while culls fail (< 30 of 300 ticks)" test $((t1 - t0)) -lt 30
check "the daemon is still running" alive "$daemon_pid"
echo 0 >"$inject"
brun_blocks=$(threshold "$(fs_blocks "$cache")" 20)
at_brun() { [ "$(fs_bavail "$cache")" -ge "$brun_blocks" ] || [ -z "$(find "$cache/cache" -name 'Dobj*' | head -n 1)" ]; }
rm -f "$cache/filler"
dd if=/dev/zero of="$cache/filler" bs=4096 count=$(( $(fs_bavail "$cache") - target )) 2>/dev/null
wait_for 30 "after the fault is cleared the daemon culls again" sh -c "test \$(find '$cache/cache' -name 'Dobj*' | wc -l) -lt 50"
check "the daemon is still running" alive "$daemon_pid"
stop_daemon "$daemon_pid"
check "SIGTERM: exit status 0 (got $daemon_rc)" test "$daemon_rc" -eq 0
rm -f "$cache/filler"
check "umount the cache disk" umount "$cache"
pass
