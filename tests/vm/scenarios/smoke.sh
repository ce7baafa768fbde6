#!/bin/sh
# vm-timeout: 180
# vm-smp: 1
# (One CPU: with two, Linux 6.12.117's netfs read collector sometimes hits
#  "netfs: Can't donate prior to front" + "kernel BUG at fs/netfs/read_collect.c:319" while 9p
#  reads are served from the cache - seen in about 1 classic run in 3 here.)
# Harness and kernel check without the daemon: the shell plays cachefilesd by hand on
# /dev/cachefiles (one command per write(); busybox echo writes its whole line at once), binds a
# cache on the ext4 disk, reads the status line, and shows that a 9p cache=fscache mount puts
# objects into it. If this fails, the daemon scenarios cannot mean anything.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

on_fail() {
  echo "--- dmesg tail"; dmesg | tail -n 30
  echo "--- mounts"; cat /proc/mounts
}

check "/dev/cachefiles is a character device" test -c /dev/cachefiles
check "/dev/vda is a block device" test -b /dev/vda
check "mkfs.ext4 on /dev/vda" mkfs.ext4 -q -F -m 0 -b 4096 /dev/vda
mkdir -p "$cache"
check "mount /dev/vda (ext4) at $cache" mount -t ext4 /dev/vda "$cache"

exec 3<>/dev/cachefiles || fail "open /dev/cachefiles"
# A failed redirection on `exec` ends the shell with an error status, hence the outer test.
second_open_fails() { ! sh -c 'exec 5<>/dev/cachefiles' 2>/dev/null; }
check "a second open of /dev/cachefiles is refused (EBUSY)" second_open_fails
# Before bind a read returns nothing.
status=$(dd bs=512 count=1 <&3 2>/dev/null)
check "status read before bind is empty (got '$status')" test -z "$status"
check "unknown command is refused" sh -c '! echo "bogus 1" >&3' 2>/dev/null
check "write 'dir $cache'" sh -c "echo 'dir $cache' >&3"
check "write 'tag smoketag'" sh -c "echo 'tag smoketag' >&3"
# Raising limits: run first, then cull, then stop (the kernel checks each against its neighbours).
check "write 'brun 20%'" sh -c "echo 'brun 20%' >&3"
check "write 'bcull 10%'" sh -c "echo 'bcull 10%' >&3"
check "write 'bstop 3%'" sh -c "echo 'bstop 3%' >&3"
check "an inconsistent limit is refused (bstop 50% > bcull)" sh -c '! echo "bstop 50%" >&3' 2>/dev/null
check "write 'bind'" sh -c "echo bind >&3"
check "kernel logged the registration" sh -c 'dmesg | grep -q "File cache on smoketag registered"'
check "bind created $cache/cache and $cache/graveyard" test -d "$cache/cache" -a -d "$cache/graveyard"

status=$(dd bs=512 count=1 <&3 2>/dev/null)
say "status line: $status"
case "$status" in cull=*) ok=true ;; *) ok=false ;; esac
check "status line starts with cull=" $ok
# Check the thresholds against our own computation from statfs.
blocks=$(fs_blocks "$cache")
want_brun=$(printf '%x' "$(threshold "$blocks" 20)")
check "brun in the status is f_blocks/100*20 = 0x$want_brun" sh -c "echo '$status' | grep -q ' brun=$want_brun '"
case " $status " in *" cull=0 "*) ok=true ;; *) ok=false ;; esac
check "an empty cache does not want culling (cull=0)" $ok

# 9p with cache=fscache against this cache. Objects are linked into the tree only when their
# cookie is committed, i.e. at umount (or LRU expiry), so read, umount, then look.
check "mount 9p tag fscached with cache=fscache" mount_9p
cd /mnt || fail "cd /mnt"
check "20 files read through the cache have the manifest's sha256" \
  sh -c 'head -n 20 SHA256SUMS | sha256sum -c -s'
# Where the kernel will link their objects, by the suite's model of its naming (cachenames.py).
head -n 20 SHA256SUMS | while read -r _ file; do
  ninep_object_path "$file" || echo "none-for-$file"
done >/tmp/expected-objects
cd /
check "umount the 9p mount" umount /mnt
objects=$(find "$cache"/cache/I9p*/@* -type f 2>/dev/null | wc -l)
say "objects in the cache after umount: $objects"
find "$cache/cache" -maxdepth 1
check "at least 20 data objects under cache/I9p*/@xx/" test "$objects" -ge 20
objects_where_expected() {
  _missing=0
  while read -r _path; do
    [ -f "$cache/$_path" ] || { say "    not made by the kernel: $_path"; _missing=1; }
  done </tmp/expected-objects
  [ "$_missing" = 0 ]
}
check "the kernel made the 20 objects at the paths cachenames.py gives (volume, fan-out, name)" \
  objects_where_expected

check "remount and read the same files again" sh -c \
  'mount -t 9p -o trans=virtio,version=9p2000.L,cache=fscache fscached /mnt && cd /mnt && head -n 20 SHA256SUMS | sha256sum -c -s'
grep -i 'RdOps\|Cache' /proc/fs/netfs/stats 2>/dev/null | head -n 8
check "umount again" umount /mnt

exec 3>&-
check "after close the device can be opened again" sh -c 'exec 5<>/dev/cachefiles'
check "umount the cache disk" umount "$cache"
pass
