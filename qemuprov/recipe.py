"""Recipes: TOML files that describe a QEMU tree and its virtiofsd, parsed into frozen dataclasses.

Validation is strict and happens before anything slow: every problem is reported as one line that names
the file and the key, raised as a UserError (exit 2).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from qemuprov import arches
from qemuprov.errors import UserError
from qemuprov.infra import paths, safefile

_T = TypeVar("_T")

FORMAT = 1
ARCHES = tuple(arches.ARCHES)


class VirtiofsdSource(StrEnum):
    """Where a recipe's virtiofsd is built from (what it then is: VirtiofsdFlavour)."""

    QEMU = "qemu"  # the C daemon in the QEMU tree (QEMU 5.0 - 7.2)
    RUST = "rust"  # the separate Rust daemon (required from QEMU 8.0)
    NONE = "none"  # no virtiofsd: the user brings their own


class Crates(StrEnum):
    REGISTRY = "registry"  # cargo fetches the locked crates from its registry (needs the network)
    DEBIAN = "debian"  # offline, from the librust-*-dev packages in the builder (/usr/share/cargo/registry)


class FirmwareSet(StrEnum):
    """Which of the tree's firmware blobs an install keeps (knowledge/firmware.py says which are needed)."""

    NEEDED = "needed"  # what the install's arches boot without UEFI
    ALL = "all"  # every blob the tree installs (edk2 for UEFI guests, other targets' firmware)


class VirtiofsdFlavour(StrEnum):
    """What a virtiofsd is, in plans, manifests, probes and [expect]: the one vocabulary for it."""

    C = "c"
    RUST = "rust"
    NONE = "none"


# The schema: a key maps to its type, or to a nested table. `list` means a list of strings.
_SOURCE_KEYS: dict[str, Any] = {"git": str, "ref": str, "commit": str, "tarball": str, "sha256": str}
SCHEMA: dict[str, Any] = {
    "format": int,
    "name": str,
    "description": str,
    "builder": str,
    "extends": str,
    "qemu": {**_SOURCE_KEYS, "arches": list, "configure": list, "firmware": str, "patches": list},
    "virtiofsd": {"source": str, **_SOURCE_KEYS, "builder": str, "static": bool, "crates": str, "patches": list},
    "verify": {"osv": bool},
    "expect": {"dax": bool, "arches": list, "virtiofsd": str, "version": str, "netdevs": list, "aio_native": bool},
}
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "a list of strings"}

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")  # a full id, or an abbreviation git would take
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_GIT_URL_RE = re.compile(r"^(https?|git|ssh|file)://\S+$|^\w[\w.-]*@[\w.-]+:\S+$")  # never an option (-u...)
_TARBALL_URL_RE = re.compile(r"^(https?|file)://\S+$")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_PATCH_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$")
PATCH_CAP = 16 << 20  # a patch larger than this is no patch a recipe should carry


@dataclass(frozen=True)
class Source:
    """Where a tree comes from: git + ref (optionally pinned to a commit), or a tarball + sha256."""

    git: str | None = None
    ref: str | None = None
    commit: str | None = None
    tarball: str | None = None
    sha256: str | None = None

    @property
    def url(self) -> str:
        return self.git or self.tarball or ""

    def describe(self) -> str:
        if self.git:
            pin = f" @ {self.commit}" if self.commit else ""
            return f"{self.git} ({self.ref}{pin})"
        return f"{self.tarball} (sha256 {self.sha256})"


@dataclass(frozen=True)
class Patch:
    """A patch a recipe applies to a tree after the fetch: its name as the recipe gives it, the file it was found
    as (beside the recipe that names it, else among the shipped ones), and the sha256 of its bytes, which is what
    a build's inputs and its binary cache key see."""

    name: str
    sha256: str
    location: str


@dataclass(frozen=True)
class QemuSpec:
    source: Source
    arches: tuple[str, ...]
    configure: tuple[str, ...] = ()
    firmware: FirmwareSet = FirmwareSet.NEEDED  # all: keep edk2 and other targets' blobs too
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class VirtiofsdSpec:
    source: VirtiofsdSource
    tree: Source | None = None  # the rest only for source = "rust"
    builder: str | None = None  # None: the recipe's builder
    static: bool = False  # a static binary runs on hosts older than its builder
    crates: Crates = Crates.REGISTRY
    patches: tuple[Patch, ...] = ()


@dataclass(frozen=True)
class Expect:
    """Promises checked against the probe of the installed result; a miss fails the build."""

    dax: bool | None = None
    arches: tuple[str, ...] = ()
    virtiofsd: VirtiofsdFlavour | None = None
    version: str | None = None  # a QEMU version prefix, e.g. "7.2"
    netdevs: tuple[str, ...] = ()  # -netdev backends every QEMU must have ("user": OSv's run.py)
    aio_native: bool | None = None  # -drive aio=native (OSv's run.py)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    builder: str
    qemu: QemuSpec | None  # None: a recipe for the Rust virtiofsd alone
    virtiofsd: VirtiofsdSpec
    expect: Expect
    path: Path
    origin: str
    extends: str | None = None
    chain: tuple[str, ...] = field(default=())  # files merged to make this recipe, base first
    verify_osv: bool = False  # `build --verify` boots with OSv's scripts/run.py command lines

    @property
    def virtiofsd_flavour(self) -> VirtiofsdFlavour:
        """What the recipe's virtiofsd is, from where it is built."""
        return {VirtiofsdSource.QEMU: VirtiofsdFlavour.C, VirtiofsdSource.RUST: VirtiofsdFlavour.RUST,
                VirtiofsdSource.NONE: VirtiofsdFlavour.NONE}[self.virtiofsd.source]

    @property
    def arches(self) -> tuple[str, ...]:
        return self.qemu.arches if self.qemu else ()

    def patches(self, section: str) -> tuple[Patch, ...]:
        """What the recipe applies to a section's tree after the fetch, in order."""
        if section == "qemu":
            return self.qemu.patches if self.qemu else ()
        return self.virtiofsd.patches

    def sources(self) -> dict[str, Source]:
        """The trees this recipe builds, by section ("qemu", "virtiofsd"): the one list of them."""
        found = {"qemu": self.qemu.source} if self.qemu else {}
        if self.virtiofsd.tree is not None:
            found["virtiofsd"] = self.virtiofsd.tree
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["chain"] = list(self.chain)
        return data

    def build_inputs(self, *, of_the_bytes: bool = False) -> dict[str, Any]:
        """The recipe less what does not change a build: where it was read from and its description; with
        of_the_bytes, also what only names or checks it ([expect], [verify], its name and parent), which a
        binary cache key leaves out since they do not change a single byte of the install."""
        left_out = DESCRIPTIVE_KEYS + (PROMISE_KEYS if of_the_bytes else ())
        inputs = {k: v for k, v in self.to_dict().items() if k not in left_out}
        for section in ("qemu", "virtiofsd"):  # a patch by its bytes, wherever it was found
            if inputs.get(section):
                inputs[section]["patches"] = [{"name": p["name"], "sha256": p["sha256"]}
                                              for p in inputs[section]["patches"]]
        return inputs


DESCRIPTIVE_KEYS = ("path", "origin", "chain", "description")
PROMISE_KEYS = ("expect", "verify_osv", "name", "extends")


@dataclass(frozen=True)
class Layer:
    origin: str  # "shipped", "user", or the directory given
    directory: Path


def _fail(path: Path, key: str | None, problem: str, hint: str | None = None) -> UserError:
    where = f"{path}: {key}: " if key else f"{path}: "
    return UserError(where + problem, hint=hint)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _check_shape(path: Path, data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise _fail(path, dotted, f"unknown key{_did_you_mean(key, schema)} (known here: {known})")
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise _fail(path, dotted, f"must be a table ([{dotted}]), not {type(value).__name__}")
            _check_shape(path, value, expected, prefix=f"{dotted}.")
            continue
        # bool is an int in Python; keep them apart so `format = true` is rejected.
        wrong = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        if expected is list and not wrong:
            wrong = not all(isinstance(item, str) for item in value)
        if wrong:
            raise _fail(path, dotted, f"must be {_TYPE_NAMES[expected]}, got {value!r}")


def read_recipe_file(path: Path) -> dict[str, Any]:
    """Read one recipe file and check its keys and types (not yet its meaning)."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, None, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise _fail(path, None, "nested too deeply to be a recipe") from None
    except UnicodeDecodeError as exc:
        raise _fail(path, None, f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                    "save the file as UTF-8") from None
    except OSError as exc:
        raise _fail(path, None, f"cannot read: {exc.strerror}") from None
    _check_shape(path, data, SCHEMA)
    if "format" not in data:
        raise _fail(path, "format", f"missing; add `format = {FORMAT}` at the top")
    if data["format"] != FORMAT:
        raise _fail(path, "format", f"unsupported format {data['format']} (this qemuprov reads {FORMAT})")
    name = data.get("name")
    if name is None:
        raise _fail(path, "name", f'missing; add `name = "{path.stem}"`')
    if not NAME_RE.match(name):
        raise _fail(path, "name", f'"{name}" is not a valid name (lowercase letters, digits, ".", "_", "-")')
    if name != path.stem:
        raise _fail(path, "name", f'"{name}" does not match the file name; rename the file to {name}.toml')
    return data


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items() if k != "extends"}
    for key, value in child.items():
        if not isinstance(value, dict):
            merged[key] = value
            continue
        table = merged.setdefault(key, {})
        # A child that names a new source replaces the parent's kind of source; a mirror URL keeps the ref
        # and the commit pin (same history), a new ref drops the parent's pin.
        if "tarball" in value:
            for stale in ("git", "ref", "commit", "sha256"):
                table.pop(stale, None)
        if "git" in value:
            table.pop("tarball", None)
            table.pop("sha256", None)
        if "ref" in value and "commit" not in value:
            table.pop("commit", None)
        table.update(value)
    return merged


def valid_ref(ref: str) -> bool:
    """git check-ref-format's rules, for a branch, a tag, or a commit id."""
    if not ref or ref.startswith(("-", "/")) or ref.endswith(("/", ".", ".lock")):
        return False
    if ".." in ref or "@{" in ref or "//" in ref or ref == "@" or _BAD_REF_CHARS.search(ref):
        return False
    return not any(part.startswith(".") for part in ref.split("/"))


def _source(path: Path, table: Mapping[str, Any], section: str) -> Source:
    git, tarball = table.get("git"), table.get("tarball")
    if git and tarball:
        raise _fail(path, f"{section}.tarball", "give either git (+ ref) or tarball (+ sha256), not both")
    if git:
        if not (_GIT_URL_RE.match(git) or git.startswith("/")):
            raise _fail(path, f"{section}.git", f'"{git}" is not a git URL '
                        "(https://, ssh://, git://, file://, user@host:path or an absolute path)")
        ref, commit = table.get("ref"), table.get("commit")
        if ref is None and commit is None:
            raise _fail(path, f"{section}.ref", "missing; name a branch, a tag or a commit")
        if ref is not None and not valid_ref(ref):
            raise _fail(path, f"{section}.ref", f'"{ref}" is not a valid branch, tag or commit name')
        if commit is not None and not COMMIT_RE.match(commit):
            raise _fail(path, f"{section}.commit", f'"{commit}" is not a commit id (7 to 40 lowercase hex digits)')
        for stray in ("sha256",):
            if stray in table:
                raise _fail(path, f"{section}.{stray}", "only for tarball sources; remove it")
        if ref is None and commit is not None and len(commit) < 40:
            raise _fail(path, f"{section}.ref", "missing; an abbreviated commit pins a ref, it does not name one")
        return Source(git=git, ref=ref or commit, commit=commit)
    if tarball:
        if not _TARBALL_URL_RE.match(tarball):
            raise _fail(path, f"{section}.tarball", f'"{tarball}" is not an http(s):// or file:// URL')
        sha256 = table.get("sha256")
        if sha256 is None:
            raise _fail(path, f"{section}.sha256", "missing; a tarball needs its sha256 (sha256sum FILE)")
        if not SHA256_RE.match(sha256):
            raise _fail(path, f"{section}.sha256", f'"{sha256}" is not 64 lowercase hex characters')
        for stray in ("ref", "commit"):
            if stray in table:
                raise _fail(path, f"{section}.{stray}", "only for git sources; remove it")
        return Source(tarball=tarball, sha256=sha256)
    raise _fail(path, f"{section}.git", "missing; give a git URL (with ref) or a tarball URL (with sha256)")


def _arches(path: Path, key: str, values: list[str]) -> tuple[str, ...]:
    for arch in values:
        if arch not in ARCHES:
            raise _fail(path, key, f'unknown arch "{arch}"{_did_you_mean(arch, ARCHES)} '
                        f"(supported: {', '.join(ARCHES)})")
    if len(set(values)) != len(values):
        raise _fail(path, key, "lists an arch twice")
    return tuple(values)


def _choice(path: Path, key: str, value: str, enum: type[StrEnum]) -> Any:
    choices = [member.value for member in enum]  # type: ignore[attr-defined]
    if value not in choices:
        raise _fail(path, key, f'"{value}" is not one of {", ".join(choices)}{_did_you_mean(value, choices)}')
    return enum(value)


def _patches(path: Path, section: str, names: list[str], beside: Path) -> tuple[Patch, ...]:
    """The patch files a section names: beside the recipe file that names them, else among the shipped ones."""
    key = f"{section}.patches"
    if len(set(names)) != len(names):
        raise _fail(path, key, "names a patch twice")
    found = []
    for name in names:
        if not _PATCH_NAME_RE.match(name) or ".." in name.split("/"):
            raise _fail(path, key, f'"{name[:80]}" is not a patch file name (a relative path of letters, digits, '
                        '".", "_", "+", "-"; no "..")')
        places = [beside / name, paths.shipped_dir("patches") / name]
        for place in places:
            try:
                data = safefile.read_bytes(place, PATCH_CAP)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _fail(path, key, f"{place}: cannot read it ({exc.strerror or exc})") from None
            found.append(Patch(name, hashlib.sha256(data).hexdigest(), str(place)))
            break
        else:
            raise _fail(path, key, f'no patch file "{name}" (looked in {places[0].parent} and {places[1].parent})',
                        hint="put the patch beside the recipe, or fix its name")
    return tuple(found)


def _qemu(path: Path, table: Mapping[str, Any], patch_dir: Path) -> QemuSpec:
    if "arches" not in table or not table["arches"]:
        raise _fail(path, "qemu.arches", f"missing; list the arches to build, e.g. {list(ARCHES)}")
    return QemuSpec(source=_source(path, table, "qemu"), arches=_arches(path, "qemu.arches", table["arches"]),
                    configure=tuple(table.get("configure", ())),
                    firmware=_choice(path, "qemu.firmware", table.get("firmware", "needed"), FirmwareSet),
                    patches=_patches(path, "qemu", table.get("patches", []), patch_dir))


def _virtiofsd(path: Path, table: Mapping[str, Any], known_builders: list[str], patch_dir: Path) -> VirtiofsdSpec:
    source = _choice(path, "virtiofsd.source", table.get("source", "qemu"), VirtiofsdSource)
    if source is not VirtiofsdSource.RUST:
        for stray in (*_SOURCE_KEYS, "builder", "static", "crates", "patches"):
            if stray in table:
                raise _fail(path, f"virtiofsd.{stray}", 'only for source = "rust"; remove it')
        return VirtiofsdSpec(source=source)
    builder = table.get("builder")
    if builder is not None and builder not in known_builders:
        raise _fail(path, "virtiofsd.builder", f'unknown builder "{builder}"{_did_you_mean(builder, known_builders)} '
                    f"(available: {', '.join(known_builders)})")
    return VirtiofsdSpec(source=source, tree=_source(path, table, "virtiofsd"), builder=builder,
                         static=table.get("static", False),
                         crates=_choice(path, "virtiofsd.crates", table.get("crates", "registry"), Crates),
                         patches=_patches(path, "virtiofsd", table.get("patches", []), patch_dir))


def recipe_from_table(path: Path, data: dict[str, Any], origin: str, chain: tuple[str, ...],
                      builders: Iterable[str], patch_dirs: Mapping[str, Path] | None = None) -> Recipe:
    """Turn a merged, shape-checked table into a Recipe, checking what the values mean. Every section is checked,
    and all of their problems are reported together (one line), not only the first."""
    problems: list[str] = []

    def checked(check: Callable[[], _T]) -> _T | None:
        try:
            return check()
        except UserError as exc:
            problems.append(exc.message.removeprefix(f"{path}: "))
            return None

    known_builders = sorted(builders)
    builder = checked(lambda: _builder(path, data.get("builder"), known_builders))
    beside = dict(patch_dirs or {})
    qemu = checked(lambda: _qemu(path, data["qemu"], beside.get("qemu", path.parent))) if "qemu" in data else None
    virtiofsd = checked(lambda: _virtiofsd(path, data.get("virtiofsd", {}), known_builders,
                                           beside.get("virtiofsd", path.parent)))
    if "qemu" not in data and virtiofsd is not None and virtiofsd.source is not VirtiofsdSource.RUST:
        problems.append('qemu: missing; add a [qemu] table with git + ref (or tarball + sha256), or, for the '
                        'daemon alone, set [virtiofsd] source = "rust" with its git + ref')
    expect = checked(lambda: _expect(path, data.get("expect", {}), qemu, "qemu" in data))
    if problems or builder is None or virtiofsd is None or expect is None:
        raise UserError(f"{path}: " + "; ".join(problems))
    return Recipe(
        name=data["name"],
        description=data.get("description", ""),
        builder=builder,
        qemu=qemu,
        virtiofsd=virtiofsd,
        expect=expect,
        path=path,
        origin=origin,
        extends=data.get("extends"),
        chain=chain,
        verify_osv=data.get("verify", {}).get("osv", False),
    )


def _builder(path: Path, builder: str | None, known_builders: list[str]) -> str:
    if builder is None:
        raise _fail(path, "builder", "missing; name a builder image under containers/ (e.g. debian-bookworm)")
    if builder not in known_builders:
        raise _fail(path, "builder", f'unknown builder "{builder}"{_did_you_mean(builder, known_builders)} '
                    f"(available: {', '.join(known_builders)})")
    return builder


def _expect(path: Path, expect_table: dict[str, Any], qemu: QemuSpec | None, has_qemu: bool) -> Expect:
    if not has_qemu:
        for qemu_only in ("dax", "arches", "version", "netdevs", "aio_native"):
            if qemu_only in expect_table:
                raise _fail(path, f"expect.{qemu_only}", "promises something about QEMU, which this recipe "
                            "does not build (no [qemu]); remove it")
    expect_arches = _arches(path, "expect.arches", expect_table.get("arches", []))
    missing = [arch for arch in expect_arches if qemu and arch not in qemu.arches]
    if missing:
        raise _fail(path, "expect.arches", f"expects {', '.join(missing)} but qemu.arches does not build it")
    flavour = expect_table.get("virtiofsd")
    return Expect(
        dax=expect_table.get("dax"),
        arches=expect_arches,
        virtiofsd=_choice(path, "expect.virtiofsd", flavour, VirtiofsdFlavour) if flavour else None,
        version=expect_table.get("version"),
        netdevs=tuple(expect_table.get("netdevs", ())),
        aio_native=expect_table.get("aio_native"),
    )


def default_layers(extra_dirs: Iterable[str] = ()) -> list[Layer]:
    """Shipped recipes, then the user's config dir, then QEMUPROV_RECIPES, then --recipes: later wins."""
    layers = [Layer("shipped", paths.shipped_dir("recipes")), Layer("user", paths.user_recipes_dir())]
    env_value = os.environ.get("QEMUPROV_RECIPES", "")
    for entry in filter(None, env_value.split(os.pathsep)):
        if not Path(entry).is_dir():
            raise UserError(f"QEMUPROV_RECIPES: {entry} is not a directory",
                            hint="point QEMUPROV_RECIPES at a directory of *.toml recipes, or unset it")
        layers.append(Layer(entry, Path(entry)))
    for entry in extra_dirs:
        if not Path(entry).is_dir():
            raise UserError(f"--recipes: {entry} is not a directory",
                            hint="give a directory that holds *.toml recipes")
        layers.append(Layer(entry, Path(entry)))
    return layers


MAX_EXTENDS = 32


class RecipeBook:
    """All recipes visible through a stack of layers; a name in a later layer hides the same name below."""

    def __init__(self, layers: list[Layer], builders: Iterable[str] | None = None) -> None:
        self.layers = layers
        self.builders = tuple(builders) if builders is not None else paths.builder_names()

    def _files(self, name: str) -> list[tuple[Layer, Path]]:
        """Every file for `name`, lowest layer first."""
        return [(layer, layer.directory / f"{name}.toml") for layer in self.layers
                if (layer.directory / f"{name}.toml").is_file()]

    def names(self) -> list[str]:
        found = {p.stem for layer in self.layers if layer.directory.is_dir()
                 for p in layer.directory.glob("*.toml")}
        return sorted(found)

    def load(self, name: str) -> Recipe:
        files = self._files(name)
        if not files:
            names = self.names()
            raise UserError(f'no recipe named "{name}"{_did_you_mean(name, names)}',
                            hint="`qemuprov recipes` lists them; add your own to "
                                 f"{paths.user_recipes_dir()} or pass --recipes DIR")
        layer, path = files[-1]
        data, chain, patch_dirs = self._resolve(name, len(files) - 1, ())
        return recipe_from_table(path, data, layer.origin, chain, self.builders, patch_dirs)

    def _resolve(self, name: str, index: int, seen: tuple[str, ...]
                 ) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Path]]:
        """The merged table, the files it came from (base first), and per section the directory of the last file
        that names its patches (a child's list replaces its parent's, and is looked up beside the child)."""
        files = self._files(name)
        _, path = files[index]
        if str(path) in seen:
            raise _fail(path, "extends", "forms a cycle: " + " -> ".join([*seen, str(path)]))
        if len(seen) >= MAX_EXTENDS:
            raise _fail(path, "extends", f"a chain of more than {MAX_EXTENDS} recipes; extend a recipe nearer the "
                        "bottom")
        data = read_recipe_file(path)
        own_patches = {section: path.parent for section in ("qemu", "virtiofsd")
                       if "patches" in data.get(section, {})}
        parent = data.get("extends")
        if parent is None:
            return data, (str(path),), own_patches
        parent_files = self._files(parent)
        # `extends` naming the recipe itself means: the one this file hides, in a lower layer.
        parent_index = index - 1 if parent == name else len(parent_files) - 1
        if parent_index < 0 and parent == name:
            raise _fail(path, "extends", f'names this recipe itself, and no lower layer has a "{name}" to extend',
                        hint="extend a shipped recipe (`qemuprov recipes` lists them), or remove extends")
        if parent_index < 0:
            raise _fail(path, "extends", f'no recipe named "{parent}" to extend'
                        f"{_did_you_mean(parent, self.names())}")
        parent_data, chain, patch_dirs = self._resolve(parent, parent_index, (*seen, str(path)))
        return _merge(parent_data, data), (*chain, str(path)), {**patch_dirs, **own_patches}

    def load_all(self) -> tuple[list[Recipe], list[UserError]]:
        recipes, errors = [], []
        for name in self.names():
            try:
                recipes.append(self.load(name))
            except UserError as exc:
                errors.append(exc)
        return recipes, errors


def split_arches(requested: str) -> tuple[str, ...]:
    """--arch A,B: at least one arch, no empty ones."""
    arches = tuple(a.strip() for a in requested.split(","))
    if not all(arches):
        raise UserError(f'--arch: "{requested}" names an empty arch', hint="for example --arch x86_64,aarch64")
    return tuple(dict.fromkeys(arches))


def chosen_arches(recipe: Recipe, requested: str | None) -> tuple[str, ...]:
    """--arch A,B of a build: a subset of what the recipe builds; None: all of them."""
    if requested is None:
        return recipe.arches
    if recipe.qemu is None:
        raise UserError(f"--arch: {recipe.name} builds no QEMU, only virtiofsd (which serves guests of any arch)",
                        hint="leave out --arch")
    arches = split_arches(requested)
    for arch in arches:
        if arch not in recipe.qemu.arches:
            built = ", ".join(recipe.qemu.arches)
            raise UserError(f'--arch: "{arch}" is not built by {recipe.name} (it builds {built})',
                            hint="pick from the recipe's qemu.arches, or extend the recipe")
    return arches
