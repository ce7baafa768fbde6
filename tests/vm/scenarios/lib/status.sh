# shellcheck shell=sh
# The one mapping between a scenario's exit status and its result (sourced; POSIX sh, so that
# busybox sh in the guest and bash on the host read the same file). The guest's /init and
# lib/common.sh write these codes, run-vm.sh and run-suite.sh read them back through
# scenario_result; nothing else knows the numbers.
# shellcheck disable=SC2034 # the codes are used by the scripts that source this file
{
  status_pass=0
  status_fail=1
  status_no_scenario=2 # /init: the kernel command line named no scenario script
  status_skip=77       # the reason is the last line of output.log
  status_timeout=124   # /init's watchdog fired (like timeout(1))
}

# scenario_result DIR [HOST_TIMEOUT]: prints "RESULT<TAB>DETAIL" for the results directory of one
# VM run: RESULT is PASS, SKIP or FAIL, from DIR/status (written by the guest, the only pass/fail
# signal), or FAIL when the host had to kill qemu (HOST_TIMEOUT: its limit in seconds).
scenario_result() {
  _dir=$1
  _status=$(tr -d '[:space:]' 2>/dev/null <"$_dir/status" || true)
  if [ -n "${2:-}" ]; then
    _result=FAIL _detail="timeout after ${2}s, qemu killed (guest status: ${_status:-none})"
  else
    case "$_status" in
      "$status_pass") _result=PASS _detail= ;;
      "$status_skip") _result=SKIP _detail=$(_last_line "$_dir/output.log") ;;
      "$status_timeout") _result=FAIL _detail="timed out in the guest (init's watchdog fired before the host timeout)" ;;
      "$status_no_scenario") _result=FAIL _detail="no such scenario in the initramfs" ;;
      '') _result=FAIL _detail="no status file (guest crashed or never ran the scenario)" ;;
      *) _result=FAIL _detail="status $_status: $(_first_fail "$_dir/output.log")" ;;
    esac
  fi
  if [ "$_result" = FAIL ] && grep -qE 'kernel BUG|Oops' "$_dir/dmesg.txt" 2>/dev/null; then
    _detail="$_detail [kernel BUG/oops in dmesg.txt]"
  fi
  printf '%s\t%s\n' "$_result" "$_detail"
}

# exit_code_of RESULT: the exit status a runner gives for a result (run-vm.sh).
exit_code_of() {
  case "$1" in
    PASS) echo "$status_pass" ;;
    SKIP) echo "$status_skip" ;;
    *) echo "$status_fail" ;;
  esac
}

# Text helpers; they never fail (the host scripts run with set -e and pipefail).
_last_line() { { grep -v '^[[:space:]]*$' "$1" 2>/dev/null || true; } | tail -n 1 | tr -d '\r'; }
_first_fail() { { grep -m 1 'FAIL:' "$1" 2>/dev/null || true; } | sed 's/^\[[0-9. ]*\] *//' | tr -d '\r'; }
