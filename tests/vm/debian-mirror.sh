#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt is configured with (the URI serving its release
# suite, not -security or -updates), so no host name is written in the repository.
# Needs `apt-get update` to have run once.
set -euo pipefail
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
# shellcheck disable=SC2016 # $(REPO_URI) is apt's field syntax, not the shell's
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
  awk -v rel="$codename" '$2 == rel { print $1; exit }')
if [ -z "$mirror" ]; then
  echo "debian-mirror: apt has no source for '$codename' (run apt-get update, or set CACHEFILESD_DEBIAN_MIRROR)" >&2
  exit 1
fi
echo "${mirror%/}"
