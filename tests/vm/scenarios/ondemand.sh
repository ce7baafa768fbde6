#!/bin/sh
# vm-timeout: 300
# The daemon in on-demand mode serving EROFS over fscache.
#   1. build a tree of 500+ files (mixed sizes, empty files, one file of 32 MiB + a bit) in /tmp
#      with deterministic content, and mkfs.erofs it into /srv/erofs/testblob,
#   2. cachefilesd with `ondemand /etc/cachefilesd/ondemand.toml` (source map: any domain, any
#      fsid -> /srv/erofs/{fsid}) binds the cache on /dev/vda,
#   3. `mount -t erofs none -o fsid=testblob` must show every file with its sha256, also after
#      umount + mount (then mostly served from the cache file); an unknown fsid must fail to
#      mount; EROFS is unmounted before the daemon is stopped (closing the device withdraws the
#      cache), and SIGTERM must end the daemon with status 0.
. /scenarios/lib/common.sh

cache=/var/cache/fscache
conf=/etc/cachefilesd.conf
map=/etc/cachefilesd/ondemand.toml
daemon_log=/results/cachefilesd.log
daemon=/usr/sbin/cachefilesd
tree=/tmp/tree
blob=/srv/erofs/testblob
daemon_pid=

[ -x "$daemon" ] || fail "no $daemon in the initramfs (build target/release/cachefilesd and rebuild the initramfs)"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- cache tree"; find "$cache/cache" -type f 2>/dev/null | head -n 20
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes (no kernel threads)"; ps | grep -v ' \['
}


# Deterministic content, cheap enough for TCG (busybox has no `seq -f`, and printf-per-line
# generators take minutes for 32 MiB under emulation):
#   /tmp/U = `seq -w 0 299999` (7-byte lines "000123\n", 2.1 MB, every line distinct),
#   small file i = U from offset (i * 7919 * 13) mod 1 MiB, cut to its size (distinct slices),
#   big.bin = 32 x the first MiB of U, MiB k passed through its own `tr` mapping of the digits
#   and the newline (so no 4 KiB page repeats anywhere in the file), plus 12345 bytes of U
#   from beyond its first MiB.
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
    size=0                                         # 13 empty files
  elif [ $((i % 50)) -eq 3 ]; then
    size=$((262144 + (i * 40503) % 786432))        # a few of 256 KiB..1 MiB
  else
    size=$(( (i * 2654435761) % 65536 + 1 ))       # most of 1 B..64 KiB
  fi
  make_file "$dir/f$i" "$size" "$i"
  i=$((i + 1))
done
k=0
while [ $k -lt 32 ]; do
  # 10 digit rotations x 4 newline replacements: a different mapping for every MiB.
  r=$((k % 10))
  rot=$(echo 01234567890123456789 | cut -c $((r + 1))-$((r + 10)))
  case $((k / 10)) in 0) nl='\n' ;; 1) nl=':' ;; 2) nl=';' ;; *) nl='#' ;; esac
  tr "0123456789\n" "$rot$nl" </tmp/U1
  k=$((k + 1))
done >"$tree/big.bin"
tail -c +1048577 /tmp/U | head -c 12345 >>"$tree/big.bin"   # past U1: no repeated page
(cd "$tree" && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
files=$(grep -c . /tmp/tree.sha)
say "tree: $files files, $(du -sk "$tree" | cut -f1) KiB"
check "the source tree has at least 500 files" test "$files" -ge 500

mkdir -p /srv/erofs /etc/cachefilesd "$cache"
check "mkfs.erofs $blob" sh -c "mkfs.erofs --quiet '$blob' '$tree' >/tmp/mkfs.log 2>&1 || { cat /tmp/mkfs.log; false; }"
say "blob: $(stat -c %s "$blob") bytes"

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
cat >"$map" <<'EOF'
[[source]]
domain = "*"
fsid = "*"
path = "/srv/erofs/{fsid}"
EOF
cat >"$conf" <<EOF
dir $cache
tag mycache
ondemand $map
EOF
say "config:"; sed 's/^/    /' "$conf"; sed 's/^/    /' "$map"

"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
say "started cachefilesd, pid $daemon_pid (log: results/cachefilesd.log)"
wait_for 30 "the daemon bound the cache (dmesg: File cache on mycache registered)" bound_or_dead
check "cachefilesd is running" alive "$daemon_pid"

# A mount waits for the daemon's answers; the waits are killable, so bound them.
erofs_mount() { timeout -s KILL 120 mount -t erofs none -o "fsid=$1" /mnt; }
verify() {
  (cd /mnt && sha256sum -c /tmp/tree.sha) >/tmp/verify.out 2>&1
  _rc=$?
  grep -v ': OK$' /tmp/verify.out | head -n 10
  return $_rc
}
same_file_count() { [ "$(find /mnt -type f | wc -l)" -eq "$files" ]; }

check "mount -t erofs none -o fsid=testblob /mnt" erofs_mount testblob
check "the mount shows all $files files" same_file_count
check "first read: every file has the source's sha256" verify
check "umount" umount /mnt
backing=$(find "$cache/cache/Ierofs,testblob" -name Dtestblob -type f 2>/dev/null | head -n 1)
check "backing file cache/Ierofs,testblob/@xx/Dtestblob exists" test -n "$backing"
say "backing file: $backing, $(du -k "$backing" | cut -f1) KiB allocated"

check "mount again" erofs_mount testblob
check "second read: every file has the source's sha256" verify
check "umount" umount /mnt

no_such_blob_fails() { ! erofs_mount nosuchblob 2>/dev/null; }
check "mounting an unknown fsid (nosuchblob) fails" no_such_blob_fails
grep -q ' /mnt ' /proc/mounts && umount /mnt
check "cachefilesd is still running" alive "$daemon_pid"

stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
