"""The compiler cache of a build: where it lives, the environment that lets host and container builds share its
entries, the shared (remote) storage, and what a build got out of it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from qemuprov.infra import paths
from qemuprov.infra.progress import notice
from qemuprov.records.manifest import CcacheStats


def directory() -> Path:
    found = paths.cache_dir() / "ccache"
    found.mkdir(parents=True, exist_ok=True)
    return found


def environment(work: Path, stats_log: Path, remote: str | None, reshare: bool = False) -> dict[str, str]:
    """Host and container builds with the same compiler share entries: the compiler is checked by content, paths
    under the work dir are made relative, and the build dir's own name is left out of the hash (debug info may
    then name the other build dir; nothing else differs). Depend mode: a miss costs no extra preprocessor run
    (plain ccache made a cold build 29% slower, depend mode 9%); the compiler's own -MD output names the
    headers, which every meson build of QEMU asks for. reshare: local hits are written to the shared cache too
    (a new shared cache fills from a warm local one)."""
    return {"CCACHE_DIR": str(paths.cache_dir() / "ccache"), "CCACHE_BASEDIR": str(work),
            "CCACHE_COMPILERCHECK": "content", "CCACHE_NOHASHDIR": "1", "CCACHE_DEPEND": "1",
            "CCACHE_STATSLOG": str(stats_log), **({"CCACHE_REMOTE_STORAGE": remote} if remote else {}),
            **({"CCACHE_RESHARE": "1"} if remote and reshare else {})}


REMOTE_STORAGE_SINCE = (4, 4)  # the ccache release that brought remote storage


def needs_network(url: str | None) -> bool:
    """A container build reaches a shared cache at redis://HOST:PORT through the network of the engine's host
    (builds otherwise run without one); a redis+unix: socket is mounted instead."""
    return bool(url) and not str(url).startswith("redis+unix:")


def shared(url: str | None, sees_local_files: bool, version_text: Callable[[], str], where: str) -> str | None:
    """The shared compiler cache url where the build environment (`where`, which sees this machine's files or
    not) can use it; a notice where it cannot (a ccache too old, or a socket the build's container cannot see).
    version_text: what `ccache --version` prints in that environment."""
    if not url:
        return None
    if url.startswith("redis+unix:") and not sees_local_files:
        notice(f"the shared ccache {url} is not used: the engine cannot see this machine's files, so it cannot "
               "reach the socket either; serve Redis on TCP (redis://HOST:PORT) where the engine's host reaches it")
        return None
    found = re.search(r"(\d+)\.(\d+)", version_text())
    version = (int(found.group(1)), int(found.group(2))) if found else None
    if version is None or version < REMOTE_STORAGE_SINCE:
        notice(f"the shared ccache {url} is not used: ccache {'.'.join(map(str, version or ())) or '(none)'} in "
                f"{where} predates remote storage (4.4)")
        return None
    return url


def socket_dir(url: str | None) -> Path | None:
    """The directory of a redis+unix: socket, which a container must see."""
    return Path(url.removeprefix("redis+unix:").split("?")[0]).parent if url and url.startswith("redis+unix:") \
        else None


def stats(stats_log: Path) -> CcacheStats | None:
    """Hits and misses of this build's compilations, from ccache's per-call stats log (None: ccache unused)."""
    try:
        text = stats_log.read_text(errors="replace")
    except OSError:
        return None
    hits = misses = 0
    for record in text.split("# ")[1:]:
        outcomes = set(record.splitlines()[1:])
        if outcomes & {"direct_cache_hit", "preprocessed_cache_hit"}:
            hits += 1
        elif "cache_miss" in outcomes:
            misses += 1
    total = hits + misses
    remote = text.count("\nremote_storage_hit")
    return CcacheStats(hits, misses, round(hits / total, 3) if total else None, remote)
