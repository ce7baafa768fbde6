#!/usr/bin/env bash
# Creates (once) the host directory that the guest mounts as 9p tag `fscached` with
# cache=fscache: 300 files of 1 KiB..256 KiB in ten subdirectories plus SHA256SUMS
# (sha256sum format, paths relative to the directory).
#   make-fscached-data.sh DIR
# The content is deterministic: file i is the output of `seq -f "f<i>:%011.0f"` cut to its size,
# so every 12..16-byte line differs from all others (a page served at the wrong offset or from
# the wrong file changes the hash) and the same tree comes out on every machine. The size of
# file i is 1024 + (i * 2654435761 mod 261121), i.e. scattered over 1 KiB..256 KiB and mostly
# not page multiples. The directory is reused while its .generator stamp matches.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
stamp="fscached-data v1: 300 files, seq content, sizes 1024+(i*2654435761 mod 261121)"
if [ -f "$dir/.generator" ] && [ "$(cat "$dir/.generator")" = "$stamp" ] && [ -f "$dir/SHA256SUMS" ]; then
  exit 0
fi
tmp=$dir.tmp.$$
rm -rf "$tmp"
mkdir -p "$tmp"
for i in $(seq 0 299); do
  sub=d$((i % 10))
  mkdir -p "$tmp/$sub"
  size=$((1024 + (i * 2654435761) % 261121))
  # Lines are at least 13 bytes long, so size/12 lines are always enough; truncate cuts the rest
  # (no `| head -c`: seq's SIGPIPE would trip pipefail).
  file=$tmp/$sub/$(printf 'f%03d.bin' "$i")
  seq -f "f$i:%011.0f" 0 $((size / 12 + 1)) >"$file"
  truncate -s "$size" "$file"
done
(cd "$tmp" && find . -type f -name '*.bin' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
echo "$stamp" >"$tmp/.generator"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "make-fscached-data: wrote $(grep -c . "$dir/SHA256SUMS") files ($(du -sh "$dir" | cut -f1)) to $dir" >&2
