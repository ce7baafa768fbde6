# shellcheck shell=sh
# Helpers for the Debian VM's scenarios (sourced by runner.sh and the scenario; dash).
# The numbers are those of ../scenarios/lib/status.sh; $reboot_requested is the runner's own.
# shellcheck disable=SC2034 # used by the scripts that source this file
reboot_requested=100

say() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
# fail MESSAGE: the scenario's first failed check ends it - except while $soft is set (steps
# whose failure leaves the system usable for the next ones): then it is recorded, fail returns
# 1, and finish_checks fails the scenario at its end.
soft_failed=/var/lib/vmtest/soft-failed
fail() {
  say "FAIL: $*"
  if [ -n "${soft:-}" ]; then
    echo "$*" >>"$soft_failed"
    return 1
  fi
  command -v on_fail >/dev/null 2>&1 && on_fail
  exit 1
}
# finish_checks: fails if a check failed while $soft was set.
finish_checks() {
  if [ -s "$soft_failed" ]; then
    soft=
    fail "$(wc -l <"$soft_failed") check(s) failed earlier: $(paste -sd ';' "$soft_failed")"
  fi
}
# check WHAT COMMAND...: runs COMMAND, prints "ok: WHAT" or fails with WHAT.
check() {
  _what=$1
  shift
  if "$@"; then say "ok: $_what"; else fail "$_what"; fi
}
# same GOT WANT: for check; prints both on a mismatch.
same() { [ "$1" = "$2" ] || { say "  expected [$2], got [$1]"; return 1; }; }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.5 s.
wait_for() {
  _limit=$1 _what=$2
  shift 2
  _t=0
  while ! "$@"; do
    _t=$((_t + 1))
    [ "$_t" -le $((_limit * 2)) ] || { fail "$_what (not within ${_limit}s)"; return 1; }
    sleep 0.5
  done
  say "ok: $_what"
}
# next_phase: ends this phase; the runner reboots and starts the next one.
next_phase() { exit "$reboot_requested"; }
# atimes DIR FILE: every file (cache object) under DIR as "ATIME INODE PATH" lines in FILE
# (atime in seconds with nanoseconds, fixed width, so atimes compare as strings), for
# lru_verdict.
atimes() { find "$1" -type f -printf '%A@ %i %P\n' | sort >"$2"; }
# lru_verdict BEFORE AFTER EXCUSED: did culling keep LRU order? BEFORE: atimes of every object
# before the pressure; AFTER: "INODE PATH" of the objects left. True when something was culled
# and something kept, and at most EXCUSED (objects the daemon skipped as in use) of the kept
# ones are older than the newest culled one. Prints the figures and every counterexample (up
# to 10 of each kind). Objects created after BEFORE are not judged.
lru_verdict() {
  awk -v excused="$3" '
    FNR == NR { left[$0] = 1; next }
    {
      t = "t" $1
      key = substr($0, length($1) + 2)
      if (key in left) {
        kept[++nk] = $0
        if (nk == 1 || t < oldest_kept) oldest_kept = t
      } else {
        culled[++nc] = $0
        if (nc == 1 || t > newest_culled) newest_culled = t
      }
    }
    END {
      bad = 0
      for (i = 1; i <= nk; i++) {
        split(kept[i], f, " ")
        if (nc > 0 && "t" f[1] < newest_culled && ++bad <= 10)
          print "    kept although older than the newest culled: " kept[i]
      }
      shown = 0
      for (i = 1; i <= nc; i++) {
        split(culled[i], f, " ")
        if (nk > 0 && "t" f[1] > oldest_kept && ++shown <= 10)
          print "    culled although newer than the oldest kept: " culled[i]
      }
      printf "    %d culled, %d kept; newest culled atime %s, oldest kept %s; %d kept out of order, %d excused (in use)\n",
        nc, nk, substr(newest_culled, 2), substr(oldest_kept, 2), bad, excused
      exit !(nc > 0 && nk > 0 && bad <= excused)
    }' "$2" "$1"
}
