"""From recipe to installed prefix, as named phases, read top to bottom in `Build._phases`: resolve, up to date?,
substitute or build (fetch, plan, builder, configure, compile, install, virtiofsd), finish, probe, record,
verify, commit, push. The pipeline only orchestrates: each phase is done in its own room, every path comes from
the build's `Workspace`, and each phase is timed under its name."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from qemuprov.building import ccache, expectations, manifests, qemu_steps, rust_virtiofsd
from qemuprov.building.context import Context, Options, builder_image_record
from qemuprov.building.manifests import Shipped
from qemuprov.building.staging import commit_prefix, finish_tree
from qemuprov.building.substitution import CacheMiss, substitute
from qemuprov.building.workspace import Workspace
from qemuprov.ci import binary_cache
from qemuprov.errors import BuildError, UserError
from qemuprov.infra import paths
from qemuprov.infra.progress import Reporter
from qemuprov.infra.runners import get_runner
from qemuprov.knowledge import plan, probe
from qemuprov.proving import verify
from qemuprov.recipe import Recipe
from qemuprov.records import installs
from qemuprov.records.manifest import BootResult, Manifest
from qemuprov.records.manifest import write as write_manifest
from qemuprov.sources.resolving import Resolved, resolve

__all__ = ["Build", "CacheMiss", "Options", "Outcome", "VerifyFailed", "known_plan"]


@dataclass
class Outcome:
    prefix: Path
    up_to_date: bool
    timings: dict[str, float]  # every phase, and the total as the user waited for it (verify, swap, push too)
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


class Build:
    def __init__(self, recipe: Recipe, opts: Options, reporter: Reporter) -> None:
        self.recipe, self.opts, self.report = recipe, opts, reporter

    def run(self) -> Outcome:
        ws = Workspace.of(self.recipe.name, self.opts.prefix)
        with ws.locked():
            return self._phases(Context(self.recipe, self.opts, self.report, ws))

    def _phases(self, ctx: Context) -> Outcome:
        """The build, top to bottom."""
        recipe, opts, ws = self.recipe, self.opts, ctx.ws
        opts.runner.groups = ws.clean_up_after_killed_builds()
        with ctx.timer.phase("resolve"):
            resolved = resolve(recipe, opts.update_lock, self.report)
        if not opts.force and (record := _up_to_date(opts.prefix, manifests.inputs_key(recipe, opts, resolved))):
            verified, record = _verify_installed(ctx, record)
            pushed = None if record.substituted else _push(ctx, record)
            return Outcome(opts.prefix, True, ctx.timer.total(), None, record, verified, pushed)
        cache_key = _cache_key(recipe, opts, resolved)
        with ws.begun():
            if opts.cache_only and not (opts.binary_cache and cache_key):
                raise CacheMiss(binary_cache.Miss("not-cacheable", "this build cannot come from a binary cache: "
                                                  + (binary_cache.why_not_cacheable(opts.runner.is_host) or
                                                     "none is configured")))
            if opts.binary_cache and opts.use_cache and cache_key and (
                    record := substitute(ctx, resolved, opts.binary_cache, cache_key)) is not None:
                verified, record = _verify_and_install(ctx, record)
                return Outcome(opts.prefix, False, ctx.timer.total(), ws.log_path, record, verified)
            the_plan, configured = qemu_steps.build(ctx, resolved.qemu) if resolved.qemu else (None, None)
            vfs_image = rust_virtiofsd.build_with(ctx, resolved.virtiofsd) if resolved.virtiofsd else None
            with ctx.phase("finish"):
                virtiofsd, firmware = finish_tree(ws, the_plan)
            with ctx.phase("probe", "checking the build against the recipe's [expect]"):
                probes = expectations.checked_probes(ctx)
            shipped = Shipped(the_plan.record() if the_plan else None,
                              manifests.tools(configured.compiler if configured else None,
                                              bool(configured and configured.precompiled_header)),
                              builder_image_record(opts.runner) if the_plan else vfs_image, vfs_image, virtiofsd,
                              firmware, ccache.stats(ws.ccache_log))
            relocatable = the_plan.tree.relocatable if the_plan else None
            cacheable = binary_cache.why_not_cacheable(opts.runner.is_host, relocatable) is None
            record = manifests.make(ctx, resolved, probes, shipped, cache_key if cacheable else None)
            if relocatable is not False:
                verified, record = _verify_and_install(ctx, record)
            else:  # its binaries find their data only at the prefix they were built for: verify them there
                install(ctx, record)
                verified, record = _verify_installed(ctx, record)
            pushed = _push(ctx, record)
        return Outcome(opts.prefix, False, ctx.timer.total(), ws.log_path, record, verified, pushed)


def _cache_key(recipe: Recipe, opts: Options, resolved: Resolved) -> str | None:
    """The binary cache key of this build; None where no cache can hold it."""
    if binary_cache.why_not_cacheable(opts.runner.is_host) is not None:
        return None
    return binary_cache.key(recipe.build_inputs(of_the_bytes=True), opts.arches, *resolved.revisions,
                            _builders(recipe, opts))


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
    staged_bin = ctx.ws.staged / "bin"
    firmware = [ctx.ws.staged_of(d) for d in record.firmware]
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
    write_manifest(ctx.ws.staged, record)
    with ctx.phase("commit", str(ctx.opts.prefix)):
        commit_prefix(ctx.ws.staged, ctx.opts.prefix)
        installs.register_prefix(ctx.opts.prefix)


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


def known_plan(recipe: Recipe) -> plan.PlanRecord | None:
    """The plan the last install of this recipe recorded; else, once an earlier build fetched the source, the
    plan a default build (--runner auto) would follow; None before either."""
    if recipe.qemu is None:
        return None
    for entry in installs.list_installs():
        if entry.recipe == recipe.name and entry.manifest and entry.manifest.plan:
            return entry.manifest.plan
    prefix = paths.install_root() / recipe.name
    src = Workspace.of(recipe.name, prefix).tree("qemu")
    if not (src / "VERSION").exists():
        return None
    runner, _ = get_runner("auto", recipe.builder)
    return qemu_steps.plan_for(recipe, plan.inspect(src), prefix, recipe.arches, runner).record()


def _up_to_date(prefix: Path, key: str) -> Manifest | None:
    record = installs.read_manifest(prefix)
    if record is None or record.inputs != key:
        return None
    return None if installs.Install(record.name, prefix, record).missing_binaries() else record
