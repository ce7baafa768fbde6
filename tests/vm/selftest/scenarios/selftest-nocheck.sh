#!/bin/sh
# Harness self-test: must FAIL: pass without any check.
. /scenarios/lib/common.sh
pass
