#!/bin/sh
# vm-timeout: 420
# vm-kernel: 7.3
# vm-mem: 1536M
# The fanotify front end under load and under pressure (issue 15 item 6), through the daemon
# (config `ondemand MAP` with classic limits, auto front end: fanotify on 7.3) and
# `cachefilesctl mount`:
#   1. concurrent readers of one blob: 8 `sha256sum -c` over the whole tree and 2 readers of the
#      8 MiB file at once, on a cold blob; every one gets the right bytes, no fill fails;
#   2. ENOSPC on the cache disk: with the disk full (filler files), reading data not yet in the
#      blob file fails with EIO (no hang), and whatever the reader got is the file's own bytes,
#      never zeros; once the filler is gone the same read on the same mount succeeds;
#   3. culling of detached blobs to brun: blobs attached, read and unmounted, their files given
#      a known atime order (an attached blob the oldest of all), a filler pushes free space
#      below bcull; the daemon must remove the oldest detached blob files, only as many as free
#      space to brun needs (+1 for the reaper's lag), keep the attached one, and its report
#      must count exactly the files that went (ondemand.fanotify.culled).
# (A completed blob raising no events is checked in fanotify-erofs.)
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

blobs=$cache/lazy

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- blob files"; ls -lsR "$blobs" 2>/dev/null
  echo "--- space"; df -k "$cache" 2>/dev/null
  echo "--- mounts"; grep -E 'erofs' /proc/mounts
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes"; show_processes
  rm -f "$cache/filler" "$cache/filler2" "$cache/probe" 2>/dev/null
  for m in /mnt /mnt2 /mnt3; do grep -q " $m " /proc/mounts && umount "$m"; done
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
}

[ -x "$daemon" ] || fail "no $daemon in the initramfs"
[ -x "$ctl" ] || fail "no $ctl in the initramfs"

say "generating the source trees"
mkdir -p /tmp/tree/d /srv/erofs /etc/cachefilesd "$cache" /mnt /mnt2 /mnt3
dd if=/dev/urandom of=/tmp/tree/big.bin bs=1M count=8 2>/dev/null
i=0
while [ $i -lt 120 ]; do
  tail -c +$((i * 4099 + 1)) /tmp/tree/big.bin | head -c $(( (i * 2654435761) % 40000 + 1 )) >/tmp/tree/d/f$i
  i=$((i + 1))
done
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
big_sum=$(sha256sum </tmp/tree/big.bin | cut -d' ' -f1)
check "mkfs.erofs img (8 MiB file + 120 small ones)" sh -c "mkfs.erofs --quiet /srv/erofs/img /tmp/tree >/dev/null 2>&1"
cp /srv/erofs/img /srv/erofs/img2
# Culling fodder: four more blobs of one 6 MiB random file each, and one that stays mounted.
for b in c1 c2 c3 c4 held; do
  mkdir -p "/tmp/$b"
  dd if=/dev/urandom of="/tmp/$b/data.bin" bs=1M count=6 2>/dev/null
  mkfs.erofs --quiet "/srv/erofs/$b" "/tmp/$b" >/dev/null 2>&1 || fail "mkfs.erofs $b"
done
say "blobs: img $(stat -c %s /srv/erofs/img) bytes, c1..c4 and held $(stat -c %s /srv/erofs/c1) bytes each"

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
ondemand_conf
printf 'brun 20%%\nbcull 15%%\nbstop 5%%\n' >>"$conf"
say "config:"; sed 's/^/    /' "$conf"

start_daemon
serves_in fanotify

field() { daemon_field "$1" || echo "?"; }
mnt() { timeout -s KILL 120 "$ctl" -f "$conf" mount "$@"; }
umnt() { "$ctl" -f "$conf" umount "$1"; }

say "1. concurrent readers of one cold blob"
check "cachefilesctl mount img /mnt" mnt img /mnt
echo 3 >/proc/sys/vm/drop_caches
events0=$(field ondemand.fanotify.events)
pids=
j=1
while [ $j -le 10 ]; do
  if [ $j -le 8 ]; then
    (cd /mnt && timeout -s KILL 180 sha256sum -c /tmp/tree.sha >/tmp/conc.$j 2>&1; echo $? >/tmp/conc.$j.rc) &
  else
    (timeout -s KILL 180 sha256sum </mnt/big.bin >/tmp/conc.$j 2>&1; echo $? >/tmp/conc.$j.rc) &
  fi
  pids="$pids $!"
  j=$((j + 1))
done
# Not a bare `wait`: the daemon is a child too.
for p in $pids; do wait "$p"; done
j=1
while [ $j -le 10 ]; do
  if [ $j -le 8 ]; then
    check "reader $j: sha256sum -c over the whole tree passes" test "$(cat /tmp/conc.$j.rc)" = 0
  else
    check "reader $j: big.bin has its sha256" sh -c "test \"\$(cat /tmp/conc.$j.rc)\" = 0 && grep -q '^$big_sum' /tmp/conc.$j"
  fi
  j=$((j + 1))
done
events1=$(field ondemand.fanotify.events)
say "concurrent pass: $((events1 - events0)) events, $(field ondemand.reads) fetches, $(field ondemand.bytes_written) bytes fetched"
check "the readers were served through events" test "$events1" -gt "$events0"
check "no fill failed" test "$(field ondemand.reads_failed)" = 0

say "2. ENOSPC on the cache disk"
check "cachefilesctl mount img2 /mnt2 (img stays mounted: attached blobs are never culled)" mnt img2 /mnt2
check "a small file reads before the disk fills" cmp /mnt2/d/f1 /tmp/tree/d/f1
failed0=$(field ondemand.reads_failed)
dd if=/dev/zero of="$cache/filler" bs=1M 2>/dev/null
dd if=/dev/zero of="$cache/filler2" bs=4096 2>/dev/null
sync
say "free blocks now: $(stat -f -c %f "$cache") (available $(fs_bavail "$cache"))"
no_room() { ! dd if=/dev/zero of="$cache/probe" bs=4096 count=1 conv=fsync 2>/dev/null; }
check "the cache disk is full: a 4 KiB write as root fails" no_room
rm -f "$cache/probe"
big_read_fails() { ! timeout -s KILL 60 cat /mnt2/big.bin >/tmp/big.out 2>/tmp/big.err; }
check "reading big.bin with the disk full fails (no hang)" big_read_fails
say "reader saw: $(cat /tmp/big.err); it got $(stat -c %s /tmp/big.out) bytes before"
check "the failure is an I/O error (EIO)" grep -q 'Input/output error' /tmp/big.err
prefix_ok() { [ ! -s /tmp/big.out ] || cmp -s /tmp/big.out /tmp/tree/big.bin || cmp /tmp/big.out /tmp/tree/big.bin 2>&1 | grep -q EOF; }
check "whatever the reader got is big.bin's own bytes (no zeros)" prefix_ok
failed1=$(field ondemand.reads_failed)
check "the daemon counted failed fills ($failed0 -> $failed1)" test "$failed1" -gt "$failed0"
check "cachefilesd is still running" alive "$daemon_pid"
rm -f "$cache/filler" "$cache/filler2"
sync
say "filler removed: $(fs_bavail "$cache") blocks available"
same_read() { [ "$(timeout -s KILL 60 sha256sum </mnt2/big.bin | cut -d' ' -f1)" = "$big_sum" ]; }
check "the same read on the same mount now gives big.bin's sha256" same_read
check "every file of img2 has its sha256" verify_sums /tmp/tree.sha /mnt2

say "3. culling detached blobs to brun"
check "umount img2" umnt /mnt2
check "umount img" umnt /mnt
for b in c1 c2 c3 c4; do
  check "mount, read and umount $b" sh -c "timeout -s KILL 120 '$ctl' -f '$conf' mount $b /mnt3 && cmp /mnt3/data.bin /tmp/$b/data.bin && '$ctl' -f '$conf' umount /mnt3"
done
check "mount and read held (stays mounted)" sh -c "timeout -s KILL 120 '$ctl' -f '$conf' mount held /mnt && cmp /mnt/data.bin /tmp/held/data.bin"
attached=$(field ondemand.fanotify.attached_blobs.0)
check "only held is attached ($attached)" test "$attached" = "$blobs/held/held"
one_attached() { ! daemon_field ondemand.fanotify.attached_blobs.1 >/dev/null 2>&1; }
check "and nothing else" one_attached
# A known atime order: held (attached) the oldest of all, then img, img2, c1..c4.
order="img img2 c1 c2 c3 c4"
touch -c -a -d '2020-01-01 00:00:00' "$blobs/held/held"
n=1
for b in $order; do
  touch -c -a -d "2020-01-01 00:00:0$n" "$blobs/$b/$b"
  n=$((n + 1))
done
sync
stat -c '    %x %s %n' "$blobs"/*/*
culled0=$(field ondemand.fanotify.culled)
total=$(fs_blocks "$cache")
bsize=$(fs_bsize "$cache")
bcull=$(threshold "$total" 15)
brun=$(threshold "$total" 20)
target=$((bcull - 1048576 / bsize))
fill=$(( $(fs_bavail "$cache") - target ))
check "there is room to fill ($fill blocks to $target)" test "$fill" -gt 0
# The deficit to brun, and how many of the oldest blobs free it (their allocated blocks).
deficit_kib=$(( (brun - target) * bsize / 1024 ))
expect=0
freed=0
for b in $order; do
  [ "$freed" -ge "$deficit_kib" ] && break
  freed=$((freed + $(du -k "$blobs/$b/$b" | cut -f1)))
  expect=$((expect + 1))
done
say "blocks: total $total, bcull $bcull, brun $brun; filling to $target; deficit $deficit_kib KiB: the oldest $expect blobs free $freed KiB"
check "the detached blobs can free the deficit" test "$freed" -ge "$deficit_kib"
dd if=/dev/zero of="$cache/filler" bs="$bsize" count="$fill" 2>/dev/null
sync
say "free space now $(fs_bavail "$cache") blocks (bcull $bcull)"
at_brun() { [ "$(fs_bavail "$cache")" -ge "$brun" ]; }
wait_for 90 "the daemon culls detached blobs back to brun ($brun blocks)" at_brun
sleep 3
gone=0
kept_from=
out_of_order=
n=0
for b in $order; do
  n=$((n + 1))
  if [ -e "$blobs/$b/$b" ]; then
    [ -n "$kept_from" ] || kept_from=$n
  else
    gone=$((gone + 1))
    [ -z "$kept_from" ] || out_of_order="$out_of_order $b"
  fi
done
say "culled $gone of the 6 detached blobs (expected $expect, or one more)"
check "the oldest detached blobs went first (none culled after one kept:${out_of_order:- none})" test -z "$out_of_order"
check "as many as brun needs: $expect <= $gone <= $((expect + 1))" test "$gone" -ge "$expect" -a "$gone" -le $((expect + 1))
check "the attached (and oldest) blob held stays" test -f "$blobs/held/held"
check "held still reads" cmp /mnt/data.bin /tmp/held/data.bin
culled1=$(field ondemand.fanotify.culled)
check "the report counts the culled blobs ($culled0 -> $culled1, $gone files gone)" test $((culled1 - culled0)) -eq "$gone"
rm -f "$cache/filler"
check "umount held" umnt /mnt
check "a culled blob mounts again and reads right (fetched anew)" sh -c "timeout -s KILL 120 '$ctl' -f '$conf' mount img /mnt && (cd /mnt && sha256sum -c /tmp/tree.sha >/dev/null) && '$ctl' -f '$conf' umount /mnt"

show_status "$conf" fanotify
stop_daemon "$daemon_pid"
daemon_pid=
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
