#!/bin/sh
# The guest side of a `# vm-kind: debian` run (started by vmtest.service at every boot, from the
# host's read-only `input` share mounted at /vmtest): runs the scenario's next phase
# (/vmtest/scenario.sh PHASE), appends its output to /results/output.log, then either reboots
# into the following phase (the scenario exits with $reboot_requested) or records the exit
# status in /results/status and powers the machine off. The phase state lives on the root disk
# (/var/lib/vmtest), which is one copy-on-write overlay for the whole qemu run, so it survives
# the reboots. A boot that finds a phase still marked running means the machine went down
# inside it (panic, crash, a reboot the scenario did not ask for): that is a failure.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
state=/var/lib/vmtest
mkdir -p "$state" /results
mountpoint -q /results || mount -t 9p -o trans=virtio,version=9p2000.L results /results || {
  echo "runner: cannot mount the 9p share 'results'" >/dev/console
  systemctl poweroff
  exit 1
}
# shellcheck source=SCRIPTDIR/../scenarios/lib/status.sh
. /vmtest/status.sh
# shellcheck source=SCRIPTDIR/lib.sh
. /vmtest/lib.sh

vmtimeout=
read -r cmdline </proc/cmdline
for word in $cmdline; do
  case "$word" in vmtimeout=*) vmtimeout=${word#vmtimeout=} ;; esac
done
uptime_s() { cut -d. -f1 /proc/uptime; }

finish() { # STATUS
  dmesg >/results/dmesg.txt 2>&1
  journalctl --no-pager -o short-monotonic >/results/journal.txt 2>&1
  echo "$1" >/results/status
  sync
  echo "runner: exit status $1 after $(cat "$state/boots") boot(s)"
  systemctl poweroff
  exit 0
}

boots=$(( $(cat "$state/boots" 2>/dev/null || echo 0) + 1 ))
echo "$boots" >"$state/boots"
phase=$(cat "$state/next-phase" 2>/dev/null || echo 1)
if [ -e "$state/running" ]; then
  echo "runner: FAIL: the machine went down inside phase $(cat "$state/running") (boot $boots now)" |
    tee -a /results/output.log
  finish "$status_fail"
fi
echo "runner: boot $boots, phase $phase, systemd up at uptime $(uptime_s)s" | tee -a /results/output.log

# The guest's own watchdog, shorter than the host's hard timeout: the time used by earlier boots
# counts against it.
if [ -n "$vmtimeout" ]; then
  left=$(( vmtimeout - $(cat "$state/elapsed" 2>/dev/null || echo 0) ))
  [ "$left" -gt 10 ] || left=10
  (
    sleep "$left"
    echo "runner: timed out in phase $phase; units not done:" | tee -a /results/output.log
    systemctl list-jobs --no-pager 2>&1 | tee -a /results/output.log
    ps -eo pid,stat,wchan:20,args --ppid 2 -N | tee -a /results/output.log
    finish "$status_timeout"
  ) &
fi

echo "$phase" >"$state/running"
sync
( cd / && sh /vmtest/scenario.sh "$phase" </dev/null; echo $? >"$state/rc" ) 2>&1 | tee -a /results/output.log
rc=$(cat "$state/rc")
rm -f "$state/running"
echo $(( $(cat "$state/elapsed" 2>/dev/null || echo 0) + $(uptime_s) )) >"$state/elapsed"
if [ "$rc" = "$reboot_requested" ]; then
  echo $((phase + 1)) >"$state/next-phase"
  echo "runner: phase $phase done, rebooting into phase $((phase + 1))" | tee -a /results/output.log
  sync
  systemctl reboot
  exit 0
fi
finish "$rc"
