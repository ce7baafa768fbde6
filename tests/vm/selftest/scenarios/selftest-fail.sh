#!/bin/sh
# Harness self-test: must FAIL: one check fails.
. /scenarios/lib/common.sh
check "true is true" true
check "this check fails on purpose" false
pass
