"""A QEMU tree from its resolved revision to an installed tree in staging: fetch, plan (once), the builder, then
in one runner session: check the libraries the plan needs, configure (with the compiler it names and, for clang,
a precompiled qemu/osdep.h), compile the plan's targets, install with DESTDIR."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from qemuprov.building import ccache
from qemuprov.building.context import Context
from qemuprov.errors import InfraError, UserError
from qemuprov.infra.runners import Runner
from qemuprov.knowledge import hostdeps, plan
from qemuprov.recipe import Recipe
from qemuprov.sources.revision import Resolution

PCH_WRAPPER = Path(__file__).resolve().parent / "assets" / "pch-cc"
FEATURE_LIBRARIES_SCRIPT = ("pkg-config --exists slirp 2>/dev/null && echo slirp; "
                            "for d in /usr/include /usr/local/include; do "
                            '[ -e "$d/libaio.h" ] && echo libaio && break; done; true')


@dataclass(frozen=True)
class Configured:
    build_dir: Path
    argv: tuple[str, ...]  # what configure was given
    compiler: str  # the first line of the C compiler's --version
    precompiled_header: bool


def build(ctx: Context, resolution: Resolution) -> tuple[plan.Plan, Configured]:
    assert ctx.recipe.qemu is not None
    with ctx.phase("fetch", str(ctx.ws.tree("qemu"))):
        src = ctx.ws.fetch("qemu", ctx.recipe, resolution, ctx.report)
    tree = plan.inspect(src)
    if not ctx.runner.is_host:
        with ctx.phase("builder", ctx.runner.key):
            ctx.runner.prepare(ctx.log, ctx.report.line)
    socket_dir = ccache.socket_dir(ctx.opts.shared_ccache)
    network = bool(tree.missing_subprojects) or ccache.needs_network(ctx.opts.shared_ccache)
    with ctx.runner.session(inputs=[src, ctx.ws.pch_wrapper], outputs=[ctx.ws.staging, ctx.ws.ccache_log],
                            caches=[ccache.directory()], local_only=[socket_dir] if socket_dir else [],
                            network=network, work=ctx.ws.root):
        if ctx.runner.transport == "copy":
            ctx.report.step("copy", f"{ctx.runner.key} cannot see this machine's files: the sources go in and the "
                                    "install comes out through its API, the build tree stays in a named volume")
        ctx.remote_ccache = ccache.shared(
            ctx.opts.shared_ccache, ctx.runner.sees_local_files,
            lambda: ctx.capture(["sh", "-c", "ccache --version 2>/dev/null | head -1; true"], ctx.ws.root,
                                ctx.env()),
            ctx.runner.key)
        the_plan = plan_for(ctx.recipe, tree, ctx.opts.prefix, ctx.opts.arches, ctx.runner,
                            system_slirp=has_system_slirp(ctx, tree))  # else the tree's own slirp
        ctx.ws.tree_prefix = the_plan.prefix  # a relocatable tree is configured for a fixed prefix, then moved
        configured = configure(ctx, tree, the_plan, resolution.record.revision)
        compile_targets(ctx, tree, the_plan, configured)
        install(ctx, tree, configured)
    return the_plan, configured


def plan_for(recipe: Recipe, tree: plan.Tree, prefix: Path, arches: tuple[str, ...], runner: Runner,
             system_slirp: bool = True) -> plan.Plan:
    """The one way a build plans a tree: for this runner's python, into this prefix."""
    return plan.make_plan(recipe, tree, prefix, arches, runner.tree_python, system_slirp=system_slirp)


def has_system_slirp(ctx: Context, tree: plan.Tree) -> bool:
    """libslirp and libaio, which the QEMU line of OSv's run.py needs, are named in one line before configure
    rather than after minutes of compiling (or never, where configure only guesses). True: the build
    environment has libslirp (else the tree's own slirp is used)."""
    found = set(ctx.capture(["sh", "-c", FEATURE_LIBRARIES_SCRIPT], ctx.ws.root, ctx.env()).split())
    missing = []
    if tree.slirp and not (tree.slirp == "choice" and tree.bundled_slirp) and "slirp" not in found:
        missing.append(hostdeps.HOST_LIBS["slirp"])
    if tree.knows_linux_aio and "libaio" not in found:
        missing.append(hostdeps.HOST_HEADERS["libaio.h"])
    if not missing:
        return "slirp" in found
    what = f"{' and '.join(missing)} (-netdev user and aio=native, which OSv's scripts/run.py uses)"
    if ctx.runner.is_host:
        raise InfraError(f"this host lacks {what}",
                         hint=f"apt-get install {' '.join(missing)} (Debian/Ubuntu), or build in a container: "
                              "--runner docker")
    raise InfraError(f"the builder image {ctx.runner.key} lacks {what}",
                     hint=f"add {' '.join(missing)} to the builder's Dockerfile (containers/builder-"
                          f"{ctx.recipe.builder}.Dockerfile or your own copy of it)")


def build_dir(ctx: Context) -> Path:
    return ctx.ws.build_dir(None if ctx.runner.is_host else ctx.runner.name, ctx.recipe.builder)


def configure(ctx: Context, tree: plan.Tree, the_plan: plan.Plan, revision: str) -> Configured:
    """Run configure in a fresh build tree, unless the tree was configured with the same arguments before."""
    env = ctx.env()
    cc_command, compiler = _compiler(ctx, the_plan, env)
    # configure splits --cc on spaces, so a work dir with one in its path goes without
    pch = ctx.opts.precompiled_header and tree.has_meson_build and "clang" in compiler and " " not in str(ctx.ws.root)
    argv = [*the_plan.argv, f"--cc={_pch_wrapper(ctx)} {cc_command}"] if pch else the_plan.argv
    where = build_dir(ctx)
    stamp = where / "qemuprov-configure.json"
    # A digest: the stamp is read back through the runner, whose output shows container paths as the host's.
    configure_id = hashlib.sha256(json.dumps({"source": revision, "argv": argv, "runner": ctx.runner.key,
                                              "compilers": ctx.runner.compilers,
                                              "seen_at": ctx.runner.visible(where)}).encode()).hexdigest()
    if ctx.read_step_file(stamp) != configure_id:
        with ctx.phase("configure", f"QEMU {tree.version} with {compiler}"
                       + (" and a precompiled qemu/osdep.h" if pch else "") + ", " + " ".join(the_plan.argv[1:])):
            ctx.fresh_step_dir(where)
            ctx.step("configure", [str(tree.root / "configure"), *argv], where, env)
        ctx.write_step_file(stamp, configure_id)
    return Configured(where, tuple(argv), compiler, pch)


def compile_targets(ctx: Context, tree: plan.Tree, the_plan: plan.Plan, configured: Configured) -> None:
    env = ctx.env()
    targets = _targets(ctx, tree, configured.build_dir, the_plan.targets, env)
    jobs = str(ctx.opts.jobs)
    with ctx.phase("build", f"{len(targets) or 'all'} targets, -j{jobs}"):
        argv = ["ninja", "-j", jobs, *targets] if tree.has_meson_build else ["make", f"-j{jobs}"]
        ctx.step("build", argv, configured.build_dir, env)


def install(ctx: Context, tree: plan.Tree, configured: Configured) -> None:
    with ctx.phase("install", f"staging in {ctx.ws.staging}"):
        env = ctx.env()
        if tree.has_meson_build:
            # DESTDIR rather than --destdir: the meson of 5.x-era distributions (0.56) lacks the option.
            argv = [*_meson(ctx, tree, configured.build_dir), "install", "--no-rebuild"]
            env = {**env, "DESTDIR": str(ctx.ws.staging)}
        else:
            argv = ["make", "install", f"DESTDIR={ctx.ws.staging}"]
        ctx.step("install", argv, configured.build_dir, env)


def _compiler(ctx: Context, the_plan: plan.Plan, env: dict[str, str]) -> tuple[str, str]:
    """The C compiler configure will use (the recipe's --cc, else CC, else cc) and the first line of its
    `--version`. One that does not run is named here, before configure buries it in its log."""
    from_recipe = next((arg.split("=", 1)[1] for arg in the_plan.argv if arg.startswith("--cc=")), None)
    chosen = shlex.quote(from_recipe) if from_recipe else "${CC:-cc}"
    script = f'cc={chosen}; echo "$cc"; $cc --version 2>/dev/null || true'
    command, _, version = ctx.capture(["sh", "-c", script], ctx.ws.root, env).partition("\n")
    if not version.strip():
        where = f"{ctx.recipe.path}: qemu.configure: --cc={from_recipe}" if from_recipe else f"CC={command}"
        raise UserError(f"{where}: this compiler does not run in the build environment ({ctx.runner.key})",
                        hint="install it, or name another: CC=gcc for a host build, --cc=gcc in the recipe's "
                             "configure for any build")
    return command, version.partition("\n")[0].strip()


def _pch_wrapper(ctx: Context) -> Path:
    """assets/pch-cc, copied into the work dir, which the build's container sees too."""
    wrapper = ctx.ws.pch_wrapper
    text = PCH_WRAPPER.read_bytes()
    if not wrapper.exists() or wrapper.read_bytes() != text:
        wrapper.write_bytes(text)
    wrapper.chmod(0o755)
    return wrapper


def _targets(ctx: Context, tree: plan.Tree, where: Path, wanted: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """The plan's targets plus whatever `meson install` will copy out of the build tree (5.x trees install
    qemu-img and friends next to virtiofsd), limited to what this tree's ninja knows."""
    if not wanted:
        return []
    known = {line.split(":", 1)[0] for line in ctx.capture(["ninja", "-t", "targets", "all"], where, env).splitlines()}
    installed = json.loads(ctx.capture([*_meson(ctx, tree, where), "introspect", "--installed"], where, env) or "{}")
    inside = str(where) + "/"
    extra = sorted(path.removeprefix(inside) for path in installed if path.startswith(inside))
    return [t for t in dict.fromkeys([*wanted, *extra]) if t in known]


def _meson(ctx: Context, tree: plan.Tree, where: Path) -> list[str]:
    """The meson that configured the build dir: 8.1+ configure's venv, the tree's submodule, or the system's."""
    venv_meson = where / "pyvenv" / "bin" / "meson"
    if ctx.step_file_exists(venv_meson):
        return [str(venv_meson)]
    if tree.has_meson_submodule:
        return [ctx.runner.python, str(tree.root / "meson" / "meson.py")]
    return ["meson"]
