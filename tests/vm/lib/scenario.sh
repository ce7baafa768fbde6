# shellcheck shell=bash
# Scenario header lines, parsed in this one place (sourced by run-suite.sh and
# build-initramfs.sh; bash). A scenario script starts with comment lines; those of the form
#   # vm-KEY: VALUE
# set up its VM. Keys (the README lists them with their meaning):
#   timeout N         seconds before the host kills qemu (default 300)
#   smp N             qemu -smp (default 2)
#   mem M             qemu -m (default 1024M)
#   disk prefilled-N  a cache disk pre-filled on the host (make-prefilled-cache.py)
#   disk-copies K     K identical cache disks
#   disk-size S       size of a fresh cache disk (default 256M)
#   default no        not in a run without scenario names
#   kernel SERIES...  the test kernels it runs on (build-kernel.sh series; default 6.12)
#   needs c-cachefilesd  Debian's C daemon in the initramfs
#   kind debian       boot the Debian image (build-debian-image.sh, systemd as PID 1) instead of
#                     the initramfs; such scenarios live in tests/vm/debian/scenarios/
#   object VOLUME KEY the kernel's path of this object is looked up (lib/common.sh object_path;
#                     KEY is str:TEXT), so the oracle (cachenames.py) puts it into the initramfs;
#                     may be repeated
# A line starting with "# vm-" that does not parse, an unknown key or a repeated key other than
# `object` is an error: a typo must not silently give a scenario the default VM.

vm_header_keys=" timeout smp mem disk disk-copies disk-size default needs object kernel kind "

declare -gA vm_headers=()

# scenario_headers NAME FILE: parses the header of scenario NAME (script FILE) once; afterwards
# `hdr NAME KEY` prints a value (empty if absent) and `hdr NAME object` the `object` values, one
# per line.
scenario_headers() {
  local name=$1 file=$2 line key value
  for key in "${!vm_headers[@]}"; do
    [[ "$key" != "$name "* ]] || unset "vm_headers[$key]"
  done
  vm_headers["$name object"]=
  while IFS= read -r line; do
    case "$line" in
      '#!'*) continue ;;
      '# vm-'*) ;;
      '#'*) continue ;;
      *) break ;;
    esac
    if [[ ! "$line" =~ ^#\ vm-([a-z-]+):\ *([^ ].*)$ ]]; then
      echo "$file: malformed header line: $line" >&2
      return 2
    fi
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]%"${BASH_REMATCH[2]##*[! ]}"}
    if [[ "$vm_header_keys" != *" $key "* ]]; then
      echo "$file: unknown header key vm-$key (known:$vm_header_keys)" >&2
      return 2
    fi
    if [ "$key" = object ]; then
      vm_headers["$name object"]+="$value"$'\n'
      continue
    fi
    if [ -n "${vm_headers["$name $key"]+set}" ]; then
      echo "$file: header key vm-$key given twice" >&2
      return 2
    fi
    vm_headers["$name $key"]=$value
  done <"$file"
}

# hdr NAME KEY: the value of KEY in scenario NAME's header (empty if absent).
hdr() { printf '%s' "${vm_headers["$1 $2"]:-}"; }
