"""Every git qemuprov runs goes through here: git's own messages in English whatever the user's locale (the
fetch path reads them), no prompt on a terminal nobody watches (a private URL fails at once instead of waiting
for a password), and a deadline for each call.

The user's own environment is kept otherwise: git needs their proxies, ssh agent, HOME and config
(`url.<mirror>.insteadOf`, `safe.directory`); only what would point git at another repository is dropped."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from qemuprov.infra import config, procs

SHORT_ENV = "QEMUPROV_GIT_TIMEOUT"  # ls-remote, init, show, cat-file
FETCH_ENV = "QEMUPROV_GIT_FETCH_TIMEOUT"
SHORT_TIMEOUT = 120.0  # an ls-remote of a big remote over a slow link is seconds
FETCH_TIMEOUT = 3600.0  # a shallow QEMU fetch is about 100 MB
_FIXED = {"LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"}
_DROPPED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES", "LANG", "LC_MESSAGES")


class GitFailed(Exception):
    """git exited non-zero or did not finish by its deadline; stderr holds its words (or ours)."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def env() -> dict[str, str]:
    found = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    found.update(_FIXED)
    return found


def short_timeout() -> float:
    return config.seconds(SHORT_ENV, SHORT_TIMEOUT)


def fetch_timeout() -> float:
    return config.seconds(FETCH_ENV, FETCH_TIMEOUT)


def run(args: Sequence[str | Path], timeout: float | None = None,
        extra_env: dict[str, str] | None = None) -> procs.Result:
    """`git ARGS` to completion, never raising for git's own failure (see Result.ok)."""
    limit = timeout if timeout is not None else short_timeout()
    return procs.run(["git", *args], timeout=limit, env={**env(), **(extra_env or {})})


def output(args: Sequence[str | Path], timeout: float | None = None) -> str:
    """git's standard output; GitFailed with its stderr (or the deadline, in words) where it fails."""
    result = run(args, timeout)
    if result.timed_out:
        limit = timeout if timeout is not None else short_timeout()
        raise GitFailed(f"fatal: git {args[0] if args else ''} did not finish within {limit:g} s "
                        f"({SHORT_ENV} gives it longer)")
    if not result.ok:
        raise GitFailed(result.stderr)
    return result.stdout


def stream(args: Sequence[str | Path], on_line: Callable[[str], None]) -> None:
    """A long git (a fetch), its lines to on_line as they come; GitFailed where it fails or runs out of time."""
    limit = fetch_timeout()
    try:
        status = procs.stream(["git", *args], on_line=on_line, env=env(), grace=2.0, timeout=limit)
    except procs.StreamTimeout:
        raise GitFailed(f"fatal: git fetch did not finish within {limit:g} s ({FETCH_ENV} gives it longer)") \
            from None
    if status != 0:
        raise GitFailed("")
