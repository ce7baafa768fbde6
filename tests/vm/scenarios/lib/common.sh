# Helpers shared by the scenario scripts (sourced; busybox sh). Not a scenario itself: run-suite
# only runs scenarios/*.sh.
#
# Conventions: print what is checked; exit 1 on the first failed check (after running the
# scenario's on_fail hook, if it defines one); exit 77 with the reason as the last line of stdout
# to skip; `pass` refuses to report success if no check ran.

# The guest's paths, the same in every daemon scenario (a scenario may set its own after sourcing
# this file). daemon_pid is the running daemon's pid (bound_or_dead, daemon_reads use it).
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
  exit 1
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

skip() { echo "SKIP: $*"; exit 77; }

# Kernel trouble (BUG, oops, WARN) fails a scenario even if all its own checks passed.
kernel_log_clean() { ! dmesg | grep -qE 'kernel BUG|Oops|WARNING: CPU|general protection|Call Trace'; }

pass() {
  [ "$checks" -gt 0 ] || fail "scenario ran no checks"
  check "no kernel BUG/oops/warning in dmesg" kernel_log_clean
  say "PASS: $checks checks"
  exit 0
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
threshold() { echo $(( $1 / 100 * $2 )); }

# Name cachefiles gives the data object of a 9p inode (fs/cachefiles/key.c, cachefiles_cook_key):
# the 9p cookie key is the 8-byte little-endian qid.path, and on 64-bit i_ino = qid.path + 2
# (fs/9p/v9fs_vfs.h QID2INO). Such a key is never printable (its high bytes are 0 for any real
# inode number), so the name is "S"/"T" + comma separated hex words (zero words empty) when that
# is shorter than the 14-character base64 form; "S" (big-endian words) wins ties.
ninep_object_name() { # INODE
  _path=$(( $1 - 2 ))
  _lo=$(( _path & 0xffffffff ))
  _hi=$(( (_path >> 32) & 0xffffffff ))
  _blo=$(bswap32 "$_lo")
  _bhi=$(bswap32 "$_hi")
  _nle=$(( 2 + $(hexdigits "$_lo") + $(hexdigits "$_hi") ))
  _nbe=$(( 2 + $(hexdigits "$_blo") + $(hexdigits "$_bhi") ))
  # base64 form: 2 + 4*ceil(8/3) = 14 characters; words are used only when shorter.
  if [ "$_nbe" -ge 14 ] && [ "$_nle" -ge 14 ]; then
    echo "base64-name-not-supported"
    return
  fi
  if [ "$_nbe" -le "$_nle" ]; then
    echo "S$(hexword "$_blo"),$(hexword "$_bhi")"
  else
    echo "T$(hexword "$_lo"),$(hexword "$_hi")"
  fi
}
bswap32() { echo $(( (($1 & 0xff) << 24) | (($1 & 0xff00) << 8) | (($1 >> 8) & 0xff00) | (($1 >> 24) & 0xff) )); }
hexword() { [ "$1" -eq 0 ] || printf '%x' "$1"; }
hexdigits() { if [ "$1" -eq 0 ]; then echo 0; else printf '%x' "$1" | wc -c; fi; }

# alive PID: the process exists and is not a zombie (kill -0 succeeds on an unreaped zombie, so it
# cannot tell that a daemon started with & has died).
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# stop_daemon PID: SIGTERM, wait up to 30 s (then SIGKILL), reap; sets daemon_rc to the exit
# status (128+signal if it was killed).
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

# daemon_reads: N of the daemon's "reads N" statistic (READ requests received so far), after
# asking it ($daemon_pid, logging to $daemon_log) for a fresh stats line with SIGUSR1.
daemon_reads() {
  _before=$(grep -c 'reads [0-9]' "$daemon_log")
  kill -USR1 "$daemon_pid"
  _n=0
  while [ "$(grep -c 'reads [0-9]' "$daemon_log")" -le "$_before" ] && [ $_n -lt 100 ]; do
    sleep 0.1
    _n=$((_n + 1))
  done
  grep -o 'reads [0-9]*' "$daemon_log" | tail -n 1 | cut -d' ' -f2
}

# show_status CONF EXPECT: prints `cachefilesctl status` and checks it has a line starting
# with EXPECT, and that `metrics` answers in the Prometheus format (if cachefilesctl exists).
show_status() {
  [ -x /usr/sbin/cachefilesctl ] || return 0
  /usr/sbin/cachefilesctl -f "$1" status >/tmp/status.txt 2>&1
  say "cachefilesctl status:"; sed 's/^/    /' /tmp/status.txt
  check "cachefilesctl status answers ($2)" grep -q "^$2" /tmp/status.txt
  /usr/sbin/cachefilesctl -f "$1" metrics >/tmp/metrics.txt 2>&1
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
