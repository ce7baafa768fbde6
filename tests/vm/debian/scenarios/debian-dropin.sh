#!/bin/sh
# vm-kind: debian
# vm-timeout: 1500
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
#      brun; an edited brun is in force after `systemctl restart`; SIGKILL and a watchdog
#      timeout end in a restart with the cache kept (fd store); `journalctl -p warning` hides
#      info lines; `dir /srv/fscache` works with no hand-written drop-in (a rebind, logged);
#      RUN=no in /etc/default/cachefilesd keeps the daemon from starting, DAEMON_OPTS="-N"
#      reaches it; `systemctl stop`
#      exits 0 and unbinds; purge, then reinstalling Debian's cachefilesd works.
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
# between LOW N HIGH: LOW <= N <= HIGH (integers).
between() { [ "$2" -ge "$1" ] && [ "$2" -le "$3" ]; }
free_at_least() { [ "$(free_pct)" -ge "$1" ]; }

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
  drop_caches
  # The kernel writes cache objects in the background and links them on commit.
  wait_for 60 "the reads created cache objects" sh -c "[ \$(find $cache/cache -type f | wc -l) -ge 48 ]"
  say "cachefilesctl ls: $(cachefilesctl ls 2>&1 | wc -l) lines; $(objects) object files"
  sleep 2
  drop_caches
  rd1=$(netfs_stat RD) dl1=$(netfs_stat DL)
  check "second read, sha256 correct" read_all
  rd2=$(netfs_stat RD) dl2=$(netfs_stat DL)
  say "netfs: cache reads $rd0 -> $rd1 -> $rd2, server downloads $dl0 -> $dl1 -> $dl2"
  check "the second read came from the cache (cache reads grew)" [ "$rd2" -gt "$rd1" ]
  check "... and nothing was downloaded from the server" same "$dl2" "$dl1"

  say "culling: fill the cache disk past bcull"
  before=$(objects)
  avail_kb=$(df -P "$cache" | awk 'NR == 2 { print $4 }')
  total_kb=$(df -P "$cache" | awk 'NR == 2 { print $2 }')
  # Leave 5 % free: below bcull (8 %), above bstop (3 %).
  fill_kb=$((avail_kb - total_kb * 5 / 100))
  fallocate -l "${fill_kb}KiB" "$cache/filler"
  sync
  say "free after the filler: $(free_pct)%"
  check "free space is between bstop (3%) and bcull (8%)" between 3 "$(free_pct)" 7
  # The kernel checks the space when it allocates: new data read through NFS wakes culling.
  (cd "$mnt" && cat g0 g1 g2 g3 >/dev/null)
  wait_for 60 "the daemon culled back to brun 15%" free_at_least 15
  say "objects $before -> $(objects), culled $(field culled)"
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
  avail_kb=$(df -P "$cache" | awk 'NR == 2 { print $4 }')
  total_kb=$(df -P "$cache" | awk 'NR == 2 { print $2 }')
  fallocate -l "$((avail_kb - total_kb * 10 / 100))KiB" "$cache/filler"
  sync
  say "free after the filler: $(free_pct)%, objects $(objects)"
  check "free space is between the bound bcull (8%) and the edited one (12%)" between 8 "$(free_pct)" 11
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
