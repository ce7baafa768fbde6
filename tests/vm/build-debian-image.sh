#!/usr/bin/env bash
# Builds (or reuses) the root disk of the Debian VM (`# vm-kind: debian` scenarios): a bookworm
# tree made by debootstrap with systemd as PID 1, udev, the NFS client and server, and Debian's
# C cachefilesd .deb in /root/debs/ (fetched on the host with apt-get download: the guest has no
# network), Debian's docker-registry holding one EROFS image (made here with mkfs.erofs) for the
# guest's loopback, turned into a raw ext4 image with mke2fs -d. The guest test driver
# debian/vmtest.service is baked in; the scenario and its runner come over 9p at run time.
#   build-debian-image.sh        prints the image path as its last stdout line
# Cached under ~/.cache/cachefilesd-rs/debian-image/<key>/root.img, key = hash of this script,
# the baked-in unit and the package list. The image is used read-only (qemu snapshot=on), so
# the cached copy stays pristine. Needs root, debootstrap, e2fsprogs >= 1.43, and apt with a
# Debian mirror (debian-mirror.sh, or CACHEFILESD_DEBIAN_MIRROR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build-debian-image: $*" >&2; }
cache=${CACHEFILESD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachefilesd-rs}/debian-image
suite=bookworm
# What the guest needs on top of minbase: systemd as init (udev, or device units never appear
# and the boot waits for /dev/vda), the NFS server and client for the loopback fsc mount, kmod
# for the unit's modprobe, procps for pgrep/ps in the scenario, docker-registry for an
# on-demand registry source inside the guest (issue 16: no traffic leaves the guest).
packages=systemd,systemd-sysv,udev,kmod,procps,nfs-kernel-server,nfs-common,e2fsprogs,docker-registry
# Debian's C daemon, installed by the scenario itself.
guest_debs=(cachefilesd)
size=${DEBIAN_IMAGE_SIZE:-2G}

key=$( { cat "$0" "$here/debian/vmtest.service"; echo "$packages ${guest_debs[*]} $size"; } | sha256sum | cut -c1-16)
out=$cache/$key
if [ -s "$out/root.img" ]; then
  log "reusing $out/root.img (key $key)"
  echo "$out/root.img"
  exit 0
fi
[ "$(id -u)" = 0 ] || { log "needs root (debootstrap)"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
command -v mkfs.erofs >/dev/null || { log "mkfs.erofs is missing: apt-get install erofs-utils"; exit 1; }
PATH=$PATH:/usr/sbin:/sbin
mirror=${CACHEFILESD_DEBIAN_MIRROR:-$("$here/debian-mirror.sh")}

start=$(date +%s)
work=$cache/build.$$
tree=$work/root
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
# Two stages, so that a policy-rc.d is in place before any maintainer script runs: the packages'
# postinsts must not start daemons (nfsd!) in the host's kernel.
log "debootstrap $suite (minbase + $packages)"
debootstrap --foreign --variant=minbase --include="$packages" "$suite" "$tree" "$mirror" >&2
printf '#!/bin/sh\nexit 101\n' >"$tree/usr/sbin/policy-rc.d"
chmod 755 "$tree/usr/sbin/policy-rc.d"
chroot "$tree" /debootstrap/debootstrap --second-stage >&2
rm -f "$tree/usr/sbin/policy-rc.d"

log "the guest's configuration"
mkdir -p "$tree/root/debs"
tmp=$work/debs
mkdir -p "$tmp"
chmod 0777 "$tmp" # apt's _apt user downloads into it
(cd "$tmp" && apt-get download "${guest_debs[@]}" >&2)
cp "$tmp"/*.deb "$tree/root/debs/"
echo debvm >"$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 debvm\n' >"$tree/etc/hosts"
# The root disk is mounted rw by the kernel (root=/dev/vda rw); no fsck (pass 0).
printf '/dev/vda / ext4 rw,errors=remount-ro 0 0\n' >"$tree/etc/fstab"
echo "deb $mirror $suite main" >"$tree/etc/apt/sources.list"
# Nothing the tests do not need runs at boot: timers, gettys, periodic jobs.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  dpkg-db-backup.timer man-db.timer getty@tty1.service serial-getty@ttyS0.service \
  systemd-timesyncd.service; do
  ln -sf /dev/null "$tree/etc/systemd/system/$u"
done
install -m 644 "$here/debian/vmtest.service" "$tree/etc/systemd/system/vmtest.service"
mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vmtest.service "$tree/etc/systemd/system/multi-user.target.wants/vmtest.service"

# The registry's image: a tree of 300 files of varied sizes (empty, 1 B-16 KiB, 64-320 KiB;
# about 4 MiB) in the registry's own storage layout, as a push leaves it:
# blobs/sha256/XX/HEX/data and the repository's layer link. The scenario finds the digest, the
# repository and the files' sha256 list in /root/registry-image/. The service is not started
# at boot: the scenario starts it for its on-demand step.
log "the registry's EROFS image"
img=$work/image-tree
i=0
while [ $i -lt 300 ]; do
  d=$img/d$((i % 12))/s$((i % 4))
  mkdir -p "$d"
  if [ $((i % 37)) -eq 5 ]; then
    fsize=0
  elif [ $((i % 29)) -eq 3 ]; then
    fsize=$((65536 + (i * 40503) % 262144))
  else
    fsize=$(( (i * 2654435761) % 16384 + 1 ))
  fi
  head -c "$fsize" /dev/urandom >"$d/f$i"
  i=$((i + 1))
done
reg=$tree/root/registry-image
mkdir -p "$reg"
(cd "$img" && find . -type f | sort | xargs sha256sum) >"$reg/SHA256SUMS"
mkfs.erofs --quiet "$work/image.erofs" "$img" >&2
hex=$(sha256sum "$work/image.erofs" | cut -c1-64)
repo=vmtest/erofs
v2=$tree/var/lib/docker-registry/docker/registry/v2
mkdir -p "$v2/blobs/sha256/${hex:0:2}/$hex" "$v2/repositories/$repo/_layers/sha256/$hex"
cp "$work/image.erofs" "$v2/blobs/sha256/${hex:0:2}/$hex/data"
printf 'sha256:%s' "$hex" >"$v2/repositories/$repo/_layers/sha256/$hex/link"
chroot "$tree" chown -R docker-registry: /var/lib/docker-registry
echo "sha256:$hex" >"$reg/digest"
echo "$repo" >"$reg/repository"
stat -c %s "$work/image.erofs" >"$reg/size"
# No authentication (Debian's default config names an htpasswd file it does not ship),
# loopback only, the access log (a line per request with its status and bytes) in the journal.
cat >"$tree/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:5000
EOF
rm -f "$tree/etc/systemd/system/multi-user.target.wants/docker-registry.service"
log "registry image: $(grep -c . "$reg/SHA256SUMS") files, blob sha256:$hex, $(cat "$reg/size") bytes"

# Journal on disk, so the scenario can read the previous boot's entries after its reboot.
mkdir -p "$tree/var/log/journal"
rm -rf "$tree/debootstrap" "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*_Packages

log "ext4 image ($size) from the tree"
mkdir -p "$out"
truncate -s "$size" "$work/root.img"
mke2fs -q -F -t ext4 -L debvm -d "$tree" "$work/root.img"
mv "$work/root.img" "$out/root.img"
log "built $out/root.img in $(( $(date +%s) - start )) s"
echo "$out/root.img"
