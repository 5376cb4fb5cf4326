"""Faults injected for real, on the stand-in tree: `kill -9` of qemuprov in each phase, a full disk during the
compile and the install, two builds into one prefix at once. The previous install keeps working, nothing of
the killed build runs on once the next build has started, and nothing is left behind after it."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Env
from tests.integration.standin import make_tree, set_delays


@pytest.fixture(scope="module")
def standin(qenv: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Path]]:
    base = tmp_path_factory.mktemp("standin")
    control = base / "control"
    qenv.write_recipe("standin", make_tree(base / "tree", control))
    set_delays(control)
    first = qenv.run("build", "standin", "--runner", "host")
    assert first.returncode == 0, first.stdout + first.stderr
    yield qenv, control


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "qemuprov", "--recipes", str(env.recipes), "build", *args],
                            env={**env.vars, **(extra_env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, f"the build ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path} within {limit} s"
        time.sleep(0.05)


def _install_works(prefix: Path, manifest: str) -> None:
    assert (prefix / "qemuprov.json").read_text() == manifest
    version = subprocess.run([prefix / "bin" / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "QEMU emulator version" in version.stdout


def _unconfigure(env: Env) -> None:
    (Path(env.vars["QEMUPROV_CACHE"]) / "work" / "standin" / "build" / "qemuprov-configure.json").unlink(
        missing_ok=True)


def _leftovers(env: Env) -> list[str]:
    beside = [p.name for p in env.root.glob(".qemuprov-*-standin-[0-9]*")]
    running = Path(env.vars["QEMUPROV_CACHE"]) / "work" / "standin" / "running"
    return beside + [f"running/{p.name}" for p in running.glob("*")]


@pytest.mark.parametrize("phase", ["configure", "compile", "install"])
def test_kill_9_in_a_step_leaves_the_install_and_no_process(standin: tuple[Env, Path], phase: str) -> None:
    env, control = standin
    prefix = env.root / "standin"
    manifest = (prefix / "qemuprov.json").read_text()
    set_delays(control, **{phase: 120})
    _unconfigure(env)  # --force rebuilds, but configures again only when something changed
    build = _start(env, "standin", "--runner", "host", "--force")
    _wait_for(control / f"{phase}.pid", build)
    step = int((control / f"{phase}.pid").read_text())
    build.send_signal(signal.SIGKILL)  # qemuprov alone, as the OOM killer or `kill -9 PID` would
    build.communicate(timeout=30)
    assert _alive(step), "the step should outlive a SIGKILLed qemuprov (its own session): nothing to test"
    _install_works(prefix, manifest)

    set_delays(control)
    again = env.run("build", "standin", "--runner", "host", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not _alive(step), f"the killed build's {phase} step still runs"
    assert _leftovers(env) == []
    assert json.loads((prefix / "qemuprov.json").read_text())["name"] == "standin"


def test_kill_9_before_the_swap_leaves_the_install(standin: tuple[Env, Path]) -> None:
    env, control = standin
    prefix = env.root / "standin"
    manifest = (prefix / "qemuprov.json").read_text()
    set_delays(control)
    build = _start(env, "standin", "--runner", "host", "--force")
    assert build.stdout is not None
    for line in build.stdout:
        if line.startswith("==> probe"):  # staged and complete, not yet swapped in
            os.kill(build.pid, signal.SIGKILL)
            break
    build.communicate(timeout=30)
    assert build.returncode == -signal.SIGKILL
    _install_works(prefix, manifest)
    assert list(env.root.glob(".qemuprov-*-standin-[0-9]*")), "the killed build should have left its staging behind"
    again = env.run("build", "standin", "--runner", "host", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _leftovers(env) == []


def test_two_builds_into_one_prefix_at_once(standin: tuple[Env, Path], tmp_path: Path) -> None:
    env, control = standin
    body = (env.recipes / "standin.toml").read_text().split("\n", 2)[2]
    env.write_recipe("standin-b", body)
    shared = tmp_path / "shared"
    set_delays(control, configure=10)
    _unconfigure(env)
    first = _start(env, "standin", "--runner", "host", "--force", "--prefix", str(shared))
    _wait_for(control / "configure.pid", first)
    second = env.run("build", "standin-b", "--runner", "host", "--prefix", str(shared))
    assert second.returncode == 1 and f"another qemuprov build is installing into {shared}" in second.stderr
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    assert json.loads((shared / "qemuprov.json").read_text())["recipe"]["name"] == "standin"
    set_delays(control)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_in_the_install_root_keeps_the_old_install(standin: tuple[Env, Path], small_disk: Path) -> None:
    env, control = standin
    set_delays(control)
    root_env = {**env.vars, "QEMUPROV_ROOT": str(small_disk)}
    first = env.run("build", "standin", "--runner", "host", "--force", env=root_env)
    assert first.returncode == 0, first.stdout + first.stderr
    manifest = (small_disk / "standin" / "qemuprov.json").read_text()
    used = sum(f.stat().st_size for f in (small_disk / "standin").rglob("*") if f.is_file())
    # leave less room than a second copy needs: the next install's staging cannot be written
    (small_disk / "ballast").write_bytes(b"\0" * max(0, 48 * 2**20 - 2 * used + 2**20))
    full = env.run("build", "standin", "--runner", "host", "--force", env=root_env)
    assert full.returncode == 1, full.stdout + full.stderr
    assert "No space left on device" in full.stderr and "the disk is full" in full.stderr
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    _install_works(small_disk / "standin", manifest)
    assert [p.name for p in small_disk.glob(".qemuprov-*")] == []


def test_a_full_disk_during_the_compile_is_one_clear_error(standin: tuple[Env, Path], small_disk: Path) -> None:
    env, control = standin
    prefix = env.root / "standin"
    manifest = (prefix / "qemuprov.json").read_text()
    set_delays(control)
    (control / "compile.bytes").write_text(str(64 * 2**20))
    try:
        cache_env = {**env.vars, "QEMUPROV_CACHE": str(small_disk)}
        full = env.run("build", "standin", "--runner", "host", "--force", env=cache_env)
    finally:
        (control / "compile.bytes").unlink()
    assert full.returncode == 1, full.stdout + full.stderr
    assert "No space left on device" in full.stderr and "the disk is full" in full.stderr
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    _install_works(prefix, manifest)


def test_the_engine_stopped_in_the_middle_of_a_container_build(qenv: Env, engine: str,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite's Docker engine is its own: stop it while a container build compiles, then start it again."""
    name = "standin-docker"
    control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / name / "control"  # mounted in the build container
    qenv.write_recipe(name, make_tree(tmp_path_factory.mktemp("standin-docker") / "tree", control))
    set_delays(control)
    first = qenv.run("build", name, "--runner", "docker")
    assert first.returncode == 0, first.stdout + first.stderr
    prefix = qenv.root / name
    manifest = (prefix / "qemuprov.json").read_text()
    set_delays(control, compile=120)
    build = _start(qenv, name, "--runner", "docker", "--force")
    _wait_for(control / "compile.pid", build)
    dockerd = int(Path("/run/qemuprov-test/dockerd.pid").read_text())
    os.kill(dockerd, signal.SIGTERM)
    try:
        output = build.communicate(timeout=120)[0]
        assert build.returncode == 1, output
        assert "lost the container engine" in output and "start the engine again" in output
        assert "Traceback" not in output and "internal error" not in output
        _install_works(prefix, manifest)
    finally:
        while _alive(dockerd):
            time.sleep(0.2)
        subprocess.run(["scripts/test-engine", str(Path(qenv.vars["QEMUPROV_CACHE"]).parent)], check=True,
                       capture_output=True, cwd=Path(__file__).resolve().parents[2])
    set_delays(control)
    again = qenv.run("build", name, "--runner", "docker", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.qemuprov.build"], capture_output=True,
                          text=True)
    assert left.stdout.strip() == "", "a container of the interrupted build was left"
    assert [p.name for p in qenv.root.glob(f".qemuprov-*-{name}-[0-9]*")] == []


class _SlowTarball(http.server.BaseHTTPRequestHandler):
    """Serves the stand-in as a tarball, 256 KiB at a time, pausing between pieces while `slow` is set."""

    data = b""
    slow = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (the handler API's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        for start in range(0, len(self.data), 256 << 10):
            self.wfile.write(self.data[start:start + (256 << 10)])
            if self.slow.is_set():
                time.sleep(0.2)

    def log_message(self, *args: object) -> None:
        pass


def test_kill_9_during_the_fetch_leaves_the_install(qenv: Env, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    body = make_tree(tree, tmp_path / "control")
    set_delays(tmp_path / "control")
    archive = tmp_path / "standin.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), "tree"], check=True)
    _SlowTarball.data = archive.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowTarball)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/standin.tar.gz"
        sha = hashlib.sha256(_SlowTarball.data).hexdigest()
        source = body.split("[qemu]\n", 1)[1].split("\n", 2)[2]  # the recipe less its git and ref
        qenv.write_recipe("standin-tarball", body.split("[qemu]\n")[0]
                          + f'[qemu]\ntarball = "{url}"\nsha256 = "{sha}"\n{source}')
        first = qenv.run("build", "standin-tarball", "--runner", "host")
        assert first.returncode == 0, first.stdout + first.stderr
        prefix = qenv.root / "standin-tarball"
        manifest = (prefix / "qemuprov.json").read_text()
        tarballs = Path(qenv.vars["QEMUPROV_CACHE"]) / "tarballs"
        shutil.rmtree(tarballs)  # the download is the fetch: make the next build download again
        (Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "standin-tarball" / "src.stamp").unlink()
        _SlowTarball.slow.set()
        build = _start(qenv, "standin-tarball", "--runner", "host", "--force")
        deadline = time.monotonic() + 60
        while not list(tarballs.glob("*.part")):
            assert build.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        build.send_signal(signal.SIGKILL)
        build.communicate(timeout=30)
        _install_works(prefix, manifest)
        _SlowTarball.slow.clear()
        again = qenv.run("build", "standin-tarball", "--runner", "host", "--force")
        assert again.returncode == 0, again.stdout + again.stderr
        assert not list(tarballs.glob("*.part")) and list(tarballs.glob(f"{sha}-*"))
        assert [p.name for p in qenv.root.glob(".qemuprov-*-standin-tarball-[0-9]*")] == []
    finally:
        server.shutdown()
        server.server_close()

