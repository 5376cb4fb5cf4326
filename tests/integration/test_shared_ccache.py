"""The shared compiler cache for near misses: ccache's remote storage in a real Redis server (scripts/test-redis,
on a unix socket), used by host and container builds alike from fresh HOMEs with empty local caches; a builder
whose ccache predates remote storage says so. Builds of the stand-in tree, whose one C file goes through ccache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import Env
from tests.integration.standin import make_tree, set_delays


@pytest.fixture(scope="module")
def shared(qenv: Env, engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("QEMUPROV_TEST_REDIS", "")
    if not url:
        pytest.fail("no test Redis: run scripts/test, which starts one (QEMUPROV_TEST_REDIS)")
    # the control directory inside the work dir, so that the build container sees it too
    control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "standin-ccache" / "control"
    body = make_tree(tmp_path_factory.mktemp("shared-ccache") / "tree", control)
    qenv.write_recipe("standin-ccache", body)
    qenv.write_recipe("standin-ccache-old", body.replace('builder = "debian-bookworm"', 'builder = "debian-bullseye"'))
    qenv.write_recipe("standin-ccache-paths",
                      make_tree(tmp_path_factory.mktemp("shared-ccache-paths") / "tree", control, generated_paths=True))
    set_delays(control)
    return url


def _build_in_a_fresh_home(qenv: Env, where: Path, url: str, *args: str) -> tuple[dict[str, object], str]:
    env = {**qenv.vars, "HOME": str(where), "QEMUPROV_ROOT": str(where / "root"),
           "QEMUPROV_CACHE": str(where / "cache")}
    result = qenv.run("build", args[0], "--shared-ccache", url, *args[1:], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((where / "root" / args[0] / "qemuprov.json").read_text())["ccache"], result.stderr


def test_a_fresh_home_compiles_from_the_shared_cache(qenv: Env, shared: str, tmp_path: Path) -> None:
    first, _ = _build_in_a_fresh_home(qenv, tmp_path / "a", shared, "standin-ccache", "--runner", "host")
    assert (first["hits"], first["misses"]) == (0, 1)  # compiled, and stored in Redis
    second, _ = _build_in_a_fresh_home(qenv, tmp_path / "b", shared, "standin-ccache", "--runner", "host")
    assert (second["hits"], second["remote_hits"]) == (1, 1)  # an empty local cache: the object came from Redis


def test_a_container_build_reaches_the_shared_cache_through_its_socket(qenv: Env, shared: str,
                                                                       tmp_path: Path) -> None:
    _build_in_a_fresh_home(qenv, tmp_path / "a", shared, "standin-ccache", "--runner", "host")
    stats, _ = _build_in_a_fresh_home(qenv, tmp_path / "c", shared, "standin-ccache", "--runner", "docker")
    assert (stats["hits"], stats["remote_hits"]) == (1, 1)  # the same gcc in bookworm's builder, no network


def test_a_builder_whose_ccache_is_too_old_says_so(qenv: Env, shared: str, tmp_path: Path) -> None:
    _, said = _build_in_a_fresh_home(qenv, tmp_path / "d", shared, "standin-ccache-old", "--runner", "docker")
    assert "is not used: ccache 4.2" in said and "predates remote storage (4.4)" in said


def test_container_builds_in_any_home_share_objects_whose_headers_name_the_source_dir(
        qenv: Env, shared: str, tmp_path: Path) -> None:
    # QEMU's trace headers carry the absolute path of their trace-events file; a container sees every work dir
    # at one path, so two HOMEs build the same header and the second one's compile comes from Redis.
    first, _ = _build_in_a_fresh_home(qenv, tmp_path / "a", shared, "standin-ccache-paths", "--runner", "docker")
    assert (first["hits"], first["misses"]) == (0, 1)
    second, _ = _build_in_a_fresh_home(qenv, tmp_path / "b", shared, "standin-ccache-paths", "--runner", "docker")
    assert (second["hits"], second["remote_hits"]) == (1, 1)
    # The control: on the host each HOME's header names its own work dir, so the same compile misses (ccache
    # runs in depend mode, as for QEMU, whose compiles all write a depfile).
    host, _ = _build_in_a_fresh_home(qenv, tmp_path / "c", shared, "standin-ccache-paths", "--runner", "host")
    assert (host["hits"], host["misses"]) == (0, 1)
