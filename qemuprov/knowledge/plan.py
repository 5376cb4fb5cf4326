"""Inspect a QEMU tree and decide how to configure and build it. Features are read off the tree itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from qemuprov.errors import UserError
from qemuprov.knowledge.probe import RSEQ_TUNABLE
from qemuprov.recipe import FirmwareSet, Recipe, VirtiofsdFlavour, VirtiofsdSource


@dataclass(frozen=True)
class Tree:
    root: Path
    version: str
    meson_options: frozenset[str]
    has_meson_build: bool
    has_meson_submodule: bool
    has_blobs: bool
    virtiofsd_dir: bool
    virtiofsd_survives_disable_tools: bool
    virtiofsd_allows_rseq: bool
    blobs_switch: str | None = None  # how configure spells "do not install firmware blobs"
    minimal_devices: frozenset[str] = frozenset()  # arches with configs/devices/<arch>-softmmu/minimal.mak
    meson_requirement: str | None = None  # 8.1+: pythondeps.toml says which meson configure's venv needs
    has_meson_wheel: bool = False  # 8.1+ release trees bundle meson as a wheel under python/wheels
    missing_subprojects: tuple[str, ...] = ()  # wraps a git checkout lacks: configure downloads them
    has_debug_info_switch: bool = False  # configure knows --disable-debug-info (every tree since 2.x)
    relocatable: bool = False  # 5.2+: the binaries find their data relative to where they are, not via --prefix
    # -netdev user: "feature" (7.2+, the system libslirp only), "choice" (before 7.2: the system's or the tree's
    # own copy), None (configure has no switch for it)
    slirp: str | None = None
    bundled_slirp: str | None = None  # how configure names the tree's own slirp ("git", "internal"), if it has one
    knows_linux_aio: bool = False  # configure takes --enable-linux-aio (aio=native)


def inspect(root: Path) -> Tree:
    version_file = root / "VERSION"
    if not version_file.is_file() or not (root / "configure").is_file():
        raise UserError(f"{root}: not a QEMU source tree (no VERSION or configure)",
                        hint="check the recipe's qemu.git / qemu.tarball")
    options_file = root / "meson_options.txt"
    options = frozenset(re.findall(r"option\('([\w-]+)'", options_file.read_text())) \
        if options_file.exists() else frozenset()
    tools_meson = root / "tools" / "meson.build"
    tools_text = tools_meson.read_text() if tools_meson.exists() else ""
    seccomp_c = root / "tools" / "virtiofsd" / "passthrough_seccomp.c"
    configure_text = (root / "configure").read_text(errors="replace")
    buildoptions = root / "scripts" / "meson-buildoptions.sh"  # 7.0+: where configure's meson switches live
    switches_text = configure_text + (buildoptions.read_text(errors="replace") if buildoptions.exists() else "")
    # 5.x knows only --disable-blobs; later trees map it too, and newer ones may know only the meson name.
    blobs_switch = "--disable-blobs" if "--disable-blobs)" in configure_text \
        else "--disable-install-blobs" if "install_blobs" in options else None
    return Tree(
        root=root,
        version=version_file.read_text().strip(),
        meson_options=options,
        has_meson_build=(root / "meson.build").exists(),
        has_meson_submodule=(root / "meson" / "meson.py").exists(),
        has_blobs=(root / "pc-bios" / "bios-256k.bin").exists(),
        virtiofsd_dir=(root / "tools" / "virtiofsd").is_dir(),
        # 7.x: virtiofsd stays on with --disable-tools as long as system emulators are built.
        virtiofsd_survives_disable_tools="not have_tools and not have_system" in tools_text,
        virtiofsd_allows_rseq=seccomp_c.exists() and "SCMP_SYS(rseq)" in seccomp_c.read_text(),
        blobs_switch=blobs_switch,
        meson_requirement=_meson_requirement(root / "pythondeps.toml"),
        has_meson_wheel=any(root.glob("python/wheels/meson-*.whl")),
        missing_subprojects=_missing_subprojects(root / "subprojects"),
        has_debug_info_switch="--disable-debug-info" in switches_text,
        relocatable=_mentions(root / "util" / "cutils.c", "get_relocated_path"),
        slirp=_slirp_kind(options_file, switches_text),
        bundled_slirp=("git" if "--enable-slirp=git)" in configure_text else "internal")
        if (root / "slirp" / "meson.build").exists() or (root / "slirp" / "Makefile").exists() else None,
        knows_linux_aio="linux_aio" in options or "--enable-linux-aio" in switches_text,
        minimal_devices=frozenset(
            p.parent.name.removesuffix("-softmmu") for p in root.glob("configs/devices/*-softmmu/minimal.mak")
        ) if "--with-devices-" in configure_text else frozenset(),
    )


def _slirp_kind(options_file: Path, switches_text: str) -> str | None:
    declared = re.search(r"option\('slirp',\s*type\s*:\s*'(\w+)'",
                         options_file.read_text() if options_file.exists() else "")
    if declared:
        return "feature" if declared.group(1) == "feature" else "choice"
    return "choice" if "--enable-slirp=system" in switches_text else None


def _mentions(path: Path, word: str) -> bool:
    return path.is_file() and word in path.read_text(errors="replace")


# Subprojects every 8.1+ build needs (the others are optional and only fetched when enabled).
REQUIRED_SUBPROJECTS = ("keycodemapdb", "berkeley-softfloat-3", "berkeley-testfloat-3")


def _missing_subprojects(directory: Path) -> tuple[str, ...]:
    """Required wraps whose source is absent: a git checkout has only the .wrap files (release tarballs and
    distribution trees ship the sources), so configure must download them."""
    missing = []
    for wrap in sorted(directory / f"{name}.wrap" for name in REQUIRED_SUBPROJECTS):
        if not wrap.exists():
            continue
        match = re.search(r"^directory\s*=\s*(\S+)", wrap.read_text(), re.MULTILINE)
        source = directory / (match.group(1) if match else wrap.stem)
        if not (source / "meson.build").exists() and not (source / "Cargo.toml").exists():
            missing.append(wrap.stem)
    return tuple(missing)


def _meson_requirement(pythondeps: Path) -> str | None:
    if not pythondeps.is_file():
        return None
    match = re.search(r'^meson\s*=\s*\{[^}]*accepted\s*=\s*"([^"]+)"', pythondeps.read_text(), re.MULTILINE)
    return match.group(1) if match else "any"


RELOCATABLE_PREFIX = Path("/opt/qemuprov/prefix")

# What OSv's scripts/run.py puts on every QEMU line, and the library each needs at build time.
SLIRP_REASON = "-netdev user (user-mode networking, slirp), which OSv's scripts/run.py always uses"
LINUX_AIO_REASON = "aio=native on -drive, which OSv's scripts/run.py always uses (linux-aio, libaio)"


@dataclass(frozen=True)
class PlanArg:
    """One configure argument and why it is there."""

    arg: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """What a build of a tree will do; its record (the manifest's and `show`'s) is the same but for the tree and
    the prefix, which it keeps as the tree's version and the prefix's text."""

    tree: Tree
    arches: tuple[str, ...]
    configure: tuple[PlanArg, ...]
    targets: tuple[str, ...]  # ninja targets; empty means `make`
    virtiofsd: VirtiofsdFlavour  # what bin/virtiofsd will be
    rseq_wrapper: bool
    prefix: Path  # what configure is told; the install is staged under it, then moved to the real prefix
    notes: tuple[str, ...] = field(default=())
    firmware: FirmwareSet = FirmwareSet.NEEDED

    @property
    def argv(self) -> list[str]:
        return [a.arg for a in self.configure]

    def record(self) -> PlanRecord:
        return PlanRecord(self.tree.version, self.arches, self.configure,
                          tuple(self.targets), self.virtiofsd, self.rseq_wrapper, str(self.prefix), self.notes,
                          self.firmware)


@dataclass(frozen=True)
class PlanRecord:
    """The plan a build follows, as its manifest and `qemuprov show` keep it."""

    version: str
    arches: tuple[str, ...]
    configure: tuple[PlanArg, ...]
    targets: tuple[str, ...]  # make targets; none: make (all)
    virtiofsd: VirtiofsdFlavour
    rseq_wrapper: bool
    configure_prefix: str
    notes: tuple[str, ...]
    firmware: FirmwareSet = FirmwareSet.ALL  # what a plan recorded before qemuprov kept only the needed ones

    @property
    def relocatable(self) -> bool:
        return self.configure_prefix == str(RELOCATABLE_PREFIX)


def consumer_features(tree: Tree, system_slirp: bool) -> list[PlanArg]:
    """Features asked for outright, so a build without them fails at configure instead of at the user's run.py.
    system_slirp: the build environment has libslirp (the build checks that before it plans)."""
    args = []
    if tree.slirp == "feature":
        args.append(PlanArg("--enable-slirp", SLIRP_REASON))
    elif tree.slirp == "choice" and system_slirp:
        args.append(PlanArg("--enable-slirp=system", SLIRP_REASON))
    elif tree.slirp == "choice" and tree.bundled_slirp:
        args.append(PlanArg(f"--enable-slirp={tree.bundled_slirp}", SLIRP_REASON + " (here: the tree's own)"))
    if tree.knows_linux_aio:
        args.append(PlanArg("--enable-linux-aio", LINUX_AIO_REASON))
    return args


def make_plan(recipe: Recipe, tree: Tree, prefix: Path, arches: tuple[str, ...], python: str | None = None,
              system_slirp: bool = True) -> Plan:
    """python: an interpreter that has a recent meson, for 8.1+ trees that bundle none (distribution trees).
    system_slirp: the build environment has libslirp (builder images do)."""
    version = Version(tree.version.split("-")[0]) if re.match(r"^\d+\.\d+", tree.version) else Version("0")
    configure_prefix = RELOCATABLE_PREFIX if tree.relocatable else prefix
    args = [PlanArg(f"--prefix={configure_prefix}",
                "one fixed prefix: the tree is relocatable, and the prefix is in config-host.h, which every file "
                "includes, so builds for any install prefix share one build tree and its ccache entries"
                if tree.relocatable
                else "where the build is installed (this tree is not relocatable)"),
            PlanArg("--target-list=" + ",".join(f"{a}-softmmu" for a in arches), "only the system emulators asked for")]
    notes: list[str] = []
    wants_c = recipe.virtiofsd.source is VirtiofsdSource.QEMU
    if wants_c and not tree.virtiofsd_dir:
        raise UserError(f"{recipe.path}: virtiofsd.source: QEMU {tree.version} has no in-tree virtiofsd "
                        "(removed in 8.0)", hint='set [virtiofsd] source = "rust" with its own git and ref')
    in_tree = wants_c and tree.virtiofsd_dir
    if in_tree and "virtiofsd" in tree.meson_options:
        args.append(PlanArg("--enable-virtiofsd", "build the in-tree C virtiofsd (a missing dependency fails loudly)"))
    if in_tree:
        args += [PlanArg("--enable-seccomp", "virtiofsd sandboxes itself with seccomp"),
                 PlanArg("--enable-cap-ng", "virtiofsd drops capabilities with libcap-ng")]
    args.append(PlanArg("--enable-vhost-user", "vhost-user-fs-pci talks to virtiofsd over vhost-user"))
    args += consumer_features(tree, system_slirp)
    if "docs" in tree.meson_options or version < Version("5.2"):
        args.append(PlanArg("--disable-docs", "documentation is not needed to run virtio-fs"))
    if "guest_agent" in tree.meson_options or version < Version("5.2"):
        args.append(PlanArg("--disable-guest-agent", "the guest agent is not needed"))
    if "tools" in tree.meson_options and (not in_tree or tree.virtiofsd_survives_disable_tools):
        args.append(PlanArg("--disable-tools", "qemu-img and friends are not needed"
                        + ("; virtiofsd still builds" if in_tree else "")))
    recipe_args = recipe.qemu.configure if recipe.qemu else ()
    if tree.has_debug_info_switch and not set(recipe_args) & {"--enable-debug", "--enable-debug-info",
                                                               "--disable-debug-info"}:
        args.append(PlanArg("--disable-debug-info", "no -g: compiling and linking take a fifth less time (a recipe can "
                                                "add --enable-debug-info for gdb)"))
    if not tree.has_blobs and tree.blobs_switch:
        args.append(PlanArg(tree.blobs_switch, "the tree has no firmware blobs (a distribution source tree)"))
        notes.append("no firmware blobs in the tree: the install uses the distribution's firmware directories")
    for arch in sorted(set(arches) & tree.minimal_devices):
        args.append(PlanArg(f"--with-devices-{arch}=minimal",
                        "only the virt machines that virtio-fs guests use (a recipe can pass "
                        f"--with-devices-{arch}=default to get every board back)"))
    if tree.missing_subprojects:
        notes.append(f"configure downloads the subprojects {', '.join(tree.missing_subprojects)} "
                     "(it runs with network access)")
    if tree.meson_requirement and not tree.has_meson_wheel:
        if python is None:
            raise UserError(f"QEMU {tree.version} needs meson {tree.meson_requirement} and the tree bundles none",
                            hint="build in a container (--runner docker), or `pip install 'meson"
                                 f"{tree.meson_requirement}'` into a venv and put its bin directory first on PATH")
        args.append(PlanArg(f"--python={python}", f"this interpreter has meson {tree.meson_requirement}, which "
                                              "configure's venv uses (the tree bundles no meson wheel)"))
    elif tree.has_meson_build and not tree.has_meson_submodule and not tree.meson_requirement:
        args.append(PlanArg("--meson=meson", "the tree has no meson submodule: use the system meson"))
    args += [PlanArg(extra, "from the recipe") for extra in recipe_args]
    targets: tuple[str, ...] = ()
    if tree.has_meson_build:
        targets = tuple(f"qemu-system-{a}" for a in arches) + ("trace/trace-events-all",)
        if in_tree:
            targets += ("tools/virtiofsd/virtiofsd",)
    rseq = in_tree and not tree.virtiofsd_allows_rseq
    if rseq:
        notes.append("this virtiofsd's seccomp filter lacks rseq: "
                     f"bin/virtiofsd sets GLIBC_TUNABLES={RSEQ_TUNABLE}")
    flavour = VirtiofsdFlavour.C if in_tree else recipe.virtiofsd_flavour
    kept = recipe.qemu.firmware if recipe.qemu else FirmwareSet.NEEDED
    if kept == FirmwareSet.NEEDED and tree.has_blobs:
        notes.append(f"firmware: only what {', '.join(arches)} guests load without UEFI (SeaBIOS, option ROMs, "
                     "keymaps); firmware = \"all\" in [qemu] keeps edk2 and the other targets' blobs")
    return Plan(tree, arches, tuple(args), targets, flavour, rseq, configure_prefix, tuple(notes), kept)
