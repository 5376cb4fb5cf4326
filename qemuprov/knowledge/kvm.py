"""Is KVM usable here? Not only "does /dev/kvm exist": a bounded run of a tiny guest under KVM.

The guest (assets/kvm-probe.S, assembled with `as --32` + `objcopy -O binary`) is a 64 KiB BIOS image
that goes from real mode to protected mode to long mode and then writes 0x21 to isa-debug-exit, so QEMU
exits with status 67. Hosts with a broken KVM (for example some nested setups) hang at the mode switch,
where a Linux guest would hang early in boot; a run that does not finish within the bound says so.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import platform
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from qemuprov.infra import jsonfile, paths, procs

GUEST_IMAGE = base64.b64decode(
    "eNrtzTFOQkEQBuBBNKGQLJUxNj45gEHPYeEp3jlIXk9BSWVvISXY+DrptKSkssCEmEhlYnBBEmv770t25p9kd+frskyNkzpSUZfV"
    "rJG6dbk8ixStKCedGMwH9eC1fDw4HN+unqITcVVP4zji8/75aDs2i4iccm32dinXKraptUtF/nhRzYrUXUy291N3Pu1H1Om6HY08"
    "9vLedr7fz4uXw7z3NHbbblbji7f1+v079jabXEYvv32476OHOI+7/AoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAID/Wubzsf7zA49QRP4="
)
EXIT_STATUS = (0x21 << 1) | 1
TIME_LIMIT = 4.0


def guest_image() -> bytes:
    return zlib.decompress(GUEST_IMAGE)


@dataclass(frozen=True)
class KvmDevice:
    present: bool
    accessible: bool
    error: str | None = None


def device(path: str = "/dev/kvm") -> KvmDevice:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return KvmDevice(False, False, "missing")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return KvmDevice(True, False, "permission denied")
        return KvmDevice(True, False, exc.strerror)
    os.close(fd)
    return KvmDevice(True, True)


@dataclass(frozen=True)
class KvmRun:
    usable: bool
    seconds: float
    detail: str


def test_run(qemu_x86_64: Path, accel: str = "kvm", limit: float = TIME_LIMIT) -> KvmRun:
    """Run the test guest; `accel="tcg"` is the control that shows the guest itself is fine."""
    with tempfile.TemporaryDirectory(prefix="qemuprov-kvm-") as tmp:
        image = Path(tmp) / "probe.bin"
        image.write_bytes(guest_image())
        argv: list[str | Path] = [qemu_x86_64, "-accel", accel, "-machine", "pc", "-bios", image, "-nodefaults",
                "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
        start = time.monotonic()
        result = procs.run(argv, timeout=limit)
        seconds = time.monotonic() - start
    if result.returncode == EXIT_STATUS:
        return KvmRun(True, seconds, f"a test guest reached long mode under {accel} in {seconds:.2f} s")
    if result.timed_out:
        return KvmRun(False, seconds, f"a test guest hung under {accel}: it did not reach protected mode "
                                      f"within {limit:.0f} s (guests would hang early in boot)")
    last = result.stderr.strip().splitlines()[-1:] or [""]
    return KvmRun(False, seconds, f"QEMU {result.why()} running a test guest under {accel}: {last[0]}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def verdict(qemu: Path, cache_file: Path) -> dict[str, object]:
    """The verdict holds until the kernel, the boot, /dev/kvm or the QEMU binary changes."""
    key = "|".join([platform.release(), _boot_id(), str(os.stat("/dev/kvm").st_ctime_ns), paths.fingerprint(qemu)])
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return dict(cached["run"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # missing or damaged: test again
        pass
    run = test_run(qemu)
    record = {"usable": run.usable, "seconds": run.seconds, "detail": run.detail}
    jsonfile.save_cache(cache_file, {"key": key, "run": record})
    return record
