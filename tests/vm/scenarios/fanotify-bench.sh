#!/bin/sh
# vm-timeout: 1500
# vm-kernel: 7.3
# vm-default: no
# vm-mem: 2048M
# vm-disk-size: 1G
# Benchmark (issue 15 item 7): a cold read of every file of a 256 MiB EROFS image of ~1000 files
# through the daemon's fanotify front end (local source on tmpfs, blob file on the ext4 cache
# disk) against the same image, copied whole onto the cache disk, mounted (a) through a loop
# device and (b) file-backed (mount(2) on the file); then a complete blob through
# `cachefilesctl mount` against (b). One boot, 3 rounds each, page cache dropped before every
# run, a fresh blob (new fsid, its file removed afterwards) for every fanotify run. Times include
# mount and umount. Needs the plain mount(2) helper (busybox's mount always takes a loop device):
#   cc -O2 -o target/vm/erofs-filemount tests/vm/erofs-filemount.c
#   VM_EXTRA_BINS=target/vm/erofs-filemount:erofs-filemount tests/vm/run-suite.sh fanotify-bench
# Goals: fanotify cold >= 0.9x loop cold; complete blob >= 0.98x file-backed. Lines BENCH and
# RATIO carry the figures; per fanotify run: events, ranges allowed at once, fetches, bytes
# fetched against bytes read, a plain copy of the image from the source to the cache disk (the
# fetches' own cost without events), the source's fetch latency percentiles from the report, the
# daemon's CPU time (split: loop thread, fetch workers) and how busy the guest's CPUs were (a
# run that leaves them idle waits on round trips, not on work), the loop thread's context
# switches, the guest's IPIs, writeback during the run, and the daemon's own log line of its
# per-event calls (read, fstat, answer, close: wall time summed since it started).
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

mb=${BENCH_MB:-256}
filemount=/usr/sbin/erofs-filemount
blobs=$cache/lazy

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 30 "$daemon_log" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 20
  grep -q ' /mnt ' /proc/mounts && umount /mnt
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null
}

[ -x "$filemount" ] || skip "no $filemount: build tests/vm/erofs-filemount.c and pass it in VM_EXTRA_BINS (see the header)"
check "mount the ext4 cache disk" mount -t ext4 /dev/vda "$cache"
mkdir -p /srv/erofs /etc/cachefilesd /tmp/tree
# ~mb MiB of random data in mb*4 files of 4 KiB to 508 KiB (256 KiB on average), 16 directories.
files=$((mb * 4))
n=0
while [ $n -lt $files ]; do
  d=/tmp/tree/d$((n % 16))
  [ -d "$d" ] || mkdir "$d"
  head -c $((4096 * (1 + (n * 37) % 127))) /dev/urandom >"$d/f$n"
  n=$((n + 1))
done
tree_kib=$(du -sk /tmp/tree | cut -f1)
check "mkfs.erofs the image ($files files, $tree_kib KiB)" sh -c "mkfs.erofs --quiet /srv/erofs/big /tmp/tree >/dev/null 2>&1"
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
rm -rf /tmp/tree
img_bytes=$(stat -c %s /srv/erofs/big)
say "image: $img_bytes bytes"
check "a complete local copy on the cache disk" cp /srv/erofs/big "$cache/copy.img"

printf '[[source]]\npath = "/srv/erofs/{fsid}"\n' >"$map"
[ -z "${READAHEAD:-}" ] || printf '[fetch]\nreadahead = %s\n' "$READAHEAD" >>"$map"
ondemand_conf
start_daemon
serves_in fanotify

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
read_all() { find /mnt -type f -exec cat {} + >/dev/null; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
field() { daemon_field "$1" || echo 0; }
ctl_mount() { timeout -s KILL 600 "$ctl" -f "$conf" mount "$1" /mnt; }
ctl_umount() { "$ctl" -f "$conf" umount /mnt >/dev/null; }
loop_mount() { mount -t erofs -o loop,ro "$cache/copy.img" /mnt; }
file_mount() { "$filemount" "$cache/copy.img" /mnt; }
# Busy and total jiffies of the guest's CPUs, and the daemon's own CPU (utime, stime; all its
# threads).
cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
daemon_ticks() { sed 's/.*) //' "/proc/$daemon_pid/stat" | awk '{ print $12, $13 }'; }
# The daemon's CPU by thread: the loop thread (events, answers), the fetch workers (source to
# blob file), the rest; user and sys ticks of each.
daemon_split() {
  for t in /proc/"$daemon_pid"/task/*; do
    line=$(cat "$t/stat" 2>/dev/null) || continue
    comm=${line#*(}; comm=${comm%)*}
    echo "${t##*/} $comm ${line##*) }"
  done | awk -v pid="$daemon_pid" '{ k = ($1 == pid) ? "l" : ($2 ~ /^fetch/ ? "f" : "o"); u[k] += $14; s[k] += $15 }
    END { printf "%d %d %d %d %d %d", u["l"], s["l"], u["f"], s["f"], u["o"], s["o"] }'
}
pages_written() { awk '/^nr_written / { print $2 }' /proc/vmstat; }
# Context switches of the daemon's loop thread; reschedule and function-call IPIs of the guest.
loop_switches() { awk '/ctxt_switches:/ { s += $2 } END { print s + 0 }' "/proc/$daemon_pid/task/$daemon_pid/status"; }
ipis() { awk '/^ *(RES|CAL):/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }' /proc/interrupts; }
# timed NAME MOUNT UMOUNT: page cache dropped, then mount + read every file + umount; appends the
# milliseconds to the list NAME_ms and leaves the guest's CPU use over the run in $busy_pct and
# the daemon's CPU time (total, user, sys) in $daemon_ms.
timed() {
  drop_caches
  _d0=$(daemon_ticks)
  _p0=$(daemon_split)
  _w0=$(pages_written)
  _x0=$(loop_switches)
  _i0=$(ipis)
  _c0=$(cpu_jiffies)
  _t0=$(now_ms)
  $2 || fail "$1: mount"
  read_all
  $3 || fail "$1: umount"
  _t1=$(now_ms)
  _c1=$(cpu_jiffies)
  busy_pct=$(( (${_c1% *} - ${_c0% *}) * 100 / (${_c1#* } - ${_c0#* } + 1) ))
  _d1=$(daemon_ticks)
  _p1=$(daemon_split)
  _w1=$(pages_written)
  _x1=$(loop_switches)
  _i1=$(ipis)
  switches="$((_x1 - _x0)) context switches of the loop thread, $((_i1 - _i0)) IPIs"
  # shellcheck disable=SC2086 # two lists of six numbers
  daemon_threads=$(echo $_p0 $_p1 | awk '{ printf "loop thread user %d ms sys %d ms, fetch workers user %d ms sys %d ms, other threads %d ms", ($7 - $1) * 10, ($8 - $2) * 10, ($9 - $3) * 10, ($10 - $4) * 10, ($11 + $12 - $5 - $6) * 10 }')
  written_mib=$(( (_w1 - _w0) * 4 / 1024 ))
  daemon_user_ms=$(( (${_d1% *} - ${_d0% *}) * 10 ))
  daemon_sys_ms=$(( (${_d1#* } - ${_d0#* }) * 10 ))
  daemon_ms="$((daemon_user_ms + daemon_sys_ms)) ms (user $daemon_user_ms, sys $daemon_sys_ms)"
  eval "$1_ms=\"\$$1_ms $((_t1 - _t0))\""
}

loop_ms='' file_ms='' copy_ms='' fan_ms='' complete_ms='' file2_ms=''
r=1
while [ $r -le 3 ]; do
  timed loop loop_mount "umount /mnt"
  loop_busy=$busy_pct
  timed file file_mount "umount /mnt"
  file_busy=$busy_pct
  check "no loop device under the file-backed mount" sh -c "! grep -q '^/dev/loop' /proc/mounts"
  # What every fetch does, without events or a reader: the image from the source into a new
  # file on the cache disk through a 1 MiB user-space buffer, written back (sync) before the
  # clock stops.
  copy_in() { dd if=/srv/erofs/big of="$cache/copytest" bs=1M 2>/dev/null && sync; }
  timed copy copy_in true
  copy_busy=$busy_pct
  rm -f "$cache/copytest"
  ln /srv/erofs/big "/srv/erofs/b$r"
  e0=$(field ondemand.fanotify.events); a0=$(field ondemand.fanotify.allowed_at_once)
  f0=$(field ondemand.reads); w0=$(field ondemand.bytes_written)
  timed fan "ctl_mount b$r" ctl_umount
  e1=$(field ondemand.fanotify.events); a1=$(field ondemand.fanotify.allowed_at_once)
  f1=$(field ondemand.reads); w1=$(field ondemand.bytes_written)
  p50=$(field ondemand.sources.0.latency_p50_seconds); p90=$(field ondemand.sources.0.latency_p90_seconds)
  p99=$(field ondemand.sources.0.latency_p99_seconds)
  say "BENCH round $r: loop ${loop_ms##* } ms (CPUs ${loop_busy}% busy), file-backed ${file_ms##* } ms (${file_busy}%), source-to-cache copy ${copy_ms##* } ms (${copy_busy}%), fanotify ${fan_ms##* } ms (${busy_pct}%, daemon CPU $daemon_ms: $daemon_threads; $written_mib MiB written back during the run);" \
    "fanotify: $((e1 - e0)) events, $((a1 - a0)) allowed at once, $((f1 - f0)) fetches, $((w1 - w0)) bytes fetched for $((tree_kib * 1024)) bytes of files ($img_bytes image);" \
    "$switches; $(grep -o 'fanotify so far: .*' "$daemon_log" | tail -n 1);" \
    "fetch latency so far p50 $p50 s, p90 $p90 s, p99 $p99 s; blob file $(du -k "$blobs/b$r/b$r" | cut -f1) KiB allocated"
  check "round $r: the fanotify run fetched" test $((w1 - w0)) -gt 0
  if [ $r -lt 3 ]; then
    rm -f "$blobs/b$r/b$r"
    rm -f "/srv/erofs/b$r"
  fi
  r=$((r + 1))
done
check "mount b3 again (not timed)" ctl_mount b3
check "every file has its sha256" verify_sums /tmp/tree.sha
check "umount" ctl_umount

# The complete blob: b3's file read whole once, so the daemon unmarks it (the next mount reuses
# the attachment, its umount detaches).
check "attach b3" sh -c "'$ctl' -f '$conf' attach b3 >/dev/null"
check "read b3's blob file whole" sh -c "cat '$blobs/b3/b3' >/dev/null"
check "the daemon counted b3 complete" test "$(field ondemand.fanotify.completed)" -ge 1
check "b3's file equals the image" cmp "$blobs/b3/b3" /srv/erofs/big
ec0=$(field ondemand.fanotify.events)
r=1
while [ $r -le 3 ]; do
  timed file2 file_mount "umount /mnt"
  file_busy=$busy_pct
  timed complete "ctl_mount b3" ctl_umount
  say "BENCH complete round $r: file-backed ${file2_ms##* } ms (CPUs ${file_busy}% busy), complete blob ${complete_ms##* } ms (${busy_pct}%, daemon CPU $daemon_ms)"
  r=$((r + 1))
done
ec1=$(field ondemand.fanotify.events)
check "the complete blob raised no event ($ec0 -> $ec1)" test "$ec1" = "$ec0"

median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | sed -n 2p; }
mibs() { awk -v k="$tree_kib" -v t="$1" 'BEGIN { printf "%.0f", k / 1024 * 1000 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
# shellcheck disable=SC2086 # the lists are split into their numbers
{
  lm=$(median $loop_ms); fm=$(median $file_ms); nm=$(median $fan_ms); km=$(median $copy_ms)
  f2m=$(median $file2_ms); cm=$(median $complete_ms)
}
say "BENCH cold: loop $lm ms ($(mibs "$lm") MiB/s) [$loop_ms], file-backed $fm ms ($(mibs "$fm") MiB/s) [$file_ms], fanotify $nm ms ($(mibs "$nm") MiB/s) [$fan_ms]; source-to-cache copy $km ms [$copy_ms]"
say "BENCH complete: file-backed $f2m ms ($(mibs "$f2m") MiB/s) [$file2_ms], complete blob $cm ms ($(mibs "$cm") MiB/s) [$complete_ms]"
say "RATIO fanotify/loop throughput $(ratio "$lm" "$nm") (goal >= 0.9), fanotify/file-backed $(ratio "$fm" "$nm"), complete/file-backed $(ratio "$f2m" "$cm") (goal >= 0.98)"
say "load: $(cat /proc/loadavg) (guest)"
check "measured every run" test -n "$lm" -a -n "$fm" -a -n "$nm" -a -n "$f2m" -a -n "$cm"
show_status "$conf" fanotify
stop_daemon "$daemon_pid"
daemon_pid=
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
check "umount the cache disk" umount "$cache"
pass
