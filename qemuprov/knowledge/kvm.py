"""Is KVM usable here? Not only "does /dev/kvm exist": a bounded run of a tiny guest of the host's own arch
under KVM.

x86_64: the guest (assets/kvm-probe.S, assembled with `as --32` + `objcopy -O binary`) is a 64 KiB BIOS image
that goes from real mode to protected mode to long mode and then writes 0x21 to isa-debug-exit, so QEMU
exits with status 67. Hosts with a broken KVM (for example some nested setups) hang at the mode switch,
where a Linux guest would hang early in boot; a run that does not finish within the bound says so.
aarch64: four instructions as firmware on `virt` ask PSCI for SYSTEM_OFF through hvc, which KVM (or QEMU under
TCG) answers by stopping the machine: QEMU exits with status 0.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import platform
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from qemuprov.arches import AARCH64, X86_64, Arch
from qemuprov.infra import jsonfile, paths, procs

GUEST_IMAGE = base64.b64decode(
    "eNrtzTFOQkEQBuBBNKGQLJUxNj45gEHPYeEp3jlIXk9BSWVvISXY+DrptKSkssCEmEhlYnBBEmv770t25p9kd+frskyNkzpSUZfV"
    "rJG6dbk8ixStKCedGMwH9eC1fDw4HN+unqITcVVP4zji8/75aDs2i4iccm32dinXKraptUtF/nhRzYrUXUy291N3Pu1H1Om6HY08"
    "9vLedr7fz4uXw7z3NHbbblbji7f1+v079jabXEYvv32476OHOI+7/AoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAID/Wubzsf7zA49QRP4="
)
# movz w0, #0x0008; movk w0, #0x8400, lsl #16 (PSCI SYSTEM_OFF); hvc #0; b .
AARCH64_PROGRAM = (0x52800100, 0x72B08000, 0xD4000002, 0x14000000)
TIME_LIMIT = 4.0


def guest_image(arch: Arch = X86_64) -> bytes:
    if arch is AARCH64:
        return struct.pack(f"<{len(AARCH64_PROGRAM)}I", *AARCH64_PROGRAM).ljust(64 << 10, b"\0")
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


def test_run(qemu: Path, arch: Arch = X86_64, accel: str = "kvm", limit: float = TIME_LIMIT) -> KvmRun:
    """Run the test guest of arch with qemu (qemu-system-ARCH); `accel="tcg"` is the control that shows the
    guest itself is fine."""
    with tempfile.TemporaryDirectory(prefix="qemuprov-kvm-") as tmp:
        image = Path(tmp) / "probe.bin"
        image.write_bytes(guest_image(arch))
        argv: list[str | Path] = [qemu, "-accel", accel, *arch.kvm_argv, "-bios", image, "-nodefaults",
                                  "-display", "none"]
        start = time.monotonic()
        result = procs.run(argv, timeout=limit)
        seconds = time.monotonic() - start
    if result.returncode == arch.kvm_exit:
        return KvmRun(True, seconds, f"an {arch} test guest ran to its end under {accel} in {seconds:.2f} s")
    if result.timed_out:
        return KvmRun(False, seconds, f"an {arch} test guest hung under {accel}: it did not finish within "
                                      f"{limit:.0f} s (guests would hang early in boot)")
    last = result.stderr.strip().splitlines()[-1:] or [""]
    return KvmRun(False, seconds, f"QEMU {result.why()} running a test guest under {accel}: {last[0]}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def verdict(qemu: Path, cache_file: Path, arch: Arch = X86_64) -> dict[str, object]:
    """The verdict holds until the kernel, the boot, /dev/kvm or the QEMU binary changes."""
    key = "|".join([arch.name, platform.release(), _boot_id(), str(os.stat("/dev/kvm").st_ctime_ns),
                    paths.fingerprint(qemu)])
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return dict(cached["run"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # missing or damaged: test again
        pass
    run = test_run(qemu, arch)
    record = {"usable": run.usable, "seconds": run.seconds, "detail": run.detail}
    jsonfile.save_cache(cache_file, {"key": key, "run": record})
    return record
