"""A hostile guest: the kit's own kernel and initramfs, with an init appended (as bench appends fio) that leaves
in the share what a guest can make there: a link to a root-only file of the host in place of the file it should
write back, a FIFO, a sparse 8 GiB file and a chain of directories deeper than Python's recursion. verify (run as
root, as the C virtiofsd requires) must read none of it through the link, hang on nothing, and clean it all up."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.proving import guestkit
from tests.integration.conftest import Env

HOSTILE_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
mount -t virtiofs qemuprov /mnt || { echo "QEMUPROV: mount-failed"; poweroff -f; }
echo "QEMUPROV: mounted"
echo "QEMUPROV: read $(cat /mnt/from-host.txt)"
ln -s SECRET /mnt/from-guest.txt
mkfifo /mnt/fifo
truncate -s 8G /mnt/sparse
cd /mnt && i=0 && while [ $i -lt 1200 ]; do mkdir d && cd d; i=$((i + 1)); done
echo "QEMUPROV: wrote"
echo "QEMUPROV: done"
poweroff -f
"""


def test_what_a_guest_leaves_in_the_share_is_not_followed_read_whole_or_waited_on(
        qenv: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUPROV_CACHE", qenv.vars["QEMUPROV_CACHE"])  # the suite's kit, not root's own cache
    secret = tmp_path / "root-only.txt"
    secret.write_text("THE-HOSTS-SECRET\n")
    secret.chmod(0o600)
    kit = guestkit.ensure_kit(arches.X86_64)
    init = HOSTILE_INIT.replace("MODULES", " ".join(guestkit.MODULES)).replace("SECRET", str(secret))
    initrd = tmp_path / "hostile.cpio"
    initrd.write_bytes(kit.initrd.read_bytes() + guestkit.cpio_newc([("init", 0o100755, init.encode())]))
    before = set(Path(tempfile.gettempdir()).glob("qemuprov-verify-*"))
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "qemuprov", "verify", "--qemu", "/usr/bin/qemu-system-x86_64",
                             "--virtiofsd", "/usr/lib/qemu/virtiofsd", "--kernel", str(kit.kernel), "--initrd",
                             str(initrd), "--accel", "tcg", "--json"], env=qenv.vars, capture_output=True, text=True,
                            timeout=600, check=False)
    took = time.monotonic() - start
    assert "THE-HOSTS-SECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    (outcome,) = json.loads(result.stdout)
    assert outcome["failure"] == "guest" and "symbolic link" in outcome["message"], outcome
    assert took < 300, took
    assert set(Path(tempfile.gettempdir()).glob("qemuprov-verify-*")) == before  # the deep share went too
