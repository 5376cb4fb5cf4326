#!/usr/bin/env python3
"""What copying costs against bind mounts, for a container build through an engine that cannot see this
machine's files, measured on the local engine (which can), in one run:

  bind_session_s      a build container with the work dir bind-mounted, started, one step, removed
  copy_session_s      the same container with the work dir a named volume (QEMUPROV_CONTAINER_TRANSPORT=copy):
                      its first step copies the whole source tree in
  copy_again_s        a second session on that volume, nothing changed: the listing is compared, nothing sent
  copy_one_file_s     the same after one source file changed: that file goes in
  copy_out_s          an install prefix copied out through the archive API and unpacked here
  noop_rebuild_s      for scale: `qemuprov build RECIPE --force` through bind mounts with a warm build tree

The work dir is a hard-linked copy of the recipe's source (an earlier build fetched it) in a scratch directory,
so no volume of a real build is touched; its volume is removed at the end. Needs a Docker engine (DOCKER_HOST).

Usage: benchmarks/transport.py RECIPE [--prefix DIR] [--recipes DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import results_file
from build_speed import REPO

sys.path.insert(0, str(REPO))
from qemuprov.infra import paths, transfer  # noqa: E402
from qemuprov.infra.runners import ContainerRunner, get_runner, volume_name  # noqa: E402


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return round(time.monotonic() - started, 2)


def session_with_one_step(runner: ContainerRunner, work: Path, src: Path, transport: str) -> None:
    os.environ["QEMUPROV_CONTAINER_TRANSPORT"] = transport
    log = io.StringIO()
    with runner.session(inputs=[src], work=work):
        status = runner.run(["test", "-f", str(src / "configure")], cwd=work, env=runner.env({}), log=log)
    if status != 0:
        raise SystemExit(f"the step did not see {src}/configure ({transport}):\n{log.getvalue()}")


def copy_out(runner: ContainerRunner, prefix: Path, scratch: Path) -> None:
    os.environ["QEMUPROV_CONTAINER_TRANSPORT"] = "copy"
    out = scratch / "out"
    out.mkdir()
    with runner.session(inputs=[prefix]):
        runner.run(["true"], cwd=Path("/"), env=runner.env({}), log=io.StringIO())
        assert runner._container is not None  # the session's container, which holds the prefix's copy
        transfer.copy_out(runner._container, str(prefix), out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--prefix", type=Path, help="its install (default: the recipe's default prefix)")
    parser.add_argument("--recipes", help="the recipe directory to look in too (qemuprov --recipes)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "transport.json")
    args = parser.parse_args()
    source = paths.work_dir(args.recipe) / "src"
    prefix = args.prefix.resolve() if args.prefix else paths.install_root() / args.recipe
    if not (source / "configure").is_file() or not (prefix / "qemuprov.json").is_file():
        print(f"{args.recipe}: build it first (no source in {source} or no install in {prefix})", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="qemuprov-bench-transport-", dir="/var/tmp"))
    work = scratch / "work"
    src = work / "src"
    work.mkdir()
    subprocess.run(["cp", "-al", str(source), str(src)], check=True)
    files = sum(len(f) for _, _, f in os.walk(src))
    runner, _ = get_runner("docker", "debian-bookworm")
    assert isinstance(runner, ContainerRunner)
    runner.prepare(io.StringIO())
    results: dict[str, object] = {"recipe": args.recipe, "source_files": files}
    recipes = ["--recipes", args.recipes] if args.recipes else []
    try:
        results["bind_session_s"] = timed(lambda: session_with_one_step(runner, work, src, "bind"))
        results["copy_session_s"] = timed(lambda: session_with_one_step(runner, work, src, "copy"))
        results["copy_again_s"] = timed(lambda: session_with_one_step(runner, work, src, "copy"))
        changed = src / "VERSION"
        changed.unlink()  # a hard link: write a file of its own, not the recipe's
        changed.write_text((source / "VERSION").read_text())
        results["copy_one_file_s"] = timed(lambda: session_with_one_step(runner, work, src, "copy"))
        results["copy_out_s"] = timed(lambda: copy_out(runner, prefix, scratch))
        os.environ.pop("QEMUPROV_CONTAINER_TRANSPORT")
        with (scratch / "noop.log").open("w") as out:
            results["noop_rebuild_s"] = timed(lambda: subprocess.run(
                [sys.executable, "-m", "qemuprov", *recipes, "build", args.recipe, "--runner", "docker", "--force",
                 "--prefix", str(prefix)],
                stdout=out, stderr=subprocess.STDOUT, check=True, timeout=3600))
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume_name("work", work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    base = float(results["noop_rebuild_s"])  # type: ignore[arg-type]
    for key in ("bind_session_s", "copy_session_s", "copy_again_s", "copy_one_file_s", "copy_out_s",
                "noop_rebuild_s"):
        print(f"{key:<18}{results[key]:>8} s  {float(results[key]) / base:>6.3f}x of a no-op rebuild")  # type: ignore[arg-type]
    print(f"({files} source files; install {prefix})")
    results_file.write(args.json, results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
