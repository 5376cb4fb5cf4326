"""The OSv contract on real builds: the QEMU 7.2 (host) and 5.2 (bullseye container) fixture builds accept the
command lines OSv's scripts/run.py runs (captured), `env --osv` prints options run.py takes, and `verify --osv`
boots both arches with run.py's lines."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.knowledge import dax, probe
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.proving import guestkit, verify
from tests.integration.conftest import Built, Env
from tests.osv_contract import dry_run, run_py_parser, run_py_words

CAPTURE_BY_ARCH = {"x86_64": "dry-run-plain-x86_64.txt", "aarch64": "dry-run-plain-aarch64.txt"}


@pytest.fixture
def shared_cache(qenv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process calls use the suite's cache, where the guest kits already are."""
    monkeypatch.setenv("QEMUPROV_CACHE", qenv.vars["QEMUPROV_CACHE"])


def _build(request: pytest.FixtureRequest, name: str) -> Built:
    return request.getfixturevalue({"7.2": "built", "5.2": "built_52"}[name])


@pytest.mark.parametrize("version", ["7.2", "5.2"])
def test_builds_have_user_networking_and_aio_native(request: pytest.FixtureRequest, version: str) -> None:
    built = _build(request, version)
    configure = [a["arg"] for a in built.manifest["plan"]["configure"]]  # type: ignore[index]
    assert any(a.startswith("--enable-slirp") for a in configure) and "--enable-linux-aio" in configure
    for entry in built.manifest["probe"]:  # type: ignore[attr-defined]
        if entry["kind"] == "qemu":
            assert "user" in entry["netdevs"] and entry["aio_native"] is True, entry


def _capture_launch(capture: str, qemu: QemuProbe, daemon: VirtiofsdProbe, kit: guestkit.Kit,
                    firmware: list[str], work: Path) -> verify.Launch:
    """run.py's captured lines, paths replaced, KVM switched to TCG, the VNC and gdb listeners left out, and the
    guest kit's kernel booted in place of OSv's."""
    daemon_argv, qemu_argv = dry_run(capture)
    socket, share = work / "vhostqemu", work / "share"
    disk = probe.direct_io_file(f"qemuprov-verify-capture-{os.getpid()}.img", 1 << 20)
    assert disk is not None
    replace = {"/tmp/vhostqemu": str(socket), "SHARE": str(share), "OSV/build/last/usr.img": str(disk),
               "OSV/build/last/disk.img": str(disk), ",bootindex=0": ""}
    words: list[str] = []
    rest = qemu_argv[1:]
    while rest:
        word, rest = rest[0], rest[1:]
        if word in ("-vnc", "-gdb", "-kernel", "-append") or word == "-cpu" and rest[0] == "host,+x2apic":
            rest = rest[1:]  # the option and its value
        elif word != "-enable-kvm":
            for old, new in replace.items():
                word = word.replace(old, new)
            words.append(word)
    append = verify.kernel_append(qemu, "myfs")
    argv = [qemu.path, *words, "-accel", "tcg", "-kernel", str(kit.kernel), "-initrd", str(kit.initrd),
            "-append", append]
    if qemu.arch == "x86_64":
        argv += ["-display", "none"]
    for directory in firmware:
        argv += ["-L", directory]
    daemon_words = [w.replace("/tmp/vhostqemu", str(socket)).replace("SHARE", str(share)) for w in daemon_argv[1:]]
    offer = dax.Offer(dax.Route.CACHE_SIZE if qemu.dax else None)
    return verify.Launch([daemon.path, *daemon_words], argv, socket, work / "qemu.log", offer, disk)


@pytest.mark.parametrize("version", ["7.2", "5.2"])
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_captured_run_py_line_boots(request: pytest.FixtureRequest, shared_cache: None, version: str,
                                    arch: str) -> None:
    built = _build(request, version)
    cache = probe.ProbeCache()
    qemu = probe.probe_binary(built.prefix / "bin" / f"qemu-system-{arch}", cache)
    daemon = probe.probe_binary(built.prefix / "bin" / "virtiofsd", cache)
    assert isinstance(qemu, QemuProbe) and isinstance(daemon, VirtiofsdProbe)
    kit = guestkit.ensure_kit(arches.get(arch))
    firmware = list(built.manifest["firmware"])  # type: ignore[call-overload]
    outcome = verify.run_launch(
        qemu, daemon, kit, lambda work: _capture_launch(CAPTURE_BY_ARCH[arch], qemu, daemon, kit, firmware, work),
        "tcg", "osv")
    assert outcome.ok, (outcome.message, outcome.log)
    assert "QEMUPROV: wrote" in outcome.log


def test_the_capture_line_really_is_run_py_with_its_kvm_and_listeners() -> None:
    # What the boot test above takes out of the captured line, so that nothing else is changed unseen.
    _, x86 = dry_run(CAPTURE_BY_ARCH["x86_64"])
    assert {"-vnc", "-gdb", "-enable-kvm"} <= set(x86) and "host,+x2apic" in x86
    assert "-netdev" in x86 and any("aio=native" in w for w in x86)


@pytest.mark.parametrize("version", ["7.2", "5.2"])
def test_env_osv_lines_are_run_py_options(qenv: Env, request: pytest.FixtureRequest, version: str) -> None:
    built = _build(request, version)
    result = qenv.run("env", str(built.prefix), "--osv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [ln for ln in lines if not ln.startswith("#")] == [f'export PATH={built.prefix / "bin"}:"$PATH"']
    runs = [ln.lstrip("# ").strip() for ln in lines if "./scripts/run.py" in ln]
    assert len(runs) == 2
    parser = run_py_parser()
    for line in runs:
        options = parser.parse_args(run_py_words(line))
        qemu = Path(options.qemu_path[0])
        assert qemu.is_file() and qemu.name == f"qemu-system-{options.arch or 'x86_64'}"
        assert options.virtio_fs_tag and options.virtio_fs_dir and options.mount_fs
        assert options.virtio_fs_dax is None  # no DAX window in these builds
        # Debian's trees have no firmware blobs: QEMU needs the distribution's, through --pass-args
        words = options.pass_args[0].split()
        assert words[0] == "-L" and all(Path(d).is_dir() for d in words[1::2])
        assert line.startswith('sudo env "PATH=$PATH" ')  # C virtiofsd: root, and sudo keeps PATH


def test_verify_osv_72_both_arches(qenv: Env, built: Built) -> None:
    result = qenv.run("verify", "fixture-7.2", "--osv", "--json", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = json.loads(result.stdout)
    assert sorted((o["arch"], o["ok"], o["mode"]) for o in outcomes) == [("aarch64", True, "osv"),
                                                                        ("x86_64", True, "osv")]


def test_build_verify_uses_the_recipe_osv_mode_for_52(qenv: Env, built_52: Built) -> None:
    result = qenv.run("build", "fixture-5.2", "--runner", "docker", "--verify", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OSv's run.py command lines" in result.stdout
    recorded = json.loads((built_52.prefix / "qemuprov.json").read_text())["verify"]
    assert sorted((o["arch"], o["ok"], o["mode"]) for o in recorded) == [("aarch64", True, "osv"),
                                                                        ("x86_64", True, "osv")]


def test_guest_kits_say_whether_their_kernel_can_use_dax(shared_cache: None) -> None:
    # The pinned kit is Debian 13's cloud kernel on both arches, which has FUSE_DAX (Debian 12's arm64 did not):
    # a DAX build is tried with -o dax on aarch64 too.
    for arch in ("x86_64", "aarch64"):
        kit = guestkit.ensure_kit(arches.get(arch))
        assert kit.fuse_dax is True and "deb13" in kit.record()["kernel"], kit.record()


def test_host_build_without_libslirp_says_so_before_configure(qemu_env_without_slirp: dict[str, str], qenv: Env,
                                                              built: Built) -> None:
    before = (built.prefix / "qemuprov.json").read_text()
    started = time.monotonic()
    result = qenv.run("build", "fixture-7.2", "--runner", "host", "--force", env=qemu_env_without_slirp)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "==> configure" not in result.stderr and time.monotonic() - started < 60
    assert "this host lacks libslirp-dev (-netdev user" in result.stderr
    assert "apt-get install libslirp-dev" in result.stderr and "Traceback" not in result.stderr
    assert (built.prefix / "qemuprov.json").read_text() == before


@pytest.fixture
def qemu_env_without_slirp(qenv: Env, tmp_path: Path) -> dict[str, str]:
    """A PATH whose pkg-config knows no libslirp (as on a host without libslirp-dev), all else as it is."""
    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["sh", "-c", "command -v pkg-config"], capture_output=True, text=True).stdout.strip()
    (shim / "pkg-config").write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = slirp ] && exit 1; done\n'
                                     f"exec {shlex.quote(real)} \"$@\"\n")
    (shim / "pkg-config").chmod(0o755)
    return {**qenv.vars, "PATH": f"{shim}:{qenv.vars['PATH']}"}
