#!/usr/bin/env python3
"""Time `qemuprov doctor` and `qemuprov probe` cold (empty cache) and warm, in one run, and print ratios.

Usage: benchmarks/doctor_probe.py [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="qemuprov-bench-"))
    env = {**os.environ, "QEMUPROV_CACHE": str(cache)}
    cli = [sys.executable, "-m", "qemuprov"]
    results: dict[str, float] = {}
    for name, argv in (("doctor", [*cli, "doctor"]), ("probe", [*cli, "probe"])):
        shutil.rmtree(cache, ignore_errors=True)
        results[f"{name}_cold_s"] = timed(argv, env)
        results[f"{name}_warm_s"] = statistics.median(timed(argv, env) for _ in range(args.runs))
    results["python_startup_s"] = statistics.median(timed([sys.executable, "-c", "pass"], env)
                                                    for _ in range(args.runs))
    shutil.rmtree(cache, ignore_errors=True)
    for name in ("doctor", "probe"):
        cold, warm = results[f"{name}_cold_s"], results[f"{name}_warm_s"]
        print(f"{name:7s} cold {cold:6.3f} s   warm {warm:6.3f} s   warm/cold {warm / cold:5.3f}")
    print(f"python  startup {results['python_startup_s']:.3f} s")
    if args.json:
        results_file.write(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
