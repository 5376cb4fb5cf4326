"""A --prefix in a directory other users can write (a sticky /tmp-like one): the paths qemuprov makes beside
the prefix must be its own, whatever another user made there first. qemuprov runs as pid 1 of a fresh pid
namespace, so the names an older qemuprov would have used are known to the other user in advance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import Env, NormalUser
from tests.integration.standin import make_tree


def test_side_paths_another_user_made_first_are_never_used(qenv: Env, normal_user: NormalUser,
                                                           tmp_path: Path) -> None:
    shared = normal_user.home / f"shared-{os.getpid()}"  # where both users can reach it (pytest's tmp is root's)
    shared.mkdir()
    shared.chmod(0o1777)
    control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "standin-shared" / "control"
    qenv.write_recipe("standin-shared", make_tree(tmp_path / "tree", control))
    theirs = [shared / f".qemuprov-{kind}-q72-{pid}" for kind in ("stage", "new", "old") for pid in (1, 2)]
    for path in theirs:  # prepared by the other user, as any user of the machine could
        made = subprocess.run(["setpriv", f"--reuid={normal_user.uid}", f"--regid={normal_user.uid}",
                               "--init-groups", "mkdir", "-m", "0777", str(path)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "qemuprov", "--recipes",
            str(qenv.recipes), "build", "standin-shared", "--runner", "host", "--prefix", str(shared / "q72")]
    result = subprocess.run(argv, env=qenv.vars, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    installed = shared / "q72"
    assert installed.is_dir() and not installed.is_symlink() and installed.stat().st_uid == os.getuid()
    assert (installed / "bin" / "qemu-system-x86_64").is_file()
    for path in theirs:  # theirs are as they made them: empty, theirs, and not the install
        assert path.is_dir() and path.stat().st_uid == normal_user.uid and list(path.iterdir()) == [], path


def test_cache_counts_the_engines_builder_images_and_volumes(qenv: Env, engine: str) -> None:
    import json

    volume = f"qemuprov-cache-test-{os.getpid()}"
    subprocess.run(["docker", "volume", "create", volume], check=True, capture_output=True)
    try:
        shown = qenv.run("cache", "--json")
        assert shown.returncode == 0, shown.stderr
        parts = json.loads(shown.stdout)["engine"]
        assert any(p["kind"] == "volumes" and p["name"] == volume for p in parts), parts
        assert any(p["kind"] == "images" and p["name"].startswith("qemuprov-builder-") for p in parts), parts
        dry = qenv.run("cache", "clean", "--all", "--dry-run")
        assert f"would remove the volume {volume}" in dry.stdout, dry.stdout + dry.stderr
    finally:
        subprocess.run(["docker", "volume", "rm", volume], check=False, capture_output=True)
