#!/usr/bin/env bash
# Usage: scripts/guest-kmod.sh SRC_DIR OUT_DIR
# Builds the kernel module(s) of SRC_DIR (a Kbuild file and its sources, e.g.
# tests/guest/kmod) for the guest kernel of scripts/guest.sh, out of tree in OUT_DIR, and
# prints the path of each .ko. The headers are those guest.sh keeps next to the kernel
# (`headers/`, from Debian's linux-headers packages). Needs make and the compiler the kernel
# was built with (gcc-12 on bookworm: `apt-get install make gcc`).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR OUT_DIR" >&2; exit 2; }
src=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
command -v make >/dev/null || { echo "guest-kmod.sh: make is required (apt-get install make)" >&2; exit 1; }
read -r kernel _ < <(bash "$(dirname "$0")/guest.sh")
tree=$(compgen -G "$(dirname "$kernel")/headers/usr/src/linux-headers-*-amd64" | head -n1)
[ -s "$tree/Makefile" ] || { echo "guest-kmod.sh: no kernel headers next to $kernel" >&2; exit 1; }
# Kbuild writes its objects next to the sources: build a copy.
cp "$src"/* "$out"/
make -s -C "$tree" M="$out" modules >&2
ls "$out"/*.ko
