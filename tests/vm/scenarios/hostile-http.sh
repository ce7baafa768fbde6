#!/bin/sh
# vm-timeout: 180
# vm-smp: 1
# One hostile HTTP answer must not wedge a mount (issue 12, item 2). An HTTP server on the
# guest's loopback (busybox httpd, a CGI script) answers every request, HEAD included, with
# `302 Found, Location: file:///etc/passwd`; an on-demand `url` source points at it (ureq 2.12
# panicked on that redirect in the fetch worker, the OPEN never got its copen, and the mount
# blocked in the kernel for good: not even SIGKILL ends it).
#   1. the server really answers that (a raw HEAD through nc),
#   2. `mount -t erofs -o fsid=hostile1` must fail with an error, and promptly: it runs in the
#      background and the scenario waits at most $limit s for it (a mount whose OPEN is never
#      answered cannot be killed; the scenario then fails on its own, long before the VM's
#      hard timeout); then the same for hostile2 (the worker pool must still be there),
#   3. the daemon is alive and its report (`cachefilesctl status --json`) counts both refusals,
#   4. a good blob from a local source then mounts and reads correct bytes,
#   5. SIGTERM: exit status 0.
# shellcheck source=SCRIPTDIR/lib/common.sh
. /scenarios/lib/common.sh

limit=30
port=8080
www=/srv/www

[ -x "$daemon" ] || fail "no $daemon in the initramfs (build target/release/cachefilesd and rebuild the initramfs)"
[ -x "$ctl" ] || fail "no $ctl in the initramfs"

on_fail() {
  echo "--- cachefilesd log (tail)"; tail -n 40 "$daemon_log" 2>/dev/null
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "--- processes (a mount in state D is stuck in the kernel)"; show_processes
}

# The hostile server. HTTP/1.0 with Content-Length 0: the reply ends with the connection.
check "bring up the loopback interface" ifconfig lo 127.0.0.1 up
mkdir -p "$www/cgi-bin"
cat >"$www/cgi-bin/blob" <<'EOF'
#!/bin/sh
printf 'HTTP/1.0 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n'
EOF
chmod 0755 "$www/cgi-bin/blob"
httpd -f -p "127.0.0.1:$port" -h "$www" &
httpd_pid=$!
head_reply() {
  printf 'HEAD /cgi-bin/blob/hostile1 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' |
    timeout 10 nc 127.0.0.1 "$port" >/tmp/head.txt 2>&1
  grep -q '^HTTP/1.0 302 ' /tmp/head.txt && grep -q '^Location: file:///etc/passwd' /tmp/head.txt
}
wait_for 20 "the server answers HEAD with 302 Location: file:///etc/passwd" head_reply
say "HEAD reply: $(tr -d '\r' </tmp/head.txt | tr '\n' '|')"

# The good blob, from a local source.
mkdir -p /tmp/tree/d /srv/erofs /etc/cachefilesd "$cache"
i=0
while [ $i -lt 40 ]; do
  head -c $((i * 997 + 1)) /dev/urandom >/tmp/tree/d/f$i
  i=$((i + 1))
done
(cd /tmp/tree && find . -type f | sort | xargs sha256sum) >/tmp/tree.sha
check "mkfs.erofs /srv/erofs/good" sh -c "mkfs.erofs --quiet /srv/erofs/good /tmp/tree >/dev/null 2>&1"

check "mount the ext4 cache disk /dev/vda at $cache" mount -t ext4 /dev/vda "$cache"
# Two workers: a worker that died on the first hostile answer must not take the second mount
# (or the good one) with it. No retries and a short timeout: the answer comes at once anyway.
cat >"$map" <<EOF
[[source]]
fsid = "hostile*"
url = "http://127.0.0.1:$port/cgi-bin/blob/{fsid}"

[[source]]
path = "/srv/erofs/{fsid}"

[fetch]
workers = 2
timeout = 5
retries = 0
EOF
ondemand_conf
"$daemon" -n -s -f "$conf" >"$daemon_log" 2>&1 &
daemon_pid=$!
say "started cachefilesd, pid $daemon_pid"
wait_for 30 "the daemon bound the cache (dmesg: File cache on mycache registered)" bound_or_dead

# bounded_mount FSID: mount -t erofs -o fsid=FSID /mnt in the background; fails the scenario if
# it has not returned within $limit s, else sets mount_rc to its exit status.
bounded_mount() {
  rm -f /tmp/mount.rc
  (
    mount -t erofs none -o "fsid=$1" /mnt >/tmp/mount.err 2>&1
    echo $? >/tmp/mount.rc.tmp
    mv /tmp/mount.rc.tmp /tmp/mount.rc
  ) &
  _mount_pid=$!
  mount_returned() { [ -e /tmp/mount.rc ]; }
  wait_for "$limit" "mount -o fsid=$1 returned (not wedged in the kernel)" mount_returned
  wait "$_mount_pid"
  mount_rc=$(cat /tmp/mount.rc)
}
not_mounted() { ! grep -q ' /mnt ' /proc/mounts; }

for fsid in hostile1 hostile2; do
  bounded_mount "$fsid"
  say "mount said: $(cat /tmp/mount.err)"
  check "mounting $fsid (HEAD answered with a redirect to file://) fails (exit status $mount_rc)" \
    test "$mount_rc" -ne 0
  check "nothing is mounted at /mnt" not_mounted
  check "cachefilesd is still running" alive "$daemon_pid"
done
failed=$(daemon_field ondemand.opens_failed) || fail "the daemon's status has no ondemand.opens_failed"
check "the daemon's report counts both refused opens (ondemand.opens_failed $failed >= 2)" \
  test "$failed" -ge 2

bounded_mount good
check "mounting the good blob from the local source works (exit status $mount_rc: $(cat /tmp/mount.err))" \
  test "$mount_rc" -eq 0
check "every file of the good blob has its sha256" verify_sums /tmp/tree.sha
check "umount" umount /mnt
check "cachefilesd is still running" alive "$daemon_pid"

stop_daemon "$daemon_pid"
check "cachefilesd exits with status 0 on SIGTERM (got $daemon_rc)" test "$daemon_rc" -eq 0
kill "$httpd_pid" 2>/dev/null
check "umount the cache disk" umount "$cache"
pass
