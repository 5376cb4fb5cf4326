"""The container runner's path map: the work dir is seen at one fixed path, and only the work dir."""

from __future__ import annotations

from pathlib import Path

from qemuprov.infra.runners import WORK_IN_CONTAINER, PathMap

HOST_WORK = Path("/home/ann/.cache/qemuprov/work/qemu-7.2")


def test_paths_under_the_work_dir_move_inward() -> None:
    paths = PathMap({HOST_WORK: WORK_IN_CONTAINER})
    assert paths.inward(str(HOST_WORK)) == WORK_IN_CONTAINER
    assert paths.inward(f"{HOST_WORK}/build/pch-cc") == f"{WORK_IN_CONTAINER}/build/pch-cc"
    assert paths.inward(f"--cc={HOST_WORK}/pch-cc clang") == f"--cc={WORK_IN_CONTAINER}/pch-cc clang"
    assert paths.inward(f"CCACHE_BASEDIR={HOST_WORK}:x") == f"CCACHE_BASEDIR={WORK_IN_CONTAINER}:x"


def test_siblings_and_other_paths_stay() -> None:
    paths = PathMap({HOST_WORK: WORK_IN_CONTAINER})
    for other in (f"{HOST_WORK}-old/src", f"{HOST_WORK}.lock", f"{HOST_WORK}2", "/home/ann/.cache/qemuprov/ccache"):
        assert paths.inward(other) == other


def test_output_lines_come_back_with_host_paths() -> None:
    paths = PathMap({HOST_WORK: WORK_IN_CONTAINER})
    line = f"../src/qom/object.c:12: error: in {WORK_IN_CONTAINER}/src/qom/object.c\n"
    assert paths.outward(line) == f"../src/qom/object.c:12: error: in {HOST_WORK}/src/qom/object.c\n"
    assert paths.outward(paths.inward(f"{HOST_WORK}/logs/build.log")) == f"{HOST_WORK}/logs/build.log"


def test_an_empty_map_changes_nothing() -> None:
    assert PathMap({}).inward(f"{HOST_WORK}/src") == f"{HOST_WORK}/src"
