#!/usr/bin/env python3
"""Runs the model checker's recorded runs and writes their figures to docs/check-runs.json.

Every figure docs/verification.md and docs/iommufd.md quote from `type1 check` comes from
this file: one run of this script, on one build, on one machine. Usage, from the
repository root, after `cargo build --release -p type1-cli`:

    python3 scripts/check-record.py [--out docs/check-runs.json] [--quick]

`--quick` leaves out the runs that take minutes (for trying the script).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

RUNS = [
    # type1, the default fault alphabet
    ["--all", "--depth", "6"],
    ["--policy", "seed", "--depth", "7"],
    ["--policy", "seed-fixed", "--depth", "7"],
    ["--policy", "seed-fixed", "--depth", "8"],
    ["--policy", "seed-ro", "--depth", "8"],
    # type1, the wide fault alphabet
    ["--policy", "seed", "--depth", "9", "--wide-faults"],
    ["--policy", "seed-fixed", "--depth", "8", "--wide-faults"],
    ["--policy", "seed-fixed", "--depth", "9", "--wide-faults"],
    # type1, accesses inside operations
    ["--all", "--dma-inside", "--content-only", "--mappings", "1", "--depth", "6"],
    ["--policy", "seed", "--dma-inside", "--depth", "7"],
    ["--policy", "seed-fixed", "--dma-inside", "--depth", "7"],
    ["--policy", "seed-fixed", "--dma-inside", "--wide-faults", "--depth", "7"],
    # iommufd
    ["--iommufd", "--all", "--depth", "6"],
    ["--iommufd", "--policy", "seed-fixed", "--depth", "6", "--wide-faults"],
    ["--iommufd", "--policy", "seed-fixed", "--dma-inside", "--depth", "6"],
]


def slow(args):
    """The runs over a minute."""
    return ("--dma-inside" in args and args[-1] == "7") or args[-1] == "9" or (
        "--iommufd" in args and "--dma-inside" in args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/check-runs.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default="target/release/type1")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin} not found: run `cargo build --release -p type1-cli` first")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    runs = []
    for args in RUNS:
        if a.quick and slow(args):
            continue
        cmd = ["/usr/bin/time", "-f", "%M", a.bin, "check", *args, "--json"]
        t = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - t
        # Exit status 1 is a counterexample, which is a result like any other.
        if p.returncode not in (0, 1):
            sys.exit(f"type1 check {' '.join(args)} failed:\n{p.stderr}")
        peak_kb = int(p.stderr.strip().splitlines()[-1])
        out = json.loads(p.stdout)
        results = out if isinstance(out, list) else [out]
        runs.append({
            "command": "type1 check " + " ".join(args),
            "wall_seconds": round(wall, 1),
            "peak_rss_gb": round(peak_kb / 2**20, 2),
            "results": [{
                "policy": r["policy"],
                "states": r["states"],
                "sequences": r["sequences"],
                "seconds": round(r["seconds"], 1),
                "explored_flushed_pages": r["explored_flushed_pages"],
                "corpus_flushed_pages": r["corpus_flushed_pages"],
                "sound": r["sound"],
                "counterexample": ({k: r["counterexample"][k]
                                    for k in ("length", "kind", "at_close", "actions")}
                                   if r["counterexample"] else None),
            } for r in results],
        })
        print(f"{runs[-1]['command']}: {wall:.1f} s, {peak_kb / 2**20:.2f} GB", file=sys.stderr)
    record = {
        "date": datetime.date.today().isoformat(),
        "build": f"release, commit {commit}{' (uncommitted changes)' if dirty else ''}",
        "machine": f"{os.cpu_count()} CPUs, threads: one per CPU",
        "note": "seconds: the search and the 200-sequence flush-cost corpus, as type1 check "
                "reports them; wall_seconds and peak_rss_gb: the whole command",
        "runs": runs,
    }
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
