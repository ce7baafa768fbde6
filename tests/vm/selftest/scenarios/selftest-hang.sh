#!/bin/sh
# Harness self-test: must FAIL by init's watchdog (status 124) before the host timeout.
echo "hanging on purpose"
sleep 100000
