# shellcheck shell=sh
# Helpers shared by the scenario scripts (sourced; busybox sh). Not a scenario itself: run-suite
# only runs scenarios/*.sh.
#
# Conventions: print what is checked; exit with status_fail on the first failed check (after
# running the scenario's on_fail hook, if it defines one); exit with status_skip with the reason
# as the last line of stdout to skip; `pass` refuses to report success if no check ran. The
# codes are lib/status.sh's.
# shellcheck source=SCRIPTDIR/status.sh
. /scenarios/lib/status.sh

# The guest's paths, the same in every daemon scenario (a scenario may set its own after sourcing
# this file). daemon_pid is the running daemon's pid (bound_or_dead uses it).
# shellcheck disable=SC2034 # used by the scenarios that source this file
{
  cache=/var/cache/fscache
  conf=/etc/cachefilesd.conf
  map=/etc/cachefilesd/ondemand.toml
  daemon=/usr/sbin/cachefilesd
  ctl=/usr/sbin/cachefilesctl
  daemon_log=/results/cachefilesd.log
  daemon_pid=
}

checks=0
say() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }

fail() {
  say "FAIL: $*"
  if ! kernel_log_clean; then
    echo "--- kernel trouble in dmesg:"
    dmesg | grep -E -B8 'kernel BUG|Oops|WARNING: CPU' | head -n 40
  fi
  if command -v on_fail >/dev/null 2>&1; then
    trap - EXIT
    on_fail || true
  fi
  exit "$status_fail"
}

# check DESCRIPTION COMMAND [ARG...]: runs the command, counts and reports the check.
check() {
  _desc=$1
  shift
  if "$@"; then
    checks=$((checks + 1))
    say "ok $checks: $_desc"
  else
    fail "$_desc"
  fi
}

skip() { echo "SKIP: $*"; exit "$status_skip"; }

# Kernel trouble (BUG, oops, WARN) fails a scenario even if all its own checks passed.
kernel_log_clean() { ! dmesg | grep -qE 'kernel BUG|Oops|WARNING: CPU|general protection|Call Trace'; }

pass() {
  [ "$checks" -gt 0 ] || fail "scenario ran no checks"
  check "no kernel BUG/oops/warning in dmesg" kernel_log_clean
  say "PASS: $checks checks"
  exit "$status_pass"
}

# wait_for SECONDS DESCRIPTION COMMAND [ARG...]: polls the command every 0.2 s until it succeeds;
# counts as a check; fails after SECONDS.
wait_for() {
  _limit=$1
  _desc=$2
  shift 2
  _end=$(( $(cut -d. -f1 /proc/uptime) + _limit ))
  while ! "$@"; do
    if [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ]; then
      fail "$_desc (waited ${_limit}s)"
    fi
    sleep 0.2
  done
  checks=$((checks + 1))
  say "ok $checks: $_desc"
}

# Filesystem numbers as cachefiles sees them (statfs): total blocks, available blocks, block size.
fs_blocks() { stat -f -c %b "$1"; }
fs_bavail() { stat -f -c %a "$1"; }
fs_bsize() { stat -f -c %S "$1"; }

# The kernel's absolute threshold for PCT percent of TOTAL (fs/cachefiles/cache.c: total/100*pct).
# shellcheck disable=SC2017 # the kernel's rounding, on purpose
threshold() { echo $(( $1 / 100 * $2 )); }

# Where the kernel puts a cache object, relative to the cache directory: looked up in the table
# that build-initramfs.sh made with cachenames.py, the suite's own model of the kernel's naming
# (independent of the daemon under test; checked there against names a real kernel made).
object_names=/etc/vm/object-names
tab=$(printf '\t')
# object_path VOLUME KEY: prints the path (KEY: str:TEXT, or le64:N for a 9p qid.path); fails if
# the table lacks it (a scenario names the EROFS objects it looks up in "# vm-object:" headers;
# every file of the 9p tag fscached is in the table).
object_path() {
  awk -F "$tab" -v v="$1" -v k="$2" '$1 == v && $2 == k { print $3; found = 1; exit }
    END { exit !found }' "$object_names"
}
# ninep_object_path FILE: the object of FILE on the 9p mount of tag fscached. The 9p cookie key
# is the 8-byte little-endian qid.path, and on 64-bit i_ino = qid.path + 2 (fs/9p/v9fs_vfs.h
# QID2INO).
ninep_object_path() {
  _ino=$(stat -c %i "$1") || return 1
  object_path "9p,fscached," "le64:$((_ino - 2))"
}

# show_processes: every process but the kernel threads (their names are in brackets), with its
# state (D: waiting in the kernel).
# shellcheck disable=SC2009 # filtering ps's listing, not looking for a process
show_processes() { ps -o pid,stat,args | grep -v ' \['; }

# alive PID: the process exists and is not a zombie (kill -0 succeeds on an unreaped zombie, so it
# cannot tell that a daemon started with & has died).
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# stop_daemon PID: SIGTERM, wait up to 30 s (then SIGKILL), reap; sets daemon_rc to the exit
# status (128+signal if it was killed).
# shellcheck disable=SC2034 # daemon_rc is this function's result, read by the scenarios
stop_daemon() {
  kill -TERM "$1" 2>/dev/null
  _n=0
  while alive "$1" && [ $_n -lt 150 ]; do
    sleep 0.2
    _n=$((_n + 1))
  done
  if alive "$1"; then
    say "daemon still running 30 s after SIGTERM: SIGKILL"
    kill -KILL "$1"
  fi
  wait "$1"
  daemon_rc=$?
}

# bound_or_dead: true once the kernel logged the bind of cache "mycache"; fails the scenario at
# once if the daemon ($daemon_pid) has already exited, instead of waiting out the timeout.
bound_or_dead() {
  dmesg | grep -q "File cache on mycache registered" && return 0
  if ! alive "$daemon_pid"; then
    wait "$daemon_pid"
    fail "cachefilesd exited with status $? before binding the cache (see results/cachefilesd.log)"
  fi
  return 1
}

# start_daemon [ARG...]: starts $daemon ARG... -n -s -f $conf in the background (its stderr
# appended to $daemon_log, its pid in daemon_pid) and waits until the kernel has bound the cache.
# shellcheck disable=SC2120 # its arguments are optional
start_daemon() {
  "$daemon" "$@" -n -s -f "$conf" >>"$daemon_log" 2>&1 &
  daemon_pid=$!
  say "started cachefilesd $*, pid $daemon_pid (log: results/cachefilesd.log)"
  wait_for 30 "the daemon bound the cache (dmesg: File cache on mycache registered)" bound_or_dead
}

# serves_in MODE: waits until the daemon's control socket answers, then checks that the daemon
# reports MODE (classic, on-demand, fanotify).
ctl_answers() { "$ctl" -f "$conf" status >/dev/null 2>&1; }
serves_in() {
  wait_for 10 "the control socket answers" ctl_answers
  _mode=$(daemon_field mode) || fail "no status"
  check "the daemon serves in mode $1 (got $_mode)" test "$_mode" = "$1"
}

# worker_of PID: the pid of PID's child (a --supervise holder's worker); has_worker: the running
# daemon has one.
worker_of() {
  for s in /proc/[0-9]*/stat; do
    _pid=${s#/proc/}; _pid=${_pid%/stat}
    [ "$(sed 's/.*) //' "$s" 2>/dev/null | cut -d' ' -f2)" = "$1" ] && { echo "$_pid"; return 0; }
  done
  return 1
}
has_worker() { worker_of "$daemon_pid" >/dev/null; }

# json_field PATH: the value at PATH (dotted keys, array elements by index: ondemand.reads,
# ondemand.sources.0.errors) of the JSON document on stdin; strings without their quotes. Fails
# if there is no such scalar. A small tokenizer in awk (busybox has no JSON tool): it follows
# the nesting, so a key is found only at its place and the layout (pretty or compact) is free.
json_field() {
  awk -v want="$1" '
    function value(v,   p, k) {
      p = ""
      for (k = 1; k <= d; k++) p = p (k > 1 ? "." : "") key[k]
      if (p == want) { print v; found = 1 }
    }
    { s = s $0 "\n" }
    END {
      n = length(s); i = 1; d = 0
      while (i <= n && !found) {
        c = substr(s, i, 1)
        if (c == "{" || c == "[") {
          d++; kind[d] = c; key[d] = (c == "[") ? 0 : ""; wantkey[d] = (c == "{"); i++
        } else if (c == "}" || c == "]") {
          d--; i++
        } else if (c == ",") {
          if (kind[d] == "[") key[d]++; else wantkey[d] = 1
          i++
        } else if (index(": \t\r\n", c)) {
          i++
        } else if (c == "\"") {
          j = i + 1
          while (j <= n && (cj = substr(s, j, 1)) != "\"") j += (cj == "\\") ? 2 : 1
          tok = substr(s, i + 1, j - i - 1); i = j + 1
          if (kind[d] == "{" && wantkey[d]) { key[d] = tok; wantkey[d] = 0 } else value(tok)
        } else {
          j = i
          while (j <= n && !index(",}] \t\r\n", substr(s, j, 1))) j++
          value(substr(s, i, j - i)); i = j
        }
      }
      exit !found
    }'
}

# daemon_field PATH [CONF]: one field of the running daemon's report, as `cachefilesctl status
# --json` gets it over the control socket of CONF (default $conf); the field names are those of
# src/report.rs (ondemand.reads, culling.skipped_in_use, ...). Fails if the daemon does not
# answer or the report has no such field; use as `x=$(daemon_field P) || fail ...`.
daemon_field() {
  if ! "$ctl" -f "${2:-$conf}" status --json >/tmp/status.json 2>/tmp/status.err; then
    say "cachefilesctl status --json failed: $(cat /tmp/status.err)" >&2
    return 1
  fi
  json_field "$1" </tmp/status.json
}

# show_status CONF MODE: prints `cachefilesctl status` (the operator's view) and checks that the
# daemon reports MODE (classic or on-demand) over its control socket and that `metrics` answers
# in the Prometheus format (if cachefilesctl exists).
show_status() {
  [ -x "$ctl" ] || return 0
  "$ctl" -f "$1" status >/tmp/status.txt 2>&1
  say "cachefilesctl status:"; sed 's/^/    /' /tmp/status.txt
  _mode=$(daemon_field mode "$1")
  check "cachefilesctl status --json answers: mode $2 (got '$_mode')" test "$_mode" = "$2"
  "$ctl" -f "$1" metrics >/tmp/metrics.txt 2>&1
  check "cachefilesctl metrics answers in Prometheus format" grep -q '^cachefilesd_uptime_seconds ' /tmp/metrics.txt
}

# classic_conf BRUN BCULL BSTOP: writes $conf for classic mode: dir $cache, tag mycache, those
# block limits (percent) and the file limits 10/7/3 %. The limits are listed in an order that is
# valid step by step from the kernel's defaults (7/5/1), so even a daemon that forwards lines one
# by one gets them accepted.
classic_conf() {
  cat >"$conf" <<EOC
dir $cache
tag mycache
brun $1%
bcull $2%
bstop $3%
frun 10%
fcull 7%
fstop 3%
EOC
}

# ondemand_conf: writes $conf for on-demand mode: dir $cache, tag mycache, ondemand $map.
ondemand_conf() { printf 'dir %s\ntag mycache\nondemand %s\n' "$cache" "$map" >"$conf"; }

# mount_9p: the host's test files (9p tag fscached) at /mnt with cache=fscache (msize=$MSIZE if set).
mount_9p() { mount -t 9p -o trans=virtio,version=9p2000.L,cache=fscache${MSIZE:+,msize=$MSIZE} fscached /mnt; }

# erofs_mount FSID: EROFS over fscache at /mnt. A mount waits for the daemon's answers; the waits
# are killable, so bound them.
erofs_mount() { timeout -s KILL 120 mount -t erofs none -o "fsid=$1" /mnt; }

# verify_sums LIST [DIR]: sha256sum -c LIST in DIR (default /mnt), showing only the lines that are
# not OK (at most 10); the status is sha256sum's.
verify_sums() {
  (cd "${2:-/mnt}" && sha256sum -c "$1") >/tmp/verify.out 2>&1
  _rc=$?
  grep -v ': OK$' /tmp/verify.out | head -n 10
  return $_rc
}
