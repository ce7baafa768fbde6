#!/usr/bin/env bash
# Shows the daemon doing its job against a real Linux 6.12 kernel under qemu: installs what is
# needed, builds (or reuses) the test kernel and the daemon, then runs two scenarios:
#   classic  - a 9p mount cached through fscache; the cache disk is filled past bcull and the
#              daemon culls the least recently used objects until the kernel is satisfied;
#   ondemand - an EROFS image of 500+ files served lazily by the daemon's on-demand mode,
#              every file checked against its sha256.
# The daemon's own log and the scenario's checks are printed after each run.
set -euo pipefail
cd "$(dirname "$0")"
.ci/install-deps
status=0
tests/vm/run-suite.sh classic ondemand || status=$?
for s in classic ondemand; do
  echo
  echo "=== $s: checks made inside the VM"
  grep -E '^\[[0-9.]+\] (ok|FAIL|PASS)' "target/vm/$s/output.log" | sed 's/^/  /' || true
  echo "=== $s: the daemon's log"
  sed 's/^/  /' "target/vm/$s/cachefilesd.log" 2>/dev/null || true
done
exit $status
