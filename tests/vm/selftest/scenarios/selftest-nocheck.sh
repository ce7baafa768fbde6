#!/bin/sh
# Harness self-test: must FAIL: pass without any check.
# shellcheck source=SCRIPTDIR/../../scenarios/lib/common.sh
. /scenarios/lib/common.sh
pass
