"""What a guest's console lines say: did the share mount, did the file go both ways, and what DAX did. The
guest kit's init speaks the QEMUPROV: lines read here, whichever way the guest was started (our own command
lines, OSv's, libvirt's)."""

from __future__ import annotations

import os
from pathlib import Path

from qemuprov.infra import safefile
from qemuprov.knowledge import dax
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving.guestkit import TAG, Kit
from qemuprov.records.manifest import BootResult, VerifyMode

DAX_WINDOW_MB = 64  # the window verify asks for: enough to map the test file, small enough for any guest


def kernel_append(qemu: QemuProbe, tag: str = TAG, window: bool | None = None) -> str:
    """The kit's command line; window: a DAX window is offered (default: the fork's, where QEMU has it), so the
    guest tries it."""
    console = qemu.target.console
    offered = qemu.dax if window is None else window
    return f"console={console} panic=-1 quiet qemuprov.tag={tag}" + (" dax" if offered else "")


GUEST_FILE_CAP = 4096  # the guest writes back a 16-character token


def judge_round_trip(outcome: BootResult, lines: list[str], share: Path, token: str, qemu: QemuProbe,
                     kit: Kit, waited: float, running: bool = True, daemon: VirtiofsdProbe | None = None,
                     offer: dax.Offer | None = None, changed_to: str | None = None) -> None:
    """The verdict of a guest that ran: mounted, read the host's token, wrote it back; then the DAX verdict.
    waited: the seconds the guest had; running: whether it was still running then (else it stopped early);
    changed_to: what the host wrote into the probe file while the guest had it mapped."""
    if "QEMUPROV: mounted" not in lines:
        outcome.failure = "guest"
        if lines:
            outcome.message = "the guest could not mount the share"
        elif running:
            outcome.message = f"the guest did not answer within {waited:.0f} s"
        else:
            outcome.message = (f"the guest stopped after {waited:.1f} s without a word on its console: its kernel "
                               "or initramfs did not start (a damaged guest kit is made again on the next run)")
        return
    got = read_guest_file(share / "from-guest.txt")
    write_failure = next((ln.split("write-failed", 1)[1].strip() for ln in lines
                          if ln.startswith("QEMUPROV: write-failed")), None)
    if write_failure is not None:
        outcome.failure, outcome.message = "virtiofsd", _write_failed(write_failure)
    elif f"QEMUPROV: read {token}" not in lines or got != token:
        outcome.failure, outcome.message = "guest", f"file round trip failed (guest wrote {got!r})"
    else:
        outcome.ok = True
        said: dict[str, str] = {VerifyMode.OSV: " (OSv's run.py command lines)",
                                VerifyMode.LIBVIRT: " (started by libvirt)"}
        outcome.message = "the guest read the host's file and wrote one back" + said.get(outcome.mode, "")
    offer = offer or dax.Offer(dax.offered(qemu, daemon))
    outcome.dax, outcome.dax_status, outcome.dax_reason = dax_verdict(qemu, lines, kit, daemon, offer)
    outcome.dax_route = str(offer.route) if offer.route else None
    after = next((ln.removeprefix("QEMUPROV: dax-after-change").strip() for ln in lines
                  if ln.startswith("QEMUPROV: dax-after-change")), None)
    if outcome.dax and changed_to is not None and after is not None:
        outcome.dax_sees_host_changes = after == changed_to


CONSOLE_CAP = 8 << 20  # a guest's console may say anything, for as long as it runs: its last 8 MiB are read


def tail_text(path: Path, cap: int = CONSOLE_CAP) -> str:
    """The last cap bytes of a log a guest can fill (its console, QEMU's output); "" where there is none."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - cap))
            return handle.read(cap).decode(errors="replace")
    except FileNotFoundError:
        return ""


def console_lines(path: Path) -> list[str]:
    """The QEMUPROV: lines of the console log QEMU wrote (its last CONSOLE_CAP bytes)."""
    return [ln.strip() for ln in tail_text(path).splitlines() if ln.startswith("QEMUPROV:")]


def read_guest_file(path: Path) -> str | None:
    """What the guest wrote back, as the guest left it: a regular file of at most a few KB, read without following
    a link it made (the host side may be root) or blocking on a FIFO; None where it left nothing readable."""
    try:
        return safefile.read_bytes(path, GUEST_FILE_CAP, follow=False).decode(errors="replace").strip()
    except OSError as exc:
        return None if isinstance(exc, FileNotFoundError) else f"<{exc.strerror}>"


def _write_failed(error: str) -> str:
    message = f"the guest mounted the share and read the host's file but could not write back ({error or '?'})"
    if "read-only" in error.lower():
        message += ("; the share is read-only: virtiofsd was started with --readonly (or -o readonly) or serves "
                    "a read-only directory or mount; verify needs a writable share")
    return message


def dax_verdict(qemu: QemuProbe, lines: list[str], kit: Kit, daemon: VirtiofsdProbe | None = None,
                offer: dax.Offer | None = None) -> tuple[bool | None, str, str]:
    """(dax, status, reason) from the guest's own report. Three ways to miss: the QEMU has no window, the guest
    kernel cannot use one (it never reports the window), the daemon cannot map into it (mount or read fails, or
    the pair's route needs a daemon that offers a window, which this one does not)."""
    pair = dax.pairing(qemu, daemon) if daemon is not None else None
    offer = offer or dax.Offer(dax.offered(qemu, daemon))
    if offer.route is None and offer.why_not:
        return None, "-", offer.why_not
    if offer.route is None:
        if pair is not None and pair.side == "virtiofsd":
            return False, "no", pair.missing
        return None, "-", pair.missing if pair is not None else "this QEMU has no DAX window (cache-size)"
    window = any(ln.startswith("QEMUPROV: dax-window") for ln in lines)
    mounted = any("dax=always" in ln for ln in lines if ln.startswith("QEMUPROV: dax-mount "))
    read = next((ln.removeprefix("QEMUPROV: dax-read ").strip() for ln in lines
                 if ln.startswith("QEMUPROV: dax-read ")), None)
    token = next((ln.removeprefix("QEMUPROV: read ").strip() for ln in lines if ln.startswith("QEMUPROV: read ")),
                 None)
    if window and mounted and read is not None and read == token:
        return True, "yes", ""
    if not window:
        config = {True: "", False: " (its config has no CONFIG_FUSE_DAX, which needs ZONE_DEVICE)",
                  None: ""}[kit.fuse_dax]
        return None, "not tested", (f"{kit.description} cannot use DAX: it reported no DAX window{config}; "
                                    "boot a kernel built with CONFIG_FUSE_DAX with --kernel/--initrd")
    failed = next((ln for ln in lines if ln.startswith(("QEMUPROV: dax-mount-failed", "QEMUPROV: dmesg"))), "")
    what = f"reading through it failed ({read})" if mounted else f"mount -o dax failed ({failed.strip()})"
    why = pair.missing if pair is not None and not pair.ok else (
        "the virtiofsd does not serve DAX mappings (FUSE_SETUPMAPPING); pair the virtio-fs-dev QEMU with its own C "
        "virtiofsd")
    return False, "no", f"the guest found the DAX window but {what}: {why}"
