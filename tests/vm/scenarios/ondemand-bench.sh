#!/bin/sh
# vm-timeout: 900
# vm-smp: 2
# vm-default: no
# vm-mem: 2048M
# vm-disk-size: 1G
# Benchmark: a cold read of every file of a 256 MiB EROFS image through the daemon's on-demand
# mode (local source) against the same image loop-mounted directly, in one boot, alternating
# (loop, daemon) x 3 with the page cache dropped and a fresh cache object before each run.
# Prints the medians and the ratio loop/daemon (issue 17: daemon >= 1.0x loop throughput). Each
# daemon run is followed by a warm run of the same mount (the cache file now complete, no READ):
# what reading through cachefiles costs by itself, the part of the cold run no daemon can remove.
# And, with no daemon, the I/O that any daemon's part includes: the image copied onto the cache
# disk with O_DIRECT writes of 2 MiB (the kernel writes a cache file so) and read back with
# O_DIRECT reads of 128 KiB (as cachefiles reads it for EROFS); then both at once, as a daemon
# filling ahead of its reader would overlap them: the second half of a file written (allocating)
# while the first half of another file is read, and the same in one file (a cache file is one),
# and in one file whose second half was allocated beforehand (fallocate): ext4 takes the inode
# lock exclusively for a direct write that allocates and shared for one that overwrites, and a
# direct read takes it shared, so this tells whether that lock is what keeps a write and a read
# of one file from overlapping.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

mb=${BENCH_MB:-256}

check "mount the ext4 cache disk" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree
# Source tree on tmpfs: 64 files of mb/64 MiB each of random data.
n=0; while [ $n -lt 64 ]; do
  dd if=/dev/urandom of=/tmp/tree/f$n bs=1M count=$((mb / 64)) 2>/dev/null; n=$((n + 1))
done
check "mkfs.erofs a $mb MiB image" sh -c "mkfs.erofs --quiet /srv/erofs/big /tmp/tree >/dev/null 2>&1"
rm -rf /tmp/tree
say "image: $(stat -c %s /srv/erofs/big) bytes"
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n[fetch]\nworkers = 4\nreadahead = %s\n' "${READAHEAD:-2097152}" >"$map"
printf 'dir %s\ntag mycache\nondemand %s\ncontrol none\n' "$cache" "$map" >"$conf"

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
read_all() { find /mnt -type f -exec cat {} + >/dev/null; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

loop_ms='' daemon_ms='' warm_ms='' write_ms='' readback_ms='' two_ms='' one_ms='' prealloc_ms=''
half=$((mb / 4)) # 2 MiB blocks in half the image
# together WRITTEN READ: the second half of the image written into WRITTEN while the first half
# of READ is read in 128 KiB reads; sets together_ms.
together() {
  drop_caches
  _t0=$(now_ms)
  dd if=/srv/erofs/big of="$1" bs=2M skip=$half seek=$half count=$half conv=notrunc oflag=direct 2>/dev/null &
  dd if="$2" of=/dev/null bs=128k count=$((half * 16)) iflag=direct 2>/dev/null || fail "dd read, together"
  wait $! || fail "dd write, together"
  together_ms=$(($(now_ms) - _t0))
}
# first_half FILE: the first half of the image written into the new FILE.
first_half() {
  dd if=/srv/erofs/big of="$1" bs=2M count=$half oflag=direct 2>/dev/null || fail "dd first half of $1"
}
r=1
while [ $r -le 3 ]; do
  drop_caches
  t0=$(now_ms)
  mount -t erofs -o loop,ro /srv/erofs/big /mnt || fail "loop mount"
  read_all; umount /mnt
  t1=$(now_ms); loop_ms="$loop_ms $((t1 - t0))"

  "$ctl" --dir "$cache" invalidate --volume erofs,big --key big >/dev/null 2>&1
  "$daemon" -n -s -f "$conf" >>"$daemon_log" 2>&1 &
  pid=$!
  daemon_pid=$pid
  wait_for 30 "run $r: daemon bound" bound_or_dead
  drop_caches
  t0=$(now_ms)
  timeout -s KILL 300 mount -t erofs none -o fsid=big /mnt || fail "on-demand mount"
  read_all; umount /mnt
  t1=$(now_ms); daemon_ms="$daemon_ms $((t1 - t0))"
  drop_caches
  t0=$(now_ms)
  timeout -s KILL 300 mount -t erofs none -o fsid=big /mnt || fail "on-demand mount, warm"
  read_all; umount /mnt
  t1=$(now_ms); warm_ms="$warm_ms $((t1 - t0))"
  stop_daemon "$pid"
  dmesg -c >/dev/null
  drop_caches
  t0=$(now_ms)
  dd if=/srv/erofs/big of="$cache/copy" bs=2M oflag=direct 2>/dev/null || fail "dd write"
  t1=$(now_ms)
  dd if="$cache/copy" of=/dev/null bs=128k iflag=direct 2>/dev/null || fail "dd read"
  t2=$(now_ms)
  # Two files: copy2 holds the first half; copy3 is new. One file: copy2 gets its second half.
  # Allocated beforehand: copy4 holds the first half, its second half allocated (unwritten).
  first_half "$cache/copy2"
  together "$cache/copy3" "$cache/copy2"; two=$together_ms
  together "$cache/copy2" "$cache/copy2"; one=$together_ms
  rm -f "$cache/copy" "$cache/copy3"
  first_half "$cache/copy4"
  fallocate -o $((half * 2 * 1048576)) -l $((half * 2 * 1048576)) "$cache/copy4" || fail "fallocate copy4"
  together "$cache/copy4" "$cache/copy4"; prealloc=$together_ms
  rm -f "$cache/copy2" "$cache/copy4"
  write_ms="$write_ms $((t1 - t0))" readback_ms="$readback_ms $((t2 - t1))" two_ms="$two_ms $two" one_ms="$one_ms $one"
  prealloc_ms="$prealloc_ms $prealloc"
  say "run $r: loop ${loop_ms##* } ms, daemon ${daemon_ms##* } ms, warm ${warm_ms##* } ms;" \
    "no daemon: O_DIRECT write ${write_ms##* } ms, O_DIRECT read ${readback_ms##* } ms;" \
    "half written while half read: two files ${two_ms##* } ms, one file ${one_ms##* } ms," \
    "one file allocated beforehand ${prealloc_ms##* } ms"
  r=$((r + 1))
done
median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | sed -n 2p; }
# shellcheck disable=SC2086 # the lists are split into their numbers
lm=$(median $loop_ms)
# shellcheck disable=SC2086
dm=$(median $daemon_ms)
# shellcheck disable=SC2086
wm=$(median $warm_ms)
ratio=$(awk -v l="$lm" -v d="$dm" 'BEGIN { printf "%.2f", l / d }')
say "RESULT: $mb MiB cold read: loop mount median $lm ms ($(awk -v m="$mb" -v t="$lm" 'BEGIN{printf "%.0f", m*1000/t}') MiB/s), daemon median $dm ms ($(awk -v m="$mb" -v t="$dm" 'BEGIN{printf "%.0f", m*1000/t}') MiB/s), daemon/loop throughput $ratio"
say "RESULT: warm (complete cache file, no READ) median $wm ms: loop/warm throughput $(awk -v l="$lm" -v w="$wm" 'BEGIN { printf "%.2f", l / w }');" \
  "the daemon's own part of a cold run: $((dm - wm)) ms"
grep -h 'readahead:' "$daemon_log" | tail -n 1 | sed 's/.*on-demand:/on-demand:/' | sed 's/^/    /'
# shellcheck disable=SC2086
say "RESULT: without a daemon: O_DIRECT write of the image onto the cache disk median $(median $write_ms) ms, O_DIRECT read of it median $(median $readback_ms) ms;" \
  "half of it written while half is read: in two files median $(median $two_ms) ms, in one file median $(median $one_ms) ms," \
  "in one file allocated beforehand median $(median $prealloc_ms) ms"
check "measured both ($loop_ms / $daemon_ms)" test -n "$lm" -a -n "$dm"
check "umount the cache disk" umount "$cache"
pass
