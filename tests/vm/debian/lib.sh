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
