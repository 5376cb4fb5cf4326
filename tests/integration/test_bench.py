"""qemuprov bench on real QEMUs and virtiofsd: the suite's 7.2 build (x86_64, every workload and setting) and
Debian's own 7.2 (aarch64, --quick), each booting the bench guest (Debian's generic kernel, the static fio) under
the accelerator this machine has; and bad input in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Built, Env

MEASURES = {"seqread", "randread", "seqwrite", "create", "stat", "unlink"}
DEBIAN_QEMU_AARCH64 = Path("/usr/bin/qemu-system-aarch64")
DEBIAN_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")


def _bench(qenv: Env, *args: str) -> tuple[list[dict[str, Any]], str]:
    """The reports, and what bench said on stderr (its progress)."""
    result = qenv.run("bench", *args, "--json", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports: list[dict[str, Any]] = json.loads(result.stdout)
    return reports, result.stderr


def _check_rows(report: dict[str, Any], measures: set[str]) -> dict[str, dict[str, Any]]:
    rows = {s["name"]: s for s in report["settings"]}
    for name, row in rows.items():
        assert row["ok"], f"{name}: {row['error']}"
        assert row["accel"] == report["accel"]  # the accelerator in every row
        assert set(row["results"]) == measures, name
        for measure, summary in row["results"].items():
            assert len(summary["values"]) == report["repetitions"] == 3
            assert summary["median"] > 0 and summary["low"] <= summary["median"] <= summary["high"]
            assert (summary["ratio"] is None) == (name == "virtio-fs"), (name, measure)
        assert not any("cache-size" in arg for arg in row["qemu_argv"])  # no window asked of a QEMU without one
    assert (report["caveat"] != "") == (report["accel"] == "tcg")
    return rows


def test_bench_of_the_suites_build_compares_the_daemons_settings(qenv: Env, built: Built) -> None:
    (report,), said = _bench(qenv, str(built.prefix), "--arch", "x86_64")
    assert report["arch"] == "x86_64" and report["qemu"]["dax"] is False
    assert said.count("    18/18 (100%)") == len(report["settings"])  # progress per job: 6 measures, 3 times
    rows = _check_rows(report, MEASURES)
    assert list(rows)[:4] == ["virtio-fs", "cache=none", "cache=always", "1 thread"]
    assert "-o" in rows["cache=none"]["virtiofsd_argv"] and "cache=none" in rows["cache=none"]["virtiofsd_argv"]
    assert rows["1 thread"]["virtiofsd_argv"][-1] == "--thread-pool-size=1"
    assert report["virtiofsd"]["thread_pool_default"] == 0  # 7.2's C daemon: no pool by default
    assert report["reading"].startswith("no DAX window here")
    assert "x for sequential reads here" not in report["reading"]  # never a DAX figure without a window
    assert all(" virtiofs " in row["mount"] for name, row in rows.items() if name != "9p")
    if os.geteuid() == 0:
        assert "drop_caches" in report["host_page_cache"]
    probe = qenv.run("probe", str(built.prefix / "bin" / "qemu-system-x86_64"), "--json")
    has_9p = json.loads(probe.stdout)[0]["devices"].get("virtio-9p-pci")
    assert ("9p" in rows) == bool(has_9p)


def test_quick_bench_of_debians_qemu_on_aarch64_against_9p(qenv: Env) -> None:
    """Debian's 7.2 has virtio-9p: the 9p row runs on the same guest kernel, and the reading compares it."""
    (report,), _ = _bench(qenv, "--qemu", str(DEBIAN_QEMU_AARCH64), "--virtiofsd", str(DEBIAN_VIRTIOFSD),
                          "--quick")
    assert report["arch"] == "aarch64" and report["workloads"] == ["seqread"]
    rows = _check_rows(report, {"seqread"})
    assert " 9p " in rows["9p"]["mount"] and "trans=virtio" in rows["9p"]["mount"]
    assert "x 9p for sequential reads" in report["reading"]
    assert report["kit"]["kernel"].startswith("6.12.117+deb13-arm64")  # the generic kernel, which has 9p


@pytest.mark.parametrize(("args", "said"), [
    (["--window", "64M"], "has no DAX window"),
    (["--window", "48M"], "has no DAX window"),  # no window at all is said before the size
    (["--arch", "riscv64"], "riscv64 is not among the QEMUs given"),
    (["--repetitions", "0"], "--repetitions: 0 is not between 1 and 20"),
])
def test_bad_input_is_one_line_and_exit_2(qenv: Env, built: Built, args: list[str], said: str) -> None:
    result = qenv.run("bench", str(built.prefix), *args, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qemuprov: error:")]
    assert len(errors) == 1 and said in errors[0], result.stderr
    assert "Traceback" not in result.stderr
