"""Run `qemuprov bench`: the host makes the data files once, then one boot of the bench guest per arch (the
guest kit with fio and an init that runs the jobs) mounts each setting's device in turn, bounded in time; fio's
JSON comes back through the share. Each repetition reads files of its own, dropped from the host's page cache
before every setting, so no repetition reads what an earlier one left in a cache."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qemuprov.errors import UserError
from qemuprov.infra import paths
from qemuprov.infra.procs import stop_group
from qemuprov.infra.progress import Reporter
from qemuprov.knowledge import dax
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving import bench_plan, boot, fio, guestkit
from qemuprov.proving.bench_plan import WORKLOADS, Amounts, GuestPlan, Setting
from qemuprov.proving.bench_results import MAX_RESULT_BYTES, MEASURES, FioOutputError, SettingResult, parse_fio
from qemuprov.proving.boot import Console, Session
from qemuprov.proving.guestkit import Kit
from qemuprov.proving.verify import virtiofsd_argv

BOOT_ALLOWANCE = 120.0  # a TCG boot of the kit takes 5 to 20 s
JOB_ALLOWANCE = 180.0  # the longest the guest may stay silent: one repetition of every job
MAX_LINES = 10_000  # of QEMUPROV: lines from one boot; the bench init prints a few per repetition

# bench's part of the guest init: fio's jobs against each setting's mount in turn, the host answering "wait N"
BENCH_PART = r"""reps=$(arg reps)
for job in $(arg jobs | tr , ' '); do cat /bench/$job.fio; done > /tmp/jobs.fio
for kv in $(arg env | tr , ' '); do export "$kv"; done
export DIR=/mnt
dmesg | grep 'Cache len' | sed 's/^/QEMUPROV: dax-window /'
i=0
for m in $(arg mounts | tr , ' '); do
  fs=${m%%:*}; rest=${m#*:}; tag=${rest%%:*}; opts=${rest#*:}
  say "wait $i"
  read -r reply
  if [ "$fs" = 9p ]; then
    mount -t 9p -o trans=virtio,version=9p2000.L "$tag" /mnt 2>/tmp/mount.err
  elif [ "$opts" = - ]; then
    mount -t virtiofs "$tag" /mnt 2>/tmp/mount.err
  else
    mount -t virtiofs -o "$opts" "$tag" /mnt 2>/tmp/mount.err
  fi
  if [ $? -ne 0 ]; then
    say "mount-failed $i $(cat /tmp/mount.err)"
    dmesg | tail -n 5 | sed 's/^/QEMUPROV: dmesg /'
    i=$((i + 1))
    continue
  fi
  say "mounted $i $(grep ' /mnt ' /proc/mounts)"
  mkdir -p /mnt/results /mnt/md-0
  # One small unmeasured run first: TCG translates fio's and the kernel's paths once, not in repetition 1.
  SIZE=1048576 RANDIO=65536 WSIZE=1048576 FILES=10 REP=0 SETTING=$i fio --output=/dev/null /tmp/jobs.fio \
    >/dev/null 2>&1
  rm -rf /mnt/md-0
  rep=1
  while [ "$rep" -le "$reps" ]; do
    mkdir -p /mnt/md-$rep
    sync
    echo 3 > /proc/sys/vm/drop_caches
    say "start $i $rep"
    if REP=$rep SETTING=$i fio --output-format=json --output=/tmp/out.json /tmp/jobs.fio >/tmp/fio.err 2>&1; then
      cp /tmp/out.json /mnt/results/$i-$rep.json
      say "end $i $rep"
    else
      say "fio-failed $i $rep $(tail -n 3 /tmp/fio.err | tr '\n' ' ')"
    fi
    rm -rf /mnt/md-$rep
    rep=$((rep + 1))
  done
  sync
  umount /mnt
  i=$((i + 1))
done
"""


def bench_initrd(kit: Kit, fio_binary: Path, into: Path) -> Kit:
    """The kit's initramfs with a second archive after it: fio, the job files and the bench init, which
    replaces the kit's (the kernel unpacks both, the later file over the earlier)."""
    init = guestkit.init_script(BENCH_PART, guestkit.GENERIC.modules)
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
    for rep in range(repetitions + 1):  # 0: the warm-up's, 1 MiB
        for kind in kinds:
            with (data / f"{kind}-{rep}").open("wb") as out:
                for _ in range(amounts.size // len(block) if rep else 1):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
    os.chmod(data, 0o777)  # the guest writes its own files here, as root (9p: as this user)


def drop_host_cache(share: Path) -> str:
    """Drop the share's files from the host's page cache; as root, the whole page cache, dentries and inodes
    too. Returns how, for the report."""
    # The guest can change share/data: only regular files in a real directory are opened, never through a link,
    # never blocking (a FIFO), never a device (an open can arm a watchdog).
    try:
        data = os.open(share / "data", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        data = None
    if data is not None:
        try:
            with os.scandir(data) as entries:
                names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
            for name in names:
                with contextlib.suppress(OSError):
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=data)
                    try:
                        if stat.S_ISREG(os.fstat(fd).st_mode):
                            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        finally:
            os.close(data)
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

    @property
    def route(self) -> dax.Route | None:
        """The window the DAX settings get: the fork's cache-size, or a daemon's on QEMU's shared memory."""
        return dax.offered(self.qemu, self.daemon)


@dataclass
class GuestRun:
    """One guest run: the settings that got a device, by their index in the guest, and how the host's cache was
    dropped."""

    plan: GuestPlan
    results: dict[int, SettingResult]
    host_cache: str = ""


def _start_daemons(bench: Bench, results: list[SettingResult], guest: Session) -> dict[int, Path]:
    """A virtiofsd per virtio-fs setting; one that makes no socket fails its setting, not the rest."""
    sockets: dict[int, Path] = {}
    for number, result in enumerate(results):
        if result.setting.fs != "virtiofs":
            continue
        socket = guest.work / f"vfs{number}.sock"
        window = result.setting.window_text if result.setting.window and bench.route is dax.Route.SHMEM else None
        result.daemon = virtiofsd_argv(bench.daemon, socket, guest.share, result.setting.cache,
                                       result.setting.threads, window, tag_of(number, result.setting))
        daemon = guest.start_daemon(result.daemon, socket, f"virtiofsd{number}")
        if daemon.failure:
            result.error = f"virtiofsd made no socket ({'; '.join(daemon.last_words(1)) or 'no output'})"
        else:
            sockets[number] = socket
    return sockets


def run(bench: Bench, settings: list[Setting], share: Path, report: Reporter) -> tuple[list[SettingResult], str]:
    """Boot once with every setting's device; the guest mounts them in turn. Returns the results in the order of
    settings, and how the host's page cache was dropped."""
    results = [SettingResult(s, bench.accel) for s in settings]
    paths.remove_tree(share / "results")
    with boot.session("bench-run", share=share) as guest:
        sockets = _start_daemons(bench, results, guest)
        running = [n for n, r in enumerate(results) if r.setting.fs == "9p" or n in sockets]
        plan = GuestPlan(tuple(results[n].setting for n in running), bench.workloads, bench.repetitions,
                         bench.amounts, tuple(tag_of(n, results[n].setting) for n in running))
        run_ = GuestRun(plan, {i: results[n] for i, n in enumerate(running)})
        argv = bench_plan.qemu_argv(bench.qemu, bench.kit, plan,
                                    {i: sockets[n] for i, n in enumerate(running) if n in sockets}, share,
                                    bench.accel, bench.firmware, bench.route)
        for result in run_.results.values():
            result.qemu = argv
        vm = guest.start_qemu(argv)
        lines = _follow(vm, Console(guest.work / "qemu.log", MAX_LINES), run_, share, report, bench.qemu.arch)
        stop_group(vm)
        qemu_said = guest.qemu_said()
    for index, result in run_.results.items():
        _judge(result, index, lines, qemu_said, share / "results", bench.workloads, bench.repetitions)
        result.summarize()
    return results, run_.host_cache


def tag_of(number: int, setting: Setting) -> str:
    """A setting's tag, by its number among all settings (a virtiofsd on the shared memory route gives its own)."""
    return bench_plan.NINE_P_TAG if setting.fs == "9p" else f"qp{number}"


def _follow(vm: subprocess.Popen[bytes], console: Console, run_: GuestRun, share: Path, report: Reporter,
            arch: str) -> list[str]:
    """The guest's QEMUPROV: lines as they come: at each "wait N" the host drops its page cache and answers; a
    progress line per job. Until the guest powers off, or stays silent longer than a job may take."""
    plan = run_.plan
    total = plan.repetitions * len(measures_of(plan.workloads))
    deadline = time.monotonic() + BOOT_ALLOWANCE
    # However chatty the console, the whole boot is bounded: every setting's repetitions and its warm-up.
    last = deadline + JOB_ALLOWANCE * len(plan.settings) * (plan.repetitions + 1)
    done = 0
    started = time.monotonic()
    current: SettingResult | None = None
    while vm.poll() is None and time.monotonic() < min(deadline, last) and not console.full:
        for line in console.new_lines():
            deadline = time.monotonic() + JOB_ALLOWANCE
            words = [*line.split(), "", "", ""]
            if words[1] == "wait" and wait_number(words[2]) in run_.results and vm.stdin is not None:
                if current is not None:
                    report.progress(done, total)
                    current.seconds = round(time.monotonic() - started, 1)
                current, started, done = run_.results[int(words[2])], time.monotonic(), 0
                report.step(f"bench {arch}", f"{current.setting.what} "
                            f"({int(words[2]) + 1}/{len(plan.settings)}, {current.accel})")
                run_.host_cache = drop_host_cache(share)
                with contextlib.suppress(BrokenPipeError):  # QEMU gone: the loop ends at its next poll
                    vm.stdin.write(b"go\n")
                    vm.stdin.flush()
            elif words[1] == "job" and words[3] not in ("0", ""):  # repetition 0 is the warm-up
                report.progress(done, total)
                done += 1
        time.sleep(0.1)
    report.progress(done, total)
    if current is not None:
        current.seconds = round(time.monotonic() - started, 1)
    report.finish_progress()
    return console.lines


def _judge(result: SettingResult, index: int, lines: list[str], qemu_said: list[str], results: Path,
           workloads: tuple[str, ...], repetitions: int) -> None:
    """One setting's verdict from the guest's lines and the fio results it left in the share."""
    if result.error:
        return
    said: dict[str, str] = {}  # what the guest said of this setting: mounted, mount-failed, ... -> the rest
    for line in lines:
        words = line.split(" ", 3)
        if len(words) > 2 and words[2] == str(index):
            said.setdefault(words[1], words[3] if len(words) > 3 else "")
    if "mounted" not in said:
        result.error = (f"the guest could not mount the share: {said['mount-failed']}" if "mount-failed" in said
                        else f"QEMU: {qemu_said[-1]}" if qemu_said and not lines
                        else "the guest did not reach this setting in time")
        return
    result.mount = said["mounted"]
    if result.setting.window:
        length = f"Cache len: {result.setting.window:#x} "
        result.window_seen = next((ln.removeprefix("QEMUPROV: dax-window ").strip() for ln in lines
                                   if ln.startswith("QEMUPROV: dax-window") and length in ln + " "), "")
        if "dax" not in result.mount:
            result.error = f"asked for DAX, but the guest mounted without it ({result.mount})"
            return
    fio_failed = [ln.split(" ", 4)[-1] for ln in lines if ln.startswith(f"QEMUPROV: fio-failed {index} ")]
    for rep in range(1, repetitions + 1):
        try:
            measured = parse_fio(read_result(results, f"{index}-{rep}.json"), workloads)
        except (OSError, FioOutputError) as exc:
            result.error = f"repetition {rep}: {fio_failed[0] if fio_failed else exc}"
            return
        for measure, value in measured.items():
            result.runs.setdefault(measure, []).append(value)
    result.ok = True


def wait_number(word: str) -> int | None:
    """The setting number of a guest's "wait N" line; None for anything else ("²" is a digit to str.isdigit,
    and no number to int)."""
    return int(word) if word.isascii() and word.isdigit() and len(word) < 6 else None


def read_result(results: Path, name: str) -> str:
    """A result file the guest wrote into the share: a regular file in a real directory, never through a link it
    made to elsewhere on this host (through 9p, as root, it can make one; results itself may be one), read up to
    the cap."""
    folder = os.open(results, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FioOutputError("the result is not a regular file")
        data = handle.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        raise FioOutputError("fio's output is larger than any job's")
    return data.decode(errors="replace")


def measures_of(workloads: tuple[str, ...]) -> list[str]:
    return [m for m, (w, _, _) in MEASURES.items() if w in workloads]


def prepare(qemu: QemuProbe, kit: Kit, into: Path) -> Kit:
    return bench_initrd(kit, fio.ensure_fio(qemu.target), into)
