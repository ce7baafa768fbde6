#!/usr/bin/env bash
# Boots the test kernel + initramfs under qemu (TCG) and runs one scenario:
#   run-vm.sh --kernel K --initrd I --scenario NAME --results DIR
#             [--data DIR] [--fscached DIR] [--timeout SEC] [--smp N] [--mem M] [--disk-size S]
#             [--disk-from TREE [--disk-inodes N] [--disk-copies K]]
#             [--append "KERNEL ARGS"]   (NAME=value words the kernel does not know end up in the
#                                         environment of /init and so of the scenario)
#   run-vm.sh --root-disk IMG --input DIR (instead of --initrd) ...
#             boots the Debian image IMG (build-debian-image.sh; used read-only: qemu keeps the
#             guest's writes in a temporary overlay for the whole run, reboots included) with
#             systemd as PID 1; its vmtest.service runs DIR/runner.sh from the 9p share `input`
#             (read-only, at /vmtest). The cache disk is then /dev/vdb (/dev/vda is the root);
#             the guest may reboot (no -no-reboot), it ends the run by powering off.
#
# Guest hardware:
#   /dev/vda   fresh sparse ext4 image (DIR/cache.img, --disk-size, default 256M) for the cache;
#              with --disk-from TREE it is populated from the host directory TREE (mke2fs -d:
#              contents, modes, owners and atimes/mtimes to the second), with --disk-inodes
#              inodes (mke2fs -N) if given (make-prefilled-cache.py makes such trees),
#   /dev/vdb.. --disk-copies K (default 1): K-1 more identical copies of that image
#              (DIR/cache-2.img ...), e.g. to run two daemons on the same starting state,
#   9p `results`  DIR, read-write: the guest writes status, output.log, dmesg.txt there,
#   9p `fscached` a host directory of test files for cache=fscache mounts (read-only; default
#                 target/vm/fscached, created by make-fscached-data.sh). Always present, and on
#                 a device of its own: one virtio-9p device serves one mount,
#   9p `data`     --data DIR, read-only, mounted by /init at /data (only with --data).
# Serial console goes to DIR/console.log (VM_CONSOLE=1 also shows it live).
#
# The result (PASS, SKIP or FAIL and why: scenarios/lib/status.sh, scenario_result) goes to
# DIR/result as "RESULT<TAB>DETAIL"; the exit status is 0 for PASS, 77 for SKIP, 1 for FAIL (a
# missing status file or a timeout included).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { echo "run-vm: $*" >&2; }
# shellcheck source=SCRIPTDIR/scenarios/lib/status.sh
. "$here/scenarios/lib/status.sh"
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

kernel='' initrd='' root_disk='' input='' scenario='' results='' data='' fscached='' extra_append=''
timeout=300 smp=2 mem=1024M disk_size=256M
disk_from='' disk_inodes='' disk_copies=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --root-disk) root_disk=$2; shift 2 ;;
    --input) input=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --fscached) fscached=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --disk-size) disk_size=$2; shift 2 ;;
    --append) extra_append=$2; shift 2 ;;
    --disk-from) disk_from=$2; shift 2 ;;
    --disk-inodes) disk_inodes=$2; shift 2 ;;
    --disk-copies) disk_copies=$2; shift 2 ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
if [ -z "$kernel" ] || [ -z "$initrd$root_disk" ] || [ -z "$scenario" ] || [ -z "$results" ]; then usage; fi
[ -f "$kernel" ] || { log "no kernel at $kernel"; exit 1; }
if [ -n "$root_disk" ]; then
  [ -f "$root_disk" ] || { log "no root disk at $root_disk"; exit 1; }
  [ -f "$input/runner.sh" ] || { log "--input '$input' has no runner.sh"; exit 1; }
else
  [ -f "$initrd" ] || { log "no initramfs at $initrd"; exit 1; }
fi
[ -z "$data" ] || [ -d "$data" ] || { log "--data $data is not a directory"; exit 1; }
case "$timeout" in ''|*[!0-9]*) log "--timeout wants seconds"; exit 2 ;; esac
[ -z "$disk_from" ] || [ -d "$disk_from" ] || { log "--disk-from $disk_from is not a directory"; exit 1; }
case "$disk_copies" in [1-9]) ;; *) log "--disk-copies wants 1..9"; exit 2 ;; esac

mkdir -p "$results"
results=$(cd "$results" && pwd)
# Results of an earlier run must not be mistaken for this one's.
rm -f "$results"/{status,result,output.log,dmesg.txt,console.log,cache.img,cachefilesd.log} "$results"/cache-[0-9].img

fscached=${fscached:-$repo/target/vm/fscached}
"$here/make-fscached-data.sh" "$fscached"

# The cache disk: sparse, fresh per run. -m 0: no root reserve, so f_bavail (what cachefiles
# compares with its thresholds) is simply the free space; 4 KiB blocks regardless of size.
PATH=$PATH:/usr/sbin:/sbin
truncate -s "$disk_size" "$results/cache.img"
if [ -n "$disk_from" ]; then
  # Needs e2fsprogs >= 1.43 (-d). Zero blocks in the source files become holes.
  disk_start=$(date +%s.%N)
  mke2fs -q -F -t ext4 -m 0 -b 4096 -L fscache ${disk_inodes:+-N "$disk_inodes"} \
    -d "$disk_from" "$results/cache.img"
  for i in $(seq 2 "$disk_copies"); do
    cp --sparse=always "$results/cache.img" "$results/cache-$i.img"
  done
  log "cache disk from $disk_from ($disk_size, $disk_copies cop$([ "$disk_copies" = 1 ] && echo y || echo ies)):" \
    "$(awk -v a="$disk_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s"
else
  mke2fs -q -F -t ext4 -m 0 -b 4096 -L fscache "$results/cache.img"
  for i in $(seq 2 "$disk_copies"); do
    truncate -s "$disk_size" "$results/cache-$i.img"
    mke2fs -q -F -t ext4 -m 0 -b 4096 -L fscache "$results/cache-$i.img"
  done
fi

# The guest watchdog in /init fires 20 s before the host kills qemu, so a hang still leaves
# dmesg and a process list in DIR.
guest_timeout=$(( timeout > 40 ? timeout - 20 : timeout / 2 ))
append="console=ttyS0 panic=-1 quiet loglevel=4 scenario=$scenario vmtimeout=$guest_timeout $extra_append"

qemu=(qemu-system-x86_64 -nographic -accel tcg -smp "$smp" -m "$mem" -kernel "$kernel" -monitor none -nic none)
if [ -n "$root_disk" ]; then
  # systemd as PID 1 on the Debian root disk; snapshot=on keeps the cached image pristine.
  # panic=0: a reboot is a normal step of such a run, so a panic must not look like one.
  # systemd.show_status=1: every unit start on the console (console.log), for post-mortems.
  append="console=ttyS0 panic=0 quiet loglevel=4 systemd.show_status=1 root=/dev/vda rw scenario=$scenario vmtimeout=$guest_timeout $extra_append"
  qemu+=(-append "$append"
    -drive "file=$root_disk,if=virtio,format=raw,snapshot=on,cache=unsafe"
    -virtfs "local,path=$input,mount_tag=input,security_model=none,id=input,readonly=on"
    -device virtio-rng-pci)
else
  qemu+=(-no-reboot -initrd "$initrd" -append "$append")
fi
qemu+=(-drive "file=$results/cache.img,if=virtio,format=raw,cache=unsafe"
  -virtfs "local,path=$results,mount_tag=results,security_model=none,id=results"
  -virtfs "local,path=$fscached,mount_tag=fscached,security_model=none,id=fscached,readonly=on")
for i in $(seq 2 "$disk_copies"); do
  qemu+=(-drive "file=$results/cache-$i.img,if=virtio,format=raw,cache=unsafe")
done
if [ -n "$data" ]; then
  qemu+=(-virtfs "local,path=$data,mount_tag=data,security_model=none,id=data,readonly=on")
fi
if [ "${VM_CONSOLE:-0}" = 1 ]; then
  qemu+=(-chardev "stdio,id=con,signal=off,logfile=$results/console.log" -serial chardev:con)
else
  qemu+=(-serial "file:$results/console.log")
fi

log "scenario $scenario: qemu -smp $smp -m $mem, timeout ${timeout}s, results in $results"
start=$(date +%s.%N)
set +e
# -k: qemu ignoring SIGTERM must not outlive the timeout either.
timeout -k 10 "$timeout" "${qemu[@]}" </dev/null
qemu_rc=$?
set -e
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "$wall" >"$results/wall-seconds"
host_timeout=
case "$qemu_rc" in
  0) ;;
  124 | 137) host_timeout=1 ;;
  *) log "qemu exited with $qemu_rc" ;;
esac

read -r result detail < <(scenario_result "$results" ${host_timeout:+"$timeout"}) || true
printf '%s\t%s\n' "$result" "$detail" >"$results/result"
log "scenario $scenario: boot-to-result ${wall}s, $result${detail:+ ($detail)}"
exit "$(exit_code_of "$result")"
