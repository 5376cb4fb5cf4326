#!/usr/bin/env python3
"""DAX on QEMU 11.1's shared memory route, measured: `qemuprov bench` (every workload, every setting) of Debian
sid's QEMU 1:11.1.3 with qemuprov's patched Rust virtiofsd 1.14.0, in the sid userland image of the test suite
(scripts/test-userland), as a normal user; the same comparisons as share_speed.py and the published figures
beside them. The windows are bench's own: one half the data set, one four times it.

Usage: benchmarks/dax_route_speed.py INSTALL [--arch A,B] [--json FILE]
  INSTALL: the prefix of a build of the virtiofsd-dax recipe (its bin/virtiofsd is the patched daemon).
  Needs DOCKER_HOST (the suite's engine) and the suite's guest kits and fio in QEMUPROV_CACHE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results_file
from build_speed import REPO
from share_speed import PUBLISHED, comparisons

from qemuprov import arches
from qemuprov.proving import fio, guestkit

IMAGE = "qemuprov-test/userland-sid"
RUN = r"""/opt/qemuprov/bin/pip install -q --disable-pip-version-check --no-deps /wheel/*.whl
mkdir -p /home/journey/.cache/qemuprov && cp -r /kits /home/journey/.cache/qemuprov/guest
chown -R journey:journey /home/journey/.cache
exec setpriv --reuid=4242 --regid=4242 --init-groups env HOME=/home/journey PATH=/opt/qemuprov/bin:/usr/bin:/bin \
  qemuprov bench --qemu /usr/bin/qemu-system-$ARCH --virtiofsd /dax/bin/virtiofsd --accel tcg --json
"""


def bench_on_sid(install: Path, arch: arches.Arch, scratch: Path) -> tuple[dict[str, Any], float]:
    kits = scratch / f"kits-{arch}"
    for made in (guestkit.ensure_kit(arch, guestkit.GENERIC).kernel.parent, fio.ensure_fio(arch).parent):
        shutil.copytree(made, kits / made.name)
    wheel = scratch / "wheel"
    if not wheel.is_dir():
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel), str(REPO)],
                       check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(scratch), str(install)], check=True)
    argv = ["docker", "run", "--rm", "--network", "none", "--security-opt", "seccomp=unconfined", "-e",
            f"ARCH={arch}", "-v", f"{wheel}:/wheel:ro", "-v", f"{kits}:/kits:ro", "-v", f"{install}:/dax:ro",
            IMAGE, "sh", "-c", RUN]
    print(f"$ qemuprov bench --qemu /usr/bin/qemu-system-{arch} --virtiofsd {install}/bin/virtiofsd (in {IMAGE})",
          flush=True)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1) or not done.stdout.strip().startswith("["):
        raise SystemExit(f"bench failed ({done.returncode}): {done.stderr[-2000:]}")
    (report,) = json.loads(done.stdout)
    return report, round(time.monotonic() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("install", type=Path)
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "dax_route_speed.json")
    args = parser.parse_args()
    if not (args.install / "bin" / "virtiofsd").is_file():
        raise SystemExit(f"{args.install}: no bin/virtiofsd (build the virtiofsd-dax recipe)")
    if not os.environ.get("DOCKER_HOST"):
        raise SystemExit("DOCKER_HOST: set it to the engine that holds the sid userland image")
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dax-route-") as tmp:
        for name in args.arch.split(","):
            report, seconds = bench_on_sid(args.install.resolve(), arches.get(name), Path(tmp))
            runs[name] = {"seconds": seconds, "accel": report["accel"], "work": report["work"],
                          "comparisons": comparisons(report), "reading": report["reading"],
                          "settings": [{k: s[k] for k in ("name", "ok", "error", "window")} for s in report["settings"]]}
    print(f"\n{'comparison (ratio of medians, one boot)':<44}" + "".join(f"{a:>12}" for a in runs) + "  published")
    for key, published in PUBLISHED.items():
        cells = "".join(f"{runs[a]['comparisons'].get(key) or '-':>12}" for a in runs)
        print(f"{key:<44}{cells}  {published}")
    for name, run in runs.items():
        print(f"{name}: {run['seconds']} s under {run['accel']}; {run['reading']}")
    results_file.write(args.json, {"qemu": "Debian sid 1:11.1.3+ds-1", "virtiofsd": "1.14.0 + qemuprov DAX patch",
                                   "runs": runs})


if __name__ == "__main__":
    main()
