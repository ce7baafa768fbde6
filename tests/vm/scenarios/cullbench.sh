#!/bin/sh
# vm-timeout: 420
# vm-smp: 2
# vm-disk: prefilled-20000
# vm-disk-copies: 4
# vm-default: no
# vm-needs: c-cachefilesd
# Benchmark, not in the default suite (run-suite.sh runs it only by name; it downloads Debian's
# cachefilesd package):
#   tests/vm/run-suite.sh cullbench                              # N = 20,000
#   VM_DISK=prefilled-100000 tests/vm/run-suite.sh cullbench     # N = 100,000
# Time from daemon start until the kernel's free-block count reaches brun, on the same
# pre-filled cache (identical disks made from one make-prefilled-cache.py tree: /dev/vda for
# Debian's C cachefilesd 0.10.10 as /usr/sbin/cachefilesd-c, /dev/vdb for ours), with the limits
# of the measurement in cachefilesd-compat.md (brun 20 %, bcull 10 %, bstop 3 %, 6.5 % free at
# the start). Each disk is mounted, surveyed and topped up with a filler, then the page cache is
# dropped (if the kernel has /proc/sys/vm/drop_caches), then the daemon starts; the shell polls
# statfs every 0.05 s. Two more disks, /dev/vdc and /dev/vdd, measure a floor that no daemon can
# beat: with no daemon, plain unlink(2) (tests/vm/unlink-list.c; one process, then one per vCPU)
# of exactly the objects our daemon culled, oldest first, listed before the clock starts, with
# their dentries and inodes already in memory (the listing walked them). Any daemon must also
# find out every object's atime, and the kernel's cull does the same unlink after a lookup, so
# culling cannot take less than that. The C daemon is run up to 3 times if it exits before brun
# without culling anything (the cache is then unchanged); what happened is reported. Our daemon
# must reach brun and keep LRU order (checks); the C daemon's results are reported, not checked.
# Result lines start with "BENCH" (and "RATIO"); results/cachefilesd-c*.log and
# results/cachefilesd.log hold the daemons' stderr.
#
# Steady state (issue 17 item 1), VM_APPEND=CULLBENCH=steady: the daemon is started on a
# healthy cache (12 % free: above bcull, below brun) and left for WARM seconds (default
# 20 + N/5000) to learn its victims; then a ballast file outside cache/ takes free space down to
# the cold case's 6.5 %, and right after it 9p cache=fscache reads give the kernel cache
# activity (the C daemon only wakes when the kernel re-checks space on an operation; ours also
# reads the status line every tick). The clock runs from the ballast in place to brun, for C
# (/dev/vda), ours (/dev/vdb) and the unlink floor of ours' victims (/dev/vdc, /dev/vdd; no 9p,
# no daemon). Result lines start with "STEADY". Give it VM_TIMEOUT for two warm-ups more.
#   VM_APPEND=CULLBENCH=steady VM_DISK=prefilled-100000 tests/vm/run-suite.sh cullbench
# IDLE=S (in VM_APPEND, with CULLBENCH=steady) also measures what keeping the table warm costs:
# after its warm-up our daemon is left S seconds more on the healthy cache, and the "IDLE" line
# gives its CPU time, the bytes read from its disk (/sys/block/vdb/stat: nothing else uses it
# then; the test kernel has no per-task I/O accounting) and the scans it ran in those S seconds
# (its stats line, SIGUSR1). Our daemon's STEADY line then says idle=S: its warm-up was S s
# longer than C's. Add S to VM_TIMEOUT.
#
# CULLBENCH_C=no (in VM_APPEND) leaves the C daemon out of a cold run. At 1M objects it does not
# reach brun in its limit (17 min, plus two surveys of 7 min), and only ours and the floor are
# compared within the boot; C's row in the plot is then "-".
#   VM_APPEND=CULLBENCH_C=no VM_MEM=4096M VM_DISK=prefilled-1000000 VM_TIMEOUT=5400 \
#     tests/vm/run-suite.sh cullbench
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

cache=/var/cache/fscache
conf=/etc/cachefilesd.conf
ours=/usr/sbin/cachefilesd
c_daemon=/usr/sbin/cachefilesd-c
# shellcheck source=SCRIPTDIR/lib/prefilled.sh
. /scenarios/lib/prefilled.sh

[ -x "$ours" ] || fail "no $ours in the initramfs"
command -v unlink-list >/dev/null || fail "no unlink-list in the initramfs (run-suite.sh builds it with cc)"
[ -x "$c_daemon" ] || fail "no $c_daemon in the initramfs (run-suite.sh fetches it for '# vm-needs: c-cachefilesd'; apt-get download cachefilesd failed?)"
limit=$(( 30 + ${N:-0} / 1000 ))
shim=/usr/sbin/cachefilesd-c-nodnotify.so
c_preload=

on_fail() {
  echo "--- logs (tail)"; tail -n 20 /results/cachefilesd*.log 2>/dev/null
  echo "--- df"; df "$cache" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
}
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then
    echo 3 >/proc/sys/vm/drop_caches && cold="page cache dropped before start"
  else
    cold="no drop_caches: inodes warm from the survey"
  fi
}
unmount_cache() {
  _n=0
  while ! umount "$cache" 2>/dev/null; do
    _n=$((_n + 1))
    [ $_n -lt 50 ] || fail "cannot umount $cache"
    sleep 0.2
  done
}
stop_run() { # PID: SIGTERM if still running; sets daemon_rc
  if alive "$1"; then stop_daemon "$1"; else daemon_rc=$run_rc; fi
}
# peak_rss PID: the process's peak resident set (VmHWM) in KiB, "-" once it has exited.
peak_rss() { awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print "-" }' "/proc/$1/status" 2>/dev/null || echo -; }
# report DAEMON ATTEMPT: one BENCH line from the run_to_brun variables and a survey.
report() {
  survey
  _note=
  [ "$1" = c ] && [ -n "$c_preload" ] && _note=" (nodnotify shim)"
  say "BENCH n=$N daemon=$1 attempt=$2$_note result=$run_result seconds=$(secs "$run_cs") cpu=$(secs "$run_cpu_cs") user+sys=$run_cpu_split" \
    "culled=$culled oldest_left=${min_left:-none} lru=$( [ "$left" -eq 0 ] || [ "$min_left" -eq "$culled" ] && echo yes || echo NO)" \
    "free_blocks=$(fs_bavail "$cache") brun_blocks=$brun_blocks peak_rss_kib=$(peak_rss "$run_pid") (${cold})"
}

say "N=$N objects; limit ${limit}s per run; $(grep -c ^processor /proc/cpuinfo) CPU(s); $($c_daemon -v 2>&1 | head -n 1)"

# ---- Steady state (CULLBENCH=steady) ----
# steady_mount DEV: as prefilled_mount, but topped up only to 12 % free (healthy: above bcull).
steady_mount() {
  mkdir -p "$cache" "$(dirname "$conf")"
  check "mount the pre-filled cache disk $1 at $cache" mount -t ext4 "$1" "$cache"
  survey
  check "the disk holds the $N planted objects (found $left)" test "$left" -eq "$N"
  check_planted_atime
  blocks=$(fs_blocks "$cache")
  brun_blocks=$(threshold "$blocks" $brun)
  bcull_blocks=$(threshold "$blocks" $bcull)
  bstop_blocks=$(threshold "$blocks" $bstop)
  _avail=$(fs_bavail "$cache")
  # shellcheck disable=SC2017 # whole permille steps of the disk, as prefilled_mount does
  _healthy=$(( blocks / 1000 * 120 ))
  # shellcheck disable=SC2017
  ballast_blocks=$(( _healthy - blocks / 1000 * fill_permille ))
  [ "$_avail" -gt "$_healthy" ] || fail "free space ($_avail blocks) already below 12 %"
  check "filler down to 12 % free" \
    fallocate -l $(( (_avail - _healthy) * $(fs_bsize "$cache") )) "$cache/filler"
  check "free space is between bcull and brun" \
    test "$(fs_bavail "$cache")" -gt "$bcull_blocks" -a "$(fs_bavail "$cache")" -lt "$brun_blocks"
  classic_conf $brun $bcull $bstop
}
# push_under_bcull ACTIVITY: the ballast (outside cache/), then, if ACTIVITY is "9p", reads of
# uncached 9p files (cache=fscache) so that the kernel re-checks its space. Sets t0 (cs).
push_under_bcull() {
  now_cs
  t0=$cs
  fallocate -l $(( ballast_blocks * $(fs_bsize "$cache") )) "$cache/ballast" || fail "ballast"
  if [ "$1" = 9p ]; then
    mount_9p || fail "mount 9p with cache=fscache"
    for _f in /mnt/d0/f000.bin /mnt/d1/f001.bin /mnt/d2/f002.bin /mnt/d3/f003.bin; do
      cat "$_f" >/dev/null 2>&1
    done
  fi
  # How long the wake-up activity took: the daemons may cull during it, the floor has none.
  now_cs
  push_cs=$(( cs - t0 ))
}
# wait_brun LIMIT [PID]: polls statfs every 0.05 s from t0 until brun (or PID exits, or LIMIT s).
# Sets run_result and run_cs (from t0).
wait_brun() {
  while :; do
    now_cs
    if [ "$(stat -f -c %a "$cache")" -ge "$brun_blocks" ]; then run_result=brun; break; fi
    if [ -n "${2:-}" ] && ! alive "$2"; then run_result=exited; break; fi
    if [ $(( cs - t0 )) -ge $(( $1 * 100 )) ]; then run_result=timeout; break; fi
    sleep 0.05
  done
  run_cs=$(( cs - t0 ))
}
# scans_logged: the scans our daemon had run when it last logged its stats line (SIGUSR1).
scans_logged() { sed -n 's/.*; scans \([0-9]*\),.*/\1/p' /results/cachefilesd.log | tail -n 1; }
# disk_read_bytes: what has been read from /dev/vdb (our daemon's disk) since boot, bytes.
disk_read_bytes() { awk '{ print $3 * 512 }' /sys/block/vdb/stat; }
# idle_cost PID SECONDS: our daemon's CPU, disk reads and scans over SECONDS on the healthy cache.
idle_cost() {
  # The stats line is asked for when the CPU and disk are read, and read back a second later
  # (once logged), so that the scans counted are those of the same span.
  kill -USR1 "$1"
  cpu_ticks "$1"
  _idle_cpu0=$(( cpu_user + cpu_sys ))
  _read0=$(disk_read_bytes)
  sleep 1
  _scans0=$(scans_logged)
  sleep $(( $2 - 1 ))
  alive "$1" || fail "our daemon exited while idle; its log: $(tail -n 5 /results/cachefilesd.log)"
  kill -USR1 "$1"
  cpu_ticks "$1"
  _idle_cpu=$(( cpu_user + cpu_sys - _idle_cpu0 ))
  _read=$(( $(disk_read_bytes) - _read0 ))
  sleep 1
  scans=$(scans_logged)
  say "IDLE n=$N seconds=$2 cpu=$(secs "$_idle_cpu") cpu_share=$(awk -v c="$_idle_cpu" -v s="$2" 'BEGIN { printf "%.2f%%", c / s }')" \
    "disk_read_bytes=$_read scans=$(( scans - _scans0 )) (after the warm-up's $_scans0)"
}
# steady_daemon LABEL DEV COMMAND...: the daemon on a healthy cache, WARM s, then the push.
steady_daemon() {
  _label=$1
  steady_mount "$2"
  shift 2
  "$@" >"/results/$_label.log" 2>&1 &
  _pid=$!
  sleep 2
  if ! alive "$_pid" && grep -q 'unable to set notification on graveyard: errno 22' "/results/$_label.log" && [ -f "$shim" ]; then
    say "$_label needs dnotify, which this kernel lacks: again with LD_PRELOAD=$shim"
    LD_PRELOAD=$shim "$@" >"/results/$_label.log" 2>&1 &
    _pid=$!
  fi
  sleep "$warm"
  alive "$_pid" || fail "$_label exited while the cache was healthy; its log: $(tail -n 5 "/results/$_label.log")"
  _idle=
  [ "$_label" = cachefilesd ] && [ -n "${IDLE:-}" ] && _idle=" idle=$IDLE" && idle_cost "$_pid" "$IDLE"
  cpu_ticks "$_pid"
  _cpu0=$(( cpu_user + cpu_sys ))
  push_under_bcull 9p
  wait_brun "$limit" "$_pid"
  cpu_ticks "$_pid"
  umount /mnt 2>/dev/null
  survey
  say "STEADY n=$N daemon=$_label$_idle result=$run_result seconds=$(secs "$run_cs") cpu_warm=$(secs "$_cpu0") cpu_cull=$(secs $(( cpu_user + cpu_sys - _cpu0 ))) wake_activity=$(secs "$push_cs")" \
    "culled=$culled lru=$( [ "$left" -eq 0 ] || [ "$min_left" -eq "$culled" ] && echo yes || echo NO) free_blocks=$(fs_bavail "$cache") brun_blocks=$brun_blocks"
  stop_run "$_pid"
  unmount_cache
}
if [ "${CULLBENCH:-cold}" = steady ]; then
  warm=${WARM:-$(( 20 + N / 5000 ))}
  say "steady state: ${warm}s on a healthy cache, then a ballast and 9p reads; timed to brun"
  run_rc=
  steady_daemon cachefilesd-c /dev/vda "$c_daemon" -n -s -f "$conf"
  c_result=$run_result c_cs=$run_cs
  steady_daemon cachefilesd /dev/vdb "$ours" -n -s -f "$conf"
  ours_cs=$run_cs
  culled_by_ours=$culled
  check "our daemon reached brun from the warm state within ${limit}s (got: $run_result)" test "$run_result" = brun
  check "our daemon culled oldest first" lru_in_order
  check "our daemon exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
  for ways in 1 2; do
    dev=/dev/vdc
    [ "$ways" = 2 ] && dev=/dev/vdd
    steady_mount "$dev"
    head -n "$culled_by_ours" /tmp/survey | cut -d' ' -f2 >/tmp/victims
    rm -f /tmp/victims.*
    awk -v ways="$ways" '{ print > ("/tmp/victims." (NR % ways)) }' /tmp/victims
    push_under_bcull none
    # shellcheck disable=SC2016 # expanded by the inner sh
    sh -c 'for l in /tmp/victims.*; do unlink-list <"$l" & done; wait'
    wait_brun "$limit"
    say "STEADY n=$N daemon=floor-$ways result=$run_result seconds=$(secs "$run_cs") victims=$culled_by_ours"
    [ "$ways" = 1 ] && floor1_cs=$run_cs
    unmount_cache
  done
  floor_cs=$(( run_cs < floor1_cs ? run_cs : floor1_cs ))
  say "STEADY-RATIO n=$N ours/floor = $(awk -v a="$ours_cs" -v b="$floor_cs" 'BEGIN { printf "%.2f", a / b }')" \
    "(goal <= 1.3); C: $c_result after $(secs "$c_cs") s$( [ "$c_result" = brun ] && awk -v a="$ours_cs" -v b="$c_cs" 'BEGIN { printf ", ours/C = %.3f", a / b }')"
  pass
fi


# 1. The C daemon on /dev/vda. c_cold_runs: up to 3 attempts from the same starting state;
# sets c_result, c_cs and c_attempts.
c_cold_runs() {
  prefilled_mount /dev/vda
  while [ $c_attempts -lt 3 ]; do
    c_attempts=$((c_attempts + 1))
    drop_caches
    log=cachefilesd-c-$c_attempts
    run_to_brun "$log" "$limit" env ${c_preload:+LD_PRELOAD=$c_preload} "$c_daemon" -n -s -f "$conf"
    c_pid=$run_pid
    report c "$c_attempts"
    c_result=$run_result c_cs=$run_cs
    [ "$run_result" = brun ] && { stop_run "$c_pid"; break; }
    if [ "$run_result" = exited ]; then
      say "the C daemon exited with status $run_rc after $(secs "$run_cs") s, before brun; its log:"
      sed 's/^/    /' "/results/$log.log" | tail -n 15
      dmesg | grep -iE 'cachefiles|fscache' | tail -n 4 | sed 's/^/    dmesg: /'
    else
      stop_run "$c_pid"
      say "the C daemon did not reach brun within ${limit}s (stopped, status $daemon_rc)"
    fi
    if grep -q 'unable to set notification on graveyard: errno 22' "/results/$log.log" && [ -z "$c_preload" ]; then
      if [ -f "$shim" ]; then
        c_preload=$shim
        say "the C daemon needs dnotify (fcntl F_NOTIFY), which this kernel lacks (CONFIG_DNOTIFY):" \
          "the next attempts run it with LD_PRELOAD=$shim (F_NOTIFY EINVAL -> 0)"
      else
        say "the C daemon needs dnotify, which this kernel lacks, and there is no $shim"
      fi
    fi
    if [ "$culled" -ne 0 ]; then
      say "it culled $culled objects first: the starting state is gone, no retry"
      break
    fi
    # The kernel withdraws the cache when the device is closed; wait for the device to be free.
    sleep 1
  done
  unmount_cache
}
c_result=none c_cs=0 c_attempts=0
if [ "${CULLBENCH_C:-yes}" = no ]; then
  say "CULLBENCH_C=no: the C daemon is left out of this run"
  c_result=skipped
else
  c_cold_runs
fi

# 2. Ours on /dev/vdb, same starting state.
prefilled_mount /dev/vdb
drop_caches
run_to_brun cachefilesd "$limit" "$ours" -n -s -f "$conf"
ours_pid=$run_pid
report ours 1
ours_cs=$run_cs
culled_by_ours=$culled
check "our daemon reached brun within ${limit}s (got: $run_result after $(secs "$run_cs") s)" test "$run_result" = brun
check "our daemon culled oldest first" lru_in_order
stop_daemon "$ours_pid"
check "our daemon exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
unmount_cache

# 3. The floor: unlink(2) of the same victims with no daemon and nothing to find out, by one
# unlink-list on /dev/vdc and by one per vCPU on /dev/vdd (each on every other victim, still
# oldest first). floor_run DEV WAYS sets floor_cs.
floor_run() {
  prefilled_mount "$1"
  head -n "$culled_by_ours" /tmp/survey | cut -d' ' -f2 >/tmp/victims
  check "the floor's victim list holds the $culled_by_ours oldest objects" \
    test "$(wc -l </tmp/victims)" -eq "$culled_by_ours"
  # Warm, unlike the daemons' runs (prefilled_mount's survey stat'ed every object): only unlinks
  # are timed.
  cold="dentries and inodes warm, $2 unlink-list process(es)"
  rm -f /tmp/victims.*
  awk -v ways="$2" '{ print > ("/tmp/victims." (NR % ways)) }' /tmp/victims
  # A background job's stdin is /dev/null: the lists are redirected inside the command.
  # shellcheck disable=SC2016 # expanded by the inner sh
  run_to_brun "floor-$2" "$limit" sh -c 'for l in /tmp/victims.*; do unlink-list <"$l" & done; wait'
  floor_cs=$run_cs
  report "floor-$2" 1
  check "unlinking the oldest $culled_by_ours objects reaches brun (got: $run_result)" test "$run_result" = brun
  unmount_cache
}
floor_run /dev/vdc 1
floor1_cs=$floor_cs
floor_run /dev/vdd 2
floor_cs=$(( floor_cs < floor1_cs ? floor_cs : floor1_cs ))
say "FLOOR n=$N unlink of the $culled_by_ours victims alone (warm): $(secs "$floor1_cs") s (1 process)," \
  "$(secs "$run_cs") s (2 in parallel); ours $(secs "$ours_cs") s" \
  "= $(awk -v a="$ours_cs" -v b="$floor_cs" 'BEGIN { printf "%.2f", a / b }')x the faster floor"

if [ "$c_result" = brun ]; then
  say "RATIO n=$N ours/C = $(awk -v a="$ours_cs" -v b="$c_cs" 'BEGIN { printf "%.3f", a / b }')" \
    "($(secs "$ours_cs") s / $(secs "$c_cs") s; C needed $c_attempts attempt(s));" \
    "floor/C = $(awk -v a="$floor_cs" -v b="$c_cs" 'BEGIN { printf "%.3f", a / b }')"
else
  say "RATIO n=$N not available: the C daemon ended with '$c_result' after $c_attempts attempt(s)"
fi
pass
