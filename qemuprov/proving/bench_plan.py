"""What `qemuprov bench` measures: the workloads (fio jobs of a fixed amount of work), the settings compared
(the daemon's cache mode and thread pool in its own spelling, DAX windows, 9p), and the command lines of one
setting. Pure: the runner in bench.py boots them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qemuprov import arches
from qemuprov.errors import UserError
from qemuprov.knowledge import dax
from qemuprov.knowledge.osv import dax_size_bytes
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving.guestkit import Kit
from qemuprov.proving.verify import guest_argv, share_device
from qemuprov.recipe import VirtiofsdFlavour

NINE_P_DEVICE = "virtio-9p-pci"
NINE_P_TAG = "qemuprov9p"
MIB = 1 << 20


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    unit: str  # what decides: MB/s for streams, IOPS for 4 KiB reads and metadata
    job: str  # a fio job file; ${DIR}, ${REP} and the sizes come from the guest's environment


_SMALL_FILES = "directory=${DIR}/md-${REP}\nnrfiles=${FILES}\nfilesize=4k\nopenfiles=1\nfilename_format=f.$filenum\n"


def _job(name: str, options: str) -> str:
    """One fio job, after the one before it (stonewall), saying on the console when it starts: the host's
    progress per job."""
    return (f"[{name}]\nstonewall\nexec_prerun=/bin/sh -c 'echo QEMUPROV: job ${{SETTING}} ${{REP}} {name} "
            f">/dev/console'\n{options}")


# One fio run per repetition runs the chosen workloads one after the other; each reads or writes files no other
# job touched, so no job finds another's pages in a cache.
WORKLOADS = (
    Workload("seqread", "sequential read (1 MiB blocks)", "MB/s",
             _job("seqread", "filename=${DIR}/data/seq-${REP}\nrw=read\nbs=1M\nsize=${SIZE}\nioengine=psync\n")),
    Workload("randread", "random read (4 KiB blocks)", "IOPS",
             _job("randread", "filename=${DIR}/data/rand-${REP}\nrw=randread\nbs=4k\nsize=${SIZE}\n"
                              "io_size=${RANDIO}\nioengine=psync\n")),
    Workload("seqwrite", "sequential write (1 MiB blocks, fsync at the end)", "MB/s",
             _job("seqwrite", "filename=${DIR}/data/write-${REP}\nrw=write\nbs=1M\nsize=${WSIZE}\nend_fsync=1\n"
                              "unlink=1\nioengine=psync\n")),
    Workload("metadata", "create, stat and unlink of small files", "IOPS",
             _job("create", f"ioengine=filecreate\nfallocate=none\n{_SMALL_FILES}")
             + _job("stat", f"ioengine=filestat\n{_SMALL_FILES}")
             + _job("unlink", f"ioengine=filedelete\n{_SMALL_FILES}")),
)
WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS)


@dataclass(frozen=True)
class Amounts:
    """The fixed amount of work of each job. Under TCG (an emulated CPU, aarch64's four times slower than
    x86_64's here) small enough that the default set takes minutes; under KVM large enough to leave the caches'
    and the window's reach."""

    size: int  # each read file: the data set a DAX window must hold
    random_io: int  # random 4 KiB reads over it
    write: int
    files: int

    @classmethod
    def for_accel(cls, accel: str) -> Amounts:
        if accel == "kvm":
            return cls(size=256 * MIB, random_io=32 * MIB, write=128 * MIB, files=1000)
        return cls(size=16 * MIB, random_io=2 * MIB, write=8 * MIB, files=100)

    def guest_env(self) -> str:
        return f"SIZE={self.size} RANDIO={self.random_io} WSIZE={self.write} FILES={self.files}"

    def describe(self) -> str:
        return (f"sequential reads of {self.size >> 20} MiB, {self.random_io >> 12} random 4 KiB reads over "
                f"{self.size >> 20} MiB, a {self.write >> 20} MiB write, {self.files} files created, stat'ed and "
                "unlinked")


@dataclass(frozen=True)
class Setting:
    """One boot: how virtiofsd is started and how QEMU offers the share (or 9p instead)."""

    name: str
    what: str  # for the table: the setting in the daemon's own words
    fs: str = "virtiofs"  # or 9p
    cache: str = "auto"  # the daemon's own word
    threads: int | None = None  # --thread-pool-size; None: the daemon's default
    window: int | None = None  # DAX cache-size in bytes
    baseline: bool = False

    @property
    def window_text(self) -> str:
        return _size_text(self.window) if self.window else ""


def _size_text(size: int) -> str:
    return f"{size >> 30}G" if size >= 1 << 30 and size % (1 << 30) == 0 else f"{size >> 20}M"


CACHE_WORDS = {VirtiofsdFlavour.C: ("auto", "none", "always"), VirtiofsdFlavour.RUST: ("auto", "never", "always")}


def asked_windows(qemu: QemuProbe, asked: list[str], daemon: VirtiofsdProbe | None = None) -> list[int]:
    """--window's sizes, checked: powers of two of 2M or more, and only for a pair that offers a window."""
    if asked and dax.offered(qemu, daemon) is None:
        pair = dax.pairing(qemu, daemon) if daemon is not None else None
        raise UserError(f"--window: {pair.missing if pair else f'{qemu.path} has no DAX window'}",
                        hint="leave --window out to compare the rest")
    sizes = [dax_size_bytes(text, "--window") for text in asked]
    if any(size < 2 * MIB for size in sizes):
        raise UserError("--window: a DAX window holds 2 MiB ranges: give 2M or more")
    return sorted(set(sizes))


def windows_for(qemu: QemuProbe, sizes: list[int], amounts: Amounts,
                daemon: VirtiofsdProbe | None = None) -> list[int]:
    """The DAX windows to compare: the ones asked for, else one smaller than the data set and one well above it;
    none where the pair offers no window."""
    if dax.offered(qemu, daemon) is None:
        return []
    return sizes or [amounts.size // 2, amounts.size * 4]


def settings_for(qemu: QemuProbe, daemon: VirtiofsdProbe, windows: list[int], thread_default: int | None
                 ) -> list[Setting]:
    flavour = daemon.flavour or VirtiofsdFlavour.C
    auto, never, always = CACHE_WORDS[flavour]
    default_pool = "" if thread_default is None else f" ({thread_default}{': no pool' if thread_default == 0 else ''})"
    settings = [Setting("virtio-fs", f"virtio-fs, cache={auto}, default thread pool{default_pool}", cache=auto,
                        baseline=True),
                Setting(f"cache={never}", f"virtio-fs, cache={never}", cache=never),
                Setting(f"cache={always}", f"virtio-fs, cache={always}", cache=always)]
    if thread_default != 1:
        settings.append(Setting("1 thread", f"virtio-fs, cache={auto}, --thread-pool-size 1", cache=auto,
                                threads=1))
    settings += [Setting(f"DAX {_size_text(w)}", f"virtio-fs, cache={auto}, DAX window {_size_text(w)}",
                         cache=auto, window=w) for w in windows]
    if qemu.devices.get(NINE_P_DEVICE):
        settings.append(Setting("9p", "9p (virtio-9p-pci, security_model=none; the guest's defaults)", fs="9p"))
    return settings


@dataclass(frozen=True)
class GuestPlan:
    """One boot for all the settings: a device per setting (a virtio-fs device, each with its own virtiofsd, or
    the 9p device), mounted one after the other by the bench init, which reads this from the kernel line."""

    settings: tuple[Setting, ...]
    workloads: tuple[str, ...]
    repetitions: int
    amounts: Amounts
    tags: tuple[str, ...] = ()  # each setting's tag, where the caller named them (a daemon gives its own)

    def tag(self, index: int) -> str:
        if self.tags:
            return self.tags[index]
        return NINE_P_TAG if self.settings[index].fs == "9p" else f"qp{index}"

    def kernel_append(self, arch: arches.Arch) -> str:
        console = arch.console
        mounts = ",".join(f"{s.fs}:{self.tag(i)}:{'dax' if s.window else '-'}" for i, s in enumerate(self.settings))
        return (f"console={console} panic=-1 quiet qemuprov.mounts={mounts} "
                f"qemuprov.jobs={','.join(self.workloads)} qemuprov.reps={self.repetitions} "
                f"qemuprov.env={self.amounts.guest_env().replace(' ', ',')}")


def qemu_argv(qemu: QemuProbe, kit: Kit, plan: GuestPlan, sockets: dict[int, Path], share: Path, accel: str,
              firmware: list[str], route: dax.Route | None = None) -> list[str]:
    """The console on QEMU's stdio: the host answers the guest's "wait" on it, once its page cache is dropped."""
    devices = []
    for index, setting in enumerate(plan.settings):
        if setting.fs == "9p":
            devices += ["-fsdev", f"local,id=fs9p,path={share},security_model=none",
                        "-device", f"{NINE_P_DEVICE},fsdev=fs9p,mount_tag={NINE_P_TAG}"]
        else:
            device = share_device(route if setting.window else None, f"vfs{index}", setting.window_text,
                                  plan.tag(index))
            devices += ["-chardev", f"socket,id=vfs{index},path={sockets[index]}", "-device", device]
    return guest_argv(qemu, kit, plan.kernel_append(qemu.target), "stdio", accel, firmware, devices)
