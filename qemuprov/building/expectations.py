"""A recipe's [expect] against what was built or pulled: the staged binaries probed, each promise checked, a
broken one refused before anything is swapped in."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from qemuprov.building.context import Context
from qemuprov.errors import BuildError
from qemuprov.infra.render import safe_text
from qemuprov.knowledge import dax, probe
from qemuprov.recipe import Recipe, VirtiofsdFlavour


def checked_probes(ctx: Context, pulled: bool = False) -> list[probe.Probe]:
    """The staged binaries' probes, with their final paths; a BuildError naming every broken promise."""
    results = [probe.probe_binary(p) for p in probe.binaries_in_prefix(ctx.ws.staged)]
    problems = check_expectations(ctx.recipe, ctx.opts.arches, results)
    if problems and pulled:
        libraries = sorted(set(re.findall(r"error while loading shared libraries: ([\w.+-]+):", " ".join(problems))))
        hint = (f"build it here with --no-cache (a build that passes can be pushed over the entry), or fix the "
                f"recipe's [expect]; see {ctx.ws.log_path} (the previous install is untouched)")
        if libraries:
            hint = (f"the entry was built in the {ctx.recipe.builder} builder and links its libraries, which this "
                    f"host lacks ({', '.join(libraries)}): build it here with --no-cache, or use a recipe whose "
                    f"builder is this host's distribution (the previous install is untouched)")
        raise BuildError(f"the build of {ctx.recipe.name} from the binary cache does not deliver what its recipe "
                         "promises: " + safe_text("; ".join(problems)), hint=safe_text(hint))
    if problems:
        raise BuildError(f"the build of {ctx.recipe.name} does not deliver what its recipe promises: "
                         + "; ".join(problems),
                         hint=f"see {ctx.ws.log_path}; fix the recipe's [expect] or its configure arguments "
                              "(the previous install is untouched)")
    return [dataclasses.replace(r, path=str(ctx.ws.final(Path(r.path)))) for r in results]


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
        if expect.dax is not None and (got := _gives_dax(q, daemons)) != expect.dax:
            why = f" ({dax.pairing(q, daemons[0]).missing})" if daemons and not got else ""
            problems.append(f"qemu-system-{q.arch} DAX (a window the install's virtiofsd maps into): expected "
                            f"{expect.dax}, got {got}{why}")
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


def _gives_dax(qemu: probe.QemuProbe, daemons: list[probe.VirtiofsdProbe]) -> bool:
    """DAX as the install gives it: a route of this QEMU that its own virtiofsd maps into (a QEMU alone: a
    route at all)."""
    if daemons:
        return dax.pairing(qemu, daemons[0]).ok
    return bool(dax.qemu_routes(qemu))


def _version_matches(actual: str | None, prefix: str) -> bool:
    if actual is None:
        return False
    return actual.split(".")[: len(prefix.split("."))] == prefix.split(".")
