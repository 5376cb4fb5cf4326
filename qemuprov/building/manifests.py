"""The one maker of an install's qemuprov.json, for a build made here and for one pulled from a binary cache:
what was looked up, resolved and checked here is this machine's; what describes the shipped bytes (`Shipped`)
comes from the build, or from the entry's own record."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from qemuprov import __version__
from qemuprov.building.context import Context, Options
from qemuprov.knowledge import probe
from qemuprov.knowledge.plan import PlanRecord
from qemuprov.recipe import Recipe
from qemuprov.records.manifest import (
    BuilderImageRecord,
    CcacheStats,
    Manifest,
    Substitution,
    Tools,
    VirtiofsdRecord,
)
from qemuprov.sources.resolving import Resolved


@dataclass(frozen=True)
class Shipped:
    """What the installed bytes are and what made them."""

    plan: PlanRecord | None
    tools: Tools
    builder_image: BuilderImageRecord | None
    virtiofsd_builder_image: BuilderImageRecord | None
    virtiofsd: VirtiofsdRecord
    firmware: tuple[str, ...]
    ccache: CcacheStats | None = None  # None: pulled, or no C compile

    @classmethod
    def of(cls, record: Manifest, rebased: Callable[[str], str], daemon: str) -> Shipped:
        """A pulled entry's own account of its bytes, its paths moved to this install's prefix; daemon: where a
        wrapped virtiofsd's binary is in this install (never a path the entry names)."""
        virtiofsd = record.virtiofsd
        if virtiofsd.binary:
            virtiofsd = VirtiofsdRecord(virtiofsd.flavour, virtiofsd.wrapper, daemon)
        return cls(record.plan, record.tools, record.builder_image, record.virtiofsd_builder_image, virtiofsd,
                   tuple(rebased(d) for d in record.firmware))


def make(ctx: Context, resolved: Resolved, probes: list[probe.Probe], shipped: Shipped,
         cache_key: str | None, substituted: Substitution | None = None) -> Manifest:
    opts = ctx.opts
    return Manifest(
        name=opts.prefix.name,
        prefix=str(opts.prefix),
        recipe=ctx.recipe.to_dict(),
        inputs=inputs_key(ctx.recipe, opts, resolved),
        runner=opts.runner.name,
        binaries=tuple(Path(p.path).name for p in probes),
        probe=tuple(probes),
        virtiofsd=shipped.virtiofsd,
        firmware=shipped.firmware,
        tools=shipped.tools,
        timings=dict(ctx.timer.total()),  # the build's; the user's total comes at the end, with the swap
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        log=str(ctx.ws.log_path),
        reproduce=" ".join([*(f"{k}={shlex.quote(v)}" for k, v in opts.runner.compilers.items()),
                            shlex.join(["qemuprov", *opts.argv])]),
        source=resolved.qemu.record if resolved.qemu else None,
        virtiofsd_source=resolved.virtiofsd.record if resolved.virtiofsd else None,
        plan=shipped.plan,
        builder_image=shipped.builder_image,
        virtiofsd_builder_image=shipped.virtiofsd_builder_image,
        ccache=shipped.ccache,
        lock=resolved.lock,
        cache_key=cache_key,
        substituted=substituted,
    )


def tools(compiler: str | None, precompiled_header: bool) -> Tools:
    return Tools(__version__, sys.version.split()[0], compiler, "qemu/osdep.h" if precompiled_header else None)


def inputs_key(recipe: Recipe, opts: Options, resolved: Resolved) -> str:
    """What an install is up to date against: the recipe, the resolved sources, the arches, the runner and its
    compilers, the prefix, and qemuprov's version."""
    qemu, vfs = resolved.revisions
    blob = json.dumps({"recipe": recipe.build_inputs(), "source": qemu or "", "virtiofsd": vfs,
                       "arches": opts.arches, "runner": opts.runner.key, "compilers": opts.runner.compilers,
                       "prefix": str(opts.prefix), "qemuprov": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
