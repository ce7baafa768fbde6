#!/bin/sh
# Harness self-test: must FAIL: one check fails.
# shellcheck source=SCRIPTDIR/../../scenarios/lib/common.sh
. /scenarios/lib/common.sh
check "true is true" true
check "this check fails on purpose" false
pass
