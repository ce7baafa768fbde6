#!/bin/sh
# Harness self-test: must PASS with run-vm.sh --data DIR holding hello.txt ("hello from the host").
# shellcheck source=SCRIPTDIR/../../scenarios/lib/common.sh
. /scenarios/lib/common.sh
check "/data is mounted" grep -q ' /data 9p ' /proc/mounts
check "/data/hello.txt has the host's content" test "$(cat /data/hello.txt)" = "hello from the host"
check "/data is read-only" sh -c '! touch /data/x 2>/dev/null'
pass
