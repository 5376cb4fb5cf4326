"""Plan logic per QEMU era (on minimal trees shaped like the real ones), expectations, and install helpers."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from qemuprov.building import ccache
from qemuprov.building.context import missing_dependency_hint
from qemuprov.building.expectations import check_expectations
from qemuprov.building.staging import commit_prefix, finish_tree
from qemuprov.building.workspace import Workspace
from qemuprov.errors import UserError
from qemuprov.infra.builder_images import BuilderImage
from qemuprov.infra.engines import Engine
from qemuprov.infra.paths import remove_dead_side_paths
from qemuprov.infra.runners import ContainerRunner, HostRunner
from qemuprov.knowledge import plan
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.recipe import Layer, RecipeBook, VirtiofsdFlavour, default_layers
from qemuprov.records.manifest import CcacheStats, VirtiofsdRecord

SHIPPED = RecipeBook(default_layers())


def make_tree(root: Path, version: str, options: list[str], virtiofsd: bool, rseq: bool = True,
              blobs: bool = True, meson_submodule: bool = True, meson: bool = True,
              configure: str = "  --disable-blobs) blobs=false\n") -> Path:
    root.mkdir(parents=True)
    (root / "VERSION").write_text(version + "\n")
    (root / "configure").write_text("#!/bin/sh\n" + configure)
    if meson:
        (root / "meson.build").write_text("project('qemu')\n")
        (root / "meson_options.txt").write_text("".join(f"option('{o}', type: 'feature')\n" for o in options))
    if meson_submodule:
        (root / "meson").mkdir()
        (root / "meson" / "meson.py").write_text("")
    if blobs:
        (root / "pc-bios").mkdir()
        (root / "pc-bios" / "bios-256k.bin").write_bytes(b"\0")
    if virtiofsd:
        (root / "tools" / "virtiofsd").mkdir(parents=True)
        (root / "tools" / "meson.build").write_text(
            ".disable_auto_if(not have_tools and not have_system)\n" if version >= "7" else "have_tools\n")
        (root / "tools" / "virtiofsd" / "passthrough_seccomp.c").write_text(
            "SCMP_SYS(read),\n" + ("SCMP_SYS(rseq),\n" if rseq else ""))
    return root


OPTS_72 = ["virtiofsd", "docs", "tools", "guest_agent", "install_blobs"]


def test_plan_72_distribution_tree(tmp_path: Path) -> None:
    tree = plan.inspect(make_tree(tmp_path / "q", "7.2.22", OPTS_72, virtiofsd=True, blobs=False,
                                  meson_submodule=False))
    p = plan.make_plan(SHIPPED.load("qemu-7.2"), tree, Path("/opt/q"), ("x86_64", "aarch64"))
    assert p.argv[:3] == ["--prefix=/opt/q", "--target-list=x86_64-softmmu,aarch64-softmmu", "--enable-virtiofsd"]
    for arg in ("--disable-tools", "--disable-blobs", "--meson=meson", "--enable-seccomp"):
        assert arg in p.argv
    assert p.argv[-1] == "--disable-werror"
    assert "tools/virtiofsd/virtiofsd" in p.targets and "qemu-system-aarch64" in p.targets
    assert p.virtiofsd == "c" and p.rseq_wrapper is False
    assert all(arg.reason for arg in p.configure)


def test_plan_52_keeps_tools_and_needs_the_rseq_wrapper(tmp_path: Path) -> None:
    tree = plan.inspect(make_tree(tmp_path / "q", "5.2.0", ["virtiofsd", "docs", "tools"], virtiofsd=True,
                                  rseq=False))
    p = plan.make_plan(SHIPPED.load("qemu-5.2"), tree, Path("/opt/q"), ("x86_64",))
    assert "--enable-virtiofsd" in p.argv
    assert "--disable-tools" not in p.argv  # 5.2 builds virtiofsd only with the tools
    assert "--disable-blobs" not in p.argv and "--meson=meson" not in p.argv
    assert p.rseq_wrapper is True


def test_plan_blob_switch_follows_configure(tmp_path: Path) -> None:
    # Debian's 5.2 tree: blobs stripped, configure knows only --disable-blobs (no --disable-install-blobs).
    tree_52 = plan.inspect(make_tree(tmp_path / "a", "5.2.0", ["virtiofsd", "install_blobs"], virtiofsd=True,
                                     blobs=False))
    assert "--disable-blobs" in plan.make_plan(SHIPPED.load("qemu-5.2"), tree_52, Path("/q"), ("x86_64",)).argv
    # A tree whose configure passes meson options through without the old spelling.
    newer = plan.inspect(make_tree(tmp_path / "b", "10.0.0", ["install_blobs"], virtiofsd=False, blobs=False,
                                   configure=""))
    argv = plan.make_plan(SHIPPED.load("qemu-stable"), newer, Path("/q"), ("x86_64",)).argv
    assert "--disable-install-blobs" in argv and "--disable-blobs" not in argv


def test_plan_51_has_no_virtiofsd_switch(tmp_path: Path) -> None:
    tree = plan.inspect(make_tree(tmp_path / "q", "5.1.0", [], virtiofsd=True, meson=False, meson_submodule=False))
    p = plan.make_plan(SHIPPED.load("qemu-5.2"), tree, Path("/opt/q"), ("x86_64",))
    assert "--enable-virtiofsd" not in p.argv and p.targets == ()  # make, not ninja


def test_plan_10_refuses_an_in_tree_virtiofsd(tmp_path: Path) -> None:
    tree = plan.inspect(make_tree(tmp_path / "q", "10.0.2", ["docs", "tools"], virtiofsd=False))
    with pytest.raises(UserError, match="virtiofsd.source: QEMU 10.0.2 has no in-tree virtiofsd"):
        plan.make_plan(SHIPPED.load("qemu-7.2"), tree, Path("/opt/q"), ("x86_64",))
    p = plan.make_plan(SHIPPED.load("qemu-stable"), tree, Path("/opt/q"), ("x86_64",))
    assert "--enable-virtiofsd" not in p.argv and p.virtiofsd == "rust"


def test_not_a_qemu_tree(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a QEMU source tree"):
        plan.inspect(tmp_path)


def q(arch: str, dax: bool = False, version: str = "7.2.0") -> QemuProbe:
    return QemuProbe(path=f"/p/bin/qemu-system-{arch}", version=version, arch=arch, vhost_user_fs=True, dax=dax,
                     netdevs=["user"], aio_native=True)


def test_expectations() -> None:
    dev = SHIPPED.load("virtio-fs-dev")
    vfs = VirtiofsdProbe(path="/p/bin/virtiofsd", flavour="c", version="7.0.50")
    good = [q("x86_64", True, "7.0.50"), q("aarch64", True, "7.0.50"), vfs]
    assert check_expectations(dev, ("x86_64", "aarch64"), good) == []
    problems = check_expectations(dev, ("x86_64", "aarch64"), [q("x86_64", False, "7.2.0")])
    assert any("DAX (a window the install's virtiofsd maps into): expected True, got False" in p for p in problems)
    assert any("no working qemu-system-aarch64" in p for p in problems)
    assert any("virtiofsd: expected c, got none" in p for p in problems)
    assert any("expected 7.0" in p for p in problems)


def test_dax_expectations_follow_the_pair_on_either_route() -> None:
    """qemu-stable-dax promises DAX: QEMU 11.1's generic device and a daemon with --dax-window keep it; the same
    QEMU with the unpatched daemon breaks it, naming the side and what to add; qemu-stable (dax = false) with a
    QEMU that could take a window but an unpatched daemon is as promised."""
    stable_dax, stable = SHIPPED.load("qemu-stable-dax"), SHIPPED.load("qemu-stable")
    qemus = [QemuProbe(f"/p/bin/qemu-system-{a}", a, version="11.1.3", vhost_user_fs=True, shmem_device=True,
                       netdevs=["user"], aio_native=True) for a in ("x86_64", "aarch64")]
    patched = VirtiofsdProbe("/p/bin/virtiofsd", flavour="rust", version="1.14.0", dax_window=True)
    plain = VirtiofsdProbe("/p/bin/virtiofsd", flavour="rust", version="1.14.0")
    assert check_expectations(stable_dax, ("x86_64", "aarch64"), [*qemus, patched]) == []
    broken = " ".join(check_expectations(stable_dax, ("x86_64", "aarch64"), [*qemus, plain]))
    assert "expected True, got False" in broken and "virtiofsd-dax" in broken and "--dax-window" in broken
    assert check_expectations(stable, ("x86_64", "aarch64"), [*qemus, plain]) == []


def test_missing_dependency_hint() -> None:
    tail = "meson.build:1234:2: ERROR: Dependency \"pixman-1\" not found, tried pkgconfig"
    host = HostRunner()
    assert "install libpixman-1-dev" in missing_dependency_hint(tail, host)
    assert "doctor" in missing_dependency_hint("something else broke", host)
    in_container = ContainerRunner(Engine("unix:///nowhere", True, "Docker"),
                                   BuilderImage("debian-bookworm", Path("builder-debian-bookworm.Dockerfile"), "x"))
    assert "builder image lacks libpixman-1-dev" in missing_dependency_hint(tail, in_container)


def staged_prefix(tmp_path: Path, marker: str) -> Path:
    staged = tmp_path / f"stage-{marker}"
    (staged / "libexec").mkdir(parents=True)
    (staged / "libexec" / "virtiofsd").write_text("#!/bin/sh\necho \"tunables=$GLIBC_TUNABLES args=$*\"\n")
    (staged / "libexec" / "virtiofsd").chmod(0o755)
    (staged / "marker").write_text(marker)
    return staged


def staged_at(staged: Path, prefix: Path) -> Workspace:
    """A workspace whose staged tree is `staged` (as a tree configured for /NAME puts it), installing at prefix."""
    return Workspace("r", prefix, staged.parent / "work", tree_prefix=Path("/" + staged.name), _staging=staged.parent)


def test_finish_tree_writes_a_working_rseq_wrapper(tmp_path: Path) -> None:
    tree = plan.inspect(make_tree(tmp_path / "q", "5.2.0", ["virtiofsd"], virtiofsd=True, rseq=False))
    p = plan.make_plan(SHIPPED.load("qemu-5.2"), tree, tmp_path / "prefix", ("x86_64",))
    staged = staged_prefix(tmp_path, "a")
    virtiofsd, _ = finish_tree(staged_at(staged, tmp_path / "prefix"), p)
    assert virtiofsd.wrapper is True and virtiofsd.binary == str(tmp_path / "prefix" / "libexec" / "virtiofsd")
    out = subprocess.run([staged / "bin" / "virtiofsd", "--help"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GLIBC_TUNABLES": "glibc.malloc.check=0"}).stdout
    assert out.strip() == "tunables=glibc.malloc.check=0:glibc.pthread.rseq=0 args=--help"



def test_finish_tree_of_the_daemon_alone_puts_it_on_path(tmp_path: Path) -> None:
    staged = staged_prefix(tmp_path, "d")
    virtiofsd, firmware = finish_tree(staged_at(staged, tmp_path / "prefix"), None)
    assert (virtiofsd, firmware) == (VirtiofsdRecord(VirtiofsdFlavour.RUST), ())
    assert (staged / "bin" / "virtiofsd").is_file() and not (staged / "libexec").exists()

def test_commit_prefix_swaps_and_cleans(tmp_path: Path) -> None:
    prefix = tmp_path / "root" / "build"
    commit_prefix(staged_prefix(tmp_path, "first"), prefix)
    assert (prefix / "marker").read_text() == "first"
    commit_prefix(staged_prefix(tmp_path, "second"), prefix)
    assert (prefix / "marker").read_text() == "second"
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["build"]


def test_stale_staging_of_a_dead_build_is_removed(tmp_path: Path) -> None:
    prefix = tmp_path / "build"
    dead = tmp_path / ".qemuprov-stage-build-999999999"
    alive = tmp_path / f".qemuprov-stage-build-{__import__('os').getpid()}"
    dead.mkdir()
    alive.mkdir()
    remove_dead_side_paths(prefix)
    assert not dead.exists() and alive.exists()


def test_layer_dirs_may_be_missing(tmp_path: Path) -> None:
    assert RecipeBook([Layer("x", tmp_path / "none")]).names() == []


def test_ccache_stats_counts_hits_and_misses(tmp_path: Path) -> None:
    # The shape of ccache 4.7's stats_log: one record per compilation.
    log = tmp_path / "build.ccache"
    log.write_text("# /t/a.c\ncache_miss\ndirect_cache_miss\npreprocessed_cache_miss\n"
                   "# /t/a.c\ndirect_cache_hit\nlocal_storage_hit\n"
                   "# /t/b.c\npreprocessed_cache_hit\n# /t/c.c\nuncacheable\n")
    assert ccache.stats(log) == CcacheStats(hits=2, misses=1, hit_rate=0.667, remote_hits=0)
    assert ccache.stats(tmp_path / "absent") is None


def test_plan_minimal_aarch64_devices_where_the_tree_offers_them(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "q", "7.2.0", OPTS_72, virtiofsd=True,
                     configure="  --disable-blobs) x\n  --with-devices-*) device_arch=x\n")
    (root / "configs" / "devices" / "aarch64-softmmu").mkdir(parents=True)
    (root / "configs" / "devices" / "aarch64-softmmu" / "minimal.mak").write_text("CONFIG_ARM_VIRT=y\n")
    tree = plan.inspect(root)
    both = plan.make_plan(SHIPPED.load("qemu-7.2"), tree, Path("/q"), ("x86_64", "aarch64")).argv
    assert "--with-devices-aarch64=minimal" in both and not any("devices-x86_64" in a for a in both)
    assert "--with-devices-aarch64=minimal" not in plan.make_plan(SHIPPED.load("qemu-7.2"), tree, Path("/q"),
                                                                  ("x86_64",)).argv
    # 5.2's configure has no --with-devices-ARCH: nothing is added even if such a file existed.
    older = make_tree(tmp_path / "o", "5.2.0", ["virtiofsd"], virtiofsd=True)
    (older / "configs" / "devices" / "aarch64-softmmu").mkdir(parents=True)
    (older / "configs" / "devices" / "aarch64-softmmu" / "minimal.mak").write_text("")
    assert plan.inspect(older).minimal_devices == frozenset()


def test_pairing_warnings_name_the_combinations_known_to_break() -> None:
    from qemuprov.knowledge.probe import pairing_warnings

    dax_qemu = QemuProbe("/q", "x86_64", version="6.0.94", vhost_user_fs=True, dax=True)
    fork_daemon = VirtiofsdProbe("/v", flavour="c", version="6.0.94")
    rust = VirtiofsdProbe("/r", flavour="rust", version="1.13.2")
    assert pairing_warnings(dax_qemu, fork_daemon) == []
    assert "does not serve DAX mappings" in pairing_warnings(dax_qemu, rust)[0]
    assert "different trees" in pairing_warnings(dax_qemu, VirtiofsdProbe("/v", flavour="c", version="7.2.22"))[0]
    for version, warned in (("7.0.0", False), ("7.1.0", True), ("8.0.5", True), ("8.1.0", False)):
        plain = QemuProbe("/q", "x86_64", version=version, vhost_user_fs=True)
        assert any("--tag" in w for w in pairing_warnings(plain, rust)) is warned, version


def test_plan_notes_subprojects_a_git_checkout_lacks(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "q", "10.0.0", ["install_blobs"], virtiofsd=False)
    (root / "subprojects").mkdir()
    for name in ("keycodemapdb", "berkeley-softfloat-3", "slirp"):
        (root / "subprojects" / f"{name}.wrap").write_text("[wrap-git]\nurl = x\n")
    (root / "subprojects" / "berkeley-softfloat-3").mkdir()
    (root / "subprojects" / "berkeley-softfloat-3" / "meson.build").write_text("")
    tree = plan.inspect(root)
    assert tree.missing_subprojects == ("keycodemapdb",)  # slirp is optional, softfloat is there
    p = plan.make_plan(SHIPPED.load("qemu-stable"), tree, Path("/q"), ("x86_64",))
    assert any("downloads the subprojects keycodemapdb" in note for note in p.notes)


def test_image_tag_is_checked_before_any_work() -> None:
    from qemuprov.ci.image import check_tag

    for good in ("qemuprov/x:latest", "registry.example.com:5000/ci/qemu-virtiofs:7.2"):
        check_tag(good)
    for bad in ("Bad Tag!", "UPPER/case", "a:b:c"):
        with pytest.raises(UserError, match="--tag"):
            check_tag(bad)


def test_plan_leaves_out_debug_info_unless_the_recipe_asks(tmp_path: Path) -> None:
    # 7.0+ trees spell the switch in scripts/meson-buildoptions.sh, older ones in configure itself.
    newer = make_tree(tmp_path / "n", "10.0.2", ["docs"], virtiofsd=False)
    (newer / "scripts").mkdir()
    (newer / "scripts" / "meson-buildoptions.sh").write_text("    --disable-debug-info) printf x ;;\n")
    older = make_tree(tmp_path / "o", "5.2.0", ["virtiofsd"], virtiofsd=True,
                      configure="  --disable-debug-info) debug_info=no\n")
    bare = make_tree(tmp_path / "b", "5.0.0", [], virtiofsd=True, configure="")
    stable = SHIPPED.load("qemu-stable")
    assert "--disable-debug-info" in plan.make_plan(stable, plan.inspect(newer), Path("/q"), ("x86_64",)).argv
    assert "--disable-debug-info" in plan.make_plan(SHIPPED.load("qemu-5.2"), plan.inspect(older), Path("/q"),
                                                    ("x86_64",)).argv
    assert "--disable-debug-info" not in plan.make_plan(SHIPPED.load("qemu-5.2"), plan.inspect(bare), Path("/q"),
                                                        ("x86_64",)).argv
    wants_gdb = replace(stable, qemu=replace(stable.qemu, configure=("--enable-debug-info",)))
    argv = plan.make_plan(wants_gdb, plan.inspect(newer), Path("/q"), ("x86_64",)).argv
    assert "--disable-debug-info" not in argv and argv[-1] == "--enable-debug-info"


def test_plan_configures_relocatable_trees_with_one_fixed_prefix(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "q", "7.2.0", OPTS_72, virtiofsd=True)
    (root / "util").mkdir()
    (root / "util" / "cutils.c").write_text("char *get_relocated_path(const char *dir)\n")
    recipe = SHIPPED.load("qemu-7.2")
    plans = [plan.make_plan(recipe, plan.inspect(root), Path(p), ("x86_64",)) for p in ("/a", "/b/c")]
    assert plans[0].argv == plans[1].argv and plans[0].argv[0] == f"--prefix={plan.RELOCATABLE_PREFIX}"
    assert plans[0].prefix == plan.RELOCATABLE_PREFIX
    # 5.0 and 5.1 have no relocation: they are configured for the prefix they are installed in.
    older = plan.make_plan(recipe, plan.inspect(make_tree(tmp_path / "o", "5.1.0", [], virtiofsd=True)),
                           Path("/a"), ("x86_64",))
    assert older.argv[0] == "--prefix=/a" and older.prefix == Path("/a")


def test_stale_staging_cleanup_removes_only_what_a_dead_build_left(tmp_path: Path) -> None:
    """Beside a user's --prefix, only names that carry the pid of a dead qemuprov go; a name like the user's own
    stays, as does the leftover of a build still running."""
    import os

    tmp_path = tmp_path / "tools"
    tmp_path.mkdir()
    prefix = tmp_path / "q"
    dead, alive = 2 ** 22 + 12345, os.getpid()  # 2**22 is the largest pid_max
    for name in (f".qemuprov-stage-q-{dead}", f".qemuprov-new-q-{alive}", ".qemuprov-notes-q-backup"):
        (tmp_path / name).mkdir()
    (tmp_path / f".qemuprov-stage-q-{dead}.layer.tar.gz").write_bytes(b"partial")
    remove_dead_side_paths(prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".qemuprov-new-q-" + str(alive), ".qemuprov-notes-q-backup"]
