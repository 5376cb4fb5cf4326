#!/usr/bin/env python3
"""The two caches in front of a build, cold against warm, in one run:

  git:   `git clone --depth 1` of the tree (what download_and_build_qemu.sh does) against qemuprov's fetch
         with an empty mirror (shallow fetch into a bare mirror, then `git archive | tar` export) and with a
         warm mirror (export only); an unchanged rebuild skips the fetch altogether.
  image: building a builder image with Docker's layer cache off against finding the tagged image again.

Usage: benchmarks/cache_levers.py [--tree DIR] [--ref REF] [--builder NAME] [--no-image] [--rounds N]
                                  [--json FILE]
The image half needs a Docker engine (DOCKER_HOST) that can install packages.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import results_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return round(time.perf_counter() - start, 2)


def git_levers(tree: Path, ref: str, scratch: Path, rounds: int) -> dict[str, float]:
    """Medians over rounds: every step writes a 20,000-file tree, and this disk's speed comes and goes."""
    from qemuprov.recipe import Source
    from qemuprov.sources import trees

    url = f"file://{tree}"
    wanted = Source(git=url, ref=ref)
    samples: dict[str, list[float]] = {"osv_clone_depth1_s": [], "fetch_cold_mirror_s": [],
                                       "fetch_warm_mirror_s": []}
    clone = scratch / "clone"
    osv_clone = ["git", "-c", "advice.detachedHead=false", "clone", "-q", "--depth", "1", "--branch", ref, url,
                 str(clone)]
    for round_ in range(rounds):
        os.environ["QEMUPROV_CACHE"] = str(scratch / f"cache-{round_}")  # an empty mirror each round
        samples["osv_clone_depth1_s"].append(seconds(lambda: subprocess.run(osv_clone, check=True)))
        shutil.rmtree(clone)
        samples["fetch_cold_mirror_s"].append(seconds(lambda: trees.fetch(wanted, scratch / "src")))
        shutil.rmtree(scratch / "src")
        samples["fetch_warm_mirror_s"].append(seconds(lambda: trees.fetch(wanted, scratch / "src")))
        shutil.rmtree(scratch / "src")
    return {key: statistics.median(values) for key, values in samples.items()}


def image_levers(builder: str) -> dict[str, float | str]:
    from qemuprov.infra import builder_images, engines

    engine = engines.find_engine()
    if not engine.reachable:
        sys.exit(f"no container engine reachable ({engine.detail}); run with --no-image")
    client = engines.client(engine)
    image = builder_images.builder_image(builder)
    scratch_tag = f"qemuprov-bench/{builder}:cold"

    def cold_build() -> None:
        with image.context() as context:
            builder_images.build_image(client, context, image.dockerfile.name, scratch_tag, {"BASE": image.base}, {},
                                 io.StringIO(), nocache=True)

    results: dict[str, float | str] = {"builder": builder, "image_cold_build_s": seconds(cold_build)}
    client.images.remove(scratch_tag, force=True)
    builder_images.ensure_builder(client, image, io.StringIO())  # built here if this engine lacks it, so not timed
    results["image_reuse_s"] = seconds(lambda: builder_images.ensure_builder(client, image, io.StringIO()))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path("/var/cache/qemuprov-test/qemu-7.2"))
    parser.add_argument("--ref", default="v7.2-debian")
    parser.add_argument("--builder", default="debian-bookworm")
    parser.add_argument("--no-image", action="store_true", help="only the git half")
    parser.add_argument("--rounds", type=int, default=3, help="git measurements are medians of this many")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "cache_levers.json")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="qemuprov-bench-cache-", dir="/var/tmp"))
    try:
        results: dict[str, object] = {"tree": str(args.tree), "ref": args.ref,
                                      "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds,
                                      **git_levers(args.tree, args.ref, scratch, args.rounds)}
        if not args.no_image:
            results.update(image_levers(args.builder))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:<24}{value}")
    results_file.write(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
