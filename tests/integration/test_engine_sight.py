"""An engine that cannot see this machine's files (a remote one, docker:dind, another mount namespace) is told
apart at once, in one line, before a step runs in an empty mount. Made real with the suite's own engine: the
build runs in a mount namespace of its own, its cache on a tmpfs that the engine's namespace does not have."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import Env
from tests.integration.standin import make_tree


def test_a_build_through_an_engine_that_cannot_see_its_files_stops_with_why(qenv: Env, engine: str,
                                                                           tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    control = cache / "work" / "standin-sight" / "control"
    qenv.write_recipe("standin-sight", make_tree(tmp_path / "tree", control))
    env = {**qenv.vars, "QEMUPROV_CACHE": str(cache), "QEMUPROV_ROOT": str(tmp_path / "root")}
    build = (f'mount -t tmpfs qemuprov-sight "{cache}" && mkdir -p "{control}" && '
             f'"{sys.executable}" -c "from tests.integration.standin import set_delays; '
             f'from pathlib import Path; set_delays(Path(\'{control}\'))" && '
             f'exec "{sys.executable}" -m qemuprov --recipes "{qenv.recipes}" build standin-sight --runner docker')
    # unshare and sh exec what they run: qemuprov keeps this process's pid, which labels its container
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", build], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path.cwd())
    stdout, stderr = proc.communicate(timeout=900)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot see this machine's files" in result.stderr and "--cache-only" in result.stderr, result.stderr
    assert "==> configure" not in result.stderr and "Traceback" not in result.stderr
    label = f"label=org.qemuprov.build={proc.pid}@{socket.gethostname()}"
    left = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True)
    assert left.stdout.split() == [], "the build container outlived the build"
    assert not (tmp_path / "root" / "standin-sight").exists()
