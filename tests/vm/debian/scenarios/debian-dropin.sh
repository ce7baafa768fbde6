#!/bin/sh
# vm-kind: debian
# vm-timeout: 1800
# vm-smp: 1
# (One CPU: see "Known kernel trouble" in tests/vm/README.md; netfs reads from the cache.)
# Issue 14: cachefilesd-rs as an administrator meets it - Debian bookworm, systemd as PID 1,
# dpkg over Debian's C cachefilesd, an NFS v4.2 mount with -o fsc over loopback. Run by
# tests/vm/debian/runner.sh in phases, one per boot (PHASE is $1); the cache disk is /dev/vdb.
#   1. install the C package and configure it as an admin would (RUN=yes, changed limits, an
#      appended duplicate line, a Latin-1 comment), start it; `dpkg -i` ours with stdin closed:
#      no prompt, our binary, dpkg -V clean, the admin's files and limits kept and in force;
#      export /srv/nfs over NFS, an fstab line with fsc; reboot.
#   2. after the reboot: the unit was active (cache bound) before the NFS mount; reads create
#      cache objects, a second read comes from the cache; filled past bcull it culls back to
#      brun in LRU order (objects of files used just before survive, every object culled is
#      older than every one kept); an edited brun is in force after `systemctl restart`;
#      SIGKILL and a watchdog timeout end in a restart with the cache kept (fd store);
#      `journalctl -p warning` hides info lines; `dir /srv/fscache` works with no
#      hand-written drop-in (a rebind, logged); RUN=no in /etc/default/cachefilesd keeps the
#      daemon from starting, DAEMON_OPTS="-N" reaches it; an `ondemand` source map naming the
#      guest's own docker-registry gets the unit the network from the generator alone (none
#      with the classic config), an EROFS image from it mounts with every file's sha256 right
#      and a second mount fetches nothing; the classic config back, NFS is cached again;
#      `systemctl stop` exits 0 and unbinds; purge, then reinstalling Debian's cachefilesd
#      works.
# shellcheck source=SCRIPTDIR/../lib.sh
. /vmtest/lib.sh
phase=${1:-1}
export DEBIAN_FRONTEND=noninteractive
conf=/etc/cachefilesd.conf
cache=/var/cache/fscache
mnt=/mnt/nfs
on_fail() {
  say "--- systemctl status cachefilesd"
  systemctl status --no-pager -l cachefilesd 2>&1 | tail -n 25
  say "--- journal of cachefilesd (tail)"
  journalctl --no-pager -b -u cachefilesd 2>&1 | tail -n 30
  say "--- dmesg (tail)"
  dmesg | tail -n 20
  if systemctl -q is-active docker-registry; then
    say "--- journal of docker-registry (tail)"
    journalctl --no-pager -b -u docker-registry -o cat 2>&1 | tail -n 10
  fi
}
# netfs_stat KEY: one counter of /proc/fs/netfs/stats (with fscache's lines), e.g. RD (reads
# from the cache, CaRdOps) or DL (downloads from the server, DownOps).
netfs_stat() { tr ' ' '\n' </proc/fs/netfs/stats | sed -n "s/^$1=//p" | head -n 1; }
# field NAME: one field of `cachefilesctl status --json` (flat text match: enough for the
# scalar and array fields used here).
field() {
  cachefilesctl status --json 2>/dev/null | tr -d ' \n' | sed -n "s/.*\"$1\":\(\[[^]]*\]\|\"[^\"]*\"\|[^,}]*\).*/\1/p"
}
main_pid() { systemctl show -P MainPID cachefilesd; }
active() { [ "$(systemctl is-active cachefilesd)" = active ]; }
# read_all: reads every exported file through the mount and checks its sha256.
read_all() { (cd "$mnt" && sha256sum --quiet -c /srv/SHA256SUMS); }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
objects() { find "$cache/cache" -type f 2>/dev/null | wc -l; }
# free_pct: free blocks of the cache filesystem in percent (what the kernel compares with
# brun/bcull/bstop; the disk has no root reserve).
free_pct() { df -P "$cache" | awk 'NR == 2 { printf "%d", 100 * $4 / $2 }'; }
# cache_bound: the kernel lists an active cache (state A) in /proc/fs/fscache/caches.
cache_bound() { awk 'NR > 2 && $6 == "A" { f = 1 } END { exit !f }' /proc/fs/fscache/caches; }
# cookies_idle: no fscache cookie holds a cache object or has I/O on it: every cookie in
# /proc/fs/netfs/cookies is quiescent (-), failed (F) or dropped (D), none looking up,
# creating, active (the object is open), invalidating or being withdrawn. A cookie is
# withdrawn only once its I/O is done, so the cache's writes have landed then too.
cookies_idle() { awk 'NR > 2 && $6 !~ /^[-FD]$/ { f = 1 } END { exit f }' /proc/fs/netfs/cookies; }
# between LOW N HIGH: LOW <= N <= HIGH (integers).
between() { [ "$2" -ge "$1" ] && [ "$2" -le "$3" ]; }
free_at_least() { [ "$(free_pct)" -ge "$1" ]; }
# read_hot: the culling step's hot set, files first read right after the f files and used
# again just before the pressure.
read_hot() { (cd "$mnt" && cat g4 g5 g6 g7 >/dev/null); }

if [ "$phase" = 1 ]; then
  say "phase 1: the C daemon, then ours over it"
  # The test kernel has cachefiles, nfs and nfsd built in and no modules; Debian's init scripts
  # call modprobe, which wants to find them listed as built in (a distribution kernel has them
  # as modules).
  kdir=/lib/modules/$(uname -r)
  mkdir -p "$kdir"
  printf 'kernel/fs/%s.ko\n' cachefiles/cachefiles fscache/fscache nfs/nfs nfs/nfsv4 nfsd/nfsd \
    lockd/lockd >"$kdir/modules.builtin"
  echo kernel/net/sunrpc/sunrpc.ko >>"$kdir/modules.builtin"
  depmod 2>/dev/null # no modules.order: there are no modules
  check "modprobe cachefiles finds it built in" modprobe cachefiles
  mkfs_label=$(blkid -s LABEL -o value /dev/vdb)
  check "the cache disk is /dev/vdb" same "$mkfs_label" fscache
  echo "LABEL=fscache $cache ext4 defaults 0 0" >>/etc/fstab
  mkdir -p "$cache"
  mount "$cache"
  c_deb=$(ls /root/debs/cachefilesd_*.deb)
  check "Debian's cachefilesd installs" sh -c "dpkg -i $c_deb >/tmp/c-install.log 2>&1"
  sed -i 's/^#RUN=yes/RUN=yes/' /etc/default/cachefilesd
  # Debian's init script looks for the pidfile as soon as the forking daemon's parent exits,
  # before the child has written it: on this slow one-vCPU guest it then says "failed!" (and
  # dpkg fails) for a daemon that did start. STARTTIME, read from this file, is the script's
  # own wait for that; our unit ignores it.
  echo STARTTIME=5 >>/etc/default/cachefilesd
  sed -i 's/^brun .*/brun 15%/' "$conf"
  echo "bcull 8%" >>"$conf"
  printf '# Ge\344ndert vom Admin (Latin-1)\n' >>"$conf"
  check "the admin's RUN=yes is set" grep -qx RUN=yes /etc/default/cachefilesd
  systemctl daemon-reload
  # restart: the postinst's start (with RUN unset) left the generated unit "active (exited)".
  check "the C daemon starts (sysv init script through systemd)" systemctl restart cachefilesd
  wait_for 20 "the C daemon bound the cache" sh -c "dmesg | grep -q 'CacheFiles: File cache on'"
  c_pid=$(pgrep -x cachefilesd || true)
  say "C daemon pid $c_pid: $(readlink "/proc/$c_pid/exe" 2>/dev/null)"
  md5sum "$conf" /etc/default/cachefilesd >/var/lib/vmtest/admin.md5

  say "dpkg -i cachefilesd-rs with stdin closed"
  if ! dpkg -i /vmtest/cachefilesd-rs.deb </dev/null >/tmp/rs-install.log 2>&1; then
    sed 's/^/    /' /tmp/rs-install.log
    fail "dpkg -i cachefilesd-rs failed"
  fi
  sed 's/^/    dpkg: /' /tmp/rs-install.log
  say "ok: dpkg -i succeeded"
  check "no conffile question" same "$(grep -c 'Configuration file' /tmp/rs-install.log)" 0
  check "/usr/sbin/cachefilesd -v is ours" sh -c '/usr/sbin/cachefilesd -v | grep -q cachefilesd-rs'
  check "dpkg -V cachefilesd-rs is clean" same "$(dpkg -V cachefilesd-rs 2>&1)" ""
  check "the admin's config and defaults are untouched" md5sum --quiet -c /var/lib/vmtest/admin.md5
  wait_for 30 "the unit is active after the switch" active
  check "its main process is ours" same "$(readlink "/proc/$(main_pid)/exe")" /usr/sbin/cachefilesd
  wait_for 20 "the daemon answers on its control socket" sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "the admin's limits are in force (brun 15, bcull 8 - the appended line wins -, bstop 3)" \
    same "$(field blocks_limits_percent)" "[15,8,3]"
  check "the cache is bound in the kernel (state A in /proc/fs/fscache/caches)" cache_bound
  say "kernel caches: $(tr '\n' ' ' </proc/fs/fscache/caches)"

  say "NFS export over loopback"
  mkdir -p /srv/nfs "$mnt"
  # 48 files of 1 MiB: about 19 % of the 256 MiB cache disk.
  i=0
  while [ $i -lt 48 ]; do
    head -c 1048576 /dev/urandom >/srv/nfs/f$i
    i=$((i + 1))
  done
  (cd /srv/nfs && sha256sum f*) >/srv/SHA256SUMS
  # Read only once the cache is nearly full: new data makes the kernel check the free space.
  for i in 0 1 2 3 4 5 6 7; do
    head -c 1048576 /dev/urandom >/srv/nfs/g$i
  done
  echo '/srv/nfs 127.0.0.1(ro,no_subtree_check,no_root_squash)' >/etc/exports
  systemctl enable nfs-server >/dev/null 2>&1
  check "nfs-server (re)starts" systemctl restart nfs-server
  echo "127.0.0.1:/srv/nfs $mnt nfs4 ro,vers=4.2,fsc,_netdev,x-systemd.requires=nfs-server.service 0 0" >>/etc/fstab
  systemctl daemon-reload
  next_phase
fi

if [ "$phase" = 2 ]; then
  say "phase 2: after the reboot"
  wait_for 60 "the unit is active" active
  check "/mnt/nfs is mounted with fsc" sh -c "grep ' $mnt nfs4 ' /proc/mounts | grep -q fsc"
  t_unit=$(systemctl show -P ActiveEnterTimestampMonotonic cachefilesd)
  t_mount=$(systemctl show -P ActiveEnterTimestampMonotonic mnt-nfs.mount)
  say "cachefilesd active at ${t_unit}us, mnt-nfs.mount at ${t_mount}us (monotonic)"
  check "the cache was bound (unit active, READY=1) before the NFS mount" between 1 "$t_unit" "$((t_mount - 1))"
  check "the admin's limits are in force after the reboot" same "$(field blocks_limits_percent)" "[15,8,3]"

  rd0=$(netfs_stat RD) dl0=$(netfs_stat DL)
  check "first read of 48 NFS files, sha256 correct" read_all
  # The culling step's hot set, read once now: their objects are then older than those of the
  # f files (read again below), so LRU culls them first unless they are used again.
  read_hot
  drop_caches
  # The kernel writes cache objects in the background and links them on commit.
  wait_for 60 "the reads created cache objects" sh -c "[ \$(find $cache/cache -type f | wc -l) -ge 52 ]"
  say "cachefilesctl ls: $(cachefilesctl ls 2>&1 | wc -l) lines; $(objects) object files"
  sleep 2
  drop_caches
  rd1=$(netfs_stat RD) dl1=$(netfs_stat DL)
  check "second read, sha256 correct" read_all
  rd2=$(netfs_stat RD) dl2=$(netfs_stat DL)
  say "netfs: cache reads $rd0 -> $rd1 -> $rd2, server downloads $dl0 -> $dl1 -> $dl2"
  check "the second read came from the cache (cache reads grew)" [ "$rd2" -gt "$rd1" ]
  check "... and nothing was downloaded from the server" same "$dl2" "$dl1"

  say "culling: fill the cache disk past bcull; the least recently used objects go"
  # The hot files are used again just before the pressure: their objects must be the newest
  # and survive, and every object culled must be older (atime) than every object kept, but for
  # objects the kernel holds. Nothing may hold an object while the atimes are taken: the NFS
  # inodes are dropped (and fscache withdraws an unused cookie's object within about 10 s).
  # (A re-read moves the atime under the default relatime only because these objects were
  # used once before: relatime skips the update once atime is past mtime and ctime.)
  drop_caches
  wait_for 60 "no cache object is held by a cookie" cookies_idle
  atimes "$cache/cache" /var/lib/vmtest/atimes-0
  read_hot
  drop_caches
  wait_for 60 "no cache object is held by a cookie after the re-read" cookies_idle
  atimes "$cache/cache" /var/lib/vmtest/atimes-1
  # The hot objects: those whose atime the re-read moved (old and new atime, then the object).
  awk 'FNR == NR { t0[substr($0, length($1) + 2)] = $1; next }
    { k = substr($0, length($1) + 2); if ((k in t0) && t0[k] != $1) print t0[k], $0 }' \
    /var/lib/vmtest/atimes-0 /var/lib/vmtest/atimes-1 >/var/lib/vmtest/hot
  sed 's/^/    hot: /' /var/lib/vmtest/hot
  check "the re-read of the 4 hot files moved the atimes of 4 objects" \
    same "$(grep -c . /var/lib/vmtest/hot)" 4
  check "... and they are now the 4 newest" \
    same "$(tail -n 4 /var/lib/vmtest/atimes-1 | sort)" "$(cut -d' ' -f2- /var/lib/vmtest/hot | sort)"
  in_use0=$(field skipped_in_use) changed0=$(field skipped_changed) culled0=$(field culled)
  before=$(objects)
  avail_kb=$(df -P "$cache" | awk 'NR == 2 { print $4 }')
  total_kb=$(df -P "$cache" | awk 'NR == 2 { print $2 }')
  # Leave 5 % free: below bcull (8 %), above bstop (3 %).
  fill_kb=$((avail_kb - total_kb * 5 / 100))
  # The daemon reads statfs every second and culls by itself: it is held (SIGSTOP, well within
  # its watchdog) until the free space the filler left is measured.
  kill -STOP "$(main_pid)"
  fallocate -l "${fill_kb}KiB" "$cache/filler"
  free_now=$(free_pct)
  kill -CONT "$(main_pid)"
  say "free after the filler: $free_now%"
  check "free space is between bstop (3%) and bcull (8%)" between 3 "$free_now" 7
  # The kernel checks the space when it allocates: new data read through NFS wakes culling.
  (cd "$mnt" && cat g0 g1 g2 g3 >/dev/null)
  wait_for 60 "the daemon culled back to brun 15%" free_at_least 15
  find "$cache/cache" -type f -printf '%i %P\n' >/var/lib/vmtest/left
  in_use=$(( $(field skipped_in_use) - in_use0 )) changed=$(( $(field skipped_changed) - changed0 ))
  say "objects $before -> $(objects), culled $(( $(field culled) - culled0 )); skipped: $in_use in use, $changed changed"
  hot_kept() {
    cut -d' ' -f3- /var/lib/vmtest/hot | while read -r obj; do
      grep -qxF "$obj" /var/lib/vmtest/left || { say "  culled: hot object $obj"; return 1; }
    done
  }
  check "every hot object survived" hot_kept
  check "LRU kept: every object culled was older than every object kept (but those in use)" \
    lru_verdict /var/lib/vmtest/atimes-1 /var/lib/vmtest/left "$in_use"
  # Without the re-read, the hot objects were the oldest: LRU would have taken them first.
  newest_culled=$(awk 'FNR == NR { left[$0] = 1; next }
    !(substr($0, length($1) + 2) in left) { print $1 }' /var/lib/vmtest/left /var/lib/vmtest/atimes-1 | sort | tail -n 1)
  hot_were_older() {
    awk -v n="t$newest_culled" '"t" $1 >= n { print "    not older: " $0; bad = 1 } END { exit bad }' \
      /var/lib/vmtest/hot
  }
  check "before the re-read every hot object was older than the newest object culled ($newest_culled)" \
    hot_were_older
  rm -f "$cache/filler"

  say "restart with an edited brun and bcull (both bcull lines: the appended one wins)"
  sed -i 's/^brun .*/brun 20%/; s/^bcull .*/bcull 12%/' "$conf"
  pid=$(main_pid)
  check "systemctl restart succeeds" systemctl restart cachefilesd
  wait_for 20 "the control socket answers" sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "the daemon took the bound cache over (no rebind for limits)" \
    sh -c "journalctl -b -u cachefilesd _PID=$(main_pid) --no-pager | grep -q 'taking over the bound cache'"
  check "the edited limits are the daemon's" same "$(field blocks_limits_percent)" "[20,12,3]"
  check "no cache withdrawal in dmesg" sh -c "! dmesg | grep -qi withdraw"
  say "main pid $pid -> $(main_pid)"
  # The kernel counted bcull 8% at bind and does not ask below 12%; the edited limits must
  # still be in force: the daemon culls from 10% free up to the edited brun of 20%.
  drop_caches
  check "reads refill the cache, sha256 correct" read_all
  # The refill's data reaches the cache disk in the background (about 27 MiB of objects culled
  # above are written again): the free space is measured once that is done.
  drop_caches
  wait_for 60 "the refill is written (no busy cookie)" cookies_idle
  sync
  avail_kb=$(df -P "$cache" | awk 'NR == 2 { print $4 }')
  total_kb=$(df -P "$cache" | awk 'NR == 2 { print $2 }')
  kill -STOP "$(main_pid)"
  fallocate -l "$((avail_kb - total_kb * 10 / 100))KiB" "$cache/filler"
  free_now=$(free_pct)
  kill -CONT "$(main_pid)"
  say "free after the filler: $free_now%, objects $(objects)"
  check "free space is between the bound bcull (8%) and the edited one (12%)" between 8 "$free_now" 11
  wait_for 90 "the daemon culled back to the edited brun 20%" free_at_least 20
  say "objects now $(objects), culled $(field culled)"
  rm -f "$cache/filler"

  say "SIGKILL: systemd restarts the daemon, the cache stays"
  pid=$(main_pid)
  systemctl kill -s KILL cachefilesd
  wait_for 60 "a new main process" sh -c "[ \"\$(systemctl show -P MainPID cachefilesd)\" != $pid ] && [ \"\$(systemctl show -P MainPID cachefilesd)\" != 0 ] && systemctl is-active -q cachefilesd"
  check "the fd came back from the store (\"taking over the bound cache\" in the journal)" \
    sh -c "journalctl -b -u cachefilesd _PID=$(main_pid) --no-pager | grep -q 'taking over the bound cache'"
  drop_caches
  rd1=$(netfs_stat RD)
  check "reads after the restart, sha256 correct" read_all
  check "... still served from the cache" [ "$(netfs_stat RD)" -gt "$rd1" ]
  check "the fd was not stored twice (no \"Cannot store more fds\" from systemd)" \
    sh -c "! journalctl -b --no-pager | grep -q 'Cannot store more fds'"

  say "watchdog: WatchdogSec=5s and a stopped main process"
  mkdir -p /etc/systemd/system/cachefilesd.service.d
  printf '[Service]\nWatchdogSec=5s\nTimeoutAbortSec=10s\n' >/etc/systemd/system/cachefilesd.service.d/watchdog.conf
  systemctl daemon-reload
  systemctl restart cachefilesd
  wait_for 20 "active with the watchdog" active
  n0=$(systemctl show -P NRestarts cachefilesd)
  pid=$(main_pid)
  kill -STOP "$pid"
  wait_for 60 "the watchdog restarted it" sh -c "[ \$(systemctl show -P NRestarts cachefilesd) -gt $n0 ] && systemctl is-active -q cachefilesd"
  check "the journal names the watchdog" sh -c "journalctl -b -u cachefilesd --no-pager | grep -qi watchdog"
  rm /etc/systemd/system/cachefilesd.service.d/watchdog.conf
  systemctl daemon-reload

  say "journal priorities"
  warn=$(journalctl -b -u cachefilesd -p warning --no-pager -o cat 2>/dev/null | grep -v '^-- ')
  echo "$warn" | sed 's/^/    warning: /' | head -n 5
  check "-p warning shows the repeated-keyword warning" sh -c "echo \"\$1\" | grep -q 'given again'" - "$warn"
  check "... and hides the info lines" sh -c "! echo \"\$1\" | grep -q 'Bound cache'" - "$warn"
  check "-p info has them" sh -c "journalctl -b -u cachefilesd -p info --no-pager | grep -q 'Bound cache'"

  say "dir /srv/fscache with no hand-written drop-in"
  mkdir -p /srv/fscache
  sed -i 's|^dir .*|dir /srv/fscache|' "$conf"
  systemctl daemon-reload
  check "systemctl restart succeeds" systemctl restart cachefilesd
  # The kernel cannot change `dir` on a bound cache: the daemon rebinds, and says so.
  wait_for 30 "the daemon runs after the dir change (control socket answers)" \
    sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "the daemon uses /srv/fscache" same "$(field dir)" '"/srv/fscache"'
  check "the journal says it rebound the cache and why" \
    sh -c "journalctl -b -u cachefilesd --no-pager | grep -q 'rebinding the cache: dir changed'"
  umount "$mnt" && mount "$mnt"
  drop_caches
  check "reads through a fresh mount, sha256 correct" read_all
  wait_for 30 "objects appear under /srv/fscache" sh -c "[ \$(find /srv/fscache/cache -type f | wc -l) -gt 0 ]"

  say "/etc/default/cachefilesd keeps its meaning: RUN=no stops the unit, DAEMON_OPTS reaches the daemon"
  culling_enabled() {
    cachefilesctl status --json 2>/dev/null | tr -d ' \n' | grep -q "\"culling\":{\"enabled\":$1"
  }
  sed -i 's/^RUN=.*/RUN=no/' /etc/default/cachefilesd
  systemctl restart cachefilesd || true
  check "with RUN=no the daemon does not run" sh -c '! systemctl is-active -q cachefilesd'
  check "... and the journal says why" \
    sh -c "journalctl -b -u cachefilesd --no-pager | grep -q 'not starting: RUN=no'"
  sed -i 's/^RUN=.*/RUN=yes/' /etc/default/cachefilesd
  echo 'DAEMON_OPTS="-N"' >>/etc/default/cachefilesd
  check "with RUN=yes and DAEMON_OPTS=-N it starts" systemctl restart cachefilesd
  wait_for 30 "the control socket answers" sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "... with culling disabled (-N)" culling_enabled false
  sed -i '/^DAEMON_OPTS="-N"$/d' /etc/default/cachefilesd
  check "without DAEMON_OPTS it restarts" systemctl restart cachefilesd
  wait_for 30 "the control socket answers" sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "... with culling enabled" culling_enabled true

  say "on-demand: an EROFS image from a registry on the guest's loopback, no hand-written drop-in"
  # Issue 14 (a remote source needs no network drop-in: the generator derives it) and issue 16
  # (a registry inside the guest; qemu has no network, so nothing leaves the guest). The image
  # and the sha256 of its files were made on the host (build-debian-image.sh).
  reg=/root/registry-image
  digest=$(cat "$reg/digest") repo=$(cat "$reg/repository") files=$(grep -c . "$reg/SHA256SUMS")
  unit_prop() { systemctl show -P "$1" cachefilesd; }
  net_props() {
    echo "PrivateNetwork=$(unit_prop PrivateNetwork) RestrictAddressFamilies=$(unit_prop RestrictAddressFamilies) IPAddressDeny=$(unit_prop IPAddressDeny)"
  }
  no_network() { [ "$(unit_prop PrivateNetwork)" = yes ] && [ "$(unit_prop RestrictAddressFamilies)" = AF_UNIX ]; }
  has_network() {
    [ "$(unit_prop PrivateNetwork)" = no ] && unit_prop RestrictAddressFamilies | grep -qw AF_INET &&
      [ -z "$(unit_prop IPAddressDeny)" ]
  }
  own_netns() { [ "$(readlink "/proc/$(main_pid)/ns/net")" != "$(readlink /proc/1/ns/net)" ]; }
  # The unit's drop-ins are the generator's only: none in /etc or /run/systemd/system.
  no_hand_dropin() {
    _paths=$(unit_prop DropInPaths)
    say "  drop-ins: ${_paths:-none}"
    for _p in $_paths; do
      case $_p in /run/systemd/generator/* | /usr/lib/systemd/* | /lib/systemd/*) ;; *) return 1 ;; esac
    done
    [ -z "$(find /etc/systemd/system/cachefilesd.service.d /run/systemd/system/cachefilesd.service.d \
      -name '*.conf' 2>/dev/null)" ]
  }
  registry_up() {
    bash -c 'exec 3<>/dev/tcp/127.0.0.1/5000 && printf "GET /v2/ HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3' \
      2>/dev/null | grep -q ' 200 '
  }
  # The registry's access log: GETs of the blob answered 200/206, and the bytes they carried.
  blob_gets() {
    journalctl -u docker-registry -o cat --no-pager | grep -F "\"GET /v2/$repo/blobs/$digest HTTP/1.1\" 20"
  }
  blob_get_count() { blob_gets | wc -l; }
  blob_get_bytes() { blob_gets | awk -F'"' '{ split($3, a, " "); s += a[2] } END { print s + 0 }'; }
  # metric NAME: the sum of all series of one metric of `cachefilesctl metrics`.
  metric() { cachefilesctl metrics 2>/dev/null | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'; }
  verify_image() { (cd /mnt/reg && sha256sum --quiet -c "$reg/SHA256SUMS"); }
  say "  classic: $(net_props)"
  check "classic config: the unit has no network (PrivateNetwork=yes, AF_UNIX only)" no_network
  check "... and the daemon runs in a network namespace of its own" own_netns
  check "... with no hand-written drop-in" no_hand_dropin
  check "docker-registry starts (127.0.0.1:5000)" systemctl start docker-registry
  wait_for 60 "the registry answers GET /v2/" registry_up
  # An on-demand cache serves EROFS only: the NFS mount goes first, and comes back with the
  # classic config.
  check "umount the NFS mount" umount "$mnt"
  cp "$conf" /var/lib/vmtest/classic.conf
  mkdir -p /etc/cachefilesd /mnt/reg
  printf '[[source]]\nfsid = "sha256:*"\nregistry = "http://127.0.0.1:5000"\nrepository = "%s"\n' "$repo" \
    >/etc/cachefilesd/ondemand.toml
  echo "ondemand /etc/cachefilesd/ondemand.toml" >>"$conf"
  systemctl daemon-reload
  sed 's/^/    generated: /' /run/systemd/generator/cachefilesd.service.d/50-cachefilesd-config.conf
  check "systemctl restart with the ondemand config" systemctl restart cachefilesd
  wait_for 30 "the control socket answers" sh -c 'cachefilesctl status >/dev/null 2>&1'
  say "  on-demand: $(net_props)"
  check "the daemon serves on-demand" same "$(field mode)" '"on-demand"'
  check "the journal says it rebound the cache for the mode" \
    sh -c "journalctl -b -u cachefilesd --no-pager | grep -q 'rebinding the cache: mode changed'"
  check "the generator opened the network (PrivateNetwork=no, AF_INET, IPAddressDeny= empty)" has_network
  check "... the daemon runs in the host's network namespace" same "$(readlink "/proc/$(main_pid)/ns/net")" "$(readlink /proc/1/ns/net)"
  check "... with no hand-written drop-in" no_hand_dropin
  check "cachefilesctl mount $digest /mnt/reg" timeout -s KILL 120 cachefilesctl mount "$digest" /mnt/reg
  check "the image shows its $files files" same "$(find /mnt/reg -type f | wc -l)" "$files"
  check "first read: every file has the sha256 made on the host" verify_image
  reads1=$(metric cachefilesd_ondemand_reads_total) fetched1=$(metric cachefilesd_source_bytes_total)
  wait_for 10 "the registry's log has GETs of the blob" sh -c "[ \$(journalctl -u docker-registry -o cat --no-pager | grep -cF 'GET /v2/$repo/blobs/$digest ') -gt 0 ]"
  gets1=$(blob_get_count) served1=$(blob_get_bytes)
  say "  daemon: $reads1 READs, $fetched1 bytes fetched; registry: $gets1 GETs of the blob, $served1 bytes sent (blob: $(cat "$reg/size") bytes)"
  check "the daemon fetched the data from the registry" [ "$fetched1" -gt 0 ]
  check "... and the registry sent at least that much" [ "$served1" -ge "$fetched1" ]
  check "cachefilesctl umount /mnt/reg" cachefilesctl umount /mnt/reg
  check "mount again" timeout -s KILL 120 cachefilesctl mount "$digest" /mnt/reg
  check "second read: every file's sha256" verify_image
  sleep 2 # the registry's log lines reach the journal
  say "  daemon: $(metric cachefilesd_ondemand_reads_total) READs; registry: $(blob_get_count) GETs"
  check "the second mount was served from the cache: no READ request" same "$(metric cachefilesd_ondemand_reads_total)" "$reads1"
  check "... no byte fetched, no GET of the blob" same "$(metric cachefilesd_source_bytes_total) $(blob_get_count)" "$fetched1 $gets1"
  check "cachefilesctl umount /mnt/reg" cachefilesctl umount /mnt/reg

  say "the classic config back: no network, NFS cached again"
  cp /var/lib/vmtest/classic.conf "$conf"
  systemctl daemon-reload
  check "systemctl restart with the classic config" systemctl restart cachefilesd
  wait_for 30 "the control socket answers" sh -c 'cachefilesctl status >/dev/null 2>&1'
  check "the daemon is classic again" same "$(field mode)" '"classic"'
  say "  classic: $(net_props)"
  check "the unit has no network again" no_network
  check "... and its own network namespace" own_netns
  systemctl stop docker-registry
  check "mount the NFS export again" mount "$mnt"
  drop_caches
  check "read through NFS, sha256 correct" read_all
  drop_caches
  rd1=$(netfs_stat RD) dl1=$(netfs_stat DL)
  check "read again, sha256 correct" read_all
  say "netfs: cache reads $rd1 -> $(netfs_stat RD), server downloads $dl1 -> $(netfs_stat DL)"
  check "the read came from the cache (cache reads grew)" [ "$(netfs_stat RD)" -gt "$rd1" ]
  check "... and nothing was downloaded from the server" same "$(netfs_stat DL)" "$dl1"

  say "stop, purge, back to Debian's package"
  umount "$mnt"
  check "systemctl stop succeeds" systemctl stop cachefilesd
  check "the daemon exited with status 0" same "$(systemctl show -P ExecMainStatus cachefilesd)" 0
  check "the cache is unbound (/dev/cachefiles can be opened again)" sh -c 'exec 3<>/dev/cachefiles'
  check "dpkg --purge cachefilesd-rs succeeds" sh -c 'dpkg --purge cachefilesd-rs </dev/null >/tmp/purge.log 2>&1'
  check "... and leaves no binary or unit" \
    sh -c '! ls /usr/sbin/cachefilesd /usr/sbin/cachefilesctl /usr/lib/systemd/system/cachefilesd.service 2>/dev/null'
  check "... and no diversion" same "$(dpkg-divert --list | grep -c cachefilesd)" 0
  # The C package is still in config-files state: /etc/cachefilesd.conf and
  # /etc/default/cachefilesd are its conffiles (the admin's versions) and stay.
  binds=$(dmesg | grep -c 'CacheFiles: File cache on')
  check "Debian's cachefilesd installs again, no question" \
    sh -c "dpkg -i $(ls /root/debs/cachefilesd_*.deb) </dev/null >/tmp/c2.log 2>&1 && ! grep -q 'Configuration file' /tmp/c2.log"
  check "... dpkg -V cachefilesd lists nothing but the admin's conffiles (config, RUN=yes)" \
    same "$(dpkg -V cachefilesd 2>&1 | grep -v -e ' c /etc/cachefilesd.conf$' -e ' c /etc/default/cachefilesd$')" ""
  systemctl daemon-reload
  check "... and its daemon starts and binds the cache" systemctl start cachefilesd
  wait_for 20 "the C daemon bound the cache again" \
    sh -c "[ \$(dmesg | grep -c 'CacheFiles: File cache on') -gt $binds ]"
  finish_checks
  say "PASS: debian-dropin"
  exit 0
fi
fail "unknown phase $phase"
