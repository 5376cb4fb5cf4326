"""virtme-ng as the consumer: `vng` from PyPI, in a venv of its own, boots Debian's cloud kernel with the host's
root shared over virtio-fs, and finds QEMU and virtiofsd on PATH the way the README tells its users to put them
there (`eval "$(qemuprov env NAME)"`). vng takes only the Rust virtiofsd (it starts it with the Rust options);
the test of a C daemon holds the README's word on what then happens."""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Built

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FIRMWARE = "-L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu"  # a Debian tree has no blobs


@pytest.fixture(scope="module")
def vng(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("virtme-ng") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "virtme-ng"], capture_output=True,
                               text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return venv / "bin"


@pytest.fixture(scope="module")
def kernel() -> str:
    found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not found:
        pytest.fail("no Debian cloud kernel in /boot: run scripts/test, which installs linux-image-cloud-amd64")
    return found[-1]


def _vng(vng: Path, kernel: str, path: list[Path], tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Boot, read a file the host wrote and the guest's root mount; (what the guest printed, vng's stderr)."""
    token = secrets.token_hex(8)
    (tmp_path / "from-host.txt").write_text(token + "\n")
    tmp_path.chmod(0o755)
    env = {"PATH": ":".join([*map(str, path), str(vng), SYSTEM_PATH]), "HOME": str(tmp_path), "TERM": "dumb"}
    run = subprocess.run([str(vng / "vng"), "--run", kernel, "--disable-kvm", "--verbose", *extra, "--exec",
                          f"cat {tmp_path / 'from-host.txt'}; grep ' / ' /proc/mounts"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
                         stdin=subprocess.DEVNULL)
    return run.stdout + f"\nTOKEN {token}", run.stderr


def _read_over_virtiofs(printed: str) -> bool:
    token = printed.rsplit("TOKEN ", 1)[1].strip()
    lines = printed.splitlines()
    return token in lines and any(line.split()[1:3] == ["/", "virtiofs"] for line in lines if line.count(" ") > 2)


def test_vng_boots_over_the_rust_virtiofsd_of_the_virtiofsd_recipe(vng: Path, kernel: str, daemon_only: Built,
                                                                  tmp_path: Path) -> None:
    """`eval "$(qemuprov env virtiofsd)"` with the distribution's QEMU: vng starts our daemon for the root."""
    printed, said = _vng(vng, kernel, [daemon_only.prefix / "bin"], tmp_path)
    assert _read_over_virtiofs(printed), printed + said[-3000:]


def test_vng_with_a_qemuprov_qemu_and_the_rust_virtiofsd(vng: Path, kernel: str, built: Built, daemon_only: Built,
                                                         tmp_path: Path) -> None:
    """A qemuprov QEMU first on PATH, the Rust virtiofsd before it (the QEMU's own bin holds the C daemon)."""
    printed, said = _vng(vng, kernel, [daemon_only.prefix / "bin", built.prefix / "bin"], tmp_path,
                         "--qemu-opts", FIRMWARE)
    assert _read_over_virtiofs(printed), printed + said[-3000:]
    assert f"{built.prefix / 'bin' / 'qemu-system-x86_64'}" in said or _qemu_used(vng, kernel, built), said[-3000:]


def _qemu_used(vng: Path, kernel: str, built: Built) -> bool:
    """vng --dry-run prints the QEMU command line it would run."""
    env = {"PATH": ":".join([str(built.prefix / "bin"), str(vng), SYSTEM_PATH]), "HOME": os.environ.get("HOME", "/")}
    dry = subprocess.run([str(vng / "vng"), "--run", kernel, "--disable-kvm", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    return str(built.prefix / "bin" / "qemu-system-x86_64") in dry.stdout + dry.stderr


def test_vng_does_not_serve_the_root_with_a_c_virtiofsd(vng: Path, kernel: str, built: Built,
                                                        tmp_path: Path) -> None:
    """What the README tells virtme-ng users: a C daemon first on PATH is no virtiofs for vng (it starts the
    daemon with the Rust one's options, then falls back to 9p)."""
    printed, said = _vng(vng, kernel, [built.prefix / "bin"], tmp_path, "--qemu-opts", FIRMWARE)
    assert not _read_over_virtiofs(printed)
    assert "fallback to 9p" in said or "9p" in printed + said, said[-3000:]
