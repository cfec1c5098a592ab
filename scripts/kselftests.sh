#!/usr/bin/env bash
# Builds, once, the kernel's own VFIO selftests (tools/testing/selftests/vfio: the DMA mapping,
# MMIO mapping and PCI device tests, in every IOMMU mode: type1, type1v2, the two iommufd
# compat modes and native iommufd) and prints the directory holding the binaries.
#
# The source is the newest `linux-source-X.Y` package of the Debian archive (experimental or
# unstable, read through a private apt configuration: the system's sources are not touched)
# whose selftests build; fetched with `apt-get download`, unpacked with `dpkg-deb -x` and
# `tar`, the uAPI headers made with `make headers`, the tests built with their own Makefile.
# Needs gcc, make, xz-utils and libuuid (uuid-dev). Cached in $TYPE1_KSELFTEST_CACHE (default
# ~/.cache/type1/kselftest). Used by crates/preload/tests/kselftests.rs.
set -euo pipefail
cache=${TYPE1_KSELFTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/type1/kselftest}
tests=(vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_pci_device_test)
cached() {
  local t
  for t in "${tests[@]}"; do [ -x "$cache/bin/$t" ] || return 1; done
}
if cached; then echo "$cache/bin"; exit 0; fi
for tool in apt-get apt-cache dpkg-deb tar xz make gcc; do
  command -v "$tool" >/dev/null || { echo "kselftests.sh: $tool is required" >&2; exit 1; }
done
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if cached; then echo "$cache/bin"; exit 0; fi
# shellcheck source=scripts/debian-unstable-apt.sh
. "$(dirname "$0")/debian-unstable-apt.sh"
unstable_apt "$cache/apt" || { echo "kselftests.sh: apt-get update failed: $cache/apt/update.log" >&2; exit 1; }
opts=("${UNSTABLE_APT[@]}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Newest first; the first whose selftests build wins (a release can ship them broken).
for pkg in $(apt-cache "${opts[@]}" search '^linux-source-[0-9.]*$' | awk '{print $1}' | sort -rV); do
  echo "kselftests.sh: trying $pkg" >&2
  rm -rf "$work"/*
  (cd "$work" && apt-get "${opts[@]}" download "$pkg" >&2) || continue
  dpkg-deb -x "$work"/"$pkg"_*.deb "$work/x"
  tarball=$(ls "$work"/x/usr/src/linux-source-*.tar.xz)
  tar -xJf "$tarball" -C "$work"
  src=$(ls -d "$work"/linux-source-*/)
  if make -C "$src" -s headers >&2 &&
     make -C "$src/tools/testing/selftests/vfio" -s -j"$(nproc)" >&2; then
    mkdir -p "$cache/bin"
    for t in "${tests[@]}"; do cp "$src/tools/testing/selftests/vfio/$t" "$cache/bin/"; done
    echo "$pkg" >"$cache/bin/SOURCE"
    echo "$cache/bin"
    exit 0
  fi
done
echo "kselftests.sh: no linux-source package with buildable VFIO selftests" >&2
exit 1
