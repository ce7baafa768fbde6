#!/usr/bin/env bash
# Runs the VM test scenarios:
#   run-suite.sh [SCENARIO...]        (default: every tests/vm/scenarios/*.sh except those whose
#                                      header says "# vm-default: no": benchmarks, run by name)
#
# Steps: build (or reuse) the kernel with build-kernel.sh; `cargo build --release --locked`;
# one initramfs with the release binaries (cachefilesd, and cachefilesctl if it exists); then one
# fresh VM per scenario with results in target/vm/<scenario>/. Prints a table
#   scenario  PASS/FAIL/SKIP  seconds  [reason]
# and exits non-zero if any scenario failed. On FAIL the tail of its console.log is shown.
#
# Environment:
#   KERNEL=path               run every scenario on this bzImage instead of the kernels their
#                             "# vm-kernel: SERIES..." headers name (build-kernel.sh; default 6.12)
#   CACHEFILESD_SKIP_CARGO=1  do not run cargo; use whatever binaries target/release holds
#   VM_BINS="FILE..."         put exactly these binaries in /usr/sbin instead (no cargo), e.g.
#                             VM_BINS=tests/vm/selftest/cachefilesd (a shell stand-in daemon)
#   CACHEFILESD_FEATURES=...  optional daemon features to test (e.g. "ondemand"), see ondemand.sh
#   VM_SMP                    qemu -smp for every scenario (default: the scenario's
#                             "# vm-smp: N" header, else 2)
#   VM_MEM                    qemu -m (default 1024M)
#   VM_TIMEOUT                per-scenario timeout in seconds, overriding the scenario's
#                             "# vm-timeout: N" header (default 300)
#   CARGO_TARGET_DIR          as for cargo (default: <repo>/target)
#   VM_EXTRA_SCENARIOS=DIR    extra scenario scripts, runnable by name (harness self-tests:
#                             tests/vm/selftest/scenarios)
#   VM_DATA=DIR               share DIR read-only as 9p tag `data` (mounted at /data)
#   VM_APPEND="A=b ..."       extra kernel command line; unknown NAME=value words reach the
#                             scenarios as environment variables
#   VM_DISK=prefilled-N       cache disk for every scenario run (default: the scenario's
#                             "# vm-disk: prefilled-N" header, else a fresh empty ext4): a cache
#                             of N 4 KiB objects with known atimes, made on the host by
#                             make-prefilled-cache.py (cached in target/vm/prefilled-N)
#   VM_DISK_COPIES=K          identical copies of that disk (/dev/vda, /dev/vdb, ...; default:
#                             the "# vm-disk-copies: K" header, else 1)
#   VM_EXTRA_BINS="SRC:NAME ..." more binaries for /usr/sbin under the given names; scenarios
#                             with the header "# vm-needs: c-cachefilesd" get Debian's C daemon
#                             as /usr/sbin/cachefilesd-c (fetch-c-cachefilesd.sh, apt-get download)
#                             plus the LD_PRELOAD shim c-cachefilesd-nodnotify.c and
#                             cullbench's unlink-list.c (need cc)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
vmdir=$target/vm
log() { echo "run-suite: $*" >&2; }
# shellcheck source=SCRIPTDIR/lib/scenario.sh
. "$here/lib/scenario.sh"

# Where a scenario's script lives (VM_EXTRA_SCENARIOS: see build-initramfs.sh).
script_of() {
  if [ -f "$here/scenarios/$1.sh" ]; then
    echo "$here/scenarios/$1.sh"
  elif [ -f "$here/debian/scenarios/$1.sh" ]; then
    echo "$here/debian/scenarios/$1.sh"
  elif [ -n "${VM_EXTRA_SCENARIOS:-}" ] && [ -f "$VM_EXTRA_SCENARIOS/$1.sh" ]; then
    echo "$VM_EXTRA_SCENARIOS/$1.sh"
  fi
}
# Every header is parsed once, here; the steps below ask `hdr NAME KEY`.
if [ $# -gt 0 ]; then
  scenarios=("$@")
  for s in "${scenarios[@]}"; do
    f=$(script_of "$s")
    [ -n "$f" ] || { log "no such scenario: $s (tests/vm/scenarios/$s.sh)"; exit 2; }
    scenario_headers "$s" "$f" || exit 2
  done
else
  scenarios=()
  for f in "$here"/scenarios/*.sh "$here"/debian/scenarios/*.sh; do
    s=$(basename "$f" .sh)
    scenario_headers "$s" "$f" || exit 2
    if [ "$(hdr "$s" default)" = no ]; then
      log "not in the default run: $s (run it by name)"
      continue
    fi
    scenarios+=("$s")
  done
fi

# 1. Kernels: each scenario runs on every series its "# vm-kernel:" header lists (default 6.12),
# as SCENARIO@SERIES when it lists several; KERNEL=path runs every scenario once on that image.
# build-kernel.sh prints the bzImage path as its last stdout line.
declare -A kernel_of=()
runs=()
for s in "${scenarios[@]}"; do
  series=$(hdr "$s" kernel)
  [ -z "${KERNEL:-}" ] || series=given
  read -r -a list <<<"${series:-6.12}"
  for k in "${list[@]}"; do
    if [ -z "${kernel_of[$k]+set}" ]; then
      if [ "$k" = given ]; then
        kernel_of[$k]=$KERNEL
      else
        kernel_of[$k]=$("$here/build-kernel.sh" "$k" | tail -n 1)
      fi
      [ -f "${kernel_of[$k]}" ] || { log "no kernel image for $k ('${kernel_of[$k]}')"; exit 1; }
      log "kernel $k: ${kernel_of[$k]}"
    fi
    if [ "${#list[@]}" -gt 1 ]; then runs+=("$s@$k"); else runs+=("$s@$k="); fi
  done
done

# 2. The daemon. A failed build is not fatal: the smoke scenario needs no daemon, and the daemon
# scenarios then fail with "no /usr/sbin/cachefilesd in the initramfs" - stale binaries from an
# earlier build are deliberately not used.
bins=()
cargo_ok=1
if [ -n "${VM_BINS:-}" ]; then
  # Explicit binaries (e.g. the shell stand-in tests/vm/selftest/cachefilesd): no cargo.
  read -r -a bins <<<"$VM_BINS"
  cargo_ok=0
elif [ "${CACHEFILESD_SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --release --locked"
  if ! (cd "$repo" && cargo build --release --locked >&2); then
    log "WARNING: cargo build failed; the initramfs gets no daemon binaries"
    cargo_ok=0
  fi
fi
if [ "$cargo_ok" = 1 ] && [ -z "${VM_BINS:-}" ]; then
  for b in cachefilesd cachefilesctl; do
    if [ -x "$target/release/$b" ]; then
      bins+=("$target/release/$b")
    elif [ "$b" = cachefilesd ]; then
      log "WARNING: $target/release/cachefilesd does not exist; daemon scenarios will fail"
    fi
  done
fi

# 3. One initramfs for all scenarios, with the extra binaries they ask for.
mkdir -p "$vmdir"
extra_bins=${VM_EXTRA_BINS:-}
for s in "${scenarios[@]}"; do
  if [ "$(hdr "$s" needs)" = c-cachefilesd ] && [[ " $extra_bins" != *:cachefilesd-c* ]]; then
    if c_daemon=$("$here/fetch-c-cachefilesd.sh" | tail -n 1) && [ -x "$c_daemon" ]; then
      extra_bins="$extra_bins $c_daemon:cachefilesd-c"
      # The test kernel has no dnotify, which the C daemon needs (see the shim's comment).
      shim=$vmdir/cachefilesd-c-nodnotify.so
      if cc -shared -fPIC -O2 -o "$shim" "$here/c-cachefilesd-nodnotify.c" -ldl; then
        extra_bins="$extra_bins $shim:cachefilesd-c-nodnotify.so"
      else
        log "WARNING: cannot build the nodnotify shim (no cc?); the C daemon will exit at its first reap"
      fi
      if cc -O2 -o "$vmdir/unlink-list" "$here/unlink-list.c"; then
        extra_bins="$extra_bins $vmdir/unlink-list:unlink-list"
      fi
    else
      log "WARNING: could not fetch Debian's cachefilesd; $s will fail or skip"
    fi
  fi
done
# The 9p test files first: the initramfs carries the kernel's names of their cache objects.
"$here/make-fscached-data.sh" "$vmdir/fscached"
initrd=$vmdir/initramfs.cpio.gz
VM_EXTRA_BINS=$extra_bins VM_FSCACHED=$vmdir/fscached \
  "$here/build-initramfs.sh" "$initrd" ${bins[@]+"${bins[@]}"}

# 3b. Scenarios of kind debian boot a Debian image with systemd (build-debian-image.sh) and install
# the Debian package (packaging/build-deb.sh, or CACHEFILESD_DEB=path), handed to the guest with
# the scenario in the 9p share `input`.
root_disk='' input=''
for s in "${scenarios[@]}"; do
  case "$(hdr "$s" kind)" in
    '') continue ;;
    debian) ;;
    *) log "unknown vm-kind '$(hdr "$s" kind)' for $s (want debian)"; exit 2 ;;
  esac
  [ -z "$root_disk" ] || continue
  root_disk=$("$here/build-debian-image.sh" | tail -n 1)
  deb=${CACHEFILESD_DEB:-}
  if [ -z "$deb" ]; then
    (cd "$repo" && packaging/build-deb.sh >&2) || log "WARNING: packaging/build-deb.sh failed"
    deb=$(find "$target/debian" -maxdepth 1 -name 'cachefilesd-rs_*.deb' -printf '%T@ %p\n' 2>/dev/null |
      sort -n | tail -n 1 | cut -d' ' -f2-)
  fi
  input=$vmdir/debian-input
  rm -rf "$input"
  mkdir -p "$input"
  cp "$here/debian/runner.sh" "$here/debian/lib.sh" "$here/scenarios/lib/status.sh" "$input/"
  if [ -n "$deb" ] && [ -f "$deb" ]; then
    cp "$deb" "$input/cachefilesd-rs.deb"
  else
    log "WARNING: no cachefilesd-rs .deb; the debian scenarios will fail"
  fi
done

# 4. The scenarios.
declare -A result seconds reason
any_fail=0
labels=()
for run in "${runs[@]}"; do
  # "S@K=": scenario S on its only kernel K, labelled S; "S@K": one of several, labelled S@K.
  s=${run%%@*}
  k=${run#*@}
  k=${k%=}
  kernel=${kernel_of[$k]}
  label=$s
  [[ "$run" == *= ]] || label=$s@$k
  labels+=("$label")
  results=$vmdir/$label
  rm -rf "$results"
  mkdir -p "$results"
  timeout=${VM_TIMEOUT:-$(hdr "$s" timeout)}
  timeout=${timeout:-300}
  # "# vm-smp: N" in a scenario pins its CPU count (VM_SMP overrides every scenario).
  smp=${VM_SMP:-$(hdr "$s" smp)}
  smp=${smp:-2}
  # "# vm-disk: prefilled-N": a cache disk pre-filled on the host (make-prefilled-cache.py).
  disk=${VM_DISK:-$(hdr "$s" disk)}
  copies=${VM_DISK_COPIES:-$(hdr "$s" disk-copies)}
  disk_args=(--disk-copies "${copies:-1}")
  # "# vm-mem: 2048M" and "# vm-disk-size: 1G" for scenarios that need more than the defaults.
  mem=${VM_MEM:-$(hdr "$s" mem)}
  disk_size=$(hdr "$s" disk-size)
  disk_append=
  case "$disk" in
    '') [ -z "$disk_size" ] || disk_args+=(--disk-size "$disk_size") ;;
    prefilled-[0-9]*)
      n=${disk#prefilled-}
      "$here/make-prefilled-cache.py" "$n" "$vmdir/$disk"
      disk_args+=(--disk-from "$vmdir/$disk/tree" --disk-size "$(cat "$vmdir/$disk/disk-size")"
        --disk-inodes "$(cat "$vmdir/$disk/inodes")")
      # The scenario learns N from the kernel command line (unknown words become env vars).
      disk_append="prefilled_objects=$n"
      ;;
    *) log "unknown disk '$disk' for $s (want prefilled-N)"; exit 2 ;;
  esac
  start=$(date +%s)
  set +e
  boot_args=(--initrd "$initrd")
  if [ "$(hdr "$s" kind)" = debian ]; then
    cp "$(script_of "$s")" "$input/scenario.sh"
    boot_args=(--root-disk "$root_disk" --input "$input")
  fi
  "$here/run-vm.sh" --kernel "$kernel" "${boot_args[@]}" --scenario "$s" --results "$results" \
    --fscached "$vmdir/fscached" --timeout "$timeout" --smp "$smp" --mem "${mem:-1024M}" \
    "${disk_args[@]}" ${VM_DATA:+--data "$VM_DATA"} \
    --append "${VM_APPEND:-}${disk:+ $disk_append}"
  set -e
  seconds[$label]=$(( $(date +%s) - start ))
  # run-vm.sh wrote the result (scenarios/lib/status.sh maps the guest's status).
  if ! IFS=$'\t' read -r "result[$label]" "reason[$label]" <"$results/result" 2>/dev/null; then
    result[$label]=FAIL
    reason[$label]="run-vm.sh wrote no result (see its messages above)"
  fi
  if [ "${result[$label]}" = FAIL ]; then
    any_fail=1
    echo "----- $label: FAIL, last 40 lines of $results/console.log -----" >&2
    tail -n 40 "$results/console.log" 2>/dev/null | tr -d '\r' >&2 || true
    echo "----- end of $label -----" >&2
  fi
done

echo
printf '%-22s %-6s %7s  %s\n' scenario result seconds detail
for l in "${labels[@]}"; do
  printf '%-22s %-6s %7s  %s\n' "$l" "${result[$l]}" "${seconds[$l]}" "${reason[$l]}"
done
exit $any_fail
