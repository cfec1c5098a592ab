#!/usr/bin/env bash
# Builds, once, a small Linux guest from Debian packages and prints "KERNEL INITRD":
# - the kernel of linux-image-cloud-amd64's dependency (linux-image-6.1.0-*-cloud-amd64),
# - an initramfs of busybox-static whose /init mounts /proc and /sys, prints
#   "type1-guest-up" and powers the machine off.
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is
# installed); busybox packs the initramfs. Cached in $TYPE1_GUEST_CACHE (default
# ~/.cache/type1/guest). Used by scripts/boot-bench.sh; see docs/performance.md.
set -euo pipefail
cache=${TYPE1_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/type1/guest}
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ]; then
  echo "$cache/vmlinuz $cache/initrd.img"
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb gzip; do
  command -v "$tool" >/dev/null || { echo "guest.sh: $tool is required (Debian)" >&2; exit 1; }
done
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
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
mv initrd.img "$cache/initrd.img"
mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
echo "$cache/vmlinuz $cache/initrd.img"
