"""Installed builds: each is a prefix `<root>/<name>` (or a --prefix DIR) holding qemuprov.json."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from qemuprov.errors import InfraError, UserError
from qemuprov.infra import jsonfile, paths, safefile
from qemuprov.infra.render import safe_text
from qemuprov.knowledge.probe import Probe, QemuProbe, VirtiofsdProbe
from qemuprov.recipe import RecipeBook, VirtiofsdFlavour, default_layers
from qemuprov.records import manifest
from qemuprov.records.manifest import Manifest, ManifestError
from qemuprov.sources.revision import SourceRecord

MANIFEST = manifest.FILE
PREFIXES_FILE = "prefixes.json"  # installs made with --prefix DIR, outside the root


@dataclass(frozen=True)
class Install:
    name: str
    prefix: Path
    manifest: Manifest | None  # None: damaged (see `damaged`)
    damaged: str | None = None  # why qemuprov.json cannot be used; the install can still be removed or rebuilt

    def intact(self) -> Install:
        """This install, for commands that need what its manifest says."""
        if self.damaged or self.manifest is None:
            raise InfraError(f"the install {self.name} ({self.prefix}) is damaged: {self.damaged}",
                             hint=f"build it again (qemuprov build {self.name} replaces it), or qemuprov remove "
                                  f"{self.prefix}")
        return self

    @property
    def record(self) -> Manifest:
        return self.intact().manifest  # type: ignore[return-value]

    @property
    def recipe(self) -> str:
        return str(self.manifest.recipe.get("name", self.name)) if self.manifest else self.name

    @property
    def probes(self) -> tuple[Probe, ...]:
        return self.manifest.probe if self.manifest else ()

    @property
    def qemu_probes(self) -> list[QemuProbe]:
        return [p for p in self.probes if isinstance(p, QemuProbe) and p.kind == "qemu" and not p.error]

    @property
    def virtiofsd_probe(self) -> VirtiofsdProbe | None:
        return next((p for p in self.probes if isinstance(p, VirtiofsdProbe)), None)

    @property
    def dax(self) -> bool:
        return any(p.dax for p in self.qemu_probes)

    @property
    def firmware_dirs(self) -> list[str]:
        return list(self.manifest.firmware) if self.manifest else []

    @property
    def source_record(self) -> SourceRecord | None:
        """Where the QEMU came from; for an install of virtiofsd alone, the daemon."""
        return (self.manifest.source or self.manifest.virtiofsd_source) if self.manifest else None

    @property
    def commit(self) -> str | None:
        return self.source_record.commit if self.source_record else None

    def missing_binaries(self) -> list[str]:
        names = self.manifest.binaries if self.manifest else ()
        return [name for name in names if not (self.prefix / "bin" / name).exists()]

    def summary(self) -> str:
        if self.damaged:
            return f"damaged: {self.damaged}"
        qemus = self.qemu_probes
        version = qemus[0].version if qemus else "?"
        arches = ",".join(sorted(p.arch for p in qemus)) or "?"
        vfs = self.virtiofsd_probe
        daemon = f"{'C' if vfs.flavour == VirtiofsdFlavour.C else 'Rust'} virtiofsd" if vfs else "no virtiofsd"
        if vfs and not qemus and self.manifest and self.manifest.source is None:
            return f"{daemon} {vfs.version or '?'} alone (no QEMU)"
        return f"QEMU {version} ({arches}), {daemon}, DAX {'yes' if self.dax else 'no'}"


def read_manifest(prefix: Path) -> Manifest | None:
    """The manifest of an install; None where there is none or it is damaged."""
    try:
        return manifest.load(prefix)
    except ManifestError:
        return None


SHARED_DIRECTORIES = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt",
                      "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/local", "/var",
                      "/var/tmp")


def installed_here(prefix: Path) -> bool:
    """The one rule for "a directory qemuprov installed": under the install root, or an install made with
    --prefix and remembered in prefixes.json; and it holds a qemuprov.json. A qemuprov.json alone proves
    nothing: it may be copied, or come from a tarball someone sent."""
    if prefix.is_symlink():
        return False  # a registered prefix that has since become a link names a directory qemuprov never made
    real = prefix.resolve()
    if not (real / MANIFEST).is_file() or _is_shared(real):
        return False
    return real.parent == paths.install_root().resolve() or \
        real in {p.resolve() for p in _registered_prefixes() if not p.is_symlink()}


def check_prefix(prefix: Path) -> None:
    """An install replaces its whole prefix (build aside, then swap): refuse any place where that would delete
    or hide what qemuprov did not make."""
    why = "an install replaces the whole directory in one atomic swap"
    if _is_shared(prefix):
        raise UserError(f"--prefix {prefix}: a shared directory, not a place for one install ({why})",
                        hint=f"name a directory of its own, e.g. --prefix {prefix / 'qemu'}")
    if prefix.exists() and not prefix.is_dir():
        raise UserError(f"--prefix {prefix}: exists and is not a directory", hint="name a new or empty directory")
    if prefix.is_dir() and any(prefix.iterdir()) and not installed_here(prefix):
        found = f"its {MANIFEST} was not written by an install here" if (prefix / MANIFEST).exists() \
            else f"no {MANIFEST}"
        raise UserError(f"--prefix {prefix}: holds files that are not a qemuprov install ({found}), and {why}",
                        hint="name a new or empty directory, or an earlier qemuprov install")


def _is_shared(directory: Path) -> bool:
    shared = {Path(p) for p in SHARED_DIRECTORIES} | {Path.home(), paths.install_root(), paths.cache_dir()}
    return directory in shared or directory in Path.home().parents


def check_removable(entry: Install) -> None:
    """`remove` deletes a whole directory: only one qemuprov installed (installed_here)."""
    if entry.prefix.is_symlink():
        raise UserError(f"{entry.prefix} is now a symbolic link (to {safe_text(os.readlink(entry.prefix))}), not the "
                        "directory qemuprov installed: remove will not delete what it names",
                        hint="remove the link yourself if you made it")
    if not installed_here(entry.prefix):
        raise UserError(f"{entry.prefix}: holds a {MANIFEST}, but qemuprov did not install there, so remove will "
                        "not delete it", hint="delete what you mean to by hand; `qemuprov list` shows the installs")


def remove(entry: Install) -> None:
    """Take the install away in one rename (so a second remove, or one from inside it, finds nothing half
    gone), then delete it."""
    check_removable(entry)
    prefix = entry.prefix.resolve()
    doomed = paths.side_path(prefix, "remove")
    try:
        prefix.rename(doomed)
    except FileNotFoundError:
        raise UserError(f"{entry.prefix}: already removed (another qemuprov remove was first)") from None
    left = paths.remove_tree(doomed)
    _unlink_descriptors((prefix, entry.prefix.absolute()))
    known = [str(p) for p in _registered_prefixes() if p.resolve() != prefix]
    if (paths.install_root() / PREFIXES_FILE).exists():
        jsonfile.write_atomic(paths.install_root() / PREFIXES_FILE, sorted(known))
    if left:
        raise InfraError(f"{entry.name} is removed from the installs, but {len(left)} of its paths could not be "
                         f"deleted ({safe_text(left[0])}{', …' if len(left) > 1 else ''})",
                         hint=f"delete {doomed} by hand")


def descriptor_directories() -> list[Path]:
    """Where libvirt and other readers look for vhost-user descriptors a user may have linked an install's into
    (QEMU's docs/interop/vhost-user.json; the one under /usr/share belongs to packages)."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path("/etc/qemu/vhost-user"), config / "qemu" / "vhost-user"]


def _unlink_descriptors(prefixes: tuple[Path, ...]) -> None:
    """Links to the removed install's descriptor would send libvirt to a virtiofsd that is gone."""
    for directory in descriptor_directories():
        for link in directory.glob("*.json") if directory.is_dir() else ():
            target = Path(os.path.normpath(link.parent / os.readlink(link))) if link.is_symlink() else None
            if target is not None and any(target.is_relative_to(p) for p in prefixes):
                with contextlib.suppress(OSError):
                    link.unlink()


def _registered_prefixes() -> list[Path]:
    try:
        data = json.loads(safefile.read_bytes(paths.install_root() / PREFIXES_FILE))
    except (OSError, ValueError, RecursionError):
        return []
    return [Path(p) for p in data if isinstance(p, str)] if isinstance(data, list) else []  # damaged: rebuilt


def register_prefix(prefix: Path) -> None:
    """Remember an install made outside the root so `list`, `env` and `doctor` find it."""
    root = paths.install_root()
    if prefix.parent == root:
        return
    root.mkdir(parents=True, exist_ok=True)
    known = {str(p) for p in _registered_prefixes() if (p / MANIFEST).exists()} | {str(prefix)}
    jsonfile.write_atomic(root / PREFIXES_FILE, sorted(known))


def list_installs() -> list[Install]:
    root = paths.install_root()
    prefixes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    prefixes += _registered_prefixes()
    found = []
    for prefix in prefixes:
        entry = _install_at(prefix)
        if entry is not None:
            found.append(entry)
    return found


def _install_at(prefix: Path) -> Install | None:
    """The install at prefix, named by its directory (what `mv` changes), never by what its record says (a copy,
    a move or a plant keeps the old name)."""
    prefix = Path(os.path.abspath(prefix))  # `..` from inside bin/ names the install; a link stays a link
    try:
        record = manifest.load(prefix)
    except ManifestError as exc:
        return Install(prefix.name, prefix, None, str(exc))
    return Install(prefix.name, prefix, record) if record else None


def hint_for_missing(name: str) -> str:
    """Only what exists: the build of a recipe of that name, else where the installs and recipes are listed."""
    try:
        recipe = name in RecipeBook(default_layers(())).names()
    except Exception:  # a broken recipe directory is no reason to fail the hint
        recipe = False
    return f"qemuprov build {name}" if recipe else "`qemuprov list` shows the installs, `qemuprov recipes` the recipes"


def find_install(name_or_prefix: str) -> Install:
    """An install by name, or any directory holding a qemuprov.json (damaged or not: see Install.intact)."""
    if not name_or_prefix.strip():
        raise UserError("an empty install name", hint="give a name from `qemuprov list`, or a prefix qemuprov built")
    path = Path(name_or_prefix)
    if "/" in name_or_prefix or name_or_prefix in (".", "..") or (path / MANIFEST).exists():
        entry = _install_at(path)
        if entry is None:
            raise UserError(f"{name_or_prefix}: no {MANIFEST} here, so it is not a qemuprov install",
                            hint="give an install name from `qemuprov list`, or a prefix qemuprov built")
        return entry
    everything = list_installs()
    named = [e for e in everything if e.name == name_or_prefix]
    if len(named) > 1:
        raise UserError(f'"{name_or_prefix}" names {len(named)} installs: ' + ", ".join(str(e.prefix) for e in named),
                        hint="give the prefix of the one you mean")
    if named:
        return named[0]
    names = ", ".join(e.name for e in everything) or "none yet"
    raise UserError(f'no install named "{name_or_prefix}" (installed: {names})', hint=hint_for_missing(name_or_prefix))
