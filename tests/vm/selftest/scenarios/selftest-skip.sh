#!/bin/sh
# Harness self-test: must SKIP with the reason 'nothing to see here'.
# shellcheck source=SCRIPTDIR/../../scenarios/lib/common.sh
. /scenarios/lib/common.sh
skip "nothing to see here"
