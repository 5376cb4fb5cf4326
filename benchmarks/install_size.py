#!/usr/bin/env python3
"""How big an install and its runtime image are, with the firmware its arches need against all of it, in one run.

  install     bytes on disk of the prefix (and of its share/qemu)
  image       `qemuprov image` of the install, as the recipe default (firmware = "needed") builds it
  image_all   the same install recorded as firmware = "all": the distribution firmware packages all come along
Targets (issue 28): a 7.2 install for both arches at most 80 MB, its runtime image at most 250 MB. A tree with
the firmware blobs cannot be fetched on the test machines, so a Debian tree's install (which takes its firmware
from the distribution) is what this measures here: the blobs it would carry are the ones knowledge/firmware.py
keeps. Needs a Docker engine (DOCKER_HOST) and an install.

Usage: benchmarks/install_size.py NAME|PREFIX [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import results_file
from build_speed import REPO

MB = 1 << 20
TARGETS = {"install_mb": 80, "image_mb": 250}


def disk_bytes(path: Path) -> int:
    """Blocks in use, as du counts them (hard links once)."""
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def image_bytes(prefix: Path, tag: str, env: dict[str, str], log: Path) -> int:
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "qemuprov", "image", str(prefix), "--tag", tag], stdout=out,
                       stderr=subprocess.STDOUT, env=env, check=True, timeout=1800)
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                          text=True, env=env, check=True).stdout.strip()
    return int(size)


def recorded_as(prefix: Path, scratch: Path, kept: str) -> Path:
    """A copy of the install whose manifest says firmware = kept ("all": what an older qemuprov recorded)."""
    copy = scratch / kept / prefix.name
    shutil.copytree(prefix, copy, symlinks=True)
    record = json.loads((copy / "qemuprov.json").read_text())
    record["prefix"] = str(copy)
    record["plan"]["firmware"] = kept
    (copy / "qemuprov.json").write_text(json.dumps(record, indent=2))
    return copy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("install", help="an install name or prefix")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "install_size.json")
    args = parser.parse_args()
    env = dict(os.environ)
    found = subprocess.run([sys.executable, "-m", "qemuprov", "list", "--json"], capture_output=True, text=True,
                           env=env, check=True)
    named = {e["name"]: Path(e["prefix"]) for e in json.loads(found.stdout)}
    prefix = named.get(args.install) or Path(args.install).resolve()
    if not (prefix / "qemuprov.json").is_file():
        print(f"{args.install}: no such install", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="qemuprov-bench-size-", dir="/var/tmp"))
    results: dict[str, object] = {"install": str(prefix),
                                  "install_mb": round(disk_bytes(prefix) / MB, 1),
                                  "share_qemu_mb": round(disk_bytes(prefix / "share" / "qemu") / MB, 1)}
    for kept, key in (("needed", "image_mb"), ("all", "image_all_mb")):
        copy = recorded_as(prefix, scratch, kept)
        results[key] = round(image_bytes(copy, f"qemuprov-bench/size:{kept}", env, scratch / f"image-{kept}.log")
                             / MB, 1)
    results["image_ratio"] = round(float(results["image_mb"]) / float(results["image_all_mb"]), 3)  # type: ignore[arg-type]
    for key, limit in TARGETS.items():
        verdict = "within" if float(results[key]) <= limit else "OVER"  # type: ignore[arg-type]
        print(f"{key:<14}{results[key]:>8} MB   target {limit} MB: {verdict}")
    print(f"{'image_all_mb':<14}{results['image_all_mb']:>8} MB   needed/all = {results['image_ratio']}")
    results_file.write(args.json, results)
    print(f"logs in {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
