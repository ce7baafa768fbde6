#!/bin/sh
# vm-timeout: 300
# vm-smp: 1
# (One CPU: with two, Linux 6.12.117's netfs read collector sometimes hits
#  "netfs: Can't donate prior to front" + "kernel BUG at fs/netfs/read_collect.c:319" while 9p
#  reads are served from the cache - about 1 run in 3 here; the daemon plays no part in reads.)
# The daemon in classic (culling) mode against 9p cache=fscache:
#   1. cachefilesd binds a cache on the ext4 disk (/dev/vda, made by run-vm.sh with -m 0 -b 4096),
#   2. files read through 9p end up as objects under cache/I9p,fscached,/@xx/ (objects are linked
#      only when the cookie is committed: at umount or LRU expiry, so read, umount, look),
#   3. a filler file pushes free space below bcull (but above bstop); reading a few uncached files
#      makes the kernel notice (it checks space only when it allocates or when the daemon reads
#      the status) and raise cull=1; the daemon must then cull until free space >= brun,
#      without touching the object of a file held open on the 9p mount,
#   4. everything re-read afterwards has the right sha256, the graveyard ends empty, and SIGTERM
#      stops the daemon with exit status 0.
# The shell cannot open /dev/cachefiles while the daemon holds it, so all observation goes
# through statfs (stat -f), find and dmesg.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

# Thresholds (percent of f_blocks): the 39 MB of test data is about 16 % of the 256 MiB disk, so
# dropping free space to 6 % (between bstop 3 % and bcull 9 %) forces the daemon to cull about
# 8 % of the disk - roughly half of the cached objects - to get back to brun 14 %.
brun=14 bcull=9 bstop=3 fill_to=6

[ -x "$daemon" ] || fail "no $daemon in the initramfs (build target/release/cachefilesd and rebuild the initramfs)"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- df"; df "$cache" 2>/dev/null
  echo "--- cache tree: $(find "$cache/cache" -type f 2>/dev/null | wc -l) files;" \
    "graveyard: $(find "$cache/graveyard" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) entries"
  find "$cache/cache" -maxdepth 1 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes (no kernel threads)"; show_processes
}

count_objects() { find "$cache"/cache/I9p*/@* -type f 2>/dev/null | wc -l; }
bavail() { fs_bavail "$cache"; }
daemon_alive() { alive "$daemon_pid"; }
graveyard_empty() { [ -z "$(ls -A "$cache/graveyard")" ]; }

mkdir -p "$cache" /etc
check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
blocks=$(fs_blocks "$cache")
bsize=$(fs_bsize "$cache")
brun_blocks=$(threshold "$blocks" $brun)
bcull_blocks=$(threshold "$blocks" $bcull)
bstop_blocks=$(threshold "$blocks" $bstop)
say "cache fs: $blocks blocks of $bsize bytes, $(bavail) available;" \
  "brun=$brun_blocks bcull=$bcull_blocks bstop=$bstop_blocks blocks"

classic_conf $brun $bcull $bstop
say "config:"; sed 's/^/    /' "$conf"

"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
say "started cachefilesd, pid $daemon_pid (log: results/cachefilesd.log)"
wait_for 30 "the daemon bound the cache (dmesg: File cache on mycache registered)" bound_or_dead
check "cachefilesd is running" daemon_alive
# Least privilege: after bind only DAC_OVERRIDE, DAC_READ_SEARCH and FOWNER (bits 1-3) remain,
# in every set including the bounding set.
caps_of() { grep "^$1:" "/proc/$daemon_pid/status" | cut -f2; }
say "daemon capabilities: CapEff $(caps_of CapEff) CapPrm $(caps_of CapPrm) CapBnd $(caps_of CapBnd)"
check "the daemon dropped all capabilities but DAC_OVERRIDE DAC_READ_SEARCH FOWNER" \
  test "$(caps_of CapEff)/$(caps_of CapPrm)/$(caps_of CapBnd)/$(caps_of CapInh)" = 000000000000000e/000000000000000e/000000000000000e/0000000000000000
check "bind created cache/ and graveyard/" test -d "$cache/cache" -a -d "$cache/graveyard"

# Phase 1: populate. The last 6 manifest entries are kept unread for phase 3.
check "mount 9p tag fscached with cache=fscache" mount_9p
cp /mnt/SHA256SUMS /tmp/all.sha
total=$(grep -c . /tmp/all.sha)
head -n $((total - 6)) /tmp/all.sha >/tmp/main.sha
tail -n 6 /tmp/all.sha >/tmp/trigger.sha
main=$((total - 6))
check "first read of $main files: sha256 matches the host manifest" verify_sums /tmp/main.sha
check "umount 9p (commits the objects)" umount /mnt
objects_before=$(count_objects)
say "objects in cache: $objects_before; available blocks: $(bavail)"
check "the volume directory cache/I9p,fscached, exists" test -d "$cache/cache/I9p,fscached,"
check "at least 90% of the $main files have an object under cache/I9p*/@xx/" \
  test "$objects_before" -ge $((main * 9 / 10))

# Phase 2: read back from the cache.
check "remount 9p" mount_9p
check "second read (from the cache): sha256 matches" verify_sums /tmp/main.sha
grep -E '^(Netfs|CacheRd|RdHelp|Cache)' /proc/fs/netfs/stats 2>/dev/null | sed 's/^/    /'
check "umount 9p" umount /mnt

# Phase 3: culling. Hold one file open on a fresh mount; its object must survive.
check "remount 9p" mount_9p
held=d0/f020.bin
held_path=$(ninep_object_path "/mnt/$held") ||
  fail "no object name for /mnt/$held (inode $(stat -c %i "/mnt/$held")) in $object_names"
held_obj=$cache/$held_path
exec 4<"/mnt/$held"
say "holding /mnt/$held open (object $held_path)"
check "the held file's object is where the kernel's naming puts it, before culling" test -f "$held_obj"

avail=$(bavail)
target=$(threshold "$blocks" $fill_to)
[ "$avail" -gt "$target" ] || fail "free space ($avail blocks) already below the fill target ($target)"
check "fill the cache disk to $fill_to% free ($(( (avail - target) * bsize / 1048576 )) MiB filler)" \
  fallocate -l $(( (avail - target) * bsize )) "$cache/filler"
avail=$(bavail)
say "available blocks now $avail (bstop $bstop_blocks < avail < bcull $bcull_blocks expected)"
check "free space is below bcull and above bstop" test "$avail" -lt "$bcull_blocks" -a "$avail" -gt "$bstop_blocks"
# New objects make the kernel check the space, set cull=1 and wake the daemon.
check "read $(grep -c . /tmp/trigger.sha) uncached files (kernel notices low space)" verify_sums /tmp/trigger.sha
wait_for 120 "the daemon culls until free space >= brun ($brun_blocks blocks)" \
  sh -c "[ \$(stat -f -c %a $cache) -ge $brun_blocks ]"
objects_after=$(count_objects)
say "objects in cache: $objects_before -> $objects_after; available blocks: $(bavail)"
check "some objects were culled" test "$objects_after" -lt "$objects_before"
[ "$objects_after" -gt 0 ] || say "note: the daemon culled every object (more than needed)"
check "cachefilesd is still running after culling" daemon_alive
check "the object of the file held open survived" test -f "$held_obj"
want=$(grep " \./$held\$" /tmp/all.sha | cut -d' ' -f1)
got=$(sha256sum <&4 | cut -d' ' -f1)
check "the held file reads correctly through its open descriptor" test "$got" = "$want"
exec 4<&-
check "umount 9p" umount /mnt

# Phase 4: everything again (culled files come from the server and are cached anew; the daemon
# may cull concurrently).
check "remount 9p" mount_9p
check "re-read all $total files after culling: sha256 matches" verify_sums /tmp/all.sha
check "umount 9p" umount /mnt
check "cachefilesd is still running" daemon_alive
# The re-read cached the culled files again and pushed free space below bcull once more; every
# write that does so raises the kernel's cull flag (which only clears at brun), so a working
# daemon brings free space back to brun again.
wait_for 120 "free space back at brun ($brun_blocks blocks) after the re-read" \
  sh -c "[ \$(stat -f -c %a $cache) -ge $brun_blocks ]"
wait_for 60 "the graveyard ends empty" graveyard_empty
say "final: $(count_objects) objects, $(bavail) blocks available"

# Stop: SIGTERM must end the daemon with status 0 (stop_daemon SIGKILLs it after 30 s).
# The operator's view: the daemon's own status over its control socket.
show_status "$conf" classic
stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
daemon_pid=
check "the device is free again after the daemon exited" sh -c 'exec 5<>/dev/cachefiles'
check "umount the cache disk" umount "$cache"
pass
