#!/usr/bin/env python3
"""Where Linux cachefiles puts a cache object: the test suite's own model of the kernel's naming,
written from the 6.12 sources and deliberately independent of the Rust code under test
(src/layout.rs must agree with it, not the other way round). Shared by the host-side helpers
(make-prefilled-cache.py imports it) and the guest's shell (build-initramfs.sh writes a table
made with `table` into the initramfs; lib/common.sh's object_path reads it).

    cachenames.py path VOLUME KEY            cache-relative path of one object
    cachenames.py table [--9p-tree DIR VOLUME] [--object VOLUME KEY]...
                                             tab-separated lines: VOLUME, KEY, PATH
    cachenames.py selftest                   the vectors seen on a real 6.12 kernel

KEY is `str:TEXT` (EROFS: the fsid, no NUL) or `le64:N` (9p: qid.path, decimal, as 8
little-endian bytes). For --9p-tree, every regular file under DIR gets a line with key
le64:<st_ino>: qemu's 9p server (virtfs local, one device) gives qid.path = st_ino.

The kernel's rules (Linux 6.12):
  * volume directory: "I" + the volume key (fs/cachefiles/volume.c);
  * fan-out directory: "@%02x" of the low byte of the cookie's key_hash
    (fs/cachefiles/namei.c, volume->fanout[(u8)cookie->key_hash]);
  * key_hash = fscache_hash(volume key_hash, cookie key zero-padded to 4 bytes)
    (fs/netfs/fscache_cookie.c), volume key_hash = fscache_hash(0, [len] + key + NUL,
    zero-padded to 4 bytes) (fs/netfs/fscache_volume.c);
  * fscache_hash: HASH_MIX over little-endian 32-bit words, then fold_hash
    (fs/netfs/fscache_main.c);
  * file name (fs/cachefiles/key.c, cachefiles_cook_key): "D" + the key if every byte is in
    '!'..'.' or '0'..'~'; else "S"/"T" + comma separated big/little-endian hex words (zero words
    empty) if that is shorter than base64; else "E" + pad digit + the kernel's base64.
"""
import os
import sys

MASK = 0xFFFFFFFF
GOLDEN_RATIO_32 = 0x61C88647
CHARMAP = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-"


def _rol32(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & MASK


def _hash_32(x: int) -> int:
    return (x * GOLDEN_RATIO_32) & MASK


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def fscache_hash(salt: int, data: bytes) -> int:
    """fs/netfs/fscache_main.c; len(data) must be a multiple of 4."""
    assert len(data) % 4 == 0
    x, y = 0, salt & MASK
    for i in range(0, len(data), 4):
        a = int.from_bytes(data[i:i + 4], "little")
        # HASH_MIX(x, y, a)
        x ^= a
        y ^= x
        x = _rol32(x, 7)
        x = (x + y) & MASK
        y = _rol32(y, 20)
        y = (y * 9) & MASK
    return _hash_32(y ^ _hash_32(x))


def volume_hash(volume_key: bytes) -> int:
    return fscache_hash(0, _pad4(bytes([len(volume_key)]) + volume_key + b"\0"))


def key_hash(volume_key: bytes, key: bytes) -> int:
    return fscache_hash(volume_hash(volume_key), _pad4(key))


def fanout_dir(volume_key: bytes, key: bytes) -> str:
    return "@%02x" % (key_hash(volume_key, key) & 0xFF)


def volume_dir(volume_key: bytes) -> str:
    return "I" + volume_key.decode("latin-1")


def _printable(b: int) -> bool:
    return 33 <= b <= 46 or 48 <= b <= 127


def _hex_digits(x: int) -> int:
    return (x.bit_length() + 3) // 4


def object_name(key: bytes) -> str:
    """fs/cachefiles/key.c, cachefiles_cook_key."""
    if all(_printable(b) for b in key):
        return "D" + key.decode("latin-1")
    padded = _pad4(key)
    words = [padded[i:i + 4] for i in range(0, len(padded), 4)]
    be = [int.from_bytes(w, "big") for w in words]
    le = [int.from_bytes(w, "little") for w in words]
    nbe = sum(1 + _hex_digits(x) for x in be)
    nle = sum(1 + _hex_digits(x) for x in le)
    b64len = 2 + (len(key) + 2) // 3 * 4
    if nbe < b64len or nle < b64len:
        sep, chosen = ("S", be) if nbe <= nle else ("T", le)
        out = []
        for x in chosen:
            out.append(sep + ("%x" % x if x else ""))
            sep = ","
        return "".join(out)
    pad = (len(key) + 2) // 3 * 3 - len(key)
    out = ["E", str(pad)]
    for i in range(0, len(key), 3):
        acc = int.from_bytes(key[i:i + 3], "little")
        for _ in range(4):
            out.append(CHARMAP[acc & 63])
            acc >>= 6
    return "".join(out)


def object_path(volume_key: bytes, key: bytes) -> str:
    """Path of the object below the cache directory ('cache/I.../@xx/NAME')."""
    return "cache/%s/%s/%s" % (volume_dir(volume_key), fanout_dir(volume_key, key),
                               object_name(key))


def parse_key(spec: str) -> bytes:
    kind, _, value = spec.partition(":")
    if kind == "str" and value:
        return value.encode()
    if kind == "le64" and value.isdigit():
        return int(value).to_bytes(8, "little")
    raise ValueError("key %r: want str:TEXT or le64:N" % spec)


# Seen on a real 6.12 kernel in this suite's VMs (EROFS mounts; a 9p cache=fscache file with
# qid.path 0x514039).
VECTORS = [
    ("erofs,testblob", "str:testblob", "cache/Ierofs,testblob/@7d/Dtestblob"),
    ("erofs,fresh", "str:fresh", "cache/Ierofs,fresh/@eb/Dfresh"),
    ("erofs,pre", "str:pre", "cache/Ierofs,pre/@3b/Dpre"),
    ("9p,fscached,", "le64:%d" % 0x514039, "cache/I9p,fscached,/@95/T514039,"),
]


def selftest() -> int:
    bad = 0
    for volume, key, want in VECTORS:
        got = object_path(volume.encode(), parse_key(key))
        if got != want:
            print("cachenames: %s %s: got %s, the kernel made %s" % (volume, key, got, want),
                  file=sys.stderr)
            bad += 1
    # The three encodings other than D, against the kernel's rules worked by hand.
    for key, want in [(bytes(8), "S,"), ((0x100).to_bytes(8, "little"), "T100,"),
                      (bytes([1, 2, 3, 4, 5]), "E1" + "18M0" + "4k00")]:
        got = object_name(key)
        if got != want:
            print("cachenames: key %s: got %s, want %s" % (key.hex(), got, want), file=sys.stderr)
            bad += 1
    return 1 if bad else 0


def table(args) -> int:
    rows = []
    i = 0
    while i < len(args):
        if args[i] == "--9p-tree" and i + 2 < len(args):
            root, volume = args[i + 1], args[i + 2]
            for d, _, files in os.walk(root):
                for f in sorted(files):
                    st = os.lstat(os.path.join(d, f))
                    key = "le64:%d" % st.st_ino
                    rows.append((volume, key, object_path(volume.encode(), parse_key(key))))
            i += 3
        elif args[i] == "--object" and i + 2 < len(args):
            volume, key = args[i + 1], args[i + 2]
            rows.append((volume, key, object_path(volume.encode(), parse_key(key))))
            i += 3
        else:
            print("cachenames: table: unexpected %r" % args[i], file=sys.stderr)
            return 2
    for row in rows:
        print("\t".join(row))
    return 0


def main(argv) -> int:
    if len(argv) == 4 and argv[1] == "path":
        print(object_path(argv[2].encode(), parse_key(argv[3])))
        return 0
    if len(argv) >= 2 and argv[1] == "table":
        return table(argv[2:])
    if len(argv) == 2 and argv[1] == "selftest":
        return selftest()
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
