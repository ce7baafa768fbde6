#!/usr/bin/env python3
"""Creates (once) a host directory tree that run-vm.sh --disk-from turns into a pre-filled cache
disk (mke2fs -d keeps the atimes, to the second), for the culling scenarios:

    make-prefilled-cache.py N OUTDIR

OUTDIR/tree/ is the root of the ext4 filesystem:
    cache/I9p,prefilled,/@xx/T<rank>,    7 of every 8 objects (9p keys)
    cache/Ierofs,bench/@xx/D<rank>,      the others (EROFS-style printable keys "<rank>,")
    graveyard/                           empty
Every path is the one the kernel would use for that key (volume dir, fan-out dir from the
fscache hash, encoded name: cachenames.py, the suite's independent model of the kernel's
naming). The 9p key of rank r is the qid.path whose hex digits are r's decimal digits, so the
kernel names it T<r>,; the few ranks whose key the kernel names otherwise (rank 0, and about one
in a thousand such as 10000 or 10100, which come out as S...) take an EROFS key instead.
Every object is a 4 KiB regular file of non-zero bytes (mke2fs -d would turn zero blocks into
holes, and a hole frees nothing when culled), without the kernel's xattr (the kernel's `cull`
removes such files too). The 9p volume is deliberately not `9p,fscached,`: a real 9p mount of
tag fscached acquires that volume, and the kernel buries a volume directory that lacks its xattr,
objects and all. <rank> is decimal, 0..N-1, and is also the LRU order:
atime = mtime = 1600000000 + rank seconds, so rank 0 is the oldest object.

OUTDIR/disk-size (bytes, a MiB multiple) and OUTDIR/inodes are what the disk should be made with:
the objects take about 85 % of the data blocks, and there are 2N + 4096 inodes (so the files
limits never trigger culling). The scenario tops the disk up with a filler file to the free
space it wants. The tree is reused while OUTDIR/.generator matches; every call re-applies the
atimes, because mke2fs -d reads the files and so moves their atimes on the host (relatime).
"""
import os
import shutil
import sys

import cachenames

BASE_ATIME = 1_600_000_000
OBJECT_SIZE = 4096
VERSION = "prefilled-cache v3 (kernel fan-out)"
NINEP_VOLUME = b"9p,prefilled,"
EROFS_VOLUME = b"erofs,bench"


def object_path(rank: int) -> str:
    if rank % 8 != 7:
        key = int(str(rank), 16).to_bytes(8, "little")
        if cachenames.object_name(key) == "T%d," % rank:
            return cachenames.object_path(NINEP_VOLUME, key)
    return cachenames.object_path(EROFS_VOLUME, b"%d," % rank)


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        print("usage: make-prefilled-cache.py N OUTDIR", file=sys.stderr)
        return 2
    n = int(sys.argv[1])
    out = sys.argv[2]
    stamp = "%s: N=%d, 4 KiB objects, atime %d+rank" % (VERSION, n, BASE_ATIME)
    try:
        with open(os.path.join(out, ".generator")) as f:
            if f.read().strip() == stamp:
                tree = os.path.join(out, "tree")
                for rank in range(n):
                    t = BASE_ATIME + rank
                    os.utime(os.path.join(tree, object_path(rank)), (t, t))
                return 0
    except OSError:
        pass

    tmp = "%s.tmp.%d" % (out.rstrip("/"), os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tree = os.path.join(tmp, "tree")
    os.makedirs(os.path.join(tree, "graveyard"))
    # The kernel makes all 256 fan-out directories with the volume.
    for vol in (NINEP_VOLUME, EROFS_VOLUME):
        for i in range(256):
            os.makedirs(os.path.join(tree, "cache", cachenames.volume_dir(vol), "@%02x" % i))
    for rank in range(n):
        line = b"object %09d\n" % rank  # 17 bytes
        data = (line * (OBJECT_SIZE // len(line) + 1))[:OBJECT_SIZE]
        path = os.path.join(tree, object_path(rank))
        with open(path, "wb") as f:
            f.write(data)
        t = BASE_ATIME + rank
        os.utime(path, (t, t))

    # Data blocks: objects + directories (512 fanout dirs of one block, a few more) + slack.
    data_blocks = n + 600
    total_blocks = int(data_blocks / 0.85)
    inodes = 2 * n + 4096
    # Filesystem overhead outside f_blocks: inode tables (256 bytes each), journal (up to 64 MiB
    # for big disks; 4-16 MiB here), bitmaps and descriptors.
    overhead = inodes * 256 + 32 * 1024 * 1024
    size = total_blocks * 4096 + overhead
    mib = 1024 * 1024
    size = (size + mib - 1) // mib * mib
    with open(os.path.join(tmp, "disk-size"), "w") as f:
        f.write("%d\n" % size)
    with open(os.path.join(tmp, "inodes"), "w") as f:
        f.write("%d\n" % inodes)
    with open(os.path.join(tmp, ".generator"), "w") as f:
        f.write(stamp + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print("make-prefilled-cache: %d objects, disk %d MiB, %d inodes in %s"
          % (n, size // mib, inodes, out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
