#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of every parser (cargo-fuzz, libFuzzer): builds the targets,
# then runs each for SECONDS (default 60), as many at once as there are cores, on a temporary
# copy of its committed seeds (corpus/TARGET), so the tree stays clean. A panic or failed
# assertion, an input slower than 10 s, or 2 GiB of memory fails the run; the input is printed
# in hex and kept in artifacts/TARGET/ (replay it with `cargo fuzz run -s none TARGET FILE`).
#
#   fuzz/run.sh [SECONDS [TARGET...]]       needs cargo-fuzz (see .ci/run for the version)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
[ $# -eq 0 ] || shift
# The parsers are safe Rust (no `unsafe` in src/proto, src/config.rs, src/ondemand/sourcemap.rs,
# src/cachedir/layout.rs, src/cachedir/names.rs, src/ondemand/sources/head.rs,
# src/control.rs):
# without AddressSanitizer a target runs 4-9x more inputs, and nothing needs a nightly feature,
# so the stable toolchain builds it.
flags=(--sanitizer none)

cargo fetch --locked --quiet # Cargo.lock is committed: fail rather than resolve anew
built=$SECONDS
cargo fuzz build "${flags[@]}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
jobs=$(nproc)
echo "fuzz: built in $((SECONDS - built))s; ${#targets[@]} targets, ${seconds}s each, $jobs at a time"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/start"

run() { # TARGET: fuzz it for $seconds; one line of statistics, or the failure and its input
  local t=$1 log=$work/$1.log out f
  mkdir "$work/$t"
  if [ -d "corpus/$t" ]; then cp "corpus/$t"/* "$work/$t/"; fi
  if cargo fuzz run "${flags[@]}" "$t" "$work/$t" -- -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    printf '%-16s %11s execs in %ss (%s/s), %s, corpus %s entries (%s seeds)\n' "$t" \
      "$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")" "$seconds" \
      "$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")" \
      "$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)" \
      "$(find "$work/$t" -type f | wc -l)" "$(find "corpus/$t" -type f 2>/dev/null | wc -l)"
    return 0
  fi
  # The panic and its backtrace, libFuzzer's own error (timeout, out of memory), else the end.
  out=$(awk '/panicked at|ERROR: libFuzzer|ALARM:|out-of-memory/ { p = 1 } p && n++ < 40' "$log")
  [ -n "$out" ] || out=$(tail -n 40 "$log")
  out="FAIL $t:"$'\n'$out
  while IFS= read -r f; do
    out+=$'\n'"input $f ($(stat -c %s "$f") bytes), hex:"$'\n'$(od -An -tx1 -v "$f" | head -n 256 || true)
  done < <(find "artifacts/$t" -type f -newer "$work/start" 2>/dev/null)
  printf '%s\n' "$out"
  return 1
}

failed=0 running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
  run "$t" &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
if [ "$failed" -ne 0 ]; then
  echo "fuzz: a target failed (see above)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no failure"
