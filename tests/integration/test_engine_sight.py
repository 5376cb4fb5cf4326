"""An engine that cannot see this machine's files (a remote one, docker:dind, another mount namespace): the build
copies its files through the engine's API instead, or, told to bind (QEMUPROV_CONTAINER_TRANSPORT=bind), stops in
one line before a step runs in an empty mount. Made real with the suite's own engine: the build runs in a mount
namespace of its own, its cache on a tmpfs that the engine's namespace does not have."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from qemuprov.infra.runners import volume_name
from tests.integration.conftest import Env
from tests.integration.standin import make_tree


def _build_unseen(qenv: Env, tmp_path: Path, transport: str,
                  *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    control = cache / "work" / "standin-sight" / "control"
    if not (tmp_path / "tree").exists():
        qenv.write_recipe("standin-sight", make_tree(tmp_path / "tree", control))
    env = {**qenv.vars, "QEMUPROV_CACHE": str(cache), "QEMUPROV_ROOT": str(tmp_path / "root"),
           "QEMUPROV_CONTAINER_TRANSPORT": transport}
    build = (f'mount -t tmpfs qemuprov-sight "{cache}" && mkdir -p "{control}" && '
             f'exec "{sys.executable}" -m qemuprov --recipes "{qenv.recipes}" build standin-sight --runner docker '
             + " ".join(extra))
    # unshare and sh exec what they run: qemuprov keeps this process's pid, which labels its container
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", build], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path.cwd())
    stdout, stderr = proc.communicate(timeout=900)
    label = f"label=org.qemuprov.build={proc.pid}@{socket.gethostname()}"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True)
    assert left.stdout.split() == [], "the build container outlived the build"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), proc.pid


def _remove_volumes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    names = [volume_name("work", cache / "work" / "standin-sight"), volume_name("cache", cache / "ccache")]
    subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True, check=False)


def test_a_build_through_an_engine_that_cannot_see_its_files_copies_them(qenv: Env, engine: str,
                                                                         tmp_path: Path) -> None:
    try:
        result, _ = _build_unseen(qenv, tmp_path, "auto")
        assert result.returncode == 0, result.stdout + result.stderr
        said = result.stdout + result.stderr
        assert "cannot see this machine's files: the sources go in" in said, said
        prefix = tmp_path / "root" / "standin-sight"
        manifest = json.loads((prefix / "qemuprov.json").read_text())
        assert (prefix / "bin" / "qemu-system-x86_64").is_file() and manifest["binaries"]
        # the object the step compiled came back from the volume with the install's own file
        assert (prefix / "share" / "standin").read_bytes() == (tmp_path / "tree" / "payload" / "standin.c").read_bytes()
        assert manifest["ccache"] is not None, "ccache's stats log did not come out of the container"
        # Another build from a new namespace (nothing of the first one's files left here): the compile comes
        # from the ccache volume, which outlived the first build's container.
        again, _ = _build_unseen(qenv, tmp_path, "auto", "--force")
        assert again.returncode == 0, again.stdout + again.stderr
        stats = json.loads((prefix / "qemuprov.json").read_text())["ccache"]
        assert (stats["hits"], stats["remote_hits"]) == (1, 0), stats
    finally:
        _remove_volumes(tmp_path)


def test_told_to_bind_it_stops_with_why(qenv: Env, engine: str, tmp_path: Path) -> None:
    result, _ = _build_unseen(qenv, tmp_path, "bind")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot see this machine's files" in result.stderr and "QEMUPROV_CONTAINER_TRANSPORT" in result.stderr
    assert "==> configure" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "root" / "standin-sight").exists()
