# shellcheck shell=sh
# shellcheck disable=SC2154 # cache and conf: set by lib/common.sh, sourced first
# Helpers for the scenarios that start from a cache disk pre-filled on the host
# (make-prefilled-cache.py; "# vm-disk: prefilled-N" header): culling.sh and cullbench.sh.
# Sourced after common.sh. The disk holds N 4 KiB objects named <T|D><rank>, (rank 0..N-1 in
# decimal) whose atime is 1600000000 + rank, so rank order is LRU order, plus an empty graveyard.
#
# Needs: $cache (mount point), $conf (config file to write). Sets the *_blocks thresholds.

# The number of planted objects, from the kernel command line (run-suite.sh adds it).
N=${prefilled_objects:-}
# The doc's measurement of the C daemon used these limits and about 6.5 % free at the start.
brun=20 bcull=10 bstop=3 fill_permille=65
# survey: one walk over the planted objects; sets left (how many are still there), culled
# (N - left) and min_left (the oldest rank left, empty if none), and leaves "RANK PATH" lines,
# oldest first, in /tmp/survey. A find over 20,000 files takes
# seconds under TCG, so scenarios call this once per checkpoint.
survey() {
  find "$cache/cache/I9p,prefilled," "$cache/cache/Ierofs,bench" -type f 2>/dev/null |
    sed -n 's|^\(.*/[DT]\)\([0-9][0-9]*\),$|\2 \1\2,|p' | sort -n >/tmp/survey
  left=$(wc -l </tmp/survey)
  culled=$(( N - left ))
  min_left=$(head -n 1 /tmp/survey | cut -d' ' -f1)
}

# check_planted_atime (after survey): the oldest object still has its planted atime. A read of
# it on the host between make-prefilled-cache.py's re-stamping and mke2fs -d would move it, and
# every daemon would then rightly keep it: an LRU check failing for the disk, not the daemon.
check_planted_atime() {
  _t0=$(stat -c %X "$(head -n 1 /tmp/survey | cut -d' ' -f2)")
  check "mke2fs -d kept the planted atimes (rank 0: $_t0 = 1600000000)" test "$_t0" = 1600000000
}

# prefilled_mount DEV: mounts the pre-filled disk at $cache, checks it holds the N objects, tops it
# up with a filler file (outside cache/, so no daemon culls it) to fill_permille free, and writes
# $conf with the limits.
prefilled_mount() {
  [ -n "$N" ] || fail "no prefilled_objects=N on the kernel command line (run via run-suite.sh, header # vm-disk: prefilled-N)"
  mkdir -p "$cache" "$(dirname "$conf")"
  check "mount the pre-filled cache disk $1 at $cache" mount -t ext4 "$1" "$cache"
  survey
  check "the disk holds the $N planted objects (found $left)" test "$left" -eq "$N"
  check "the graveyard is empty" test -z "$(ls -A "$cache/graveyard")"
  check_planted_atime
  blocks=$(fs_blocks "$cache")
  brun_blocks=$(threshold "$blocks" $brun)
  bcull_blocks=$(threshold "$blocks" $bcull)
  bstop_blocks=$(threshold "$blocks" $bstop)
  _avail=$(fs_bavail "$cache")
  # shellcheck disable=SC2017 # whole permille steps of the disk, as the figures were taken
  _target=$(( blocks / 1000 * fill_permille ))
  [ "$_avail" -gt "$_target" ] || fail "free space ($_avail blocks) already below the fill target ($_target)"
  check "filler: $(( (_avail - _target) * 4 / 1024 )) MiB, down to $fill_permille permille free" \
    fallocate -l $(( (_avail - _target) * $(fs_bsize "$cache") )) "$cache/filler"
  start_avail=$(fs_bavail "$cache")
  say "cache fs: $blocks blocks, $start_avail available; brun=$brun_blocks bcull=$bcull_blocks bstop=$bstop_blocks"
  check "free space is below bcull and above bstop" \
    test "$start_avail" -lt "$bcull_blocks" -a "$start_avail" -gt "$bstop_blocks"
  classic_conf $brun $bcull $bstop
}

# now_cs: sets cs to /proc/uptime in centiseconds (builtins only: no fork).
now_cs() {
  read -r _up _ </proc/uptime
  _c=${_up#*.}
  _c=${_c#0}
  cs=$(( ${_up%.*} * 100 + ${_c:-0} ))
}
# cpu_ticks PID: sets cpu_user and cpu_sys to the utime and stime of PID in clock ticks (1/100 s),
# 0 if it is gone.
cpu_ticks() {
  cpu_user=0 cpu_sys=0
  _st=
  { read -r _st <"/proc/$1/stat"; } 2>/dev/null || return 0
  # shellcheck disable=SC2086 # split the fields after the command name
  set -- ${_st##*) }
  shift 11
  cpu_user=$1 cpu_sys=$2
}

# run_to_brun LABEL LIMIT COMMAND...: starts COMMAND (a daemon, output to
# /results/$LABEL.log) in the background and polls every 0.05 s until the free blocks reach
# brun_blocks, the daemon exits, or LIMIT seconds pass. Sets: run_pid, run_result
# (brun|exited|timeout), run_cs (centiseconds from the start to that event), run_cpu_cs (the
# daemon's CPU time then) and run_cpu_split ("user+sys" seconds), run_rc (exit status if it
# exited; 0 CPU then, the process is gone).
# shellcheck disable=SC2034 # run_* are this function's results, read by the scenarios
run_to_brun() {
  _label=$1 _limit=$2
  shift 2
  run_rc=
  now_cs
  _start=$cs
  "$@" >"/results/$_label.log" 2>&1 &
  run_pid=$!
  while :; do
    now_cs
    if [ "$(stat -f -c %a "$cache")" -ge "$brun_blocks" ]; then
      run_result=brun
      break
    fi
    if ! alive "$run_pid"; then
      # Its last unlink may have landed after the statfs above.
      if [ "$(stat -f -c %a "$cache")" -ge "$brun_blocks" ]; then run_result=brun; else run_result=exited; fi
      break
    fi
    if [ $(( cs - _start )) -ge $(( _limit * 100 )) ]; then
      run_result=timeout
      break
    fi
    sleep 0.05
  done
  now_cs
  run_cs=$(( cs - _start ))
  cpu_ticks "$run_pid"
  run_cpu_cs=$(( cpu_user + cpu_sys ))
  run_cpu_split="$(secs "$cpu_user")+$(secs "$cpu_sys")"
  if [ "$run_result" = exited ]; then
    wait "$run_pid"
    run_rc=$?
  fi
}
secs() { printf '%d.%02d' $(( $1 / 100 )) $(( $1 % 100 )); }

# lru_in_order (after survey): every planted object that is left is newer than every one that
# was culled, i.e. the smallest remaining rank equals the number of planted objects that are gone.
lru_in_order() {
  say "planted objects: $N, culled $culled, left $left, oldest left: rank ${min_left:-none}"
  [ "$left" -eq 0 ] || [ "$min_left" -eq "$culled" ]
}
