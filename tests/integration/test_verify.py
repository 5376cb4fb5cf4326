"""verify: real guest boots over virtio-fs with Debian's QEMU 7.2 and its C virtiofsd, for both arches."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemuprov import arches
from tests.integration.conftest import Env

DEBIAN_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def test_verify_both_arches_round_trip(qenv: Env) -> None:
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--qemu", "/usr/bin/qemu-system-aarch64",
                      "--virtiofsd", DEBIAN_VIRTIOFSD, "--json", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {o["arch"]: o for o in json.loads(result.stdout)}
    assert sorted(outcomes) == ["aarch64", "x86_64"]
    for outcome in outcomes.values():
        assert outcome["ok"] is True
        assert "QEMUPROV: mounted" in outcome["log"] and "QEMUPROV: wrote" in outcome["log"]
        assert outcome["dax"] is None  # Debian's QEMU has no DAX window to try
        kit = outcome["kit"]  # which guest booted: two machines' PASSes can be compared
        kernel = Path(qenv.vars["QEMUPROV_CACHE"]).glob(f"guest/{outcome['arch']}-*/vmlinuz")
        assert kit["kernel"] and kit["kernel_sha256"] in {hashlib.sha256(k.read_bytes()).hexdigest() for k in kernel}
        assert len(kit["initrd_sha256"]) == 64


def test_verify_fails_for_a_qemu_without_the_device(qenv: Env) -> None:
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64-microvm", "--virtiofsd", DEBIAN_VIRTIOFSD)
    assert result.returncode == 1
    assert "FAIL (qemu)" in result.stdout and "has no vhost-user-fs-pci" in result.stdout


def test_verify_names_a_missing_or_wrong_virtiofsd(qenv: Env) -> None:
    missing = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", "/nonexistent/virtiofsd")
    assert missing.returncode == 2 and "virtiofsd /nonexistent/virtiofsd: cannot read" in missing.stderr
    wrong = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", "/bin/true")
    assert wrong.returncode == 2 and "neither a QEMU system emulator nor a virtiofsd" in wrong.stderr


def test_verify_explains_a_seccomp_kill(qenv: Env, tmp_path: Path) -> None:
    # A daemon that answers --help/--version like the real one but dies of SIGSYS when it serves, as a
    # pre-7.0 C virtiofsd does on glibc 2.35+ (the real case is built and verified by the QEMU 5.2 work).
    fake = tmp_path / "virtiofsd"
    fake.write_text(f'#!/bin/sh\ncase "$1" in --help|--version) exec {DEBIAN_VIRTIOFSD} "$1";; esac\n'
                    "kill -SYS $$\n")
    fake.chmod(0o755)
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", str(fake))
    assert result.returncode == 1
    assert "FAIL (virtiofsd)" in result.stdout
    assert "SIGSYS" in result.stdout and "GLIBC_TUNABLES=glibc.pthread.rseq=0" in result.stdout


def test_verify_says_when_the_share_is_read_only(qenv: Env, tmp_path: Path) -> None:
    # A real read-only share: the daemon serves its directory through a read-only bind mount of its own.
    wrapper = tmp_path / "virtiofsd"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --help|--version) exec {DEBIAN_VIRTIOFSD} "$1";; esac\n'
        'for a in "$@"; do case "$a" in source=*) src=${a#source=};; esac; done\n'
        'exec unshare -m sh -c \'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && '
        f'exec {DEBIAN_VIRTIOFSD} "$@"\' "$src" "$@"\n')
    wrapper.chmod(0o755)
    result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", str(wrapper), timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL (virtiofsd)" in result.stdout
    assert "could not write back (" in result.stdout and "Read-only file system" in result.stdout
    assert "the share is read-only" in result.stdout


def test_guest_kit_comes_over_http_to_a_host_with_no_apt_and_no_engine(qenv: Env, tmp_path: Path) -> None:
    """No apt at all (its configuration hidden in a mount namespace, apt-get and dpkg off PATH) and no container
    engine: the pinned packages come over HTTP from the mirror a setting names, checked and unpacked in Python."""
    from qemuprov.infra import debian

    mirror = debian.host_mirror()
    assert mirror, "the suite's machine has a Debian mirror in its apt sources"
    (tmp_path / "empty-bin").mkdir()
    env = {**qenv.vars, "PATH": str(tmp_path / "empty-bin"), "QEMUPROV_CACHE": str(tmp_path / "cache"),
           "DOCKER_HOST": "unix:///nonexistent/docker.sock", "QEMUPROV_DEBIAN_MIRROR": mirror}
    argv = ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
            '/bin/mount -t tmpfs none /etc/apt && exec "$@"', "sh", *qenv.argv("verify", "--qemu",
            "/usr/bin/qemu-system-x86_64", "--virtiofsd", DEBIAN_VIRTIOFSD, "--accel", "tcg", "--json")]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)[0]["ok"] is True
    (kit,) = (tmp_path / "cache" / "guest").glob("x86_64-*/")
    assert (kit / "kernel-version").read_text().strip() == "6.12.117+deb13-cloud-amd64"
    assert sorted(json.loads((kit / "kit.json").read_text())) == ["initrd.cpio", "vmlinuz"]


class _Archive(http.server.SimpleHTTPRequestHandler):
    """A Debian archive laid out on disk (a mirror, or the snapshot archive's /archive/debian/STAMP/): serves
    what is there, records every path asked for; `lie` serves the pinned size of the wrong bytes instead."""

    asked: list[str] = []
    lie = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).asked.append(self.path)
        local = Path(self.translate_path(self.path))
        if type(self).lie and local.is_file():
            body = b"\0" * local.stat().st_size
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(root: Path, lie: bool = False) -> Iterator[tuple[str, list[str]]]:
    handler = type("Archive", (_Archive,), {"asked": [], "lie": lie})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.asked
    finally:
        server.shutdown()
        server.server_close()


def test_a_pin_the_mirror_no_longer_carries_comes_from_the_snapshot_archive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror has moved on (404 for the pinned version), or lies (the wrong bytes at the pinned size): the kit
    comes from a server laid out like Debian's snapshot archive, checked against the same pins. A kit cut short
    afterwards is made again, not booted."""
    from qemuprov.infra import debian
    from qemuprov.proving import guestkit

    snapshot = tmp_path / "snapshot"
    pool = snapshot / "archive" / "debian" / guestkit.SNAPSHOT_STAMP
    monkeypatch.setenv("QEMUPROV_CACHE", str(tmp_path / "real"))
    for pin in guestkit.PINS["amd64"]:  # the real packages, from the real mirror, once
        target = pool / pin.pool_path("amd64")
        target.parent.mkdir(parents=True)
        debian.fetch(pin, "amd64", guestkit.SNAPSHOT_STAMP, target.parent)
    moved_on = tmp_path / "mirror"
    moved_on.mkdir()
    for lying in (False, True):
        mirror_root = pool if lying else moved_on
        with _serving(mirror_root, lie=lying) as (mirror, mirror_asked), _serving(snapshot) as (archive, asked):
            monkeypatch.setenv("QEMUPROV_DEBIAN_MIRROR", mirror)
            monkeypatch.setenv("QEMUPROV_DEBIAN_SNAPSHOT", archive)
            monkeypatch.setenv("QEMUPROV_CACHE", str(tmp_path / f"cache-{lying}"))
            kit = guestkit.ensure_kit(arches.X86_64)
        assert kit.record()["kernel"] == "6.12.117+deb13-cloud-amd64" and kit.fuse_dax is True
        assert len(mirror_asked) == 2 and len(asked) == 2, (mirror_asked, asked)
        assert all(path.startswith(f"/archive/debian/{guestkit.SNAPSHOT_STAMP}/pool/main/") for path in asked)
    kit.initrd.write_bytes(kit.initrd.read_bytes()[:1000])  # cut short, as a full disk would leave it
    with _serving(snapshot) as (archive, asked):
        monkeypatch.setenv("QEMUPROV_DEBIAN_SNAPSHOT", archive)
        monkeypatch.setenv("QEMUPROV_DEBIAN_MIRROR", archive + "/nothing")
        again = guestkit.ensure_kit(arches.X86_64)
    assert again.initrd.stat().st_size > 1_000_000 and len(asked) == 4  # fetched and made again


def test_no_pin_anywhere_is_one_line_naming_each_place(qenv: Env, tmp_path: Path) -> None:
    with _serving(tmp_path) as (empty, _):
        env = {**qenv.vars, "QEMUPROV_CACHE": str(tmp_path / "cache"), "QEMUPROV_DEBIAN_MIRROR": empty,
               "QEMUPROV_DEBIAN_SNAPSHOT": empty}
        result = qenv.run("verify", "--qemu", "/usr/bin/qemu-system-x86_64", "--virtiofsd", DEBIAN_VIRTIOFSD,
                          "--accel", "tcg", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("qemuprov: error: ")]
    assert len(errors) == 1 and "could not fetch linux-image-6.12.117+deb13-cloud-amd64" in errors[0], result.stderr
    assert errors[0].count("answered 404") == 2 and "QEMUPROV_DEBIAN_MIRROR" in result.stderr
    assert not list((tmp_path / "cache" / "guest").glob("x86_64-*"))  # nothing half made


def test_no_stray_processes_or_sockets_after_the_runs(qenv: Env) -> None:
    import subprocess
    import tempfile

    leftovers = list(Path(tempfile.gettempdir()).glob("qemuprov-verify-*"))
    assert leftovers == [], f"verify left {leftovers}"
    ps = subprocess.run(["pgrep", "-af", "qemuprov-verify-"], capture_output=True, text=True)
    assert ps.stdout.strip() == "", f"processes outlived verify:\n{ps.stdout}"
