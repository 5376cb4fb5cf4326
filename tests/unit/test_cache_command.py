"""`qemuprov cache` on a planted cache: sizes by kind, what no install needs, and a clean that removes that (or,
with --all, everything kept) and never an install, even one whose prefix lies inside the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.manifests import manifest_json


def _qemuprov(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL,
                          check=False, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock", **env})


def _plant(home: Path) -> dict[str, Path]:
    cache = home / ".cache" / "qemuprov"
    root = home / ".local" / "share" / "qemuprov" / "installs"
    url = "https://gitlab.com/qemu-project/qemu.git"
    from qemuprov.sources import trees

    made = {
        "work-installed": cache / "work" / "qemu-7.2" / "build-host" / "big.o",
        "work-orphan": cache / "work" / "gone-recipe" / "build-host" / "big.o",
        "mirror-used": cache / "git" / trees.mirror_dir(url).name / "objects" / "pack",
        "mirror-orphan": cache / "git" / "other-0123456789abcdef.git" / "objects" / "pack",
        "tarball-orphan": cache / "tarballs" / ("ab" * 32 + "-qemu-9.0.0.tar.xz"),
        "kit": cache / "guest" / "x86_64-123456789abc" / "vmlinuz",
        "ccache": cache / "ccache" / "a" / "b.o",
    }
    for path in made.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (1 << 20))
    (home / ".cache" / "qemuprov").mkdir(parents=True, exist_ok=True)
    prefix = root / "qemu-7.2"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "qemu-system-x86_64").write_bytes(b"\x7fELF")
    source = {"url": url, "ref": "v7.2.0", "commit": "a" * 40, "sha256": None}
    (prefix / "qemuprov.json").write_text(manifest_json(name="qemu-7.2", prefix=str(prefix),
                                                        recipe={"name": "qemu-7.2"}, source=source))
    inside = cache / "my-install"  # an install a setting put inside the cache: still never cleaned
    (inside / "bin").mkdir(parents=True)
    (inside / "qemuprov.json").write_text(manifest_json(name="my-install", prefix=str(inside)))
    (root / "prefixes.json").write_text(json.dumps([str(inside)]))
    return {**made, "install": prefix, "inside": inside}


def test_cache_shows_sizes_and_clean_keeps_every_install(isolated_home: Path) -> None:
    planted = _plant(isolated_home)
    shown = _qemuprov("cache", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    by_path = {Path(i["path"]): i for i in report["items"]}
    assert by_path[isolated_home / ".cache/qemuprov/work/qemu-7.2"]["needed"] is True
    assert by_path[isolated_home / ".cache/qemuprov/work/gone-recipe"]["needed"] is False
    assert report["unneeded"] >= 3 << 20 and report["total"] >= 7 << 20
    assert not any(Path(i["path"]) == planted["inside"] for i in report["items"])
    text = _qemuprov("cache").stdout
    assert "NO INSTALL NEEDS" in text and "work" in text and "mirrors" in text
    refused = _qemuprov("cache", "clean")  # no terminal to ask on
    assert refused.returncode == 2 and "give --yes" in refused.stderr
    dry = _qemuprov("cache", "clean", "--dry-run")
    assert "gone-recipe" in dry.stdout and planted["work-orphan"].exists()
    cleaned = _qemuprov("cache", "clean", "--yes")
    assert cleaned.returncode == 0 and "freed" in cleaned.stdout, cleaned.stderr
    for gone in ("work-orphan", "mirror-orphan", "tarball-orphan"):
        assert not planted[gone].exists(), gone
    for kept in ("work-installed", "mirror-used", "kit", "ccache"):
        assert planted[kept].exists(), kept
    everything = _qemuprov("cache", "clean", "--all", "--yes")
    assert everything.returncode == 0, everything.stderr
    for name in ("work-installed", "mirror-used", "kit", "ccache"):
        assert not planted[name].exists(), name
    assert (planted["install"] / "qemuprov.json").exists() and (planted["inside"] / "qemuprov.json").exists()
    assert "what qemuprov keeps" in _qemuprov("doctor").stdout


def test_clean_removes_only_the_callers_own_leftovers(isolated_home: Path) -> None:
    """QEMUPROV_CACHE may name a directory other users write (a /tmp): a leftover of theirs is theirs."""
    cache = isolated_home / ".cache" / "qemuprov"
    mine, theirs = cache / "qemuprov-bench-mine", cache / "qemuprov-bench-theirs"
    for path in (mine, theirs):
        (path / "share").mkdir(parents=True)
        (path / "share" / "data").write_bytes(b"x" * 4096)
    os.chown(theirs, 4242, 4242)
    for path in (mine, theirs):
        os.utime(path, (1_000_000_000, 1_000_000_000))  # long after its run ended
    cleaned = _qemuprov("cache", "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not mine.exists() and (theirs / "share" / "data").exists()


def test_an_empty_cache_says_so_and_clean_json_is_json_every_way(isolated_home: Path) -> None:
    assert "keeps nothing yet" in _qemuprov("cache").stdout
    for args in (("cache", "clean", "--json"), ("cache", "clean", "--dry-run", "--json")):
        result = _qemuprov(*args)
        assert result.returncode == 0 and json.loads(result.stdout)["would_remove"] == [], result.stdout
