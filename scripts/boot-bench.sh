#!/usr/bin/env bash
# Times an unmodified QEMU (TCG) booting a small Linux guest to poweroff, with `-m ${MEM:-1024}`:
#   plain:  no device, `-mem-prealloc` (all guest RAM faulted in up front);
#   vfio:   `-device vfio-pci,host=0000:00:05.0` under `type1 exec` (guest RAM mapped with
#           MAP_DMA, so pinned and, with the default policy `seed`, flushed), once per policy.
# Runs each ${REPS:-3} times, interleaved, and prints medians and the ratio to plain.
# Needs qemu-system-x86_64 and a release build (`cargo build --release --workspace`).
# Not part of CI; docs/performance.md records results.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r kernel initrd < <(scripts/guest.sh)
type1=target/release/type1
[ -x "$type1" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
mem=${MEM:-1024}
reps=${REPS:-3}
common=(-machine q35 -accel tcg -m "$mem" -nodefaults -display none -serial stdio -no-reboot
  -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet")
run() { # label command...: seconds, and a check that the guest came up
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$("$@" 2>&1) || { echo "$1 failed:" >&2; echo "$out" | tail -5 >&2; exit 1; }
  t1=$(date +%s.%N)
  grep -q type1-guest-up <<<"$out" || { echo "guest did not come up:" >&2; echo "$out" | tail -5 >&2; exit 1; }
  echo "$t1 - $t0" | bc -l
}
declare -A times
for _ in $(seq "$reps"); do
  times[plain]+="$(run qemu-system-x86_64 "${common[@]}" -mem-prealloc) "
  for policy in none seed; do
    times[$policy]+="$(run "$type1" exec --policy "$policy" -- qemu-system-x86_64 "${common[@]}" \
      -device vfio-pci,host=0000:00:05.0) "
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
plain=$(median "${times[plain]}")
printf '%-28s %6.2f s  (runs %s s)\n' "plain -mem-prealloc" "$plain" "$(range "${times[plain]}")"
for policy in none seed; do
  m=$(median "${times[$policy]}")
  printf '%-28s %6.2f s  %.2fx plain  (runs %s s)\n' "vfio-pci, policy $policy" "$m" \
    "$(echo "$m / $plain" | bc -l)" "$(range "${times[$policy]}")"
done
