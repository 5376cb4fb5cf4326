"""The OSv contract: run.py's captured option list and command lines against what qemuprov prints and runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.building.expectations import check_expectations
from qemuprov.errors import UserError
from qemuprov.knowledge import osv, plan
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.knowledge.probe_parse import aio_native_from_reply, netdevs_from_help
from qemuprov.proving.guestkit import Kit, fuse_dax_from_config
from qemuprov.proving.verdict import dax_verdict
from qemuprov.recipe import RecipeBook, default_layers
from tests.conftest import CAPTURES
from tests.manifests import manifest_json
from tests.osv_contract import Refused, dry_run, run_py_parser, run_py_words
from tests.unit.test_plan_install import make_tree

SHIPPED = RecipeBook(default_layers())
DAX_CAPTURES = CAPTURES / "qemu-6.1-dev-dax"
RUN_PY_OFF_LIMITS = ("-vnc", "-gdb")  # listeners run.py adds that verify leaves out


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in options:
            skip = True
        else:
            out.append(word)
    return out


@pytest.mark.parametrize(("capture", "arch", "dax"), [("dry-run-dax-x86_64.txt", "x86_64", "64M"),
                                                     ("dry-run-plain-x86_64.txt", "x86_64", None),
                                                     ("dry-run-plain-aarch64.txt", "aarch64", None)])
def test_verify_osv_line_is_run_py_line(capture: str, arch: str, dax: str | None) -> None:
    daemon, qemu = dry_run(capture)
    ours = osv.qemu_argv(qemu[0], arch, Path("DISK"), Path("/tmp/vhostqemu"), "myfs", dax, "kvm")
    theirs = _without(qemu, (*RUN_PY_OFF_LIMITS, "-kernel", "-append"))
    theirs = [w.replace("OSV/build/last/usr.img", "DISK").replace("OSV/build/last/disk.img", "DISK") for w in theirs]
    assert ours == theirs  # the aarch64 line was captured on an x86_64 host: TCG, so no KVM options in it
    assert osv.virtiofsd_argv("virtiofsd", Path("/tmp/vhostqemu"), Path("SHARE")) == daemon


def test_verify_osv_line_without_kvm_leaves_out_the_host_cpu() -> None:
    argv = osv.qemu_argv("q", "x86_64", Path("d"), Path("s"), "myfs", None, "tcg")
    assert "-enable-kvm" not in argv and "host,+x2apic" not in argv
    assert "isa-serial,chardev=stdio" in argv


def test_captured_parser_refuses_what_run_py_refused() -> None:
    parser = run_py_parser()
    with pytest.raises(Refused, match="expected one argument"):
        parser.parse_args(["--virtio-fs-dax"])
    with pytest.raises(Refused):
        parser.parse_args(["--no-such-option"])


@pytest.mark.parametrize("text", ["64M", "1024M", "1G", "2g", "4096"])
def test_dax_sizes(text: str) -> None:
    assert osv.dax_size_bytes(text) > 0


@pytest.mark.parametrize(("text", "why"), [("", "not a size"), ("12X", "not a size"), ("-64M", "not a size"),
                                           ("100M", "not a power of two"), ("0", "not a size")])
def test_bad_dax_sizes(text: str, why: str) -> None:
    with pytest.raises(UserError, match=why):
        osv.dax_size_bytes(text)


def _install(tmp_path: Path, manifest_from: str, firmware: list[str], flavour: str = "c") -> Path:
    """A prefix with the manifest a DAX build records (the fork cannot be fetched here; its probe is captured)."""
    prefix = tmp_path / "dax"
    (prefix / "bin").mkdir(parents=True)
    probes = [{"kind": "qemu", "path": str(prefix / "bin" / f"qemu-system-{a}"), "arch": a, "version": "6.0.94",
               "dax": True, "vhost_user_fs": True} for a in ("x86_64", "aarch64")]
    probes.append({"kind": "virtiofsd", "path": str(prefix / "bin" / "virtiofsd"), "flavour": flavour,
                   "version": "6.0.94"})
    (prefix / "qemuprov.json").write_text(manifest_json(name=manifest_from, recipe={"name": manifest_from},
                                                        probe=probes,
                                                        firmware=[str(prefix / "share" / "qemu"), *firmware]))
    return prefix


def _qemuprov(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True, check=False)


def test_env_osv_prints_only_an_assignment_and_lines_run_py_takes(tmp_path: Path) -> None:
    prefix = _install(tmp_path, "virtio-fs-dev", ["/usr/share/seabios", "/usr/share/qemu"])
    result = _qemuprov("env", str(prefix), "--osv", "--share", str(tmp_path / "share"))
    assert result.returncode == 0, result.stderr
    commands = [ln for ln in result.stdout.splitlines() if not ln.startswith("#")]
    assert commands == [f"export PATH={prefix / 'bin'}:\"$PATH\""]
    runs = [ln.lstrip("# ").strip() for ln in result.stdout.splitlines() if "./scripts/run.py" in ln]
    assert len(runs) == 2
    parser = run_py_parser()
    for line in runs:
        assert line.startswith('sudo env "PATH=$PATH" ')  # the C virtiofsd needs root; sudo keeps PATH so
        options = parser.parse_args(run_py_words(line))
        arch = options.arch or "x86_64"
        assert options.qemu_path == [str(prefix / "bin" / f"qemu-system-{arch}")]
        assert options.virtio_fs_tag == ["myfs"] and options.virtio_fs_dir == [str(tmp_path / "share")]
        assert options.mount_fs == ["virtiofs,/dev/virtiofs0,/virtiofs"]
        assert options.virtio_fs_dax == ["1024M"]
        assert options.pass_args[0].split() == ["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"]
    # eval runs the export alone: a shell that evaluates the output starts nothing
    shell = subprocess.run(["bash", "-c", f'eval "$({sys.executable} -m qemuprov env {prefix} --osv)"; '
                                          'echo "$PATH"'], capture_output=True, text=True, check=True)
    assert shell.stdout.startswith(str(prefix / "bin") + ":") and shell.stderr == ""


def test_env_osv_dax_size_and_bad_input(tmp_path: Path) -> None:
    prefix = _install(tmp_path, "virtio-fs-dev", [])
    sized = _qemuprov("env", str(prefix), "--osv", "--dax-size", "64M")
    assert "--virtio-fs-dax=64M" in sized.stdout and "--pass-args" not in sized.stdout
    for args, words in ((["--osv", "--dax-size", "12X"], '--dax-size: "12X" is not a size'),
                        (["--osv", "--dax-size", "100M"], "not a power of two"),
                        (["--osv", "--tag", "a,b"], "cannot be a virtio-fs tag"),
                        (["--dax-size", "64M"], "go with --osv")):
        bad = _qemuprov("env", str(prefix), *args)
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) <= 2 and "Traceback" not in bad.stderr


def test_env_osv_refuses_an_install_without_qemu(tmp_path: Path) -> None:
    prefix = tmp_path / "vfs"
    prefix.mkdir()
    (prefix / "qemuprov.json").write_text(manifest_json(
        name="virtiofsd", recipe={"name": "virtiofsd"}, source=None,
        probe=[{"kind": "virtiofsd", "path": str(prefix / "bin" / "virtiofsd"), "flavour": "rust"}]))
    result = _qemuprov("env", str(prefix), "--osv")
    assert result.returncode == 2 and "holds no QEMU of its own" in result.stderr


def test_slirp_and_linux_aio_per_era(tmp_path: Path) -> None:
    def tree(name: str, slirp_type: str, bundled: bool, configure: str) -> plan.Tree:
        root = make_tree(tmp_path / name, name, [], virtiofsd=True, configure=configure)
        (root / "meson_options.txt").write_text(f"option('slirp', type: '{slirp_type}')\noption('linux_aio')\n")
        if bundled:
            (root / "slirp").mkdir()
            (root / "slirp" / "meson.build").write_text("")
        return plan.inspect(root)

    modern = tree("7.2.0", "feature", False, "")
    old = tree("5.2.0", "combo", True, "  --enable-slirp=git) slirp=internal\n  --enable-slirp=system)\n")
    assert [a.arg for a in plan.consumer_features(modern, True)] == ["--enable-slirp", "--enable-linux-aio"]
    assert plan.consumer_features(old, True)[0].arg == "--enable-slirp=system"
    assert plan.consumer_features(old, False)[0].arg == "--enable-slirp=git"
    reasons = " ".join(a.reason for a in plan.consumer_features(modern, True))
    assert "-netdev user" in reasons and "aio=native" in reasons and "OSv" in reasons
    p = plan.make_plan(SHIPPED.load("qemu-7.2"), modern, Path("/opt/q"), ("x86_64",))
    assert {"--enable-slirp", "--enable-linux-aio"} <= set(p.argv)


def test_netdevs_and_aio_parsers() -> None:
    text = (CAPTURES / "debian-7.2" / "netdev-help.txt").read_text()
    assert netdevs_from_help(text) == ["socket", "stream", "dgram", "hubport", "tap", "user", "l2tpv3", "vde",
                                       "bridge", "vhost-user", "vhost-vdpa"]
    assert netdevs_from_help("qemu: -netdev help: invalid option") is None
    assert aio_native_from_reply({"return": {}, "id": "aio"}) is True
    no_aio = {"error": {"class": "GenericError", "desc": "aio=native was specified, but is not supported in this "
                                                         "build."}}
    assert aio_native_from_reply(no_aio) is False
    assert aio_native_from_reply({"error": {"desc": "Could not open 'x': Invalid argument"}}) is None


def test_expectations_name_a_missing_netdev_and_aio() -> None:
    recipe = SHIPPED.load("qemu-7.2")
    assert recipe.expect.netdevs == ("user",) and recipe.expect.aio_native is True
    good = QemuProbe("bin/qemu-system-x86_64", version="7.2.0", arch="x86_64", vhost_user_fs=True,
                     netdevs=["tap", "user"], aio_native=True)
    daemon = VirtiofsdProbe("bin/virtiofsd", flavour="c")
    assert check_expectations(recipe, ("x86_64",), [good, daemon]) == []
    bare = QemuProbe("bin/qemu-system-x86_64", version="7.2.0", arch="x86_64", vhost_user_fs=True,
                     netdevs=["tap"], aio_native=False)
    problems = " ".join(check_expectations(recipe, ("x86_64",), [bare, daemon]))
    assert "lacks the netdev backend user" in problems and "aio=native (linux-aio): expected True" in problems


KIT = Kit(arches.AARCH64, Path("vmlinuz"), Path("initrd"), fuse_dax=False)
DAX_QEMU = QemuProbe("q", arch="aarch64", dax=True)


def test_dax_verdict_tells_the_three_cases_apart() -> None:
    window = "QEMUPROV: dax-window " + (DAX_CAPTURES / "guest-dmesg-dax.txt").read_text().strip()
    mounts = "QEMUPROV: dax-mount " + (DAX_CAPTURES / "guest-proc-mounts-dax.txt").read_text().strip()
    assert dax_verdict(QemuProbe("q", "x86_64", dax=False), [], KIT)[1] == "-"
    ok = ["QEMUPROV: read 1234", window, mounts, "QEMUPROV: dax-read 1234"]
    assert dax_verdict(DAX_QEMU, ok, KIT) == (True, "yes", "")
    dax, status, reason = dax_verdict(DAX_QEMU, ["QEMUPROV: read 1234", "QEMUPROV: dax-mount-failed x"], KIT)
    assert (dax, status) == (None, "not tested")
    assert "CONFIG_FUSE_DAX" in reason and "--kernel" in reason
    unmapped = ["QEMUPROV: read 1234", window, mounts, "QEMUPROV: dax-read cat: read error: No such device"]
    dax, status, reason = dax_verdict(DAX_QEMU, unmapped, KIT)
    assert (dax, status) == (False, "no") and "FUSE_SETUPMAPPING" in reason


def test_kernel_config_fuse_dax() -> None:
    assert fuse_dax_from_config("CONFIG_FUSE_FS=m\nCONFIG_VIRTIO_FS=m\nCONFIG_FUSE_DAX=y\n") is True
    assert fuse_dax_from_config("CONFIG_FUSE_FS=m\nCONFIG_VIRTIO_FS=m\n") is False
    assert fuse_dax_from_config("") is None


def test_the_aarch64_kit_can_verify_dax_as_the_real_guest_did() -> None:
    """Debian 13's arm64 cloud kernel (the pinned kit) has FUSE_DAX: with the lines a real aarch64 guest of the
    DAX fork printed (captured), verify says yes; a user's own kernel without FUSE_DAX stays "not tested"."""
    from qemuprov.proving import guestkit

    assert guestkit.PINS["arm64"][0].package.endswith("-cloud-arm64") and "deb13" in guestkit.PINS["arm64"][0].package
    window = "QEMUPROV: dax-window " + (DAX_CAPTURES / "guest-dmesg-dax-aarch64.txt").read_text().strip()
    mounts = "QEMUPROV: dax-mount " + (DAX_CAPTURES / "guest-proc-mounts-dax-aarch64.txt").read_text().strip()
    arm_kit = Kit(arches.AARCH64, Path("vmlinuz"), Path("initrd"), fuse_dax=True)
    lines = ["QEMUPROV: mounted", "QEMUPROV: read 1234", window, mounts, "QEMUPROV: dax-read 1234"]
    assert dax_verdict(DAX_QEMU, lines, arm_kit) == (True, "yes", "")
    own = Kit(arches.AARCH64, Path("/home/me/Image"), Path("initrd"), fuse_dax=False)
    dax, status, reason = dax_verdict(DAX_QEMU, ["QEMUPROV: mounted", "QEMUPROV: dax-mount-failed x"], own)
    assert (dax, status) == (None, "not tested") and "CONFIG_FUSE_DAX" in reason


def test_a_qemu_without_the_window_never_gets_a_dax_yes() -> None:
    window = "QEMUPROV: dax-window " + (DAX_CAPTURES / "guest-dmesg-dax-aarch64.txt").read_text().strip()
    no_window = QemuProbe("q", arch="aarch64", dax=False)
    verdict = dax_verdict(no_window, ["QEMUPROV: mounted", window], Kit(arches.AARCH64, Path("k"), Path("i"), True))
    assert verdict[1] == "-" and verdict[0] is not True


def test_the_debian_mirror_is_read_off_the_hosts_own_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qemuprov.infra import debian

    monkeypatch.delenv(debian.MIRROR_ENV, raising=False)
    monkeypatch.setattr(debian, "APT_SOURCES", tmp_path)
    (tmp_path / "sources.list.d").mkdir()
    assert debian.host_mirror(tmp_path) is None  # no apt sources at all
    (tmp_path / "sources.list.d" / "ubuntu.sources").write_text(
        "Types: deb\nURIs: http://ubuntu.invalid/ubuntu\nSuites: noble\nComponents: main\n")
    assert debian.host_mirror(tmp_path) is None  # another distribution's
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://mirror.invalid/debian bookworm main\n")
    assert debian.host_mirror(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb822.invalid/debian\nSuites: trixie trixie-updates\nComponents: main\n")
    assert debian.host_mirror(tmp_path) == "http://deb822.invalid/debian"
    assert debian.mirror() == "http://deb822.invalid/debian"
    monkeypatch.setenv(debian.MIRROR_ENV, "http://chosen.invalid/debian/")
    assert debian.mirror() == "http://chosen.invalid/debian"
