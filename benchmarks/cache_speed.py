#!/usr/bin/env python3
"""The binary cache and the shared compiler cache against OSv's download_and_build_qemu.sh, in one run.

  (a) the OSv script's flow by hand (as in build_speed.py): clone --depth 1, configure, make -j$(nproc)
  seed: one HOME builds in the Docker builder with the shared ccache and pushes to the binary cache
  (f) a fresh HOME (empty caches) installs what the seed pushed: `qemuprov build --cache`
  (g) a fresh HOME with only the shared ccache warm builds: `qemuprov build --shared-ccache`
Ratios are against (a); (f) splits into lookup, download, unpack, probe and commit. Needs the test services
that scripts/test starts (a Docker engine, the registry, Redis) and its fixture tree.

Usage: benchmarks/cache_speed.py [--tree DIR] [--ref REF] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import results_file
from build_speed import REPO, note, osv_flow, timed

FIXTURES = Path(os.environ.get("QEMUPROV_TEST_FIXTURES", "/var/cache/qemuprov-test"))


def home(scratch: Path, name: str, base: dict[str, str]) -> dict[str, str]:
    where = scratch / name
    return {**base, "HOME": str(where), "QEMUPROV_CACHE": str(where / "cache"), "QEMUPROV_ROOT": str(where / "root")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=FIXTURES / "qemu-7.2")
    parser.add_argument("--ref", default="v7.2-debian")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "cache_speed.json")
    parser.add_argument("--no-pch", action="store_true", help="build without the precompiled qemu/osdep.h")
    parser.add_argument("--skip-osv", type=float, metavar="SECONDS",
                        help="reuse a measured (a) instead of building it again (the results say so)")
    args = parser.parse_args()
    registry = os.environ.get("QEMUPROV_TEST_REGISTRY", "127.0.0.1:5055")
    redis = os.environ.get("QEMUPROV_TEST_REDIS", "redis+unix:/run/qemuprov-test/redis.sock")
    scratch = Path(tempfile.mkdtemp(prefix="qemuprov-bench-cache-", dir="/var/tmp"))
    recipes = scratch / "recipes"
    recipes.mkdir()
    (recipes / "bench.toml").write_text(f'format = 1\nname = "bench"\nextends = "qemu-7.2"\n[qemu]\n'
                                        f'git = "file://{args.tree}"\nref = "{args.ref}"\n')
    docker_config = scratch / "docker"
    docker_config.mkdir()
    auth = base64.b64encode(f"qemuprov:{(FIXTURES / 'registry' / 'password').read_text().strip()}".encode())
    (docker_config / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth.decode()}}}))
    url = f"{registry}/bench/qemu-{int(time.time())}"
    base = {**os.environ, "DOCKER_CONFIG": str(docker_config), "QEMUPROV_ALLOW_UNSIGNED": "1"}
    build = [sys.executable, "-m", "qemuprov", "--recipes", str(recipes), "build", "bench", "--runner", "docker",
             "-j", str(args.jobs), *(["--no-pch"] if args.no_pch else [])]
    log = scratch / "qemuprov.log"
    results: dict[str, object] = {"tree": str(args.tree), "ref": args.ref, "jobs": args.jobs, "cache": url,
                                  "shared_ccache": redis, "cpus": os.cpu_count(),
                                  "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"(a) OSv flow (clone, configure, make -j{args.jobs}) ...", flush=True)
    note(results, "a_osv_flow_s", args.skip_osv or osv_flow(args.tree, args.ref, scratch, args.jobs))
    results["a_reused"], results["no_pch"] = bool(args.skip_osv), args.no_pch
    print("seed: a cold container build with the shared ccache, pushed to the binary cache ...", flush=True)
    note(results, "seed_build_and_push_s", timed([*build, "--shared-ccache", redis, "--cache", url, "--push"],
                                                 home(scratch, "seed", base), log=log))
    print("(f) a fresh HOME installs from the binary cache ...", flush=True)
    fresh = home(scratch, "f", base)
    note(results, "f_binary_cache_s", timed([*build, "--cache", url], fresh, log=log))
    pulled = json.loads((scratch / "f" / "root" / "bench" / "qemuprov.json").read_text())
    results["f_split"] = dict(pulled["timings"])
    print("(g) a fresh HOME with only the shared ccache warm ...", flush=True)
    note(results, "g_shared_ccache_s", timed([*build, "--shared-ccache", redis], home(scratch, "g", base), log=log))
    built = json.loads((scratch / "g" / "root" / "bench" / "qemuprov.json").read_text())
    results["g_ccache"], results["g_timings"] = built["ccache"], built["timings"]
    results_file.finish(results, ("a_osv_flow_s", "f_binary_cache_s", "g_shared_ccache_s"), args.json, scratch,
                        f"(f) split: {results['f_split']}", f"(g) ccache: {results['g_ccache']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
