#!/usr/bin/env bash
# Builds, once, a small Linux guest from Debian packages and prints "KERNEL INITRD":
# - the kernel of linux-image-cloud-amd64's dependency (linux-image-6.1.0-*-cloud-amd64),
# - an initramfs of busybox-static whose /init mounts /proc and /sys, prints
#   "type1-guest-up" and powers the machine off,
# - next to them, in `$(dirname KERNEL)/modules/`, the kernel package's uio.ko and
#   uio_pci_generic.ko (uncompressed, for busybox insmod; not in the initramfs: a test that
#   wants them appends them),
# - in `$(dirname KERNEL)/headers/`, the kernel's headers and kbuild (linux-headers-RELEASE,
#   its -common package and linux-kbuild-X.Y, unpacked), for guest modules built by
#   scripts/guest-kmod.sh.
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is
# installed); busybox packs the initramfs. Cached in $TYPE1_GUEST_CACHE (default
# ~/.cache/type1/guest). A cache that has the kernel and initramfs but not the modules is
# completed from the package of the cached kernel's release. Used by scripts/boot-bench.sh
# (see docs/performance.md) and crates/cli/tests/guest.rs.
set -euo pipefail
cache=${TYPE1_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/type1/guest}
modules=(uio uio_pci_generic)
have_modules() {
  local m
  for m in "${modules[@]}"; do [ -s "$cache/modules/$m.ko" ] || return 1; done
}
have_headers() {
  compgen -G "$cache/headers/usr/src/linux-headers-*/Makefile" >/dev/null
}
cached() {
  [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ] && have_modules && have_headers
}
if cached; then
  echo "$cache/vmlinuz $cache/initrd.img"
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb gzip od dd; do
  command -v "$tool" >/dev/null || { echo "guest.sh: $tool is required (Debian)" >&2; exit 1; }
done
mkdir -p "$cache"
# One build at a time (tests call this in parallel); a waiter finds the cache complete.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
  if cached; then
    echo "$cache/vmlinuz $cache/initrd.img"
    exit 0
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work" "$cache/modules.tmp.$$" "$cache/headers.tmp.$$"' EXIT
cd "$work"

# The release of a bzImage ("6.1.0-48-cloud-amd64"): the boot header's kernel_version field
# (u16 at 0x20e) points at the version string, 0x200 bytes further on.
release_of() {
  local at
  at=$(od -An -tu2 -j $((0x20e)) -N2 "$1" | tr -d ' ')
  [ -n "$at" ] && [ "$at" -gt 0 ] || return 1
  dd if="$1" bs=1 skip=$((at + 0x200)) count=128 2>/dev/null | tr '\0' '\n' | head -n1 |
    cut -d' ' -f1
}

# Copies the modules out of the kernel package unpacked in ./kernel into $cache/modules,
# checking they were built for release $1 (their vermagic). Compressed modules (.ko.xz,
# .ko.zst: newer Debian kernels) are decompressed, busybox insmod loads plain ones only.
keep_modules() {
  local dir m f
  dir=kernel/lib/modules/$1/kernel/drivers/uio
  local tmp=$cache/modules.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  for m in "${modules[@]}"; do
    if [ -f "$dir/$m.ko" ]; then
      cp "$dir/$m.ko" "$tmp/$m.ko"
    elif [ -f "$dir/$m.ko.xz" ]; then
      xz -dc "$dir/$m.ko.xz" > "$tmp/$m.ko"
    elif [ -f "$dir/$m.ko.zst" ]; then
      zstd -qdc "$dir/$m.ko.zst" > "$tmp/$m.ko"
    else
      echo "guest.sh: no $m.ko in the package of $1" >&2
      return 1
    fi
    f=$tmp/$m.ko
    grep -qaF "vermagic=$1 " "$f" ||
      { echo "guest.sh: $m.ko is not built for $1" >&2; return 1; }
  done
  rm -rf "$cache/modules"
  mv "$tmp" "$cache/modules"
}

# Unpacks the headers of release $1 (downloaded here: linux-headers-$1 and the headers and
# kbuild packages it depends on) into $cache/headers. The flavour's Makefile includes the
# common one by absolute path under /usr/src: it is made relative, the tree lives elsewhere.
keep_headers() {
  local deps tmp=$cache/headers.tmp.$$
  deps=$(apt-cache depends "linux-headers-$1" 2>/dev/null |
    awk '/Depends: linux-(headers|kbuild)-/ { print $2 }')
  [ -n "$deps" ] || return 1
  mkdir -p hdeb
  (cd hdeb && apt-get download "linux-headers-$1" $deps >/dev/null 2>&1) || return 1
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local d
  for d in hdeb/*.deb; do dpkg-deb -x "$d" "$tmp"; done
  sed -i 's|^include /usr/src/|include $(abspath $(dir $(lastword $(MAKEFILE_LIST))))/../|' \
    "$tmp/usr/src/linux-headers-$1/Makefile"
  rm -rf "$cache/headers"
  mv "$tmp" "$cache/headers"
}

# Kernel and initramfs cached, modules or headers not: take them from the cached kernel's
# packages, if the archive still has them; otherwise build everything again.
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ]; then
  release=$(release_of "$cache/vmlinuz" || true)
  if [ -n "$release" ] &&
    { have_modules ||
      { { apt-get download "linux-image-$release" >/dev/null 2>&1 ||
          { apt-get update -qq >/dev/null 2>&1 &&
            apt-get download "linux-image-$release" >/dev/null 2>&1; }; } &&
        dpkg-deb -x "linux-image-${release}"_*.deb kernel && keep_modules "$release"; }; } &&
    { have_headers || keep_headers "$release" ||
      { apt-get update -qq >/dev/null 2>&1 && keep_headers "$release"; }; }; then
    echo "$cache/vmlinuz $cache/initrd.img"
    exit 0
  fi
  echo "guest.sh: no modules or headers for the cached kernel ${release:-?}; building the guest again" >&2
  rm -rf kernel hdeb ./*.deb
fi

kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ] || ! apt-get download "$kpkg" busybox-static >/dev/null 2>&1; then
  # A fresh machine may have no package lists yet.
  apt-get update -qq >/dev/null
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  apt-get download "$kpkg" busybox-static >/dev/null
fi
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
mkdir -p root/bin root/proc root/sys root/dev
cp bb/bin/busybox root/bin/busybox
for applet in sh mount poweroff echo cat sleep; do ln -s busybox "root/bin/$applet"; done
cat > root/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
echo type1-guest-up
poweroff -f
INIT
chmod +x root/init
(cd root && find . | ./bin/busybox cpio -o -H newc 2>/dev/null) | gzip -1 > initrd.img
cp kernel/boot/vmlinuz-* "$cache/vmlinuz.tmp"
rm -rf "$cache/modules" # those of another kernel, if any
mv initrd.img "$cache/initrd.img"
mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
keep_modules "${kpkg#linux-image-}"
keep_headers "${kpkg#linux-image-}" ||
  { echo "guest.sh: cannot download the headers of ${kpkg#linux-image-}" >&2; exit 1; }
echo "$cache/vmlinuz $cache/initrd.img"
