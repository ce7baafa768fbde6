#!/bin/sh
# vm-timeout: 300
# Space-based culling in on-demand mode: read() returns requests there, not the status line,
# so the daemon derives the thresholds from statfs and the configured percentages (as the
# kernel does: f_blocks / 100 * pct) and culls the least recently used blobs when free space
# drops below bcull, until it is back above brun.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

on_fail() { tail -n 30 "$daemon_log"; df "$cache"; find "$cache/cache" -type f; }

check "mount the ext4 cache disk" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd
for b in blob1 blob2 blob3; do
  mkdir -p /tmp/$b
  dd if=/dev/urandom of=/tmp/$b/data bs=1M count=24 2>/dev/null
  mkfs.erofs --quiet /srv/erofs/$b /tmp/$b >/dev/null 2>&1 || fail "mkfs.erofs $b"
  sha256sum /tmp/$b/data | cut -d' ' -f1 >/tmp/$b.sum
  rm -rf /tmp/$b
done
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
printf 'dir %s\ntag mycache\nondemand %s\nbrun 65%%\nbcull 50%%\nbstop 3%%\n' "$cache" "$map" >"$conf"
"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
wait_for 30 "the daemon bound the cache" bound_or_dead

read_blob() { # NAME: mount, read and check, umount (commits the object)
  timeout -s KILL 60 mount -t erofs none -o "fsid=$1" /mnt || return 1
  [ "$(sha256sum /mnt/data | cut -d' ' -f1)" = "$(cat "/tmp/$1.sum")" ] || { umount /mnt; return 1; }
  umount /mnt
}
for b in blob1 blob2 blob3; do
  check "read $b through the daemon (sha256 matches)" read_blob $b
  sleep 1.1   # distinct atimes: the kernel opened each object a second apart
done
objects() { find "$cache/cache" -type f -name 'Dblob*' | sed 's|.*/D||' | sort | tr '\n' ' '; }
say "objects: $(objects)"
check "three blob objects in the cache" test "$(objects)" = "blob1 blob2 blob3 "

blocks=$(fs_blocks "$cache")
brun_blocks=$(threshold "$blocks" 65)
bcull_blocks=$(threshold "$blocks" 50)
# Push free space just below bcull: culling one 24 MiB blob (6144 blocks) is not enough to get
# back to brun (15 % of this disk is about 8600 blocks), two are.
fill=$(( $(fs_bavail "$cache") - bcull_blocks + 200 ))
dd if=/dev/zero of="$cache/filler" bs=4096 count="$fill" 2>/dev/null
say "free blocks $(fs_bavail "$cache"), bcull $bcull_blocks, brun $brun_blocks"
at_brun() { [ "$(fs_bavail "$cache")" -ge "$brun_blocks" ]; }
wait_for 30 "the daemon culls until free space >= brun" at_brun
say "objects left: $(objects)"
check "the two least recently used blobs were culled, the newest kept" test "$(objects)" = "blob3 "
check "the daemon is still running" alive "$daemon_pid"
check "a culled blob is fetched again on the next mount" read_blob blob1
rm -f "$cache/filler"
stop_daemon "$daemon_pid"
check "SIGTERM: exit status 0 (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
