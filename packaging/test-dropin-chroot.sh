#!/usr/bin/env bash
# Exercises the package's maintainer scripts against Debian's C cachefilesd in a merged-/usr
# bookworm chroot (no systemd running: the scripts take their sysvinit branches; a
# policy-rc.d refuses service starts). Each scenario starts from a fresh copy of the chroot;
# every step is checked, and the first failed check stops the script (exit 1).
#
#   packaging/test-dropin-chroot.sh [DEB]     # default: the newest target/debian/cachefilesd-rs_*.deb
#
# Needs root, debootstrap, and apt configured with a Debian mirror (tests/vm/debian-mirror.sh,
# or CACHEFILESD_DEBIAN_MIRROR). The chroot and Debian's cachefilesd .deb are cached in
# ~/.cache/cachefilesd-rs/dropin-chroot/.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=${1:-$(ls -t target/debian/cachefilesd-rs_*.deb 2>/dev/null | head -n1)}
if [ -z "$deb" ] || [ ! -f "$deb" ]; then
  echo "no package: run packaging/build-deb.sh first" >&2
  exit 1
fi
[ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

cache=${XDG_CACHE_HOME:-$HOME/.cache}/cachefilesd-rs/dropin-chroot
pristine=$cache/bookworm
mkdir -p "$cache"
if [ ! -x "$pristine/usr/bin/dpkg" ]; then
  mirror=${CACHEFILESD_DEBIAN_MIRROR:-$(tests/vm/debian-mirror.sh)}
  rm -rf "$pristine.tmp"
  debootstrap --variant=minbase bookworm "$pristine.tmp" "$mirror"
  printf '#!/bin/sh\nexit 101\n' >"$pristine.tmp/usr/sbin/policy-rc.d"
  chmod 755 "$pristine.tmp/usr/sbin/policy-rc.d"
  mv "$pristine.tmp" "$pristine"
fi
c_deb=$(ls "$cache"/cachefilesd_0.10.10-*_amd64.deb 2>/dev/null | head -n1 || true)
if [ -z "$c_deb" ]; then
  (cd "$cache" && apt-get download cachefilesd)
  c_deb=$(ls "$cache"/cachefilesd_*.deb | head -n1)
fi

root=$cache/run
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT

fresh() {
  cleanup
  cp -a "$pristine" "$root"
  mount -t proc proc "$root/proc"
  cp "$deb" "$root/tmp/rs.deb"
  cp "$c_deb" "$root/tmp/c.deb"
  echo "=== $1"
}
# Runs a shell command in the chroot, stdin closed (no question may be asked).
in_root() { chroot "$root" sh -c "$1" </dev/null; }
check() {
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what" >&2; exit 1; fi
}
same() { [ "$1" = "$2" ] || { echo "  expected [$2], got [$1]" >&2; return 1; }; }
sums() { in_root 'md5sum /etc/cachefilesd.conf /etc/default/cachefilesd'; }
diversions() { in_root 'dpkg-divert --list' | grep -c cachefilesd || true; }

# What an administrator did with the C package: enabled it, changed a limit, appended a line
# (tee -a) and a Latin-1 comment.
install_c_as_admin() {
  in_root 'dpkg -i /tmp/c.deb' >/dev/null 2>&1
  in_root 'sed -i "s/^#RUN=yes/RUN=yes/" /etc/default/cachefilesd
    sed -i "s/^brun.*/brun 15%/" /etc/cachefilesd.conf
    echo "bcull 8%" >>/etc/cachefilesd.conf
    printf "# Ge\344ndert (Latin-1)\n" >>/etc/cachefilesd.conf'
}

fresh "dpkg -i over the C package, purge it, purge us, reinstall it"
install_c_as_admin
admin=$(sums)
check "dpkg -i succeeds with stdin closed" in_root 'dpkg -i /tmp/rs.deb >/tmp/log 2>&1'
check "no conffile question" same "$(in_root 'grep -c "Configuration file" /tmp/log || true')" 0
check "the binary is ours" same "$(in_root '/usr/sbin/cachefilesd -v')" "cachefilesd version $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//') (cachefilesd-rs)"
check "dpkg -V is silent" same "$(in_root 'dpkg -V cachefilesd-rs' 2>&1)" ""
check "the admin's files are untouched" same "$(sums)" "$admin"
check "the config is accepted, the repeated line named" \
  same "$(in_root 'cachefilesd -t 2>&1 | grep -c "bcull given again"')" 1
check "the /sbin diversion is gone, the conffile ones are there" same "$(diversions)" 2
check "the init script is ours and executable" in_root 'test -x /etc/init.d/cachefilesd && grep -q cachefilesd-rs /etc/init.d/cachefilesd'
check "the C package is left in config-files state" \
  same "$(in_root "dpkg-query -W -f='\${db:Status-Status}' cachefilesd")" config-files
check "purging the C package succeeds" in_root 'dpkg --purge cachefilesd >/dev/null 2>&1'
check "... and keeps the admin's files" same "$(sums)" "$admin"
check "... and our binary and init script" in_root 'test -x /usr/sbin/cachefilesd && test -x /etc/init.d/cachefilesd'
check "purging us succeeds" in_root 'dpkg --purge cachefilesd-rs >/dev/null 2>&1'
check "... and leaves nothing" in_root '! ls /etc/cachefilesd.conf /etc/default/cachefilesd /etc/init.d/cachefilesd /usr/sbin/cachefilesd 2>/dev/null'
check "... and no diversion" same "$(diversions)" 0
check "reinstalling the C package succeeds" in_root 'dpkg -i /tmp/c.deb >/dev/null 2>&1'
check "... and dpkg -V cachefilesd is silent" same "$(in_root 'dpkg -V cachefilesd' 2>&1)" ""

fresh "switching back: remove us, install the C package, purge us"
install_c_as_admin
admin=$(sums)
in_root 'dpkg -i /tmp/rs.deb' >/dev/null 2>&1
check "dpkg -r cachefilesd-rs succeeds" in_root 'dpkg -r cachefilesd-rs >/dev/null 2>&1'
check "the unit is not left masked" in_root '! test -L /etc/systemd/system/cachefilesd.service'
check "installing the C package succeeds" in_root 'dpkg -i /tmp/c.deb >/tmp/log 2>&1'
check "no conffile question" same "$(in_root 'grep -c "Configuration file" /tmp/log || true')" 0
check "its init script is back and executable" in_root 'test -x /etc/init.d/cachefilesd && ! grep -q cachefilesd-rs /etc/init.d/cachefilesd'
check "purging us succeeds" in_root 'dpkg --purge cachefilesd-rs >/dev/null 2>&1'
check "... and leaves the C package's files alone" same "$(sums)" "$admin"
check "... and its rc.d links" in_root 'ls /etc/rc2.d/S*cachefilesd >/dev/null'
check "... and its binary" in_root 'test -x /sbin/cachefilesd'

fresh "a fresh install without the C package"
check "dpkg -i succeeds" in_root 'dpkg -i /tmp/rs.deb >/dev/null 2>&1'
check "the defaults are installed, enabled" in_root 'grep -qx RUN=yes /etc/default/cachefilesd && grep -q "^dir /var/cache/fscache" /etc/cachefilesd.conf'
check "reinstalling over itself succeeds" in_root 'dpkg -i /tmp/rs.deb >/dev/null 2>&1'
check "/etc/init.d/cachefilesd honours RUN=" \
  same "$(in_root 'sed -i s/^RUN=yes/RUN=no/ /etc/default/cachefilesd; /etc/init.d/cachefilesd start 2>&1 | grep -c "not started"')" 1
check "purging succeeds and leaves nothing" in_root 'dpkg --purge cachefilesd-rs >/dev/null 2>&1 && ! ls /etc/cachefilesd.conf /etc/default/cachefilesd /var/cache/fscache 2>/dev/null'

fresh "control: without the /sbin diversion the binary is lost (the DEP17 problem)"
install_c_as_admin
pkg=$root/tmp/nodivert
dpkg-deb -R "$deb" "$pkg"
sed -i '/divert \/sbin\/cachefilesd/d' "$pkg/DEBIAN/preinst"
dpkg-deb --root-owner-group -b "$pkg" "$root/tmp/nodivert.deb" >/dev/null
in_root 'dpkg -i /tmp/nodivert.deb' >/dev/null 2>&1
check "dpkg -V reports the binary missing" same "$(in_root 'dpkg -V cachefilesd-rs' 2>&1)" "missing     /usr/sbin/cachefilesd"

echo "all checks passed"
