"""Ctrl-C and SIGTERM at many moments of a build, on the host and in a Docker build container: the build stops
(exit 130 or 143), leaves the previous install working, and nothing of it runs on or is left behind.

The stand-in tree's configure, compile and install each write a pid file when they start and then take the time
set here, so each signal lands inside the phase it is meant for, whatever an earlier run left in any cache: the
module has a cache of its own, and every build configures again. One case runs qemuprov under a parent that
ignores SIGINT, as a background job of a script or some CI wrappers do: it must stop all the same."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Env
from tests.integration.standin import make_tree, set_delays

RECIPE = "standin-signals"
PHASE_SECONDS = 3.0


@pytest.fixture(scope="module")
def signals_env(qenv: Env, tmp_path_factory: pytest.TempPathFactory) -> tuple[Env, Path]:
    base = tmp_path_factory.mktemp("signals")
    control = base / "cache" / "work" / RECIPE / "control"  # where a build container sees it, too
    env = Env(qenv.home, base / "root", qenv.recipes, {**qenv.vars, "QEMUPROV_CACHE": str(base / "cache"),
                                                       "QEMUPROV_ROOT": str(base / "root")})
    env.write_recipe(RECIPE, make_tree(base / "tree", control))
    set_delays(control)
    return env, control


def _baseline(env: Env, control: Path, runner: str) -> str:
    """An install to keep (built once per runner), and its manifest as it must stay."""
    prefix = env.root / RECIPE
    record = prefix / "qemuprov.json"
    if not record.exists() or json.loads(record.read_text())["runner"] != runner:
        set_delays(control)
        first = env.run("build", RECIPE, "--runner", runner, "--force")
        assert first.returncode == 0, first.stdout + first.stderr
    return record.read_text()


def _unconfigure(env: Env) -> None:
    for stamp in (Path(env.vars["QEMUPROV_CACHE"]) / "work" / RECIPE).glob("build*/qemuprov-configure.json"):
        stamp.unlink()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _containers() -> list[str]:
    found = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.qemuprov.build"], capture_output=True,
                           text=True, check=True)
    return found.stdout.split()


def _interrupted(env: Env, control: Path, runner: str, sig: signal.Signals, when: Callable[[str], bool],
                 wait: float, *, ignore_sigint: bool = False) -> tuple[int, str, list[int]]:
    """Build, send sig `wait` seconds after `when(line)` first holds for a line of output or a started step
    (the line "STARTED <phase>"), and return (exit status, output, pids of the steps that had started)."""
    _unconfigure(env)
    before = {p: p.stat().st_mtime_ns for p in control.glob("*.pid")}

    def quiet_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    build = subprocess.Popen([sys.executable, "-m", "qemuprov", "--recipes", str(env.recipes), "build", RECIPE,
                              "--runner", runner, "--force"], env=env.vars, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, preexec_fn=quiet_sigint if ignore_sigint else None)
    assert build.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(build.stdout or ()), daemon=True)
    reader.start()
    deadline, fired_at = time.monotonic() + 240, None
    started: set[str] = set()
    while build.poll() is None and time.monotonic() < deadline:
        for pid_file in control.glob("*.pid"):
            if pid_file.stem not in started and before.get(pid_file) != pid_file.stat().st_mtime_ns:
                started.add(pid_file.stem)
                lines.append(f"STARTED {pid_file.stem}\n")
        if fired_at is None and any(when(line.rstrip("\n")) for line in list(lines)):
            fired_at = time.monotonic() + wait
        if fired_at is not None and time.monotonic() >= fired_at:
            build.send_signal(sig)
            break
        time.sleep(0.05)
    assert fired_at is not None, "the moment to signal never came:\n" + "".join(lines)
    try:
        build.wait(timeout=60)
    except subprocess.TimeoutExpired:
        build.kill()
        pytest.fail(f"the build went on for 60 s after {sig.name}:\n" + "".join(lines))
    reader.join(timeout=30)
    pids = [int((control / f"{name}.pid").read_text()) for name in started]
    return build.returncode, "".join(lines), pids


def _left_as_it_was(env: Env, manifest: str, pids: list[int], runner: str) -> None:
    prefix = env.root / RECIPE
    assert (prefix / "qemuprov.json").read_text() == manifest, "the previous install was changed"
    version = subprocess.run([prefix / "bin" / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "QEMU emulator version" in version.stdout
    assert [p.name for p in env.root.glob(".qemuprov-*")] == [], "the build left staging beside the prefix"
    running = Path(env.vars["QEMUPROV_CACHE"]) / "work" / RECIPE / "running"
    assert list(running.glob("*")) == [], "the build left records of running steps"
    if runner == "host":  # a container step dies with its container, which is checked below
        assert not [p for p in pids if _alive(p)], "a step of the stopped build still runs"
    else:
        assert _containers() == [], "the build container outlived the build"


def _started(phase: str) -> Callable[[str], bool]:
    return lambda line: line == f"STARTED {phase}"


EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
POINTS = [(phase, wait) for phase in ("configure", "compile", "install") for wait in (0.0, PHASE_SECONDS / 2)]


@pytest.mark.parametrize("runner", ["host", "docker"])
@pytest.mark.parametrize(("phase", "wait"), POINTS, ids=[f"{p}+{w:g}s" for p, w in POINTS])
def test_ctrl_c_inside_each_step(signals_env: tuple[Env, Path], engine: str, runner: str, phase: str,
                                 wait: float) -> None:
    env, control = signals_env
    manifest = _baseline(env, control, runner)
    set_delays(control, **{phase: PHASE_SECONDS})
    status, output, pids = _interrupted(env, control, runner, signal.SIGINT, _started(phase), wait)
    assert status == EXIT[signal.SIGINT] and "qemuprov: interrupted" in output, output
    _left_as_it_was(env, manifest, pids, runner)


@pytest.mark.parametrize("runner", ["host", "docker"])
@pytest.mark.parametrize("phase", ["configure", "compile", "install"])
def test_sigterm_inside_each_step(signals_env: tuple[Env, Path], engine: str, runner: str, phase: str) -> None:
    env, control = signals_env
    manifest = _baseline(env, control, runner)
    set_delays(control, **{phase: PHASE_SECONDS})
    status, output, pids = _interrupted(env, control, runner, signal.SIGTERM, _started(phase), 0.5)
    assert status == EXIT[signal.SIGTERM] and "stopped by SIGTERM" in output, output
    _left_as_it_was(env, manifest, pids, runner)


BETWEEN = [(runner, header) for runner in ("host", "docker")
           for header in ("==> resolve", "==> fetch", *(["==> builder"] if runner == "docker" else []), "==> probe")]


@pytest.mark.parametrize(("runner", "header"), BETWEEN, ids=[f"{r}-{h[4:]}" for r, h in BETWEEN])
def test_ctrl_c_between_steps(signals_env: tuple[Env, Path], engine: str, runner: str, header: str) -> None:
    """The moments qemuprov itself works: resolving, fetching, starting the container, probing the staged tree."""
    env, control = signals_env
    manifest = _baseline(env, control, runner)
    set_delays(control)
    status, output, pids = _interrupted(env, control, runner, signal.SIGINT, lambda line: line.startswith(header), 0)
    assert status == EXIT[signal.SIGINT], output
    _left_as_it_was(env, manifest, pids, runner)


@pytest.mark.parametrize("runner", ["host", "docker"])
def test_ctrl_c_under_a_parent_that_ignores_it(signals_env: tuple[Env, Path], engine: str, runner: str) -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored; `kill -INT` must still stop it."""
    env, control = signals_env
    manifest = _baseline(env, control, runner)
    set_delays(control, compile=PHASE_SECONDS)
    status, output, pids = _interrupted(env, control, runner, signal.SIGINT, _started("compile"), 0.5,
                                        ignore_sigint=True)
    assert status == EXIT[signal.SIGINT], output
    _left_as_it_was(env, manifest, pids, runner)


def test_sigkill_leaves_a_container_the_next_build_removes(signals_env: tuple[Env, Path], engine: str) -> None:
    env, control = signals_env
    manifest = _baseline(env, control, "docker")
    set_delays(control, compile=60)
    status, output, _ = _interrupted(env, control, "docker", signal.SIGKILL, _started("compile"), 0.5)
    assert status == -signal.SIGKILL and _containers(), "the killed build left no container (nothing to test)"
    assert (env.root / RECIPE / "qemuprov.json").read_text() == manifest
    set_delays(control)
    again = env.run("build", RECIPE, "--runner", "docker", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _containers() == []
