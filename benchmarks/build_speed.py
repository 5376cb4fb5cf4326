#!/usr/bin/env python3
"""Build speed against OSv's download_and_build_qemu.sh, on one local QEMU tree, in one run.

  (a) the OSv script's flow by hand: clone --depth 1, configure
      --target-list=x86_64-softmmu,aarch64-softmmu --enable-virtiofsd, make -j$(nproc)
  (b) a cold `qemuprov build` (empty cache: no git mirror, no ccache)
  (c) an unchanged rebuild
  (d) a rebuild after the build tree was deleted (ccache warm)
  (e) warm `qemuprov doctor` and `qemuprov probe PREFIX`
Ratios are against (a). Results go to stdout and a JSON file.

Usage: benchmarks/build_speed.py [--tree DIR] [--ref REF] [--runner host|docker] [--json FILE] [--skip-osv SECONDS]
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

import results_file

REPO = Path(__file__).resolve().parent.parent
OSV_CONFIGURE = ["--target-list=x86_64-softmmu,aarch64-softmmu", "--enable-virtiofsd"]


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None, log: Path | None = None) -> float:
    start = time.perf_counter()
    with (log or Path(os.devnull)).open("a") as out:
        result = subprocess.run(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"benchmark step failed ({result.returncode}): {' '.join(argv)}; see {log}")
    return seconds


def osv_flow(tree: Path, ref: str, scratch: Path, jobs: int) -> float:
    """What download_and_build_qemu.sh does, minus the network: a shallow clone, configure, make."""
    env = {k: v for k, v in os.environ.items() if k != "CCACHE_DIR"}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if "ccache" not in p)
    log = scratch / "osv.log"
    src = scratch / "osv-qemu"
    start = time.perf_counter()
    timed(["git", "clone", "--depth", "1", "--branch", ref, f"file://{tree}", str(src)], env, log=log)
    extra = [] if (src / "meson" / "meson.py").exists() else ["--meson=meson"]  # distribution trees lack it
    timed(["./configure", *OSV_CONFIGURE, *extra], env, cwd=src, log=log)
    timed(["make", f"-j{jobs}"], env, cwd=src, log=log)
    return time.perf_counter() - start


def note(results: dict[str, object], key: str, seconds: float) -> None:
    results[key] = seconds
    print(f"    {key} = {seconds:.2f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path("/var/cache/qemuprov-test/qemu-7.2"))
    parser.add_argument("--ref", default="v7.2-debian")
    parser.add_argument("--runner", default="host", choices=("host", "docker"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "build_speed.json")
    parser.add_argument("--skip-osv", type=float, metavar="SECONDS",
                        help="reuse a measured (a) instead of building it again (the ratios say so)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="qemuprov-bench-build-", dir="/var/tmp"))
    recipes = scratch / "recipes"
    recipes.mkdir()
    (recipes / "bench.toml").write_text(f'format = 1\nname = "bench"\nextends = "qemu-7.2"\n[qemu]\n'
                                        f'git = "file://{args.tree}"\nref = "{args.ref}"\n')
    env = {**os.environ, "QEMUPROV_CACHE": str(scratch / "cache"), "QEMUPROV_ROOT": str(scratch / "root")}
    cli = [sys.executable, "-m", "qemuprov", "--recipes", str(recipes)]
    build = [*cli, "build", "bench", "--runner", args.runner, "-j", str(args.jobs)]
    log = scratch / "qemuprov.log"
    results: dict[str, object] = {"tree": str(args.tree), "ref": args.ref, "jobs": args.jobs,
                                  "runner": args.runner, "scratch": str(scratch), "cpus": os.cpu_count(),
                                  "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        print(f"(a) OSv flow (clone, configure, make -j{args.jobs}) ...", flush=True)
        note(results, "a_osv_flow_s", args.skip_osv or osv_flow(args.tree, args.ref, scratch, args.jobs))
        results["a_reused"] = bool(args.skip_osv)
        results["a_compiler"] = subprocess.run(["cc", "--version"], capture_output=True, text=True,
                                               check=False).stdout.partition("\n")[0]
        print("(b) cold qemuprov build ...", flush=True)
        note(results, "b_cold_build_s", timed(build, env, log=log))
        manifest_path = scratch / "root" / "bench" / "qemuprov.json"
        cold = json.loads(manifest_path.read_text())
        results["b_timings"] = cold.get("timings")
        results["b_configure"] = [arg["arg"] for arg in cold["plan"]["configure"]]
        results["b_compiler"] = cold["tools"].get("cc")  # (a) uses configure's default, cc
        results["b_precompiled_header"] = cold["tools"].get("precompiled_header")
        print("(c) unchanged rebuild ...", flush=True)
        note(results, "c_unchanged_s", timed(build, env, log=log))
        print("(d) rebuild with the build tree deleted, ccache warm ...", flush=True)
        for tree in (scratch / "cache" / "work" / "bench").glob("build*"):
            if tree.is_dir() and not tree.is_symlink():  # build.log is a link to the latest log
                shutil.rmtree(tree)
        note(results, "d_warm_ccache_s", timed([*build, "--force"], env, log=log))
        warm = json.loads(manifest_path.read_text())
        results["d_ccache"] = warm.get("ccache")
        results["d_timings"] = warm.get("timings")
        print("(e) warm doctor and probe ...", flush=True)
        prefix = str(scratch / "root" / "bench")
        for name, argv in (("doctor", [*cli, "doctor"]), ("probe", [*cli, "probe", prefix])):
            subprocess.run(argv, env=env, capture_output=True, check=False)
            note(results, f"e_{name}_warm_s", min(timed(argv, env) for _ in range(3)))
    finally:
        shutil.rmtree(scratch / "osv-qemu", ignore_errors=True)
    results_file.finish(results, ("a_osv_flow_s", "b_cold_build_s", "c_unchanged_s", "d_warm_ccache_s",
                                  "e_doctor_warm_s", "e_probe_warm_s"), args.json, scratch,
                        f"ccache in (d): {results['d_ccache']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
