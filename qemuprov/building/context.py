"""What every phase of a build shares: the recipe and options, its workspace (every path, the log), the runner
and the reporter; timing by phase name; running a tool's step or capturing a short command; failing with the end
of the log and a hint."""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from qemuprov.building import ccache
from qemuprov.building.workspace import Workspace
from qemuprov.ci.binary_cache import Settings
from qemuprov.errors import BuildError, InfraError
from qemuprov.infra.progress import Reporter
from qemuprov.infra.runners import Runner
from qemuprov.infra.timing import Timer
from qemuprov.knowledge import hostdeps
from qemuprov.recipe import Recipe
from qemuprov.records.manifest import BuilderImageRecord, VerifyMode

LOG_TAIL = 25
READ_SCRIPT = 'cat "$1" 2>/dev/null && echo . || true'  # the dot: an empty file is not a missing one
WRITE_SCRIPT = 'printf %s "$2" > "$1"'
FRESH_DIR_SCRIPT = 'rm -rf "$1" && mkdir -p "$1"'
EXISTS_SCRIPT = 'test -e "$1" && echo yes || true'
STEP_FILE_SCRIPTS = (READ_SCRIPT, WRITE_SCRIPT, FRESH_DIR_SCRIPT, EXISTS_SCRIPT)


@dataclass
class Options:
    arches: tuple[str, ...]
    prefix: Path
    runner: Runner
    jobs: int
    force: bool = False
    argv: list[str] = field(default_factory=list)  # the command line, for the manifest
    precompiled_header: bool = True  # clang builds of meson trees compile against a precompiled qemu/osdep.h
    update_lock: bool = False  # resolve the refs again and move the recipe's lock file to what they name now
    binary_cache: Settings | None = None  # a registry to substitute builds from (and push them to)
    use_cache: bool = True  # --no-cache: build even where the cache has the build
    cache_only: bool = False  # --cache-only: install from the cache or fail, never compile
    push: bool = False  # push the result to the binary cache
    verify: VerifyMode | None = None  # boot a guest over virtio-fs (before the swap where it can)
    shared_ccache: str | None = None  # ccache's remote storage (redis://HOST:PORT, redis+unix:/PATH), for near misses
    reshare: bool = False  # write local ccache hits to the shared cache too


@dataclass
class Context:
    """One build, from before resolve to the swap: its workspace (every path it uses), timer and runner."""

    recipe: Recipe
    opts: Options
    report: Reporter
    ws: Workspace
    timer: Timer = field(default_factory=Timer)
    remote_ccache: str | None = None  # the shared compiler cache, where the build environment's ccache can use it

    @property
    def runner(self) -> Runner:
        return self.opts.runner

    @property
    def timings(self) -> dict[str, float]:
        return self.timer.timings

    @property
    def log(self) -> IO[str]:
        return self.ws.log

    @contextmanager
    def phase(self, name: str, detail: str = "", timing: str | None = None) -> Iterator[None]:
        """A named phase: announced (when detail is given), timed under `timing` (default: its name)."""
        if detail:
            self.report.step(name, detail)
        with self.timer.phase(timing or name):
            yield

    def env(self) -> dict[str, str]:
        return self.runner.env({"LC_ALL": "C", **ccache.environment(self.ws.root, self.ws.ccache_log,
                                                                    self.remote_ccache, self.opts.reshare)})

    def capture(self, argv: list[str], cwd: Path, env: dict[str, str]) -> str:
        """A short command's output, through the runner (the log's first line is the command itself)."""
        output = io.StringIO()
        status = self.runner.run(argv, cwd=cwd, env=env, log=output)
        text = output.getvalue().partition("\n")[2]
        if status != 0:
            raise InfraError(f"{shlex.join(argv)} failed in {cwd} (exit status {status}): {text.strip()[-300:]}")
        return text

    # Files where the steps keep them (which a container build through a remote engine keeps in a volume, not
    # here): read, written and made through the runner.
    def read_step_file(self, path: Path) -> str | None:
        text = self._step_file(READ_SCRIPT, path)
        return text[:-2] if text.endswith(".\n") else None

    def write_step_file(self, path: Path, text: str) -> None:
        self._step_file(WRITE_SCRIPT, path, text)

    def fresh_step_dir(self, path: Path) -> None:
        self._step_file(FRESH_DIR_SCRIPT, path)

    def step_file_exists(self, path: Path) -> bool:
        return self._step_file(EXISTS_SCRIPT, path).strip() == "yes"

    def _step_file(self, script: str, path: Path, *more: str) -> str:
        return self.capture(["sh", "-c", script, "sh", str(path), *more], self.ws.root, self.env())

    def step(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        """A tool's step, its output into the log and its progress to the reporter; a failure is a BuildError."""
        self.report.finish_progress()
        status = self.runner.run(argv, cwd=cwd, env=env, log=self.log, on_line=self.report.line)
        self.report.finish_progress()
        if status != 0:
            self.log.flush()
            self.fail(name, argv, status, None)

    def fail(self, name: str, argv: list[str], status: int, hint: str | None) -> None:
        log = self.ws.log_path
        tail = _tail(log, LOG_TAIL)
        raise BuildError(f"{name} failed (exit status {status}): {shlex.join(argv)}\n"
                         f"--- last {LOG_TAIL} lines of {log} ---\n{tail}\n--- full log: {log}",
                         hint=(hint or missing_dependency_hint(tail, self.runner))
                         + "; the previous install, if any, is untouched")


def builder_image_record(runner: Runner) -> BuilderImageRecord | None:
    image = runner.image
    if image is None:
        return None
    return BuilderImageRecord(tag=image.tag, id=str(runner.image_id or ""), base=image.base,
                              dockerfile=image.dockerfile.name, builder=image.builder)


def missing_dependency_hint(log_tail: str, runner: Runner) -> str:
    package = hostdeps.package_missing_in(log_tail)
    if package and runner.is_host:
        return f"a build dependency is missing: install {package} (Debian/Ubuntu), or use --runner docker"
    if package:
        return f"the builder image lacks {package}: add it to the recipe's builder Dockerfile under containers/"
    if "No space left on device" in log_tail:
        return "the disk is full: free space where the build tree or the install lives (QEMUPROV_CACHE, --prefix)"
    return "read the log above; `qemuprov doctor` lists missing build dependencies"


def _tail(path: Path, count: int) -> str:
    with path.open(errors="replace") as handle:
        return "".join(handle.readlines()[-count:]).rstrip()
