"""Run `qemuprov bench`: the host makes the data files once, then each setting is one boot of the bench guest
(the guest kit with fio and an init that runs the jobs), bounded in time; fio's JSON comes back through the
share. Each repetition reads files of its own, dropped from the host's page cache before every boot, so no
repetition reads what an earlier one left in a cache."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qemuprov.errors import UserError
from qemuprov.infra import paths, procs
from qemuprov.infra.procs import stop_group
from qemuprov.infra.progress import Reporter
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving import bench_plan, fio, guestkit
from qemuprov.proving.bench_plan import NINE_P_TAG, WORKLOADS, Amounts, GuestPlan, Setting
from qemuprov.proving.bench_results import MEASURES, FioOutputError, SettingResult, parse_fio
from qemuprov.proving.guestkit import TAG, Kit

SOCKET_TIMEOUT = 10.0
BOOT_ALLOWANCE = 120.0  # a TCG boot of the kit takes 5 to 20 s
JOB_ALLOWANCE = 60.0  # per job and repetition, well above what the default amounts take under TCG

BENCH_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %(modules)s; do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
say() { echo "QEMUPROV: $*"; }
arg() { sed -n "s/.*qemuprov\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
fs=$(arg fs); opts=$(arg opts); reps=$(arg reps); jobs=$(arg jobs | tr , ' ')
for kv in $(arg env | tr , ' '); do export "$kv"; done
export DIR=/mnt
if [ "$fs" = 9p ]; then
  mount -t 9p -o trans=virtio,version=9p2000.L %(ninep)s /mnt 2>/tmp/mount.err
elif [ "$opts" = - ]; then
  mount -t virtiofs %(tag)s /mnt 2>/tmp/mount.err
else
  mount -t virtiofs -o "$opts" %(tag)s /mnt 2>/tmp/mount.err
fi
if [ $? -ne 0 ]; then
  say "mount-failed $(cat /tmp/mount.err)"
  dmesg | tail -n 8 | sed 's/^/QEMUPROV: dmesg /'
  say done
  poweroff -f
fi
say "mounted $(grep ' /mnt ' /proc/mounts)"
dmesg | grep 'Cache len' | sed 's/^/QEMUPROV: dax-window /'
mkdir -p /mnt/results
rep=1
while [ "$rep" -le "$reps" ]; do
  for job in $jobs; do
    mkdir -p /mnt/md-$rep
    sync
    echo 3 > /proc/sys/vm/drop_caches
    say "start $job $rep"
    if REP=$rep fio --output-format=json --output=/tmp/out.json /bench/$job.fio >/tmp/fio.err 2>&1; then
      cp /tmp/out.json /mnt/results/$job-$rep.json
      say "end $job $rep"
    else
      say "fio-failed $job $rep $(tail -n 3 /tmp/fio.err | tr '\n' ' ')"
    fi
    rm -rf /mnt/md-$rep
  done
  rep=$((rep + 1))
done
sync
umount /mnt
say done
poweroff -f
"""


def bench_initrd(kit: Kit, fio_binary: Path, into: Path) -> Kit:
    """The kit's initramfs with a second archive after it: fio, the job files and the bench init, which
    replaces the kit's (the kernel unpacks both, the later file over the earlier)."""
    init = BENCH_INIT % {"modules": " ".join(guestkit.GENERIC.modules), "tag": TAG, "ninep": NINE_P_TAG}
    entries = [("bench", 0o040755, b""), ("bin/fio", 0o100755, fio_binary.read_bytes()),
               ("init", 0o100755, init.encode()),
               *((f"bench/{w.name}.fio", 0o100644, w.job.encode()) for w in WORKLOADS)]
    initrd = into / "bench-initrd.cpio"
    with initrd.open("wb") as out:
        out.write(kit.initrd.read_bytes())
        out.write(guestkit.cpio_newc(entries))
    return Kit(kit.arch, kit.kernel, initrd, kit.fuse_dax)


def bench_dir() -> Path:
    """Where the share lives: on a disk (the cache dir, else /var/tmp), not tmpfs, whose pages are the file itself
    and cannot be dropped from the page cache."""
    for base in (paths.cache_dir(), Path("/var/tmp")):
        with contextlib.suppress(OSError):
            base.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix="qemuprov-bench-", dir=base))
    raise UserError("bench: neither the cache dir nor /var/tmp is writable", hint="set QEMUPROV_CACHE")


def make_data(share: Path, amounts: Amounts, repetitions: int, workloads: tuple[str, ...]) -> None:
    """One file per read job and repetition, of pseudo-random bytes (nothing along the way can compress them)."""
    data = share / "data"
    data.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1 << 20)
    kinds = [kind for kind, job in (("seq", "seqread"), ("rand", "randread")) if job in workloads]
    for rep in range(1, repetitions + 1):
        for kind in kinds:
            with (data / f"{kind}-{rep}").open("wb") as out:
                for _ in range(amounts.size // len(block)):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
    os.chmod(data, 0o777)  # the guest writes its own files here, as root (9p: as this user)


def drop_host_cache(share: Path) -> str:
    """Drop the share's files from the host's page cache; as root, the whole page cache, dentries and inodes
    too. Returns how, for the report."""
    for file in (share / "data").iterdir():
        with contextlib.suppress(OSError):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    if os.geteuid() == 0:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "dropped before each setting (drop_caches, as root)"
        except OSError:
            pass
    return "the data files dropped before each setting (posix_fadvise DONTNEED; not root, so dentries and inodes stay)"


@dataclass(frozen=True)
class Bench:
    qemu: QemuProbe
    daemon: VirtiofsdProbe
    kit: Kit
    accel: str
    firmware: list[str]
    workloads: tuple[str, ...]
    repetitions: int
    amounts: Amounts


def run_setting(bench: Bench, setting: Setting, share: Path, report: Reporter) -> SettingResult:
    result = SettingResult(setting, bench.accel)
    plan = GuestPlan(setting, bench.workloads, bench.repetitions, bench.amounts)
    started = time.monotonic()
    results = share / "results"
    shutil.rmtree(results, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="qemuprov-bench-run-") as tmp:
        work = Path(tmp)
        socket, serial = work / "vfs.sock", work / "serial.log"
        result.qemu = bench_plan.qemu_argv(bench.qemu, bench.kit, plan, socket, share, serial, bench.accel,
                                           bench.firmware)
        vfs: subprocess.Popen[bytes] | None = None
        vm: subprocess.Popen[bytes] | None = None
        with (work / "virtiofsd.log").open("wb") as vfs_log, (work / "qemu.log").open("wb") as qemu_log:
            try:
                if setting.fs == "virtiofs":
                    result.daemon = bench_plan.daemon_argv(bench.daemon, setting, socket, share)
                    vfs = procs.spawn(result.daemon, vfs_log)
                    deadline = time.monotonic() + SOCKET_TIMEOUT
                    while not socket.exists() and vfs.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.02)
                    if not socket.exists():
                        said = (work / "virtiofsd.log").read_text(errors="replace").strip().splitlines()[-1:]
                        result.error = f"virtiofsd made no socket ({'; '.join(said) or 'no output'})"
                        return result
                vm = procs.spawn(result.qemu, qemu_log, stdin_pipe=True)
                lines = _follow(vm, vfs, serial, plan, report)
            finally:
                stop_group(vm)
                stop_group(vfs)
        qemu_said = (work / "qemu.log").read_text(errors="replace").strip().splitlines()
        _judge(result, lines, qemu_said, vfs, results, bench.workloads, bench.repetitions)
    result.seconds = round(time.monotonic() - started, 1)
    result.summarize()
    return result


def _follow(vm: subprocess.Popen[bytes], vfs: subprocess.Popen[bytes] | None, serial: Path, plan: GuestPlan,
            report: Reporter) -> list[str]:
    """The guest's QEMUPROV: lines, read as they come (a progress line per job), until it powers off, the
    daemon dies, or the bound passes."""
    total = len(plan.workloads) * plan.repetitions
    deadline = time.monotonic() + BOOT_ALLOWANCE + JOB_ALLOWANCE * total
    seen = 0
    lines: list[str] = []
    while True:
        finished = vm.poll() is not None
        with contextlib.suppress(OSError):
            with serial.open("rb") as console:
                console.seek(seen)
                chunk = console.read(1 << 20)
            complete = chunk[:chunk.rfind(b"\n") + 1]
            seen += len(complete)
            for raw in complete.decode(errors="replace").splitlines():
                if raw.startswith("QEMUPROV: "):
                    line = raw.strip()
                    lines.append(line)
                    if line.startswith("QEMUPROV: end "):
                        report.progress(sum(ln.startswith("QEMUPROV: end ") for ln in lines), total)
        if finished or (vfs is not None and vfs.poll() is not None) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _judge(result: SettingResult, lines: list[str], qemu_said: list[str], vfs: subprocess.Popen[bytes] | None,
           results: Path, workloads: tuple[str, ...], repetitions: int) -> None:
    mounted = next((ln for ln in lines if ln.startswith("QEMUPROV: mounted")), None)
    failed = next((ln for ln in lines if ln.startswith("QEMUPROV: mount-failed")), None)
    if vfs is not None and vfs.returncode not in (None, 0):
        result.error = f"virtiofsd exited with status {vfs.returncode} during the run"
        return
    if mounted is None:
        result.error = (f"the guest could not mount the share: {failed.split('mount-failed', 1)[1].strip()}"
                        if failed else f"QEMU: {qemu_said[-1]}" if qemu_said and not lines
                        else "the guest did not finish in time")
        return
    result.mount = mounted.removeprefix("QEMUPROV: mounted").strip()
    result.window_seen = next((ln.removeprefix("QEMUPROV: dax-window ").strip() for ln in lines
                               if ln.startswith("QEMUPROV: dax-window")), "")
    if result.setting.window and "dax" not in result.mount:
        result.error = f"asked for DAX, but the guest mounted without it ({result.mount})"
        return
    fio_failed = [ln.removeprefix("QEMUPROV: fio-failed ") for ln in lines if ln.startswith("QEMUPROV: fio-failed")]
    for workload in workloads:
        for rep in range(1, repetitions + 1):
            file = results / f"{workload}-{rep}.json"
            try:
                if file.stat().st_size > 4 << 20:
                    raise FioOutputError("too large")
                measured = parse_fio(file.read_text(errors="replace"), workload)
            except (OSError, FioOutputError) as exc:
                why = fio_failed[0] if fio_failed else str(exc)
                result.error = f"{workload}, repetition {rep}: {why}"
                return
            for measure, value in measured.items():
                result.runs.setdefault(measure, []).append(value)
    result.ok = True


def measures_of(workloads: tuple[str, ...]) -> list[str]:
    return [m for m, (w, _, _) in MEASURES.items() if w in workloads]


def prepare(qemu: QemuProbe, kit: Kit, into: Path) -> Kit:
    return bench_initrd(kit, fio.ensure_fio(str(qemu.arch)), into)
