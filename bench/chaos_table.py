"""Run the failure suite several times and print RELIABILITY.md's table from what it recorded.

Each scenario's invariants (one terminal state, no stale-epoch writes, one result per row, attempts
matching rescues) are asserted by the tests themselves; this script counts the runs, the jobs they
checked, and the measured gap between a broken attempt and the next one.

    python bench/chaos_table.py [--repeat 3] [--save report.jsonl]
    python bench/chaos_table.py --report report.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import REPO, command_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--report", help="summarise this NIGHTSHIFT_CHAOS_REPORT file instead of running")
    parser.add_argument("--save", help="keep what the runs recorded in this file (for --report later)")
    args = parser.parse_args()
    runs_passed = 0
    if args.report:
        records = [json.loads(line) for line in open(args.report)]
        args.repeat = runs_passed = None
    else:
        records, runs_passed = run_suite(args.repeat, args.save)
    by_scenario, measured = defaultdict(list), defaultdict(list)
    for record in records:
        if "measurement" in record:
            measured[record["measurement"]].append(record["seconds"])
        else:
            by_scenario[record["scenario"]].append(record)
    print(f"command: {command_line()}")
    if args.repeat is not None:
        print(f"suite runs: {args.repeat}, fully green: {runs_passed}")
    print("| scenario | jobs checked | lost | duplicated | rescues | recovery median / worst (s) |")
    print("|---|---|---|---|---|---|")
    for scenario in sorted(by_scenario, key=_number):
        rows = by_scenario[scenario]
        gaps = [g for r in rows for g in r["recovery_seconds"]]
        lost = sum(r["status"] not in ("succeeded", "failed", "cancelled") for r in rows)
        duplicated = sum(r["ends"] > 1 for r in rows)
        recovery = f"{statistics.median(gaps):.1f} / {max(gaps):.1f}" if gaps else "-"
        print(f"| {scenario} | {len(rows)} | {lost} | {duplicated} | {len(gaps)} | {recovery} |")
    if measured:
        print("\n| with default settings: kill to next start | runs | median (s) | worst (s) |")
        print("|---|---|---|---|")
        for name, seconds in sorted(measured.items()):
            print(f"| {name} | {len(seconds)} | {statistics.median(seconds):.1f} | {max(seconds):.1f} |")


def run_suite(repeat: int, save: str | None = None) -> tuple[list[dict], int]:
    """Run tests/chaos `repeat` times; return what they recorded and how many runs were green."""
    passed = 0
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as scratch:
        report = save or scratch.name
        open(report, "w").close()
        env = {**os.environ, "NIGHTSHIFT_CHAOS_REPORT": report}
        for run in range(1, repeat + 1):
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "tests/chaos", "-q", "-p", "no:cacheprovider"],
                                    cwd=REPO, env=env, capture_output=True, text=True)
            lines = result.stdout.strip().splitlines()
            print(f"run {run}/{repeat} ({time.monotonic() - started:.0f} s):",
                  *[line for line in lines if line.startswith("FAILED")], lines[-1], sep="\n  ", flush=True)
            if result.returncode != 0:  # keep the whole report: the failures' causes are in it
                kept = Path(report).with_name(f"{Path(report).stem}.run{run}.log")
                kept.write_text(result.stdout + result.stderr)
                print(f"  full output: {kept}", flush=True)
            passed += result.returncode == 0
        return [json.loads(line) for line in open(report)], passed


def _number(scenario: str) -> tuple[int, str]:
    digits = "".join(c for c in scenario.split("_")[1] if c.isdigit()) if "_" in scenario else ""
    return (int(digits) if digits else 99, scenario)


if __name__ == "__main__":
    main()
