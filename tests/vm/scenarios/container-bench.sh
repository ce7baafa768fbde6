#!/bin/sh
# vm-timeout: 1800
# vm-smp: 2
# vm-default: no
# vm-mem: 2048M
# vm-disk-size: 2G
# Benchmark (issue 17 item 4c): a container start. The EROFS image of a Debian root filesystem
# (tests/vm/build-container-image.sh: debootstrap minbase + python3, mkfs.erofs) runs
# `python3 -c 'import json, sqlite3'` chrooted, cold, four ways, alternating, 3 rounds:
#   loop-local   cp of the whole image from the source to the disk, loop mount, chroot, run,
#   loop-http    busybox wget of the whole image from busybox httpd on the guest's loopback,
#                loop mount, chroot, run,
#   daemon-local mount -t erofs -o fsid=... through our daemon (local source), chroot, run,
#   daemon-http  the same with the url source on that httpd,
#   daemon-nginx (only if the initramfs has nginx: VM_EXTRA_BINS=/usr/sbin/nginx:nginx) the
#                same from nginx, which keeps connections alive (busybox httpd closes each one),
#                with its access log giving the server's time per request,
#   daemon-warm  the daemon-local fsid mounted again, page cache dropped: everything is in the
#                cache file, no READ reaches the daemon (the on-demand path minus the fetching).
# Time is from the start (fetch or mount) to python's exit; bytes fetched are the image size
# for loop-*, and the source's byte counter of the daemon's report (ondemand.sources.N.bytes,
# plus prefetch.bytes) for daemon-*. Before each run the page cache is dropped and the daemon
# runs get an fsid they never saw (a fresh cache object). One daemon serves every run, as one
# that has been running all along would. The source image sits in the guest's RAM (initramfs),
# the pulled copy and the cache on the ext4 disk /dev/vda. No /dev, /proc or /sys is bound into
# the chroot: the image's own /dev nodes (debootstrap made them) are all python needs.
# Run with the image shared as 9p `data`:
#   img=$(tests/vm/build-container-image.sh | tail -n 1)
#   VM_DATA=$(dirname "$img") VM_EXTRA_BINS=/usr/sbin/nginx:nginx \
#     flock /tmp/vm.lock tests/vm/run-suite.sh container-bench
# Prints "CONTAINER ..." lines per run and the medians.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

port=8080
nport=8081
src=/srv/erofs
disk=/disk
cache=$disk/fscache
pull=$disk/pull
cmd="import json, sqlite3"

[ -f /data/root.erofs ] || skip "no /data/root.erofs: run with VM_DATA=\$(dirname \$(tests/vm/build-container-image.sh | tail -n 1))"
[ -x "$daemon" ] || fail "no $daemon in the initramfs"
[ -x "$ctl" ] || fail "no $ctl in the initramfs (the byte counts come from its status --json)"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes"; show_processes
}

mkdir -p "$src" "$disk" /etc/cachefilesd
check "mount the ext4 disk at $disk" mount -t ext4 /dev/vda "$disk"
mkdir -p "$cache" "$pull"
check "copy the image from 9p into the guest's RAM" cp /data/root.erofs "$src/root"
size=$(stat -c %s "$src/root")
say "image: $size bytes"
[ -f /data/composition.txt ] && sed 's/^/    /' /data/composition.txt
# A name per daemon run, so that each starts with no cache object (hard links: one copy in RAM).
for r in 1 2 3; do for p in l h n; do ln "$src/root" "$src/$p$r"; done; done

check "bring up the loopback interface" ifconfig lo 127.0.0.1 up
httpd -f -p "127.0.0.1:$port" -h "$src" &
httpd_pid=$!
range_reply() {
  printf 'GET /root HTTP/1.0\r\nHost: 127.0.0.1\r\nRange: bytes=1024-1031\r\n\r\n' |
    timeout 10 nc 127.0.0.1 "$port" >/tmp/range.txt 2>/dev/null
  grep -q '^HTTP/1.[01] 206 ' /tmp/range.txt
}
wait_for 20 "busybox httpd answers a Range request with 206 Partial Content" range_reply
say "Range reply: $(head -c 300 /tmp/range.txt | tr -d '\r' | tr '\n' '|')"
nginx=
if [ -x /usr/sbin/nginx ]; then
  # One process (no user switch, no master), its temporary paths under /tmp/nginx; the log has
  # per request: status, bytes, the server's seconds, the connection and its request number.
  mkdir -p /tmp/nginx
  cat >/tmp/nginx/nginx.conf <<EOF
daemon off;
master_process off;
user root root;
error_log /tmp/nginx/error.log;
pid /tmp/nginx/nginx.pid;
events { worker_connections 64; }
http {
  log_format t '\$uri \$status \$body_bytes_sent \$request_time \$connection \$connection_requests';
  access_log /tmp/nginx/access.log t;
  client_body_temp_path /tmp/nginx/body;
  proxy_temp_path /tmp/nginx/proxy;
  fastcgi_temp_path /tmp/nginx/fastcgi;
  uwsgi_temp_path /tmp/nginx/uwsgi;
  scgi_temp_path /tmp/nginx/scgi;
  server { listen 127.0.0.1:$nport; root $src; }
}
EOF
  /usr/sbin/nginx -c /tmp/nginx/nginx.conf -p /tmp/nginx >/tmp/nginx/stderr 2>&1 &
  nginx_pid=$!
  nginx_range() {
    printf 'GET /root HTTP/1.0\r\nHost: 127.0.0.1\r\nRange: bytes=1024-1031\r\n\r\n' |
      timeout 10 nc 127.0.0.1 "$nport" 2>/dev/null | grep -q '^HTTP/1.1 206 '
  }
  wait_for 20 "nginx answers a Range request with 206 Partial Content" nginx_range
  nginx=1
else
  say "no nginx in the initramfs: no daemon-nginx runs"
fi

# Sources by fsid: h* busybox httpd (source 0), n* nginx (1), l* local (2). readahead as
# configured (default: the daemon's).
{
  printf '[[source]]\nfsid = "h*"\nurl = "http://127.0.0.1:%s/{fsid}"\n\n' "$port"
  printf '[[source]]\nfsid = "n*"\nurl = "http://127.0.0.1:%s/{fsid}"\n\n' "$nport"
  printf '[[source]]\nfsid = "l*"\npath = "%s/{fsid}"\n\n' "$src"
  printf '[fetch]\nworkers = 4\n'
  [ -z "${READAHEAD:-}" ] || printf 'readahead = %s\n' "$READAHEAD"
} >"$map"
ondemand_conf
"$daemon" -n -s -f "$conf" >>"$daemon_log" 2>&1 &
daemon_pid=$!
wait_for 30 "the daemon bound the cache" bound_or_dead

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
run_python() { chroot /mnt /usr/bin/python3 -c "$cmd"; }
# counters: "READs source-requests source-bytes prefetch-bytes" of the daemon's report; source
# 0 is the url source, 1 the local one.
counters() {
  "$ctl" -f "$conf" status --json >/tmp/status.json || return 1
  _reads=$(json_field ondemand.reads </tmp/status.json) || return 1
  _sreads=$(json_field "ondemand.sources.$1.reads" </tmp/status.json) || return 1
  _sbytes=$(json_field "ondemand.sources.$1.bytes" </tmp/status.json) || return 1
  _pbytes=$(json_field ondemand.prefetch.bytes </tmp/status.json) || return 1
  echo "$_reads $_sreads $_sbytes $_pbytes"
}

# add VAR VALUE: appends VALUE to the space-separated list in VAR.
add() { eval "$1=\"\${$1:-} $2\""; }
var_of() { echo "$1" | tr - _; }

# loop_run MODE: fetch the whole image (cp or wget), loop-mount, run python.
loop_run() {
  rm -f "$pull/root.erofs"
  drop_caches
  t0=$(now_ms)
  if [ "$1" = loop-local ]; then
    cp "$src/root" "$pull/root.erofs" || fail "$1: cp"
  else
    wget -q -O "$pull/root.erofs" "http://127.0.0.1:$port/root" || fail "$1: wget"
  fi
  t1=$(now_ms)
  mount -t erofs -o loop,ro "$pull/root.erofs" /mnt || fail "$1: loop mount"
  t2=$(now_ms)
  run_python || fail "$1: python in the chroot"
  t3=$(now_ms)
  umount /mnt
  got=$(stat -c %s "$pull/root.erofs")
  [ "$got" = "$size" ] || fail "$1: fetched $got bytes, the image has $size"
  echo "CONTAINER round=$r mode=$1 total_ms=$((t3 - t0)) fetch_ms=$((t1 - t0)) mount_ms=$((t2 - t1)) python_ms=$((t3 - t2)) bytes_fetched=$got"
  add "ms_$(var_of "$1")" $((t3 - t0))
  add "by_$(var_of "$1")" "$got"
}

# daemon_run MODE FSID SOURCE-INDEX: mount through the daemon, run python; the counters'
# differences are this run's.
daemon_run() {
  before=$(counters "$3") || fail "$1: cachefilesctl status --json"
  drop_caches
  t0=$(now_ms)
  timeout -s KILL 300 mount -t erofs none -o "fsid=$2" /mnt || fail "$1: mount -o fsid=$2"
  t2=$(now_ms)
  run_python || fail "$1: python in the chroot"
  t3=$(now_ms)
  umount /mnt
  after=$(counters "$3") || fail "$1: cachefilesctl status --json"
  # shellcheck disable=SC2086 # four numbers each
  set -- "$1" $before $after
  reads=$(($6 - $2)) sreq=$(($7 - $3)) sbytes=$(($8 - $4)) pbytes=$(($9 - $5))
  got=$((sbytes + pbytes))
  echo "CONTAINER round=$r mode=$1 total_ms=$((t3 - t0)) mount_ms=$((t2 - t0)) python_ms=$((t3 - t2)) bytes_fetched=$got reads=$reads source_requests=$sreq prefetch_bytes=$pbytes"
  add "ms_$(var_of "$1")" $((t3 - t0))
  add "by_$(var_of "$1")" "$got"
}

# The lists are read by name (eval) below.
# shellcheck disable=SC2034
{
  ms_loop_local='' ms_loop_http='' ms_daemon_local='' ms_daemon_http='' ms_daemon_nginx=''
  ms_daemon_warm=''
  by_loop_local='' by_loop_http='' by_daemon_local='' by_daemon_http='' by_daemon_nginx=''
  by_daemon_warm=''
}
r=1
while [ $r -le 3 ]; do
  loop_run loop-local
  daemon_run daemon-local "l$r" 2
  daemon_run daemon-warm "l$r" 2
  loop_run loop-http
  daemon_run daemon-http "h$r" 0
  if [ -n "$nginx" ]; then
    daemon_run daemon-nginx "n$r" 1
    # The server's side of that run: requests, connections, summed seconds.
    awk -v f="/n$r" -v r="$r" '$1 == f && $2 == 206 { n++; b += $3; t += $4; c[$5] = 1 }
      END { k = 0; for (x in c) k++; printf "CONTAINER round=%d nginx-log requests=%d connections=%d bytes=%d server_seconds=%.3f\n", r, n, k, b, t }' /tmp/nginx/access.log
  fi
  r=$((r + 1))
done
check "cachefilesd is still running" alive "$daemon_pid"

median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | sed -n 2p; }
modes="loop-local loop-http daemon-local daemon-warm daemon-http${nginx:+ daemon-nginx}"
for m in $modes; do
  v=$(var_of "$m")
  t='' b=''
  eval "t=\$ms_$v b=\$by_$v"
  # shellcheck disable=SC2086 # the lists are split into their numbers
  echo "CONTAINER median mode=$m total_ms=$(median $t) bytes_fetched=$(median $b) (runs:$t ms)"
  check "$m measured in 3 rounds" test "$(echo "$t" | wc -w)" -eq 3
done
# shellcheck disable=SC2086
{
  ll=$(median $ms_loop_local) lh=$(median $ms_loop_http)
  dl=$(median $ms_daemon_local) dh=$(median $ms_daemon_http)
  bl=$(median $by_daemon_local) bh=$(median $by_daemon_http)
}
echo "CONTAINER ratio daemon-local/loop-local time $(awk -v a="$dl" -v b="$ll" 'BEGIN { printf "%.2f", a / b }'), bytes $(awk -v a="$bl" -v b="$size" 'BEGIN { printf "%.3f", a / b }')"
echo "CONTAINER ratio daemon-http/loop-http time $(awk -v a="$dh" -v b="$lh" 'BEGIN { printf "%.2f", a / b }'), bytes $(awk -v a="$bh" -v b="$size" 'BEGIN { printf "%.3f", a / b }')"
"$ctl" -f "$conf" status >/tmp/status.txt 2>&1 && sed 's/^/    /' /tmp/status.txt

stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
kill "$httpd_pid" 2>/dev/null
[ -z "$nginx" ] || kill "$nginx_pid" 2>/dev/null
check "umount the disk" umount "$disk"
pass
