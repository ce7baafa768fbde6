#!/bin/sh
# Harness self-test: must FAIL by the host timeout (qemu killed, no status file).
# Kill init's watchdog (a subshell sleeping), then hang: only the host timeout can end this.
for p in $(pidof sleep); do
  kill -9 "$(awk '/^PPid/ {print $2}' "/proc/$p/status")" "$p"
done
echo "watchdog killed, hanging"
sleep 100000
