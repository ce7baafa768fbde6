#!/bin/bash
# Time to brun against the number of objects, for our daemon, Debian's C cachefilesd and the
# unlink floor, from cullbench runs (BENCHMARKS-vm.md). Needs gnuplot (Debian: gnuplot-nox).
#
#   tests/vm/cullbench-plot.sh rows target/vm/cullbench/output.log ... >>docs/cullbench.tsv
#       one row per log of a cold run: N, C, ours, floor, C's limit (seconds; the floor is the
#       faster of its one- and two-process runs; C is "-" where the C daemon did not reach
#       brun, and the last column then holds how long it ran without getting there, else "-")
#   tests/vm/cullbench-plot.sh plot docs/cullbench.tsv docs/cullbench.svg
#       the plot (log-log axes), one line per column
set -euo pipefail

usage() { sed -n '2,10p' "$0" >&2; exit 2; }

rows() {
  for log in "$@"; do
    awk '
      function field(k,   i) { for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
      / BENCH n=/ {
        n = field("n")
        if (field("result") == "brun") t[field("daemon")] = field("seconds")
        else if (field("daemon") == "c" && field("result") == "timeout") c_limit = field("seconds")
      }
      END {
        floor = t["floor-1"]
        if (t["floor-2"] != "" && (floor == "" || t["floor-2"] + 0 < floor + 0)) floor = t["floor-2"]
        if (n == "" || t["ours"] == "" || floor == "") { print FILENAME ": not a complete cold cullbench run" > "/dev/stderr"; exit 1 }
        printf "%s\t%s\t%s\t%s\t%s\n", n, (t["c"] == "" ? "-" : t["c"]), t["ours"], floor,
          (t["c"] == "" && c_limit != "" ? c_limit : "-")
      }' "$log"
  done
}

plot() {
  local data=$1 image=$2
  command -v gnuplot >/dev/null || { echo "cullbench-plot: gnuplot is not installed (apt install gnuplot-nox)" >&2; exit 1; }
  gnuplot <<GP
set terminal svg size 720,480 dynamic font "sans,12"
set output "$image"
set title "Cold culling to brun (qemu TCG, 2 vCPUs): time against objects in the cache"
set xlabel "objects in the cache"
set ylabel "seconds from daemon start to brun"
set logscale xy
set xrange [10000:2000000]
set key top left
set grid
set datafile missing "-"
set format x "%.0s%c"
plot "$data" using 1:2 with linespoints title "C cachefilesd 0.10.10", \
     "$data" using 1:3 with linespoints title "cachefilesd-rs", \
     "$data" using 1:4 with linespoints title "floor: unlink(2) of the same victims", \
     "$data" using 1:5 with points pointtype 9 pointsize 1.5 title "C: no brun yet when stopped (a lower bound)"
GP
}

case ${1:-} in
  rows) shift; [ $# -gt 0 ] || usage; rows "$@" ;;
  plot) [ $# -eq 3 ] || usage; plot "$2" "$3" ;;
  *) usage ;;
esac
