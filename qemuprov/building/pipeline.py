"""From recipe to installed prefix, as named phases: resolve, up to date?, fetch, plan, builder, configure,
compile, install, virtiofsd, finish, check, record, commit. Each phase is timed under its name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

import filelock

from qemuprov import __version__
from qemuprov.building import ccache, qemu_steps, rust_virtiofsd
from qemuprov.building.context import Context, Options, missing_dependency_hint
from qemuprov.building.qemu_steps import Configured
from qemuprov.building.staging import commit_prefix, finish_tree, stale_staging_cleanup, write_vhost_user_descriptor
from qemuprov.ci import binary_cache
from qemuprov.errors import BuildError, InfraError, UserError
from qemuprov.infra import paths
from qemuprov.infra.procs import RunningGroups
from qemuprov.infra.progress import Reporter, notice
from qemuprov.infra.render import safe_text
from qemuprov.infra.runners import Runner, get_runner
from qemuprov.knowledge import plan, probe
from qemuprov.proving import verify
from qemuprov.recipe import Crates, Recipe, Source, VirtiofsdFlavour, split_arches
from qemuprov.records import installs
from qemuprov.records.manifest import (
    BootResult,
    BuilderImageRecord,
    Manifest,
    Substitution,
    Tools,
    VirtiofsdRecord,
)
from qemuprov.records.manifest import write as write_manifest
from qemuprov.sources import lockfiles, trees
from qemuprov.sources.revision import Resolution

_T = TypeVar("_T")
__all__ = ["Build", "Options", "Outcome", "check_expectations", "missing_dependency_hint", "validate_arches"]


class CacheMiss(InfraError):
    """--cache-only, and the cache gave no install: nothing was built."""

    def __init__(self, miss: binary_cache.Miss) -> None:
        super().__init__(f"--cache-only: {miss.message}; nothing was built",
                         hint="push this build from a job that compiles, check --cache and the trusted keys, or "
                              "drop --cache-only")
        self.reason = miss.reason


@dataclass
class Outcome:
    prefix: Path
    up_to_date: bool
    timings: dict[str, float]
    log: Path | None
    manifest: Manifest
    verified: list[BootResult] | None = None  # --verify's guest boots
    pushed: str | None = None  # --push: the tag it went under


class VerifyFailed(BuildError):
    """--verify: a guest boot failed. Before the swap, nothing was installed; after it (a tree that cannot move),
    the install stays, recorded with the failure."""

    def __init__(self, recipe: str, outcomes: list[BootResult], installed: bool) -> None:
        failed = ", ".join(o.arch for o in outcomes if not o.ok)
        super().__init__(f"the build of {recipe} failed its guest boot on {failed}: "
                         + ("installed, and recorded so" if installed else "not installed"),
                         hint="see the table above; qemuprov verify NAME --arch A repeats one boot"
                              + ("" if installed else " (the previous install, if any, is untouched)"))
        self.outcomes = outcomes


@dataclass(frozen=True)
class Resolved:
    """The recipe's sources, each resolved once (git ls-remote, or the tarball's checksum), and the inputs key."""

    qemu: Resolution | None
    virtiofsd: Resolution | None
    key: str


class Build:
    def __init__(self, recipe: Recipe, opts: Options, reporter: Reporter) -> None:
        self.recipe, self.opts, self.report = recipe, opts, reporter

    def run(self) -> Outcome:
        prefix_key = "prefix-" + hashlib.sha256(str(self.opts.prefix).encode()).hexdigest()[:16]
        with _file_lock(self.recipe.name, f"another qemuprov build of {self.recipe.name} is running",
                   "wait for it to finish; builds of other recipes can run meanwhile"), \
                _file_lock(prefix_key, f"another qemuprov build is installing into {self.opts.prefix}",
                      "wait for it to finish, or build into another --prefix"):
            return self._phases()

    def _phases(self) -> Outcome:
        """The build, top to bottom."""
        recipe, opts = self.recipe, self.opts
        ctx = Context(recipe, opts, self.report, paths.work_dir(recipe.name))
        _clean_up_after_killed_builds(ctx.work, opts)
        with ctx.timer.phase("resolve"):
            resolved = resolve(recipe, opts, self.report)
        if not opts.force and (record := _up_to_date(opts.prefix, resolved.key)) is not None:
            verified, record = _verify_installed(ctx, record)
            pushed = None if record.substituted else _push(ctx, record)
            return Outcome(opts.prefix, True, ctx.timer.total(), None, record, verified, pushed)
        cache_key = binary_cache.key(recipe.build_inputs(of_the_bytes=True), opts.arches, *_revisions(resolved),
                                     _builders(recipe, opts))
        with _build_log(ctx.work) as (log, log_path), _staging(opts.prefix) as staging:
            ctx.begin(log, log_path, staging)
            if opts.cache_only and not (opts.binary_cache and cache_key):
                raise CacheMiss(binary_cache.Miss("not-cacheable", "this build cannot come from a binary cache: "
                                                  + ("none is configured" if not opts.binary_cache else
                                                     "host builds and trees before QEMU 5.2 are not cached")))
            if opts.binary_cache and opts.use_cache and cache_key and (
                    record := substitute(ctx, resolved, opts.binary_cache, cache_key)) is not None:
                verified, record = _verify_and_install(ctx, record)
                return Outcome(opts.prefix, False, ctx.timings, log_path, record, verified)
            the_plan, configured = build_qemu(ctx, resolved.qemu) if resolved.qemu else (None, None)
            vfs_image = build_rust_virtiofsd(ctx, resolved.virtiofsd) if resolved.virtiofsd else None
            with ctx.phase("finish"):
                virtiofsd, firmware = finish_tree(ctx.staged, opts.prefix, the_plan)
            with ctx.phase("probe", "checking the build against the recipe's [expect]"):
                probes = probe_and_check(ctx)
            ctx.timer.total()
            record = make_manifest(ctx, resolved, the_plan, configured, vfs_image, probes, virtiofsd, firmware)
            if not the_plan or the_plan.tree.relocatable:  # only such an install can go to a binary cache
                record = dataclasses.replace(record, cache_key=cache_key)
                verified, record = _verify_and_install(ctx, record)
            else:  # its binaries find their data only at the prefix they were built for: verify them there
                install(ctx, record)
                verified, record = _verify_installed(ctx, record)
            pushed = _push(ctx, record)
        return Outcome(opts.prefix, False, ctx.timings, log_path, record, verified, pushed)


def _verify_and_install(ctx: Context, record: Manifest) -> tuple[list[BootResult] | None, Manifest]:
    try:
        verified, record = _verify_staged(ctx, record)
    except UserError:
        install(ctx, record)  # the build stands: only its proof cannot run here (a C daemon as a normal user)
        raise
    install(ctx, record)
    return verified, record


def _verify_staged(ctx: Context, record: Manifest) -> tuple[list[BootResult] | None, Manifest]:
    """--verify before the swap: the staged tree's QEMUs and virtiofsd, with its firmware where it will be
    staged; a failure installs nothing."""
    if ctx.opts.verify is None:
        return None, record
    staged_bin = ctx.staged / "bin"
    firmware = [str(ctx.staged / Path(d).relative_to(ctx.opts.prefix)) if Path(d).is_relative_to(ctx.opts.prefix)
                else d for d in record.firmware]
    with ctx.phase("verify", "booting a guest over virtio-fs with the staged install"):
        outcomes = verify.verify_all(sorted(staged_bin.glob("qemu-system-*")) or probe.qemus_on_path(),
                                     staged_bin / "virtiofsd", firmware, ctx.opts.arches or None, "auto", None,
                                     ctx.opts.verify)
    if not all(o.ok for o in outcomes):
        raise VerifyFailed(ctx.recipe.name, outcomes, installed=False)
    return outcomes, dataclasses.replace(record, verify=tuple(outcomes))


def _verify_installed(ctx: Context, record: Manifest) -> tuple[list[BootResult] | None, Manifest]:
    """--verify of what is installed (up to date, or a tree that cannot move), recorded in its manifest."""
    if ctx.opts.verify is None:
        return None, record
    targets = verify.install_targets(installs.Install(record.name, ctx.opts.prefix, record))
    with ctx.phase("verify", "booting a guest over virtio-fs with the install"):
        outcomes = verify.verify_all(targets.qemus, targets.virtiofsd, targets.firmware, ctx.opts.arches or None,
                                     "auto", None, ctx.opts.verify)
    record = dataclasses.replace(record, verify=tuple(outcomes))
    write_manifest(ctx.opts.prefix, record)
    if not all(o.ok for o in outcomes):
        raise VerifyFailed(ctx.recipe.name, outcomes, installed=True)
    return outcomes, record


def _push(ctx: Context, record: Manifest) -> str | None:
    """--push of what was just built here (a pulled install is never pushed on: see binary_cache.push)."""
    settings = ctx.opts.binary_cache
    if not ctx.opts.push or settings is None:
        return None
    with ctx.phase("push", f"{settings.location}"):
        return binary_cache.push(ctx.opts.prefix, record, settings)


def install(ctx: Context, record: Manifest) -> None:
    """The tail every install shares, built or pulled: its record into the staged tree, the swap, and the
    prefix remembered."""
    write_manifest(ctx.staged, record)
    with ctx.phase("commit", str(ctx.opts.prefix)):
        commit_prefix(ctx.staged, ctx.opts.prefix)
        installs.register_prefix(ctx.opts.prefix)


def substitute(ctx: Context, resolved: Resolved, settings: binary_cache.Settings, cache_key: str) -> Manifest | None:
    """The build from the binary cache, staged and recorded like a built one (probed against [expect]); the
    caller swaps it in."""
    staged = ctx.staged  # a pulled tree is relocatable: it is staged at the install's own prefix
    location = settings.location
    with ctx.phase("substitute", f"{location} ({cache_key[:16]}…)"):
        hit = binary_cache.pull(settings, cache_key, ctx.recipe.name, ctx.opts.arches, staged, ctx.report)
    if isinstance(hit, binary_cache.Miss):
        paths.remove_tree(staged)
        if ctx.opts.cache_only:
            raise CacheMiss(hit)
        notice(f"{hit.message}: building" + ("" if hit.reason == "no-entry" else
                                             " (--no-cache builds without asking the cache)"))
        return None
    ctx.timings.update(hit.timings)
    with ctx.phase("probe", "checking the pulled build against the recipe's [expect]"):
        probes = probe_and_check(ctx, pulled=True)
    pulled, prefix = hit.record, ctx.opts.prefix
    if (staged / "bin" / "virtiofsd").exists():
        write_vhost_user_descriptor(staged, prefix)  # it named the prefix of the machine that built it
    old = Path(pulled.prefix)
    # What the entry says of itself is taken only where it describes the bytes it shipped (plan, tools,
    # virtiofsd, firmware layout); what was looked up, resolved and checked here is this machine's own.
    record = dataclasses.replace(
        pulled, name=prefix.name, prefix=str(prefix), probe=tuple(probes), inputs=resolved.key,
        timings=ctx.timer.total(),
        source=resolved.qemu.record if resolved.qemu else None,
        virtiofsd_source=resolved.virtiofsd.record if resolved.virtiofsd else None,
        recipe=ctx.recipe.to_dict(), cache_key=cache_key, verify=None, ccache=None, runner=ctx.opts.runner.name,
        firmware=tuple(str(prefix / Path(d).relative_to(old)) if Path(d).is_relative_to(old) else d
                       for d in pulled.firmware),
        virtiofsd=dataclasses.replace(pulled.virtiofsd, binary=str(prefix / "libexec" / "virtiofsd"))
        if pulled.virtiofsd.binary else pulled.virtiofsd,
        log=str(ctx.log_path), built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        lock=next((str(r.locked) for r in (resolved.qemu, resolved.virtiofsd) if r and r.locked), None),
        reproduce=" ".join(["qemuprov", *map(shlex.quote, ctx.opts.argv)]),
        substituted=Substitution(
            cache=str(location), tag=cache_key, digest=hit.digest, built_at=safe_text(str(pulled.built_at))[:40],
            checked_here=("signature" if not settings.allow_unsigned else "unsigned (allowed)",
                          "digests and sizes", "every tar member", "probe against [expect]"),
            from_entry=("plan", "tools", "builder_image", "virtiofsd", "firmware")))
    return record


def _revisions(resolved: Resolved) -> tuple[str | None, str | None]:
    return (resolved.qemu.record.revision if resolved.qemu else None,
            resolved.virtiofsd.record.revision if resolved.virtiofsd else None)


def _builders(recipe: Recipe, opts: Options) -> list[dict[str, str]] | None:
    """The builder images a container build runs in, as the cache key sees them; None for a host build. By the
    Dockerfile and the base image's name, not its local id: a machine that pulled debian:bookworm another day,
    or has no engine at all (--cache-only), looks up the same key."""
    if opts.runner.is_host:
        return None
    names = ([recipe.builder] if recipe.qemu else []) + \
        ([recipe.virtiofsd.builder or recipe.builder] if recipe.virtiofsd.tree else [])
    images = [image for n in dict.fromkeys(names) if (image := opts.runner.for_builder(n).image) is not None]
    return [{"builder": i.builder, "dockerfile": hashlib.sha256(i.dockerfile.read_bytes()).hexdigest(),
             "base": i.base} for i in images]


def resolve(recipe: Recipe, opts: Options, report: Reporter) -> Resolved:
    """Each source once: from the recipe's lock file where it has one, else from the remote (which moves the
    lock when asked to: --update-lock)."""
    locked = lockfiles.read(recipe)
    if opts.update_lock and lockfiles.git_sources(recipe):
        locked = lockfiles.make(recipe)
        lockfiles.write(locked)
        report.step("lock", f"{locked.path} moved to what the refs name now")
    found: dict[str, Resolution] = {}
    for section, src in recipe.sources().items():
        label = "" if section == "qemu" else "virtiofsd "
        if locked and section in locked.sources:
            found[section] = lockfiles.resolution(locked, section)
            report.step("resolve", f"{label}{src.describe()}: locked at {locked.sources[section].commit[:12]} "
                                   f"({locked.path})")
        else:
            report.step("resolve", label + src.describe())
            found[section] = trees.resolve(src, section)
    qemu, vfs = found.get("qemu"), found.get("virtiofsd")
    return Resolved(qemu, vfs, _inputs_key(recipe, opts, qemu, vfs))


def build_qemu(ctx: Context, revision: Resolution) -> tuple[plan.Plan, Configured]:
    assert ctx.recipe.qemu is not None
    with ctx.phase("fetch", str(ctx.work / "src")):
        src = _fetch(ctx, ctx.recipe.qemu.source, revision, "src", "qemu")
    tree = plan.inspect(src)
    the_plan = plan_for(ctx.recipe, tree, ctx.opts.prefix, ctx.opts.arches, ctx.runner)
    ctx.tree_prefix = the_plan.prefix  # a relocatable tree is configured for a fixed prefix, then moved
    if not ctx.runner.is_host:
        with ctx.phase("builder", ctx.runner.key):
            ctx.runner.prepare(ctx.log, ctx.report.line)
    socket_dir = ccache.socket_dir(ctx.opts.shared_ccache)
    network = bool(tree.missing_subprojects) or ccache.needs_network(ctx.opts.shared_ccache)
    with ctx.runner.session(inputs=[src, qemu_steps.pch_wrapper_path(ctx)], outputs=[ctx.staging, ctx.ccache_log],
                            caches=[ccache.directory()], local_only=[socket_dir] if socket_dir else [],
                            network=network, work=ctx.work):
        if ctx.runner.transport == "copy":
            ctx.report.step("copy", f"{ctx.runner.key} cannot see this machine's files: the sources go in and the "
                                    "install comes out through its API, the build tree stays in a named volume")
        ctx.remote_ccache = ccache.shared(
            ctx.opts.shared_ccache, ctx.runner.sees_local_files,
            lambda: ctx.capture(["sh", "-c", "ccache --version 2>/dev/null | head -1; true"], ctx.work, ctx.env()),
            ctx.runner.key)
        if not qemu_steps.has_system_slirp(ctx, tree):  # the tree's own slirp, then
            the_plan = plan_for(ctx.recipe, tree, ctx.opts.prefix, ctx.opts.arches, ctx.runner, system_slirp=False)
        configured = qemu_steps.configure(ctx, tree, the_plan, revision.record.revision)
        qemu_steps.compile_targets(ctx, tree, the_plan, configured)
        qemu_steps.install(ctx, tree, configured)
    return the_plan, configured


def plan_for(recipe: Recipe, tree: plan.Tree, prefix: Path, arches: tuple[str, ...], runner: Runner,
             system_slirp: bool = True) -> plan.Plan:
    """The one way a build plans a tree: for this runner's python, into this prefix."""
    return plan.make_plan(recipe, tree, prefix, arches, runner.tree_python, system_slirp=system_slirp)


def known_plan(recipe: Recipe) -> plan.PlanRecord | None:
    """The plan the last install of this recipe recorded; else, once an earlier build fetched the source, the
    plan a default build (--runner auto) would follow; None before either."""
    if recipe.qemu is None:
        return None
    for entry in installs.list_installs():
        if entry.recipe == recipe.name and entry.manifest and entry.manifest.plan:
            return entry.manifest.plan
    src = paths.work_dir(recipe.name) / "src"
    if not (src / "VERSION").exists():
        return None
    runner, _ = get_runner("auto", recipe.builder)
    return plan_for(recipe, plan.inspect(src), paths.install_root() / recipe.name, recipe.arches, runner).record()


def build_rust_virtiofsd(ctx: Context, revision: Resolution) -> BuilderImageRecord | None:
    """cargo build of the Rust virtiofsd, staged at libexec/virtiofsd; the builder image it ran in."""
    spec = ctx.recipe.virtiofsd
    assert spec.tree is not None
    with ctx.phase("fetch", f"virtiofsd {spec.tree.describe()}", timing="virtiofsd-fetch"):
        src = _fetch(ctx, spec.tree, revision, "virtiofsd-src", "virtiofsd")
    runner = ctx.runner.for_builder(spec.builder or ctx.recipe.builder)
    if not runner.is_host:
        with ctx.phase("builder", f"virtiofsd: {runner.key}", timing="virtiofsd-builder"):
            runner.prepare(ctx.log, ctx.report.line)
    cargo_home = paths.cache_dir() / "cargo"
    cargo_home.mkdir(parents=True, exist_ok=True)
    online = spec.crates is Crates.REGISTRY
    with ctx.phase("virtiofsd", f"cargo build ({spec.crates.value} crates{', static' if spec.static else ''})",
                   timing="virtiofsd-build"):
        if crates := rust_virtiofsd.crate_count(src):
            ctx.report.expect_crates(crates)
        with runner.session(inputs=[src], outputs=[ctx.staging], caches=[cargo_home], network=online,
                            work=ctx.work):
            status = rust_virtiofsd.build(spec, src, ctx.work / "virtiofsd-target", cargo_home, ctx.staged, runner,
                                          ctx.log, ctx.report.line)
    if status != 0:
        hint = "cargo could not fetch or compile a crate" if online else \
            'the builder lacks a crate or a library; with crates = "debian" use the debian-trixie-crates builder'
        ctx.fail("virtiofsd build", ["cargo", "build"], status, hint)
    return builder_image_record(runner)


def probe_and_check(ctx: Context, pulled: bool = False) -> list[probe.Probe]:
    results = [probe.probe_binary(p) for p in probe.binaries_in_prefix(ctx.staged)]
    problems = check_expectations(ctx.recipe, ctx.opts.arches, results)
    if problems and pulled:
        libraries = sorted(set(re.findall(r"error while loading shared libraries: ([\w.+-]+):", " ".join(problems))))
        hint = (f"build it here with --no-cache (a build that passes can be pushed over the entry), or fix the "
                f"recipe's [expect]; see {ctx.log_path} (the previous install is untouched)")
        if libraries:
            hint = (f"the entry was built in the {ctx.recipe.builder} builder and links its libraries, which this "
                    f"host lacks ({', '.join(libraries)}): build it here with --no-cache, or use a recipe whose "
                    f"builder is this host's distribution (the previous install is untouched)")
        raise BuildError(f"the build of {ctx.recipe.name} from the binary cache does not deliver what its recipe "
                         "promises: " + safe_text("; ".join(problems)), hint=safe_text(hint))
    if problems:
        raise BuildError(f"the build of {ctx.recipe.name} does not deliver what its recipe promises: "
                         + "; ".join(problems),
                         hint=f"see {ctx.log_path}; fix the recipe's [expect] or its configure arguments "
                              "(the previous install is untouched)")
    return [dataclasses.replace(r, path=str(ctx.final(Path(r.path)))) for r in results]  # final, not staged


def make_manifest(ctx: Context, resolved: Resolved, the_plan: plan.Plan | None, configured: Configured | None,
                  vfs_image: BuilderImageRecord | None, probes: list[probe.Probe],
                  virtiofsd: VirtiofsdRecord, firmware: tuple[str, ...]) -> Manifest:
    opts = ctx.opts
    return Manifest(
        name=opts.prefix.name,
        prefix=str(opts.prefix),
        recipe=ctx.recipe.to_dict(),
        source=resolved.qemu.record if resolved.qemu else None,
        virtiofsd_source=resolved.virtiofsd.record if resolved.virtiofsd else None,
        lock=str(next((r.locked for r in (resolved.qemu, resolved.virtiofsd) if r and r.locked), "")) or None,
        virtiofsd_builder_image=vfs_image,
        inputs=resolved.key,
        plan=the_plan.record() if the_plan else None,
        runner=opts.runner.name,
        builder_image=builder_image_record(opts.runner) if the_plan else vfs_image,
        tools=Tools(__version__, sys.version.split()[0], configured.compiler if configured else None,
                    "qemu/osdep.h" if configured and configured.precompiled_header else None),
        binaries=tuple(Path(p.path).name for p in probes),
        probe=tuple(probes),
        virtiofsd=virtiofsd,
        firmware=firmware,
        timings=ctx.timings,
        ccache=ccache.stats(ctx.ccache_log),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(ctx.log_path),
        reproduce=" ".join([*(f"{k}={shlex.quote(v)}" for k, v in opts.runner.compilers.items()),
                            shlex.join(["qemuprov", *opts.argv])]),
    )


def _inputs_key(recipe: Recipe, opts: Options, qemu: Resolution | None, vfs: Resolution | None) -> str:
    blob = json.dumps({"recipe": recipe.build_inputs(), "source": qemu.record.revision if qemu else "",
                       "virtiofsd": vfs.record.revision if vfs else None, "arches": opts.arches,
                       "runner": opts.runner.key, "compilers": opts.runner.compilers,
                       "prefix": str(opts.prefix), "qemuprov": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _clean_up_after_killed_builds(work: Path, opts: Options) -> None:
    """Steps a killed build of this recipe left running (the lock is ours now), and its staging directories."""
    groups = RunningGroups(work / "running")
    groups.stop_orphans()
    opts.runner.groups = groups
    stale_staging_cleanup(opts.prefix)


@contextmanager
def _build_log(work: Path) -> Iterator[tuple[IO[str], Path]]:
    """This build's log under work/logs; work/build.log points at the latest."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"build-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.log"
    with log_path.open("w") as log:
        latest = work / "build.log"
        latest.unlink(missing_ok=True)
        latest.symlink_to(log_path)
        yield log, log_path


@contextmanager
def _staging(prefix: Path) -> Iterator[Path]:
    """Where the install is made, beside the prefix (same file system: the swap is a rename); always removed."""
    staging = paths.make_side_dir(prefix, "stage")
    try:
        yield staging
    finally:
        paths.remove_tree(staging)


def _fetch(ctx: Context, tree: Source, revision: Resolution, name: str, section: str) -> Path:
    """The tree at work/NAME, fetched again only when the revision changed."""
    src = ctx.work / name
    stamp = ctx.work / f"{name}.stamp"
    if src.is_dir() and stamp.exists() and stamp.read_text() == revision.record.revision:
        return src
    stamp.unlink(missing_ok=True)
    trees.fetch(tree, src, section, report=ctx.report, resolution=revision)
    stamp.write_text(revision.record.revision)
    return src


def _up_to_date(prefix: Path, key: str) -> Manifest | None:
    record = installs.read_manifest(prefix)
    if record is None or record.inputs != key:
        return None
    return None if installs.Install(record.name, prefix, record).missing_binaries() else record


@contextmanager
def _file_lock(key: str, what: str, hint: str) -> Iterator[None]:
    lock_file = paths.cache_dir() / "locks" / f"{key}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    held = filelock.FileLock(str(lock_file))
    try:
        held.acquire(timeout=0)
    except filelock.Timeout:
        raise InfraError(f"{what} (lock {lock_file})", hint=hint) from None
    try:
        yield
    finally:
        held.release()


def builder_image_record(runner: Runner) -> BuilderImageRecord | None:
    image = runner.image
    if image is None:
        return None
    return BuilderImageRecord(tag=image.tag, id=str(runner.image_id or ""), base=image.base,
                              dockerfile=image.dockerfile.name, builder=image.builder)


def check_expectations(recipe: Recipe, arches: tuple[str, ...], results: list[probe.Probe]) -> list[str]:
    problems = [f"{r.path}: {r.error}" for r in results if r.error]
    qemus = [r for r in results if isinstance(r, probe.QemuProbe) and not r.error]
    daemons = [r for r in results if isinstance(r, probe.VirtiofsdProbe) and not r.error]
    expect = recipe.expect
    built = {q.arch for q in qemus}
    for arch in arches:
        if arch not in built:
            problems.append(f"no working qemu-system-{arch}")
    for q in qemus:
        if not q.vhost_user_fs:
            problems.append(f"qemu-system-{q.arch} has no vhost-user-fs-pci")
        if expect.dax is not None and q.dax != expect.dax:
            problems.append(f"qemu-system-{q.arch} DAX window (cache-size): expected {expect.dax}, got {q.dax}")
        if expect.version and not _version_matches(q.version, expect.version):
            problems.append(f"qemu-system-{q.arch} is QEMU {q.version}, expected {expect.version}")
        lacking = [n for n in expect.netdevs if n not in (q.netdevs or ())]
        if lacking:
            problems.append(f"qemu-system-{q.arch} lacks the netdev backend {', '.join(lacking)} "
                            f"(it has: {', '.join(q.netdevs or ()) or 'none listed'})")
        if expect.aio_native is not None and q.aio_native is not None and q.aio_native != expect.aio_native:
            problems.append(f"qemu-system-{q.arch} aio=native (linux-aio): expected {expect.aio_native}, "
                            f"got {q.aio_native}")
    if expect.virtiofsd is not None:
        flavours = [d.flavour for d in daemons] or [VirtiofsdFlavour.NONE]
        if expect.virtiofsd.value not in flavours:
            problems.append(f"virtiofsd: expected {expect.virtiofsd.value}, got {', '.join(map(str, flavours))}")
    return problems


def _version_matches(actual: str | None, prefix: str) -> bool:
    if actual is None:
        return False
    return actual.split(".")[: len(prefix.split("."))] == prefix.split(".")


def validate_arches(recipe: Recipe, requested: str | None) -> tuple[str, ...]:
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
