"""From recipe to installed prefix: fetch, plan, configure, build, stage, check, then swap into place."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from qemuprov import __version__, hostdeps, installs, paths, plan, probe, rust_virtiofsd, source
from qemuprov.errors import BuildError, InfraError, UserError
from qemuprov.install_tree import commit_prefix, finish_tree, stale_staging_cleanup
from qemuprov.manifest import BuilderImageRecord, Manifest, SourceRecord, VirtiofsdRecord
from qemuprov.manifest import write as write_manifest
from qemuprov.procs import GroupRegistry
from qemuprov.progress import Reporter
from qemuprov.recipe import Crates, Recipe, Source, split_arches
from qemuprov.runners import HostRunner, Runner

LOG_TAIL = 25
FEATURE_LIBRARIES_SCRIPT = ("pkg-config --exists slirp 2>/dev/null && echo slirp; "
                            "for d in /usr/include /usr/local/include; do "
                            '[ -e "$d/libaio.h" ] && echo libaio && break; done; true')
PCH_WRAPPER = Path(__file__).resolve().parent / "assets" / "pch-cc"


@dataclass
class Options:
    arches: tuple[str, ...]
    prefix: Path
    runner: Runner
    jobs: int
    force: bool = False
    argv: list[str] = field(default_factory=list)  # the command line, for the manifest
    precompiled_header: bool = True  # clang builds of meson trees compile against a precompiled qemu/osdep.h


@dataclass
class Outcome:
    prefix: Path
    up_to_date: bool
    timings: dict[str, float]
    log: Path | None
    manifest: Manifest


def _inputs_key(recipe: Recipe, identity: str, opts: Options, vfs_identity: str | None = None) -> str:
    recipe_data = recipe.to_dict()
    for volatile in ("path", "origin", "chain", "description"):
        recipe_data.pop(volatile, None)
    blob = json.dumps({"recipe": recipe_data, "source": identity, "virtiofsd": vfs_identity, "arches": opts.arches,
                       "runner": opts.runner.identity, "compilers": opts.runner.compilers,
                       "prefix": str(opts.prefix), "qemuprov": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _source_identity(src: Source, what: str) -> str:
    """The commit a git source resolves to, or the tarball's checksum."""
    if src.git:
        assert src.ref is not None
        commit, _ = source.resolve_ref(src.git, src.ref, what)
        return commit
    return f"sha256:{src.sha256}"


def _source_record(src: Source, identity: str) -> SourceRecord:
    sha = identity.removeprefix("sha256:") if identity.startswith("sha256:") else None
    return SourceRecord(url=str(src.url), ref=src.ref, commit=None if sha else identity, sha256=sha)


def _up_to_date(prefix: Path, key: str) -> Manifest | None:
    record = installs.read_manifest(prefix)
    if record is None or record.inputs != key:
        return None
    return None if installs.Install(record.name, prefix, record).missing_binaries() else record


@contextmanager
def _lock(key: str, what: str, hint: str) -> Iterator[None]:
    lock_file = paths.cache_dir() / "locks" / f"{key}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise InfraError(f"{what} (lock {lock_file})", hint=hint) from None
    try:
        yield
    finally:
        lock.release()


def missing_dependency_hint(log_tail: str, runner: Runner) -> str:
    package = hostdeps.package_missing_in(log_tail)
    if package and runner.name == "host":
        return f"a build dependency is missing: install {package} (Debian/Ubuntu), or use --runner docker"
    if package:
        return f"the builder image lacks {package}: add it to the recipe's builder Dockerfile under containers/"
    if "No space left on device" in log_tail:
        return "the disk is full: free space where the build tree or the install lives (QEMUPROV_CACHE, --prefix)"
    return "read the log above; `qemuprov doctor` lists missing build dependencies"


class Build:
    def __init__(self, recipe: Recipe, opts: Options, reporter: Reporter) -> None:
        self.recipe, self.opts, self.report = recipe, opts, reporter
        self.work = paths.work_dir(recipe.name)
        self.timings: dict[str, float] = {}
        self.log_path: Path | None = None
        self.vfs_identity: str | None = None
        self.vfs_builder_image: BuilderImageRecord | None = None
        self.compiler: str | None = None  # QEMU's C compiler, as `--version` names it
        self.precompiled_header = False

    def _timed(self, name: str, func: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return func()
        finally:
            self.timings[name] = round(time.monotonic() - start, 2)

    def run(self) -> Outcome:
        prefix_key = "prefix-" + hashlib.sha256(str(self.opts.prefix).encode()).hexdigest()[:16]
        with _lock(self.recipe.name, f"another qemuprov build of {self.recipe.name} is running",
                   "wait for it to finish; builds of other recipes can run meanwhile"), \
                _lock(prefix_key, f"another qemuprov build is installing into {self.opts.prefix}",
                      "wait for it to finish, or build into another --prefix"):
            return self._run_locked()

    def _run_locked(self) -> Outcome:
        started = time.monotonic()
        groups = GroupRegistry(self.work / "running")
        groups.stop_orphans()  # steps of a build of this recipe that was killed (the lock is ours now)
        if isinstance(self.opts.runner, HostRunner):
            self.opts.runner.groups = groups
        stale_staging_cleanup(self.opts.prefix)
        identity = ""  # a recipe for the daemon alone has no QEMU source
        if (qemu := self.recipe.qemu) is not None:
            self.report.step("resolve", qemu.source.describe())
            identity = self._timed("resolve", lambda: _source_identity(qemu.source, "qemu"))
        vfs_tree = self.recipe.virtiofsd.tree
        if vfs_tree is not None:
            self.report.step("resolve", f"virtiofsd {vfs_tree.describe()}")
            self.vfs_identity = _source_identity(vfs_tree, "virtiofsd")
        key = _inputs_key(self.recipe, identity, self.opts, self.vfs_identity)
        if not self.opts.force and (manifest := _up_to_date(self.opts.prefix, key)) is not None:
            self.timings["total"] = round(time.monotonic() - started, 2)
            return Outcome(self.opts.prefix, True, self.timings, None, manifest)
        self.work.mkdir(parents=True, exist_ok=True)
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        self.log_path = logs / f"build-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.log"
        with self.log_path.open("w") as log:
            latest = self.work / "build.log"
            latest.unlink(missing_ok=True)
            latest.symlink_to(self.log_path)
            return self._build(identity, key, log, started)

    def _fetch(self, tree: Source, identity: str, name: str = "src") -> Path:
        src = self.work / name
        stamp = self.work / f"{name}.stamp"
        if src.is_dir() and stamp.exists() and stamp.read_text() == identity:
            return src
        stamp.unlink(missing_ok=True)
        source.fetch(tree, src, "qemu" if name == "src" else "virtiofsd", report=self.report)
        stamp.write_text(identity)
        return src

    def _build(self, identity: str, key: str, log: Any, started: float) -> Outcome:
        staging = self.opts.prefix.parent / f".qemuprov-stage-{self.opts.prefix.name}-{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            qemu = self.recipe.qemu
            the_plan = self._build_qemu(qemu.source, identity, staging, log) if qemu is not None else None
            staged = staging / (the_plan.prefix if the_plan else self.opts.prefix).relative_to("/")
            if self.recipe.virtiofsd.tree is not None and self.vfs_identity is not None:
                self._build_rust_virtiofsd(self.recipe.virtiofsd.tree, self.vfs_identity, staging, staged, log)
            finishing = finish_tree(staged, self.opts.prefix, the_plan)
            self.report.step("probe", "checking the build against the recipe's [expect]")
            probes = self._timed("probe", lambda: self._probe_and_check(staged))
            manifest = self._manifest(identity, key, the_plan, probes, finishing, started)
            write_manifest(staged, manifest)
            self.report.step("commit", str(self.opts.prefix))
            commit_prefix(staged, self.opts.prefix)
            installs.register_prefix(self.opts.prefix)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Outcome(self.opts.prefix, False, self.timings, self.log_path, manifest)

    def _build_qemu(self, qemu_source: Source, identity: str, staging: Path, log: Any) -> plan.Plan:
        self.report.step("fetch", str(self.work / "src"))
        src = self._timed("fetch", lambda: self._fetch(qemu_source, identity))
        tree = plan.inspect(src)
        the_plan = plan.make_plan(self.recipe, tree, self.opts.prefix, self.opts.arches, self.opts.runner.tree_python)
        runner = self.opts.runner
        if runner.identity != "host":
            self.report.step("builder", runner.identity)
            self._timed("builder", lambda: runner.prepare(log, self.report.line))
        ccache = paths.cache_dir() / "ccache"
        ccache.mkdir(parents=True, exist_ok=True)
        with runner.session([self.work, staging, ccache], network=bool(tree.missing_subprojects)):
            if not self._feature_libraries(tree):  # no system libslirp: the tree's own slirp
                the_plan = plan.make_plan(self.recipe, tree, self.opts.prefix, self.opts.arches,
                                          runner.tree_python, system_slirp=False)
            self._configure_build_install(identity, tree, the_plan, staging, log)
        return the_plan

    def _build_rust_virtiofsd(self, tree: Source, identity: str, staging: Path, staged: Path, log: Any) -> None:
        spec = self.recipe.virtiofsd
        self.report.step("fetch", f"virtiofsd {tree.describe()}")
        src = self._timed("virtiofsd-fetch", lambda: self._fetch(tree, identity, "virtiofsd-src"))
        runner = self.opts.runner.for_builder(spec.builder or self.recipe.builder)
        if runner.identity != "host":
            self.report.step("builder", f"virtiofsd: {runner.identity}")
            self._timed("virtiofsd-builder", lambda: runner.prepare(log, self.report.line))
            self.vfs_builder_image = builder_image_record(runner)
        cargo_home = paths.cache_dir() / "cargo"
        cargo_home.mkdir(parents=True, exist_ok=True)
        online = spec.crates is Crates.REGISTRY
        self.report.step("virtiofsd", f"cargo build ({spec.crates.value} crates{', static' if spec.static else ''})")
        if crates := rust_virtiofsd.crate_count(src):
            self.report.expect_crates(crates)
        with runner.session([self.work, staging, cargo_home], network=online):
            status = self._timed("virtiofsd-build", lambda: rust_virtiofsd.build(
                spec, src, self.work / "virtiofsd-target", cargo_home, staged, runner, log, self.report.line))
        if status != 0:
            hint = "cargo could not fetch or compile a crate" if online else \
                'the builder lacks a crate or a library; with crates = "debian" use the debian-trixie-crates builder'
            self._fail_step("virtiofsd build", ["cargo", "build"], status, hint)

    def _configure_build_install(self, identity: str, tree: plan.Tree, the_plan: plan.Plan, staging: Path,
                                 log: Any) -> None:
        # One build tree per runner and builder, so host and container builds of a recipe don't undo each other.
        runner = self.opts.runner
        build_dir = self.work / ("build" if runner.identity == "host" else f"build-{runner.name}-{self.recipe.builder}")
        src = tree.root
        env = self._env()
        argv = self._configure_argv(tree, the_plan, env)
        stamp = build_dir / "qemuprov-configure.json"
        configure_id = json.dumps({"source": identity, "argv": argv, "runner": self.opts.runner.identity,
                                   "compilers": runner.compilers})
        if not (stamp.exists() and stamp.read_text() == configure_id):
            pch = " and a precompiled qemu/osdep.h" if self.precompiled_header else ""
            self.report.step("configure", f"QEMU {tree.version} with {self.compiler}{pch}, "
                             + " ".join(the_plan.argv[1:]))
            if build_dir.exists():
                shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
            self._timed("configure", lambda: self._step("configure", [str(src / "configure"), *argv],
                                                        build_dir, env, log))
            stamp.write_text(configure_id)
        targets = self._build_targets(tree, build_dir, the_plan.targets, env)
        self.report.step("build", f"{len(targets) or 'all'} targets, -j{self.opts.jobs}")
        build_argv = ["ninja", "-j", str(self.opts.jobs), *targets] if tree.has_meson_build \
            else ["make", f"-j{self.opts.jobs}"]
        self._timed("build", lambda: self._step("build", build_argv, build_dir, env, log))
        self.report.step("install", f"staging in {staging}")
        self._timed("install", lambda: self._install(tree, build_dir, staging, env, log))

    def _feature_libraries(self, tree: plan.Tree) -> bool:
        """libslirp and libaio, which the QEMU line of OSv's run.py needs, are named in one line before configure
        rather than after minutes of compiling (or never, where configure only guesses). True: the build
        environment has libslirp."""
        found = set(self._capture(["sh", "-c", FEATURE_LIBRARIES_SCRIPT], self.work, self._env()).split())
        missing = []
        if tree.slirp and not (tree.slirp == "choice" and tree.bundled_slirp) and "slirp" not in found:
            missing.append(hostdeps.HOST_LIBS["slirp"])
        if tree.knows_linux_aio and "libaio" not in found:
            missing.append(hostdeps.HOST_HEADERS["libaio.h"])
        if not missing:
            return "slirp" in found
        what = f"{' and '.join(missing)} (-netdev user and aio=native, which OSv's scripts/run.py uses)"
        if self.opts.runner.identity == "host":
            raise InfraError(f"this host lacks {what}",
                             hint=f"apt-get install {' '.join(missing)} (Debian/Ubuntu), or build in a container: "
                                  "--runner docker")
        raise InfraError(f"the builder image {self.opts.runner.identity} lacks {what}",
                         hint=f"add {' '.join(missing)} to the builder's Dockerfile (containers/builder-"
                              f"{self.recipe.builder}.Dockerfile or your own copy of it)")

    def _compiler(self, the_plan: plan.Plan, env: dict[str, str]) -> tuple[str, str]:
        """The C compiler configure will use (the recipe's --cc, else CC, else cc) and the first line of its
        `--version`. One that does not run is named here, before configure buries it in its log."""
        from_recipe = next((arg.split("=", 1)[1] for arg in the_plan.argv if arg.startswith("--cc=")), None)
        chosen = shlex.quote(from_recipe) if from_recipe else "${CC:-cc}"
        script = f'cc={chosen}; echo "$cc"; $cc --version 2>/dev/null || true'
        command, _, version = self._capture(["sh", "-c", script], self.work, env).partition("\n")
        if not version.strip():
            where = f"{self.recipe.path}: qemu.configure: --cc={from_recipe}" if from_recipe else f"CC={command}"
            raise UserError(f"{where}: this compiler does not run in the build environment "
                            f"({self.opts.runner.identity})",
                            hint="install it, or name another: CC=gcc for a host build, --cc=gcc in the recipe's "
                                 "configure for any build")
        return command, version.partition("\n")[0].strip()

    def _configure_argv(self, tree: plan.Tree, the_plan: plan.Plan, env: dict[str, str]) -> list[str]:
        """The plan's configure arguments, with pch-cc in front of the compiler where it applies."""
        cc_command, self.compiler = self._compiler(the_plan, env)
        # configure splits --cc on spaces, so a work dir with one in its path goes without
        self.precompiled_header = self.opts.precompiled_header and tree.has_meson_build \
            and "clang" in self.compiler and " " not in str(self.work)
        if not self.precompiled_header:
            return the_plan.argv
        return [*the_plan.argv, f"--cc={self._pch_wrapper()} {cc_command}"]

    def _pch_wrapper(self) -> Path:
        """assets/pch-cc, copied into the work dir, which containers see at the same path."""
        wrapper = self.work / "pch-cc"
        text = PCH_WRAPPER.read_bytes()
        if not wrapper.exists() or wrapper.read_bytes() != text:
            wrapper.write_bytes(text)
        wrapper.chmod(0o755)
        return wrapper

    @property
    def _ccache_log(self) -> Path | None:
        return self.log_path.with_suffix(".ccache") if self.log_path else None

    def _env(self) -> dict[str, str]:
        # Host and container builds with the same compiler share entries: the compiler is checked by content,
        # paths under the work dir are made relative, and the build dir's own name is left out of the hash
        # (debug info may then name the other build dir; nothing else differs).
        # Depend mode: a miss costs no extra preprocessor run (plain ccache made a cold build 29% slower, depend
        # mode 9%); the compiler's own -MD output names the headers, which every meson build of QEMU asks for.
        env = {"LC_ALL": "C", "CCACHE_DIR": str(paths.cache_dir() / "ccache"), "CCACHE_BASEDIR": str(self.work),
               "CCACHE_COMPILERCHECK": "content", "CCACHE_NOHASHDIR": "1", "CCACHE_DEPEND": "1"}
        if self._ccache_log:
            env["CCACHE_STATSLOG"] = str(self._ccache_log)
        return self.opts.runner.env(env)

    def _build_targets(self, tree: plan.Tree, build_dir: Path, wanted: tuple[str, ...],
                       env: dict[str, str]) -> list[str]:
        """The plan's targets plus whatever `meson install` will copy out of the build tree (5.x trees install
        qemu-img and friends next to virtiofsd), limited to what this tree's ninja knows."""
        if not wanted:
            return []
        known = {line.split(":", 1)[0] for line in self._capture(["ninja", "-t", "targets", "all"], build_dir, env)
                 .splitlines()}
        introspect = [*self._meson(tree, build_dir), "introspect", "--installed"]
        installed = json.loads(self._capture(introspect, build_dir, env) or "{}")
        inside = str(build_dir) + "/"
        extra = sorted(path.removeprefix(inside) for path in installed if path.startswith(inside))
        return [t for t in dict.fromkeys([*wanted, *extra]) if t in known]

    def _meson(self, tree: plan.Tree, build_dir: Path) -> list[str]:
        """The meson that configured the build dir: 8.1+ configure's venv, the tree's submodule, or the system's."""
        venv_meson = build_dir / "pyvenv" / "bin" / "meson"
        if venv_meson.exists():
            return [str(venv_meson)]
        if tree.has_meson_submodule:
            return [self.opts.runner.python, str(tree.root / "meson" / "meson.py")]
        return ["meson"]

    def _capture(self, argv: list[str], cwd: Path, env: dict[str, str]) -> str:
        """A short command's output, through the runner (the log's first line is the command itself)."""
        output = io.StringIO()
        status = self.opts.runner.run(argv, cwd=cwd, env=env, log=output)
        text = output.getvalue().partition("\n")[2]
        if status != 0:
            raise InfraError(f"{shlex.join(argv)} failed in {cwd} (exit status {status}): {text.strip()[-300:]}")
        return text

    def _step(self, name: str, argv: list[str], cwd: Path, env: dict[str, str], log: Any) -> None:
        self.report.finish_progress()
        status = self.opts.runner.run(argv, cwd=cwd, env=env, log=log, on_line=self.report.line)
        self.report.finish_progress()
        if status != 0:
            log.flush()
            self._fail_step(name, argv, status, None)

    def _fail_step(self, name: str, argv: list[str], status: int, hint: str | None) -> None:
        tail = _tail(self.log_path, LOG_TAIL) if self.log_path else ""
        raise BuildError(f"{name} failed (exit status {status}): {shlex.join(argv)}\n"
                         f"--- last {LOG_TAIL} lines of {self.log_path} ---\n{tail}\n--- full log: {self.log_path}",
                         hint=(hint or missing_dependency_hint(tail, self.opts.runner))
                         + "; the previous install, if any, is untouched")

    def _install(self, tree: plan.Tree, build_dir: Path, staging: Path, env: dict[str, str], log: Any) -> None:
        if tree.has_meson_build:
            # DESTDIR rather than --destdir: the meson of 5.x-era distributions (0.56) lacks the option.
            argv = [*self._meson(tree, build_dir), "install", "--no-rebuild"]
            env = {**env, "DESTDIR": str(staging)}
        else:
            argv = ["make", "install", f"DESTDIR={staging}"]
        self._step("install", argv, build_dir, env, log)

    def _probe_and_check(self, staged: Path) -> list[dict[str, Any]]:
        results = [probe.probe_binary(p) for p in probe.binaries_in_prefix(staged)]
        problems = check_expectations(self.recipe, self.opts.arches, results)
        if problems:
            raise BuildError(f"the build of {self.recipe.name} does not deliver what its recipe promises: "
                             + "; ".join(problems),
                             hint=f"see {self.log_path}; fix the recipe's [expect] or its configure arguments "
                                  "(the previous install is untouched)")
        data = [asdict(r) for r in results]
        for entry in data:  # record final paths, not staging paths
            entry["path"] = str(self.opts.prefix / Path(entry["path"]).relative_to(staged))
        return data

    def _manifest(self, identity: str, key: str, the_plan: plan.Plan | None, probes: list[dict[str, Any]],
                  finishing: dict[str, Any], started: float) -> Manifest:
        self.timings["total"] = round(time.monotonic() - started, 2)
        vfs_tree = self.recipe.virtiofsd.tree
        return Manifest(
            name=self.opts.prefix.name,
            prefix=str(self.opts.prefix),
            recipe=self.recipe.to_dict(),
            source=_source_record(self.recipe.qemu.source, identity) if self.recipe.qemu else None,
            virtiofsd_source=_source_record(vfs_tree, self.vfs_identity) if vfs_tree and self.vfs_identity else None,
            virtiofsd_builder_image=self.vfs_builder_image,
            inputs=key,
            plan=the_plan.to_dict() if the_plan else None,
            runner=self.opts.runner.name,
            builder_image=builder_image_record(self.opts.runner) if the_plan else self.vfs_builder_image,
            tools={"qemuprov": __version__, "python": sys.version.split()[0], "cc": self.compiler,
                   "precompiled_header": "qemu/osdep.h" if self.precompiled_header else None},
            binaries=tuple(Path(p["path"]).name for p in probes),
            probe=tuple(probes),
            virtiofsd=VirtiofsdRecord(**finishing["virtiofsd"]),
            firmware=tuple(finishing["firmware"]),
            timings=self.timings,
            ccache=ccache_stats(self._ccache_log) if self._ccache_log else None,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            log=str(self.log_path),
            reproduce=" ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.opts.runner.compilers.items()),
                                shlex.join(["qemuprov", *self.opts.argv])]),
        )


def builder_image_record(runner: Runner) -> BuilderImageRecord | None:
    image = getattr(runner, "image", None)
    if image is None:
        return None
    return BuilderImageRecord(tag=image.tag, id=str(getattr(runner, "image_id", "")), base=image.base,
                              dockerfile=image.dockerfile.name, builder=image.builder)


def ccache_stats(stats_log: Path) -> dict[str, Any] | None:
    """Hits and misses of this build's compilations, from ccache's per-call stats log (None: ccache unused)."""
    try:
        text = stats_log.read_text(errors="replace")
    except OSError:
        return None
    hits = misses = 0
    for record in text.split("# ")[1:]:
        outcomes = set(record.splitlines()[1:])
        if outcomes & {"direct_cache_hit", "preprocessed_cache_hit"}:
            hits += 1
        elif "cache_miss" in outcomes:
            misses += 1
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / total, 3) if total else None}


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
        flavours = [d.flavour for d in daemons] or ["none"]
        if expect.virtiofsd.value not in flavours:
            problems.append(f"virtiofsd: expected {expect.virtiofsd.value}, got {', '.join(map(str, flavours))}")
    return problems


def _version_matches(actual: str | None, prefix: str) -> bool:
    if actual is None:
        return False
    return actual.split(".")[: len(prefix.split("."))] == prefix.split(".")


def _tail(path: Path, count: int) -> str:
    with path.open(errors="replace") as handle:
        return "".join(handle.readlines()[-count:]).rstrip()


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
