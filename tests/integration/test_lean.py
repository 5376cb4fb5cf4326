"""Lean installs, for real: a qemuprov QEMU whose own share/qemu holds no blobs (a Debian tree), given only the
firmware knowledge/firmware.py keeps, still boots OSv's run.py lines on both arches (user networking with
virtio-net-pci and its option ROM, the VGA BIOS, SeaBIOS on x86_64)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qemuprov.knowledge import firmware
from qemuprov.knowledge.firmware import DISTRO_FIRMWARE
from qemuprov.proving import verify
from tests.integration.conftest import Built, Env


def _pruned_distribution_firmware(into: Path) -> list[str]:
    """The distribution's firmware directories in one, files copied (not linked), then pruned; what went."""
    into.mkdir()
    for directory in map(Path, DISTRO_FIRMWARE):
        for entry in sorted(directory.iterdir()) if directory.is_dir() else ():
            target = into / entry.name
            if target.exists() or not entry.exists():
                continue
            if entry.is_dir():
                shutil.copytree(entry, target, symlinks=False)
            else:
                shutil.copy(entry, target)
    return firmware.keep_needed(into, ("x86_64", "aarch64"))


def test_the_needed_firmware_boots_run_py_lines_on_both_arches(qenv: Env, built: Built, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    datadir = tmp_path / "firmware"
    removed = _pruned_distribution_firmware(datadir)
    assert {"s390-ccw.img", "slof.bin", "openbios-ppc"} <= set(removed), removed  # there was something to prune
    assert not list(datadir.glob("OVMF*")) and not list(datadir.glob("edk2-*"))
    monkeypatch.setenv("QEMUPROV_CACHE", qenv.vars["QEMUPROV_CACHE"])  # the guest kit the other tests fetched
    qemus = sorted((built.prefix / "bin").glob("qemu-system-*"))
    outcomes = verify.verify_all(qemus, built.prefix / "bin" / "virtiofsd", [str(datadir)], None, "auto", None,
                                 "osv")
    assert sorted(o.arch for o in outcomes) == ["aarch64", "x86_64"]
    for outcome in outcomes:
        assert outcome.ok, (outcome.message, outcome.log)
