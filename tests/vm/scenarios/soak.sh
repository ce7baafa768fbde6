#!/bin/sh
# vm-timeout: 900
# vm-smp: 2
# vm-default: no
# Soak: 20 consecutive daemon runs of each kind in one boot, counting silent exits, hangs and
# wrong bytes (all must be 0):
#   on demand: a cold cache each run (cachefilesctl invalidate between runs), an EROFS image read
#     by 4 concurrent readers, every file's sha256 checked;
#   classic: a cache of planted objects pushed below bcull; the daemon must cull back to brun.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

runs=${SOAK_RUNS:-20}
silent_exits=0 hangs=0 wrong=0

on_fail() { tail -n 30 "$daemon_log"; dmesg | tail -n 20; }

check "mount the ext4 cache disk" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree
dd if=/dev/urandom of=/tmp/tree/big.bin bs=1M count=8 2>/dev/null
i=0; while [ $i -lt 200 ]; do
  mkdir -p /tmp/tree/d$((i % 10))
  head -c $(( (i * 7919) % 40000 + 1 )) /tmp/tree/big.bin | tail -c $(( (i * 31) % 3000 + 1 )) >/tmp/tree/d$((i % 10))/f$i
  i=$((i + 1))
done
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
check "mkfs.erofs the soak image" sh -c "mkfs.erofs --quiet /srv/erofs/soak /tmp/tree >/dev/null 2>&1"
printf '[[source]]\npath = "/srv/erofs/{fsid}"\n[fetch]\nworkers = 4\n' >"$map"

start_daemon() {
  "$daemon" -n -s -f "$conf" >>"$daemon_log" 2>&1 &
  daemon_pid=$!
  wait_for 30 "run $1: the daemon bound the cache" bound_or_dead
}
end_run() { # RUN
  if ! alive "$daemon_pid"; then
    silent_exits=$((silent_exits + 1)); say "run $1: the daemon had exited on its own"
    wait "$daemon_pid"
  else
    stop_daemon "$daemon_pid"
    [ "$daemon_rc" -eq 0 ] || { silent_exits=$((silent_exits + 1)); say "run $1: exit status $daemon_rc"; }
  fi
  dmesg -c >/dev/null
}

r=1
while [ $r -le "$runs" ]; do
  printf 'dir %s\ntag mycache\nondemand %s\ncontrol none\n' "$cache" "$map" >"$conf"
  start_daemon "$r"
  timeout -s KILL 60 mount -t erofs none -o fsid=soak /mnt || { hangs=$((hangs + 1)); say "run $r: mount failed"; }
  n=0; pids=
  while [ $n -lt 4 ]; do
    ( cd /mnt && timeout -s KILL 120 sha256sum -c /tmp/tree.sha >/tmp/v$n.out 2>&1; echo $? >/tmp/v$n.rc ) &
    pids="$pids $!"; n=$((n + 1))
  done
  # shellcheck disable=SC2086 # a list of pids
  wait $pids
  n=0
  while [ $n -lt 4 ]; do
    rc=$(cat /tmp/v$n.rc)
    if [ "$rc" = 137 ]; then hangs=$((hangs + 1)); elif [ "$rc" != 0 ]; then wrong=$((wrong + 1)); grep -v ': OK$' /tmp/v$n.out | head -n 3; fi
    n=$((n + 1))
  done
  # busybox timeout leaves a watcher process (cwd /mnt) for up to a second after its command.
  unmounted() { umount /mnt 2>/dev/null; }
  wait_for 10 "run $r: umount" unmounted
  end_run "$r"
  # A cold cache for the next run.
  "$ctl" --dir "$cache" invalidate --volume erofs,soak --key soak >/dev/null 2>&1
  say "on-demand run $r: silent exits $silent_exits, hangs $hangs, wrong reads $wrong"
  r=$((r + 1))
done
check "on demand, $runs runs x 4 readers: 0 silent exits ($silent_exits)" test "$silent_exits" -eq 0
check "on demand: 0 hangs ($hangs)" test "$hangs" -eq 0
check "on demand: 0 wrong bytes ($wrong readers saw a bad sha256)" test "$wrong" -eq 0

blocks=$(fs_blocks "$cache")
brun_blocks=$(threshold "$blocks" 20)
not_culled=0
r=1
while [ $r -le "$runs" ]; do
  rm -rf "$cache/cache/Ierofs,planted" "$cache/filler"
  i=0; while [ $i -lt 300 ]; do
    d=$cache/cache/Ierofs,planted/@$(printf %02x $((i % 256)))
    mkdir -p "$d"; head -c 16384 /dev/zero >"$d/Dobj$i"; i=$((i + 1))
  done
  dd if=/dev/zero of="$cache/filler" bs=4096 count=$(( $(fs_bavail "$cache") - brun_blocks + 700 )) 2>/dev/null
  printf 'dir %s\ntag mycache\nbrun 20%%\nbcull 19%%\nbstop 3%%\ncontrol none\n' "$cache" >"$conf"
  start_daemon "c$r"
  at_brun() { [ "$(fs_bavail "$cache")" -ge "$brun_blocks" ]; }
  end=$(( $(cut -d. -f1 /proc/uptime) + 60 ))
  while ! at_brun && [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do sleep 0.2; done
  at_brun || { not_culled=$((not_culled + 1)); say "run c$r: free space did not reach brun"; }
  end_run "c$r"
  r=$((r + 1))
done
rm -f "$cache/filler"
say "classic: $runs runs, silent exits $silent_exits, runs that did not reach brun $not_culled"
check "classic, $runs runs: 0 silent exits in all ($silent_exits)" test "$silent_exits" -eq 0
check "classic: every run culled back to brun ($not_culled failures)" test "$not_culled" -eq 0
check "umount the cache disk" umount "$cache"
pass
