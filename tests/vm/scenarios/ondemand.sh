#!/bin/sh
# vm-timeout: 300
# vm-object: erofs,testblob str:testblob
# vm-object: erofs,dom1 str:testblob
# vm-object: erofs,dom1 str:second
# The daemon in on-demand mode serving EROFS over fscache.
#   1. build a tree of 500+ files (mixed sizes, empty files, one file of 32 MiB + a bit) in /tmp
#      with deterministic content, and mkfs.erofs it into /srv/erofs/testblob,
#   2. cachefilesd with `ondemand /etc/cachefilesd/ondemand.toml` (source map: any domain, any
#      fsid -> /srv/erofs/{fsid}) binds the cache on /dev/vda,
#   3. `mount -t erofs none -o fsid=testblob` must show every file with its sha256, also after
#      umount + mount (then mostly served from the cache file); an unknown fsid must fail to
#      mount; EROFS is unmounted before the daemon is stopped (closing the device withdraws the
#      cache), and SIGTERM must end the daemon with status 0.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

tree=/tmp/tree
blob=/srv/erofs/testblob

[ -x "$daemon" ] || fail "no $daemon in the initramfs (build target/release/cachefilesd and rebuild the initramfs)"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- cache tree"; find "$cache/cache" -type f 2>/dev/null | head -n 20
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes (no kernel threads)"; show_processes
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
ondemand_conf
say "config:"; sed 's/^/    /' "$conf"; sed 's/^/    /' "$map"

"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
say "started cachefilesd, pid $daemon_pid (log: results/cachefilesd.log)"
wait_for 30 "the daemon bound the cache (dmesg: File cache on mycache registered)" bound_or_dead
check "cachefilesd is running" alive "$daemon_pid"

same_file_count() { [ "$(find /mnt -type f | wc -l)" -eq "$files" ]; }

check "mount -t erofs none -o fsid=testblob /mnt" erofs_mount testblob
check "the mount shows all $files files" same_file_count
check "first read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt
backing_path=$(object_path erofs,testblob str:testblob) || fail "no erofs,testblob in $object_names"
backing=$cache/$backing_path
check "the kernel made the backing file at $backing_path (cachenames.py)" test -f "$backing"
say "backing file: $backing, $(du -k "$backing" | cut -f1) KiB allocated"

# READ requests received so far, from the daemon's report over its control socket.
reads_before=$(daemon_field ondemand.reads) || fail "the daemon's status has no ondemand.reads"
say "READ requests so far: $reads_before"
check "reads were served on the first pass" test "${reads_before:-0}" -gt 0
check "mount again" erofs_mount testblob
check "second read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt
reads_after=$(daemon_field ondemand.reads) || fail "the daemon's status has no ondemand.reads"
check "the second pass was served from the cache: 0 READ requests (before $reads_before, after $reads_after)" test "$reads_after" = "$reads_before"

# Two images in one shared domain: both mounted at once, one volume cache/Ierofs,dom1.
cp "$blob" /srv/erofs/second
mkdir -p /mnt2
check "mount -o domain_id=dom1,fsid=testblob /mnt" timeout -s KILL 120 mount -t erofs none -o domain_id=dom1,fsid=testblob /mnt
check "mount -o domain_id=dom1,fsid=second /mnt2" timeout -s KILL 120 mount -t erofs none -o domain_id=dom1,fsid=second /mnt2
check "domain dom1, fsid testblob: every file has the source's sha256" verify_sums /tmp/tree.sha
check "domain dom1, fsid second: every file has the source's sha256" verify_sums /tmp/tree.sha /mnt2
check "umount /mnt" umount /mnt
check "umount /mnt2" umount /mnt2
# Objects are linked into the tree when the cookie is committed, i.e. at umount.
dom1_testblob=$(object_path erofs,dom1 str:testblob) || fail "no erofs,dom1 testblob in $object_names"
dom1_second=$(object_path erofs,dom1 str:second) || fail "no erofs,dom1 second in $object_names"
check "both objects live in one volume: $dom1_testblob and $dom1_second" \
  test -f "$cache/$dom1_testblob" -a -f "$cache/$dom1_second"

# A source that shrinks while served: the reads past its new end fail with EIO, quickly, and
# the daemon goes on serving.
cp "$blob" /srv/erofs/vanishing
check "mount -o fsid=vanishing" erofs_mount vanishing
small=$(find /mnt -type f -size -8k | head -n 1)
check "a small file reads before the source shrinks" cat "$small" >/dev/null
truncate -s 8192 /srv/erofs/vanishing
big_read_fails() { ! timeout -s KILL 60 cat /mnt/big.bin >/dev/null 2>/tmp/big.err; }
check "reading big.bin after the source shrank fails (no hang)" big_read_fails
say "reader saw: $(cat /tmp/big.err)"
check "the failure is an I/O error (EIO)" grep -q 'Input/output error' /tmp/big.err
check "umount after the failed read" umount /mnt
check "cachefilesd is still running after the failed source" alive "$daemon_pid"
check "mount testblob again: still served" erofs_mount testblob
check "third read: every file has the source's sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt

no_such_blob_fails() { ! erofs_mount nosuchblob 2>/dev/null; }
check "mounting an unknown fsid (nosuchblob) fails" no_such_blob_fails
grep -q ' /mnt ' /proc/mounts && umount /mnt
check "cachefilesd is still running" alive "$daemon_pid"

# The operator's view: the daemon's own status over its control socket.
show_status "$conf" on-demand
stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
