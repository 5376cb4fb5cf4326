"""The one place that runs short child processes: explicit environment, a time limit, clear failures."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("qemuprov.procs")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int | None  # None: timed out
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def why(self) -> str:
        """What went wrong, in words: a timeout, a signal, or an exit status."""
        if self.returncode is None:
            return "did not finish in time"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"was killed by {name}"
        return f"exited with status {self.returncode}"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: PATH, HOME, a C locale, and what the caller adds."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR", "USER") if key in os.environ}
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


def run(argv: Sequence[str | Path], *, timeout: float, input: str | None = None,
        env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Result:
    """Run to completion; never raises for the child's failure, only for a program that cannot start."""
    args = tuple(str(a) for a in argv)
    log.debug("run: %s", shlex.join(args))
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                            env=dict(env) if env is not None else base_env(), cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        # the whole group: a wrapper script's children would otherwise outlive it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return Result(args, None, stdout or "", stderr or "")
    return Result(args, proc.returncode, stdout, stderr)


def stop_group(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> None:
    """Stop a child started with start_new_session=True and everything it started: TERM, then KILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
