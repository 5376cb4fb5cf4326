"""Where build steps run. The host runner runs them here; a container runner (same interface) runs them in
a builder image. Each step streams its output into the build log and to a line callback (progress)."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from qemuprov.procs import stop_group

LineCallback = Callable[[str], None]


class Runner(Protocol):
    name: str

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: LineCallback | None = None) -> int: ...


class HostRunner:
    name = "host"

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: LineCallback | None = None) -> int:
        log.write(f"$ cd {shlex.quote(str(cwd))} && {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if on_line is not None:
                    on_line(line)
            return proc.wait()
        except BaseException:
            # Ctrl-C or any failure here: stop the whole process group (make/ninja and the compilers).
            stop_group(proc, grace=10)
            raise
        finally:
            log.flush()


def get_runner(name: str) -> Runner:
    if name in ("host", "auto"):
        return HostRunner()
    from qemuprov.errors import UserError

    raise UserError(f"--runner: the {name} runner is not available in this version",
                    hint="use --runner host")
