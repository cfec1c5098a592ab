#!/usr/bin/env bash
# Compile-check the failed-replay fix (docs/findings/failed-replay-hole.md) and the iommufd fill
# fix (docs/findings/iommufd-fill-holes.md) in real kernel trees.
#
# For each of two Debian kernel source packages:
#   - linux-source-6.1, from the apt archive this machine is configured for (bookworm);
#   - the newest linux-source-7.x that Debian sid or experimental offers (found with a private
#     apt configuration under the work directory, so the system's apt setup is not touched);
# it downloads the package, unpacks it (once), applies the series' flush hunks ported to that
# tree (docs/findings/v1-series-flush-on-6.1.patch or v1-series-flush-on-7.3.patch), configures
# x86_64 defconfig plus VFIO and VFIO_IOMMU_TYPE1, and builds drivers/vfio/vfio_iommu_type1.o
# twice: with the series alone, then with docs/findings/0001-vfio-type1-flush-on-failed-replay.patch
# on top. A tree is OK when both builds succeed with no compiler warning in that file and the
# object references arch_clean_nonsnoop_dma.
# Where the tree has drivers/iommu/iommufd (not 6.1: iommufd came in v6.2), it also enables
# IOMMUFD, applies the port of [PATCH 5/5] to that tree (docs/findings/v1-5of5-on-<version>.patch,
# else the 7.3 one), builds drivers/iommu/iommufd/pages.o and hw_pagetable.o, then applies
# docs/findings/0002-iommufd-flush-every-noncoherent-fill.patch and builds them again, then
# applies docs/findings/0003-iommufd-uncount-only-noncoherent-hwpt.patch on top and builds them
# a third time. Where 0002 or 0003 does not apply as it is, its rebase (v1-5of5-fix-on-<version>
# .patch, v1-5of5-uncount-fix-on-<version>.patch) is used instead, after checking that the
# rebase removes and adds the same lines. Each step is OK when its build succeeds with no
# compiler warning in the four iommufd files the patches touch and pages.o references
# arch_clean_nonsnoop_dma. Prints one OK/FAIL line per tree for type1 and, per tree, one
# OK/FAIL line for 5/5 + 0002 and one for 5/5 + 0002 + 0003 (or a single SKIP line); exits
# non-zero if any check failed.
#
# Manual only, not part of CI: it downloads about 300 MB and unpacks two kernel trees (about
# 3 GB). Every build runs at nice 19 with make -j1 unless told otherwise.
#
# Usage: scripts/findings-compile-check.sh [--install] [--only 6.1|new]
#   --install  apt-get install missing build dependencies first (as root)
#   --only     check just one of the two trees
# Environment:
#   FINDINGS_KC_WORK  work directory (default /tmp): trees go to kc61/ and kc<major><minor>/,
#                     packages to kc-debs/, the private apt state to kc-apt/
#   FINDINGS_KC_NEW   package to use instead of the newest 7.x (e.g. linux-source-7.3)
#   JOBS              make -j value (default 1)
#   NICE              niceness (default 19)
set -Eeuo pipefail

args=("$@")
install=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --install) install=1 ;;
        --only) shift; only="${1:-}" ;;
        -h|--help) sed -n '2,/^set -/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "findings-compile-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$only" in ""|6.1|new) ;; *) echo "findings-compile-check: --only takes 6.1 or new" >&2; exit 2 ;; esac

if [ -z "${FINDINGS_KC_NICED:-}" ]; then
    export FINDINGS_KC_NICED=1
    exec nice -n "${NICE:-19}" bash "$0" "${args[@]}"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
findings="$repo/docs/findings"
fix_patch="$findings/0001-vfio-type1-flush-on-failed-replay.patch"
ifd_fix_patch="$findings/0002-iommufd-flush-every-noncoherent-fill.patch"
ifd_uncount_patch="$findings/0003-iommufd-uncount-only-noncoherent-hwpt.patch"
work="${FINDINGS_KC_WORK:-/tmp}"
debs="$work/kc-debs"
aptdir="$work/kc-apt/new"
jobs="${JOBS:-1}"
target=drivers/vfio/vfio_iommu_type1.o
ifd=drivers/iommu/iommufd
ifd_targets=("$ifd/pages.o" "$ifd/hw_pagetable.o")
# (a tree without iommufd, such as 6.1, lacks the last four)
touched=(drivers/vfio/vfio_iommu_type1.c arch/x86/include/asm/cacheflush.h include/linux/cacheflush.h
         "$ifd/hw_pagetable.c" "$ifd/io_pagetable.h" "$ifd/iommufd_private.h" "$ifd/pages.c")
t_start=$(date +%s)

say() { echo "== $*"; }
die() { echo "findings-compile-check: $*" >&2; exit 1; }

# ------------------------------------------------------------------ dependencies
missing=()
for cmd in gcc make flex bison bc perl xz nm dpkg-deb apt-get git; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
for dev in libelf-dev libssl-dev; do
    [ "$(dpkg-query -W -f='${Status}' "$dev" 2>/dev/null || true)" = "install ok installed" ] ||
        missing+=("$dev")
done
if [ "${#missing[@]}" -gt 0 ]; then
    pkgs=()
    for m in "${missing[@]}"; do
        case "$m" in
            xz) pkgs+=(xz-utils) ;;
            nm) pkgs+=(binutils) ;;
            dpkg-deb) pkgs+=(dpkg) ;;
            apt-get) pkgs+=(apt) ;;
            *) pkgs+=("$m") ;;
        esac
    done
    if [ "$install" = 1 ]; then
        say "installing ${pkgs[*]}"
        apt-get install -y "${pkgs[@]}" >/dev/null
    else
        die "missing build dependencies: ${pkgs[*]} (rerun with --install)"
    fi
fi
say "gcc $(gcc -dumpfullversion), $(make --version | head -1)"
mkdir -p "$debs"

# ------------------------------------------------------------------ package helpers
# fetch PKG [APT-OPTIONS...]: download PKG into $debs unless that version is there; prints the
# path of the .deb.
fetch() {
    local pkg="$1"; shift
    local ver deb
    ver=$(apt-cache "$@" policy "$pkg" | awk '/Candidate:/ { print $2 }')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version for $pkg"
    deb="$debs/${pkg}_${ver//:/%3a}_all.deb"
    if [ ! -s "$deb" ]; then
        (cd "$debs" && apt-get "$@" download "$pkg=$ver" >>"$debs/download.log" 2>&1) ||
            die "apt-get download $pkg=$ver failed"
    fi
    [ -s "$deb" ] || die "download of $pkg did not produce $deb"
    echo "$deb"
}

# The private apt configuration for sid and experimental.
# shellcheck source=scripts/debian-unstable-apt.sh
. "$(dirname "$0")/debian-unstable-apt.sh"
setup_new_apt() {
    unstable_apt "$aptdir" ||
        die "apt-get update for sid/experimental failed, see $aptdir/update.log"
    new_apt_opts=("${UNSTABLE_APT[@]}")
}

# unpack DEB PKG DIR: unpack the source tarball of DEB into DIR/<tree> (once per version) and
# keep pristine copies of the files the patches touch (those the tree has). Prints the tree's
# path.
unpack() {
    local deb="$1" pkg="$2" dir="$3"
    local ver tree stamp
    ver=$(dpkg-deb -f "$deb" Version)
    tree="$dir/$pkg"
    stamp="$tree/.findings-unpacked"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$ver" ]; then
        rm -rf "$tree" "$dir/usr"
        mkdir -p "$dir"
        (cd "$dir" && dpkg-deb --fsys-tarfile "$deb" | tar -x --wildcards "./usr/src/$pkg.tar.xz") ||
            die "no usr/src/$pkg.tar.xz in $deb"
        xz -dc "$dir/usr/src/$pkg.tar.xz" | tar -x -C "$dir"
        rm -rf "$dir/usr"
        [ -f "$tree/Makefile" ] || die "unpacking $deb did not give $tree"
        mkdir -p "$tree/.findings-pristine"
        local f
        for f in "${touched[@]}"; do
            [ -e "$tree/$f" ] || continue
            mkdir -p "$tree/.findings-pristine/$(dirname "$f")"
            cp "$tree/$f" "$tree/.findings-pristine/$f"
        done
        echo "$ver" > "$stamp"
    fi
    echo "$tree"
}

# complete_pristine DEB PKG TREE: a tree unpacked by an earlier version of this script has no
# pristine copies of the files added to $touched since; take them from the package (not from
# the tree, which an earlier run may have patched). Costs one pass over the source tarball.
complete_pristine() {
    local deb="$1" pkg="$2" tree="$3"
    local f tmp members=()
    for f in "${touched[@]}"; do
        [ -e "$tree/$f" ] && [ ! -f "$tree/.findings-pristine/$f" ] && members+=("$pkg/$f")
    done
    [ "${#members[@]}" -gt 0 ] || return 0
    echo "   taking pristine copies of ${#members[@]} files from $(basename "$deb")"
    tmp=$(mktemp -d "$tree/.findings-extract.XXXXXX")
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$pkg.tar.xz" | xz -dc |
        tar -x -C "$tmp" "${members[@]}" || die "could not extract ${members[*]} from $deb"
    for f in "${members[@]}"; do
        f=${f#"$pkg"/}
        mkdir -p "$tree/.findings-pristine/$(dirname "$f")"
        cp "$tmp/$pkg/$f" "$tree/.findings-pristine/$f"
    done
    rm -rf "$tmp"
}

# build TREE LOG FILES OBJ...: build the objects; fails on a compiler warning or error in FILES
# (an extended regular expression of file names), and unless the first object references
# arch_clean_nonsnoop_dma.
build() {
    local tree="$1" log="$2" files="$3"; shift 3
    local obj sizes="" shown=${files//\\/}
    if ! make -C "$tree" -j"$jobs" "$@" >"$log" 2>&1; then
        echo "   build failed, last lines of $log:"; tail -15 "$log" | sed 's/^/     /'
        return 1
    fi
    if grep -E "(^|/)($files):[0-9]+:[0-9]+: (warning|error)" "$log"; then
        echo "   compiler diagnostics in ${shown//|/, }, see $log"
        return 1
    fi
    # (nm goes to a file: a pipe into grep -q can fail with SIGPIPE under pipefail)
    nm "$tree/$1" > "$log.nm"
    if ! grep -q ' U arch_clean_nonsnoop_dma$' "$log.nm"; then
        echo "   $1 does not reference arch_clean_nonsnoop_dma"
        return 1
    fi
    for obj in "$@"; do sizes+="$obj: $(stat -c %s "$tree/$obj") bytes, "; done
    echo "   ${sizes%, } (log $log)"
}

# changed_lines PATCH: the lines the diffs of PATCH remove and add, without leading whitespace.
changed_lines() {
    sed -n '/^diff --git /,$p' "$1" | grep -E '^[-+]' | grep -vE '^(--- |\+\+\+ |-- $)' |
        sed -E 's/^([-+])[[:space:]]*/\1/'
}

# ifd_fix_step LABEL PKG VER TREE FILES TAG PATCH STEM WITH: apply PATCH (0002 or 0003, named
# TAG in logs) to TREE, or, where it does not apply as it is, its rebase
# docs/findings/STEM-on-LABEL.patch (else the 7.3 one) after checking that the rebase removes and
# adds the same lines; then rebuild the iommufd objects. WITH names what the tree then has, for
# messages. On failure adds a FAIL line and returns 1.
ifd_fix_step() {
    local label="$1" pkg="$2" ver="$3" tree="$4" files="$5" tag="$6" patch="$7" stem="$8" with="$9"
    local fix="$patch" t0
    if ! (cd "$tree" && git apply --check "$fix") >"$tree/findings-$tag.log" 2>&1; then
        fix="$findings/$stem-on-$label.patch"
        [ -f "$fix" ] || fix="$findings/$stem-on-7.3.patch"
        echo "   $(basename "$patch") does not apply here as it is:"
        grep -E '^error' "$tree/findings-$tag.log" | sed 's/^/     /' || true
        if ! diff <(changed_lines "$patch") <(changed_lines "$fix") >"$tree/findings-$tag-rebase.diff"; then
            sed 's/^/     /' "$tree/findings-$tag-rebase.diff"
            results+=("FAIL $pkg $ver: $(basename "$fix") does not make the change of $(basename "$patch")")
            return 1
        fi
        echo "   using its rebase $(basename "$fix"), which removes and adds the same lines"
    fi
    say "$label: applying $(basename "$fix") and rebuilding"
    if ! (cd "$tree" && git apply -v "$fix") >"$tree/findings-$tag.log" 2>&1; then
        cat "$tree/findings-$tag.log" | sed 's/^/     /'
        results+=("FAIL $pkg $ver: $(basename "$fix") does not apply for $with")
        return 1
    fi
    grep -E '^Hunk|^Applied' "$tree/findings-$tag.log" | sed 's/^/   /' || true
    t0=$(date +%s)
    if ! build "$tree" "$tree/findings-$tag-build.log" "$files" "${ifd_targets[@]}"; then
        results+=("FAIL $pkg $ver: ${ifd_targets[*]} do not build with $with")
        return 1
    fi
    echo "   ($(( $(date +%s) - t0 )) s)"
}

# check_iommufd LABEL PKG VER TREE: the iommufd half for one tree (LABEL is its version, e.g.
# 7.3) whose series port is applied and whose .config has IOMMUFD; adds its result lines.
check_iommufd() {
    local label="$1" pkg="$2" ver="$3" tree="$4"
    local t0 port files
    files='hw_pagetable\.c|io_pagetable\.h|iommufd_private\.h|pages\.c'
    port="$findings/v1-5of5-on-$label.patch"
    if [ ! -d "$tree/$ifd" ]; then
        results+=("SKIP $pkg $ver: no $ifd (iommufd came in v6.2), so no port of 5/5")
        return 0
    fi
    if [ ! -f "$port" ]; then
        echo "   no 5/5 port for $label; trying the 7.3 port"
        port="$findings/v1-5of5-on-7.3.patch"
    fi

    say "$label: applying $(basename "$port")"
    if ! (cd "$tree" && git apply -v "$port") >"$tree/findings-5of5.log" 2>&1; then
        cat "$tree/findings-5of5.log" | sed 's/^/     /'
        results+=("FAIL $pkg $ver: the 5/5 port $(basename "$port") does not apply")
        return 0
    fi
    say "$label: building ${ifd_targets[*]} with 5/5"
    t0=$(date +%s)
    if ! build "$tree" "$tree/findings-5of5-build.log" "$files" "${ifd_targets[@]}"; then
        results+=("FAIL $pkg $ver: ${ifd_targets[*]} do not build with 5/5 alone")
        return 0
    fi
    echo "   ($(( $(date +%s) - t0 )) s)"

    if ! ifd_fix_step "$label" "$pkg" "$ver" "$tree" "$files" \
         0002 "$ifd_fix_patch" v1-5of5-fix "5/5 + 0002"; then
        results+=("FAIL $pkg $ver: 0003 not tried, 0002 failed first")
        return 0
    fi
    results+=("OK   $pkg $ver: 5/5 + 0002 compile, no warnings in the iommufd files")
    ifd_fix_step "$label" "$pkg" "$ver" "$tree" "$files" \
        0003 "$ifd_uncount_patch" v1-5of5-uncount-fix "5/5 + 0002 + 0003" || return 0
    results+=("OK   $pkg $ver: 5/5 + 0002 + 0003 compile, no warnings in the iommufd files")
}

# check LABEL DEB PKG DIR SERIES_PATCH: the whole check for one tree; adds its result lines.
results=()
check() {
    local label="$1" deb="$2" pkg="$3" dir="$4" series="$5"
    local ver tree f
    ver=$(dpkg-deb -f "$deb" Version)
    say "$label: $pkg $ver"
    local t0; t0=$(date +%s)
    tree=$(unpack "$deb" "$pkg" "$dir")
    complete_pristine "$deb" "$pkg" "$tree"
    echo "   tree $tree ($(( $(date +%s) - t0 )) s)"

    for f in "${touched[@]}"; do
        [ ! -f "$tree/.findings-pristine/$f" ] || cp "$tree/.findings-pristine/$f" "$tree/$f"
    done
    if ! (cd "$tree" && git apply -v "$series") >"$tree/findings-series.log" 2>&1; then
        cat "$tree/findings-series.log" | sed 's/^/     /'
        results+=("FAIL $pkg $ver: the series port $(basename "$series") does not apply")
        return 0
    fi

    make -C "$tree" -s defconfig >/dev/null
    "$tree/scripts/config" --file "$tree/.config" -e VFIO -e VFIO_IOMMU_TYPE1 -e IOMMUFD
    make -C "$tree" -s olddefconfig >/dev/null
    if ! grep -q '^CONFIG_VFIO=y' "$tree/.config" || ! grep -q '^CONFIG_VFIO_IOMMU_TYPE1=y' "$tree/.config"; then
        results+=("FAIL $pkg $ver: CONFIG_VFIO/CONFIG_VFIO_IOMMU_TYPE1 not enabled after olddefconfig")
        return 0
    fi
    if [ -d "$tree/$ifd" ] && ! grep -q '^CONFIG_IOMMUFD=y' "$tree/.config"; then
        results+=("FAIL $pkg $ver: CONFIG_IOMMUFD not enabled after olddefconfig")
        return 0
    fi

    say "$label: building $target with the series (the first run includes the prepare step)"
    t0=$(date +%s)
    if ! build "$tree" "$tree/findings-series-build.log" 'vfio_iommu_type1\.c' "$target"; then
        results+=("FAIL $pkg $ver: $target does not build with the series alone")
        check_iommufd "$label" "$pkg" "$ver" "$tree"
        return 0
    fi
    echo "   ($(( $(date +%s) - t0 )) s)"

    say "$label: applying the fix and rebuilding"
    if ! (cd "$tree" && git apply -v "$fix_patch") >"$tree/findings-fix.log" 2>&1; then
        cat "$tree/findings-fix.log" | sed 's/^/     /'
        results+=("FAIL $pkg $ver: $(basename "$fix_patch") does not apply on the series")
    else
        grep -E '^Hunk|^Applied' "$tree/findings-fix.log" | sed 's/^/   /' || true
        t0=$(date +%s)
        if ! build "$tree" "$tree/findings-fix-build.log" 'vfio_iommu_type1\.c' "$target"; then
            results+=("FAIL $pkg $ver: $target does not build with the series and the fix")
        else
            echo "   ($(( $(date +%s) - t0 )) s)"
            results+=("OK   $pkg $ver: series + fix compile, no warnings in vfio_iommu_type1.c")
        fi
    fi

    check_iommufd "$label" "$pkg" "$ver" "$tree"
}

# ------------------------------------------------------------------ linux-source-6.1
if [ "$only" != new ]; then
    policy61=$(apt-cache policy linux-source-6.1)
    if ! grep -q 'Candidate: [0-9]' <<<"$policy61"; then
        say "apt-get update (linux-source-6.1 has no candidate yet)"
        apt-get update >/dev/null
    fi
    deb61=$(fetch linux-source-6.1)
    check "6.1" "$deb61" linux-source-6.1 "$work/kc61" "$findings/v1-series-flush-on-6.1.patch"
fi

# ------------------------------------------------------------------ newest linux-source-7.x
if [ "$only" != 6.1 ]; then
    say "looking up the newest linux-source-7.x in sid and experimental"
    setup_new_apt
    newpkg="${FINDINGS_KC_NEW:-}"
    if [ -z "$newpkg" ]; then
        newpkg=$(apt-cache "${new_apt_opts[@]}" search --names-only '^linux-source-7\.[0-9]+$' |
                 awk '{ print $1 }' | sort -V | tail -1)
    fi
    [ -n "$newpkg" ] || die "no linux-source-7.x package in sid or experimental"
    newver=${newpkg#linux-source-}
    debnew=$(fetch "$newpkg" "${new_apt_opts[@]}")
    series_new="$findings/v1-series-flush-on-$newver.patch"
    if [ ! -f "$series_new" ]; then
        echo "   no port for $newver; trying the 7.3 port"
        series_new="$findings/v1-series-flush-on-7.3.patch"
    fi
    check "$newver" "$debnew" "$newpkg" "$work/kc${newver//./}" "$series_new"
fi

echo
say "results ($(( $(date +%s) - t_start )) s in total)"
status=0
for r in "${results[@]}"; do
    echo "findings-compile-check: $r"
    case "$r" in FAIL*) status=1 ;; esac
done
exit "$status"
