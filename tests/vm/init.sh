#!/bin/sh
# PID 1 of the test VM (build-initramfs.sh installs it as /init): set up the mounts, run
# /scenarios/<scenario>.sh (scenario=NAME on the kernel command line), record its exit status in
# /results/status, then leave qemu via `reboot -f` (qemu runs with -no-reboot, so a reboot ends
# it). /results/status is the only pass/fail signal the host uses: if it is missing, the run
# failed. The status codes are those of lib/status.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
umask 022

# DEVTMPFS_MOUNT does not apply to an initramfs root: mount /dev ourselves.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /root /var/run

# shellcheck source=SCRIPTDIR/scenarios/lib/status.sh
. /scenarios/lib/status.sh

# reboot -f returns at once and the machine goes down a moment later: nothing after it may run.
# -n: no sync there (see bounded_sync).
leave() {
  reboot -f -n
  sleep 10
}

# sync(2) waits for every superblock, and one whose mount hangs in the kernel (an on-demand OPEN
# never answered) is locked for good: a plain sync would keep the VM up until the host's hard
# timeout. So sync in the background and wait at most 5 s; /results needs none (9p writes go
# straight to the host), the cache disk image is only for post-mortems.
bounded_sync() {
  rm -f /tmp/synced
  (sync && : >/tmp/synced) &
  _n=0
  while [ ! -e /tmp/synced ] && [ "$_n" -lt 25 ]; do
    sleep 0.2
    _n=$((_n + 1))
  done
  [ -e /tmp/synced ] || echo "init: sync still blocked after 5 s (a mount hung in the kernel?); not waiting"
}

die() {
  echo "init: $*"
  # Without /results there is nowhere to report: the missing status file marks the failure.
  leave
}

if ! mount -t 9p -o trans=virtio,version=9p2000.L results /results; then
  die "cannot mount the 9p share 'results'"
fi
# The optional read-only data share (run-vm.sh --data). Look for the tag in sysfs first (the
# attribute holds the tag plus a NUL): mounting an absent tag logs "no channels available".
has_data=
for tag in /sys/bus/virtio/devices/*/mount_tag; do
  [ "$(tr -d '\000' <"$tag" 2>/dev/null)" = data ] && has_data=1
done
if [ -n "$has_data" ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L,ro data /data || echo "init: cannot mount 'data'"
fi

scenario=
vmtimeout=
read -r cmdline </proc/cmdline
for word in $cmdline; do
  case "$word" in
    scenario=*) scenario=${word#scenario=} ;;
    vmtimeout=*) vmtimeout=${word#vmtimeout=} ;;
  esac
done
script=/scenarios/$scenario.sh
start=$(cut -d' ' -f1 /proc/uptime)
echo "init: scenario '$scenario' starting at uptime ${start}s, $(grep -c ^processor /proc/cpuinfo) CPU(s)"

finish() { # STATUS
  dmesg >/results/dmesg.txt 2>/dev/null
  echo "$1" >/results/status
  bounded_sync
  echo "init: scenario '$scenario' exit status $1 (uptime $start -> $(cut -d' ' -f1 /proc/uptime))"
  umount /results 2>/dev/null
  leave
}

if [ -z "$scenario" ] || [ ! -f "$script" ]; then
  echo "init: no such scenario '$scenario' (want scenario=NAME on the kernel command line)" | tee /results/output.log
  finish "$status_no_scenario"
fi

# Guest-side watchdog, a little shorter than the host's hard timeout, so that a hanging scenario
# still leaves dmesg and a process list behind.
if [ -n "$vmtimeout" ]; then
  (
    sleep "$vmtimeout"
    echo "init: scenario '$scenario' timed out after ${vmtimeout}s; processes:"
    # shellcheck disable=SC2009 # the listing without kernel threads, not a process lookup
    ps -o pid,stat,args 2>/dev/null | grep -v ' \['
    for p in /proc/[0-9]*; do
      [ -r "$p/wchan" ] && echo "  ${p#/proc/} $(cat "$p/wchan" 2>/dev/null) $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
    done
    finish "$status_timeout"
  ) &
fi

# The scenario runs as a plain `sh` child (no -x), output both on the console and in
# /results/output.log (the SKIP reason is its last line). Init polls for the status file instead
# of waiting for the pipeline: tee only sees EOF once every process that inherited the pipe is
# gone, and a scenario may leave a background `sleep` behind (or a process stuck in the kernel).
(
  cd / && sh "$script"
  echo $? >/tmp/scenario.status.tmp
  mv /tmp/scenario.status.tmp /tmp/scenario.status
) 2>&1 | tee /results/output.log &
while [ ! -e /tmp/scenario.status ]; do
  sleep 0.2
done
sleep 0.2 # let tee write the last lines
finish "$(cat /tmp/scenario.status)"
