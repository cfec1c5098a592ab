#!/usr/bin/env bash
# Compile-check the failed-replay fix (docs/findings/failed-replay-hole.md) in a real kernel tree.
#
# Fetches Debian's linux-source-6.1 (cached), applies the flush hunks of the series
# (docs/findings/v1-series-flush-on-6.1.patch) and then our fix
# (docs/findings/failed-replay-fix.patch), enables VFIO and VFIO_IOMMU_TYPE1 on top of
# x86_64 defconfig, and builds drivers/vfio/vfio_iommu_type1.o twice: with the series alone,
# then with the fix. Any compiler warning in that file counts as a failure.
#
# Not part of CI: it downloads about 140 MB and takes about 1.5 minutes from an empty cache on
# 2 cores (about 25 s with the cache), most of it unpacking the source.
#
# Usage: scripts/kernel-check.sh [--install]
#   --install  apt-get install the missing build dependencies first (as root)
# Environment:
#   TYPE1_KERNEL_CACHE  cache directory (default ~/.cache/type1/kernel)
#   JOBS                make -j value (default: number of CPUs)
#   NICE                niceness of the whole run (default 19, so other builds go first)
set -Eeuo pipefail

install=0
for arg in "$@"; do
    case "$arg" in
        --install) install=1 ;;
        -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kernel-check: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

# Lower our own priority once, before any heavy work.
if [ -z "${TYPE1_KERNEL_CHECK_NICED:-}" ]; then
    export TYPE1_KERNEL_CHECK_NICED=1
    exec nice -n "${NICE:-19}" bash "$0" "$@"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
series_patch="$repo/docs/findings/v1-series-flush-on-6.1.patch"
fix_patch="$repo/docs/findings/failed-replay-fix.patch"
cache="${TYPE1_KERNEL_CACHE:-$HOME/.cache/type1/kernel}"
jobs="${JOBS:-$(nproc)}"
pkg=linux-source-6.1
target=drivers/vfio/vfio_iommu_type1.o

t_start=$(date +%s)
stage="setup"
stage_start=$t_start
trap 'rc=$?; echo "kernel-check: FAILED during \"$stage\" (exit $rc) after $(( $(date +%s) - t_start )) s" >&2; exit $rc' ERR

begin() {
    stage="$1"
    stage_start=$(date +%s)
    echo "== $stage"
}
done_stage() {
    echo "   ($(( $(date +%s) - stage_start )) s)"
}

# ---------------------------------------------------------------- dependencies
begin "checking build dependencies"
missing=()
for cmd in gcc make flex bison bc patch perl xz nm dpkg-deb apt-get; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
for dev in libelf-dev libssl-dev; do
    status=$(dpkg-query -W -f='${Status}' "$dev" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$dev")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # Map command names to Debian packages.
    pkgs=()
    for m in "${missing[@]}"; do
        case "$m" in
            xz) pkgs+=(xz-utils) ;;
            nm) pkgs+=(binutils) ;;
            dpkg-deb|apt-get) pkgs+=(dpkg apt) ;;
            *) pkgs+=("$m") ;;
        esac
    done
    if [ "$install" = 1 ]; then
        echo "   installing: ${pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    else
        echo "kernel-check: missing build dependencies: ${missing[*]}" >&2
        echo "kernel-check: install them with:  apt-get install ${pkgs[*]}" >&2
        echo "kernel-check: (or rerun with --install)" >&2
        exit 3
    fi
fi
for f in "$series_patch" "$fix_patch"; do
    [ -f "$f" ] || { echo "kernel-check: missing $f" >&2; exit 2; }
done
echo "   gcc: $(gcc -dumpfullversion), $(make --version | sed -n 1p)"
done_stage

# ---------------------------------------------------------------- source
begin "fetching $pkg"
mkdir -p "$cache"
deb=$(ls -1 "$cache"/${pkg}_*_all.deb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$deb" ]; then
    (cd "$cache" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb=$(ls -1 "$cache"/${pkg}_*_all.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$deb" ] || { echo "kernel-check: apt-get download $pkg failed (run apt-get update?)" >&2; false; }
else
    echo "   cached"
fi
debver=$(dpkg-deb -f "$deb" Version)
echo "   $(basename "$deb") (version $debver)"
done_stage

begin "unpacking $pkg $debver"
pristine="$cache/src-$debver"
if [ ! -f "$pristine/.complete" ]; then
    rm -rf "$pristine"
    mkdir -p "$pristine"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/$pkg.tar.xz | tar -xJ -C "$pristine"
    touch "$pristine/.complete"
else
    echo "   cached"
fi
done_stage

# The work tree is a hard-linked copy of the pristine one; every file a patch touches is
# replaced by a real copy first, so the pristine tree is never modified.
work="$cache/work"
src="$work/linux-source-6.1"
build="$work/build"
begin "laying out the work tree and applying the series' flush hunks"
rm -rf "$work"
mkdir -p "$work"
cp -al "$pristine/linux-source-6.1" "$src"
unlink_touched() {
    # Break the hard link (keeping the current content, which may carry an earlier patch).
    grep '^+++ b/' "$1" | sed 's#^+++ b/##; s#\t.*##' | while read -r f; do
        if [ -e "$src/$f" ] && [ "$(stat -c %h "$src/$f")" -gt 1 ]; then
            cp -p "$src/$f" "$src/$f.unlink"
            mv -f "$src/$f.unlink" "$src/$f"
        fi
    done
}
apply() {
    unlink_touched "$1"
    (cd "$src" && patch -p1 --forward --fuzz=0 --no-backup-if-mismatch -s < "$1")
}
apply "$series_patch"
grep -q 'cache_flush_required = !domain->enforce_cache_coherency' "$src/drivers/vfio/vfio_iommu_type1.c"
done_stage

# ---------------------------------------------------------------- config
begin "configuring (x86_64 defconfig + VFIO + VFIO_IOMMU_TYPE1)"
mkdir -p "$build"
make -s -C "$src" O="$build" ARCH=x86_64 defconfig >/dev/null
"$src/scripts/config" --file "$build/.config" -e IOMMU_SUPPORT -e VFIO -e VFIO_IOMMU_TYPE1
make -s -C "$src" O="$build" ARCH=x86_64 olddefconfig >/dev/null
for opt in CONFIG_VFIO CONFIG_VFIO_IOMMU_TYPE1; do
    if ! grep -Eq "^$opt=(y|m)$" "$build/.config"; then
        echo "kernel-check: $opt did not stick in .config" >&2
        false
    fi
    grep -E "^$opt=" "$build/.config" | sed 's/^/   /'
done
done_stage

build_object() {
    local log="$work/$1.log"
    rm -f "$build/$target"
    if ! make -C "$src" O="$build" ARCH=x86_64 -j"$jobs" "$target" >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "kernel-check: build failed, full log: $log" >&2
        return 1
    fi
    if grep -n 'vfio_iommu_type1\.c:[0-9]*:[0-9]*: \(warning\|error\)' "$log"; then
        echo "kernel-check: compiler diagnostics in vfio_iommu_type1.c, full log: $log" >&2
        return 1
    fi
    [ -s "$build/$target" ]
    # The flush calls must be compiled in: the object needs the x86 helper.
    # (nm's output is captured first: under pipefail, grep -q closing the pipe early would
    # make the pipeline fail.)
    local syms
    syms=$(nm "$build/$target")
    if ! grep -q ' U arch_clean_nonsnoop_dma$' <<<"$syms"; then
        echo "kernel-check: $target does not reference arch_clean_nonsnoop_dma" >&2
        return 1
    fi
    echo "   $target: $(stat -c %s "$build/$target") bytes, log $log"
}

# ---------------------------------------------------------------- builds
begin "building $target with the series (includes the kernel's prepare step)"
build_object series
done_stage

begin "applying our fix and rebuilding $target"
apply "$fix_patch"
grep -q 'vfio_flush_dma_tail(d, dma, iova + size);' "$src/drivers/vfio/vfio_iommu_type1.c"
# ... and the series is still there underneath it.
grep -q 'cache_flush_required = !domain->enforce_cache_coherency' "$src/drivers/vfio/vfio_iommu_type1.c"
build_object fixed
if ! grep -q 'vfio_flush_dma_tail' <<<"$(nm "$build/$target")"; then
    echo "   (vfio_flush_dma_tail was inlined into vfio_iommu_replay)"
fi
done_stage

trap - ERR
echo "kernel-check: OK: $pkg $debver + series + fix compiles; $(( $(date +%s) - t_start )) s in total"
