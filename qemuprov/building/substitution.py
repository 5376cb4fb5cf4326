"""A build from the binary cache: pulled into the staging, probed against the recipe's [expect] like a built one,
and recorded by the one manifest maker; the caller swaps it in."""

from __future__ import annotations

from pathlib import Path

from qemuprov.building import expectations, manifests
from qemuprov.building.context import Context
from qemuprov.building.staging import write_vhost_user_descriptor
from qemuprov.ci import binary_cache
from qemuprov.errors import InfraError
from qemuprov.infra import paths
from qemuprov.infra.progress import notice
from qemuprov.infra.render import safe_text
from qemuprov.records.manifest import Manifest, Substitution
from qemuprov.sources.resolving import Resolved


class CacheMiss(InfraError):
    """--cache-only, and the cache gave no install: nothing was built."""

    def __init__(self, miss: binary_cache.Miss) -> None:
        super().__init__(f"--cache-only: {miss.message}; nothing was built",
                         hint="push this build from a job that compiles, check --cache and the trusted keys, or "
                              "drop --cache-only")
        self.reason = miss.reason


def substitute(ctx: Context, resolved: Resolved, settings: binary_cache.Settings, cache_key: str) -> Manifest | None:
    staged = ctx.ws.staged  # a pulled tree is relocatable: it is staged at the install's own prefix
    with ctx.phase("substitute", f"{settings.location} ({cache_key[:16]}…)"):
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
        probes = expectations.checked_probes(ctx, pulled=True)
    if (staged / "bin" / "virtiofsd").exists():
        write_vhost_user_descriptor(ctx.ws)  # it named the prefix of the machine that built it
    pulled = hit.record
    built_at = Path(pulled.prefix)
    shipped = manifests.Shipped.of(pulled, lambda path: ctx.ws.rebased(path, built_at),
                                   str(ctx.ws.final(staged / "libexec" / "virtiofsd")))
    return manifests.make(ctx, resolved, probes, shipped, cache_key, Substitution(
        cache=str(settings.location), tag=cache_key, digest=hit.digest,
        built_at=safe_text(str(pulled.built_at))[:40],
        checked_here=("signature" if not settings.allow_unsigned else "unsigned (allowed)",
                      "digests and sizes", "every tar member", "probe against [expect]"),
        from_entry=("plan", "tools", "builder_image", "virtiofsd", "firmware")))
