"""Where build steps run. The host runner runs them here; the container runner runs them in a builder image
(Docker, or Podman through its Docker-compatible API). A container sees the recipe's work directory at one fixed
path, whoever builds and wherever their cache lives, so its objects, generated headers and ccache keys are the
same on every machine; every other directory it needs is seen at its own path. Where the engine sees this
machine's files the directories are bind-mounted; where it cannot (docker:dind, a remote host) the work directory
and the caches are named volumes and the files go in and out through the engine's API (infra/transfer). Each
step streams its output into the build log and to a line callback (progress), with container paths shown as the
host's."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from packaging.version import InvalidVersion, Version

from qemuprov.errors import InfraError, QemuprovError, UserError
from qemuprov.infra import builder_images, engines, procs, transfer, unpack
from qemuprov.infra.compilers import CCACHE_MASQUERADE, host_ccache, host_compilers
from qemuprov.infra.engines import Engine
from qemuprov.infra.procs import RunningGroups

LineCallback = Callable[[str], None]
CONTAINER_PATH = f"{CCACHE_MASQUERADE}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_LABEL = "org.qemuprov.build"
BUILDER_PYTHON = "/opt/qemuprov/python/bin/python3"  # builder images: a venv with a recent meson
MODERN_MESON = Version("1.5")  # what QEMU 10 asks for (its pythondeps.toml)
WORK_IN_CONTAINER = "/qemuprov/work"
CREATE_TIMEOUT = 120.0  # a loaded machine's Podman has taken seconds to make a container, never minutes
TRANSPORTS = ("auto", "bind", "copy")
ONE_SHOT_LABEL = "org.qemuprov.one-shot"
ONE_SHOT_OUTPUT_LINES = 200  # what a one-shot container's log is read of: its end


def container_transport() -> str:
    """How a container build reaches this machine's files ($QEMUPROV_CONTAINER_TRANSPORT): bind mounts, copies
    through the engine's API into named volumes, or auto (bind where the engine sees them, else copy)."""
    found = os.environ.get("QEMUPROV_CONTAINER_TRANSPORT") or "auto"
    if found not in TRANSPORTS:
        raise UserError(f'QEMUPROV_CONTAINER_TRANSPORT: "{found[:40]}" is none of {", ".join(TRANSPORTS)}',
                        hint="auto (the default) binds where the engine sees this machine's files and copies "
                             "where it does not")
    return found


def volume_name(what: str, path: Path) -> str:
    """The named volume that stands for one directory of this machine ("work" or a cache) in an engine that
    cannot see it: builds of one recipe find their build tree again."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{path}".encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9_.-]", "-", path.name)
    return f"qemuprov-work-{label}-{digest}" if what == "work" else f"qemuprov-{label}-{digest}"


class PathMap:
    """Host directories that a container sees elsewhere: rewrites arguments, environment values and working
    directories inward, and the lines a step prints outward."""

    def __init__(self, moved: Mapping[Path, str]) -> None:
        self._inward = [(self._pattern(str(host)), inside) for host, inside in moved.items()]
        self._outward = [(self._pattern(inside), str(host)) for host, inside in moved.items()]

    @staticmethod
    def _pattern(directory: str) -> re.Pattern[str]:
        # The directory itself or a path under it, not a sibling that merely starts with the same characters.
        return re.compile(re.escape(directory.rstrip("/")) + r"(?=/|$|[^\w.-])")

    @staticmethod
    def _apply(rules: list[tuple[re.Pattern[str], str]], text: str) -> str:
        for pattern, replacement in rules:
            text = pattern.sub(replacement.replace("\\", "\\\\"), text)
        return text

    def inward(self, text: str) -> str:
        return self._apply(self._inward, text)

    def outward(self, text: str) -> str:
        return self._apply(self._outward, text)


class Runner(Protocol):
    name: str
    python: str  # the interpreter that runs a tree's bundled meson.py
    groups: RunningGroups | None  # where running steps are recorded, for the next build to stop after a kill

    @property
    def is_host(self) -> bool: ...  # steps run on this machine, with its libraries (no image, not cacheable)

    @property
    def image(self) -> builder_images.BuilderImage | None: ...  # the builder image steps run in; None: the host

    @property
    def image_id(self) -> str | None: ...  # that image's id, once prepared

    @property
    def tree_python(self) -> str | None: ...  # an interpreter with a recent meson, for 8.1+ trees without one

    @property
    def key(self) -> str: ...  # "host", or "ENGINE:IMAGE-TAG": what a build's stamps and inputs key record

    @property
    def compilers(self) -> dict[str, str]: ...  # CC and CXX the steps get; empty: the environment's own

    def prepare(self, log: IO[str], on_line: LineCallback | None = None) -> None: ...

    # A context manager; work: the recipe's work directory, which a container sees at WORK_IN_CONTAINER.
    def session(self, inputs: Sequence[Path] = (), outputs: Sequence[Path] = (), caches: Sequence[Path] = (),
                network: bool = False, work: Path | None = None, local_only: Sequence[Path] = ()) -> Any: ...

    @property
    def sees_local_files(self) -> bool: ...  # in a session: the steps see this machine's files (local_only too)

    transport: str | None  # in a container session: "bind" or "copy"

    def visible(self, path: Path) -> str: ...  # where the steps see a host path (in a session)

    def for_builder(self, builder: str) -> Runner: ...  # the same kind of runner, for another builder image

    def env(self, extra: Mapping[str, str]) -> dict[str, str]: ...

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: LineCallback | None = None) -> int: ...


def _log_command(log: IO[str], argv: Sequence[str], cwd: Path, where: str = "") -> None:
    log.write(f"{where}$ cd {shlex.quote(str(cwd))} && {shlex.join(argv)}\n")
    log.flush()


class HostRunner:
    name = "host"
    python = sys.executable
    key = "host"
    is_host = True
    image: builder_images.BuilderImage | None = None
    image_id: str | None = None
    groups: RunningGroups | None = None  # where the build records its running steps (see RunningGroups)

    @property
    def tree_python(self) -> str | None:
        """The interpreter of the meson on PATH (pip-installed meson runs from the venv it lives in), if that
        meson is recent enough for 8.1+ trees."""
        meson = shutil.which("meson")
        if meson is None:
            return None
        try:
            if Version(procs.run([meson, "--version"], timeout=30).stdout.strip()) < MODERN_MESON:
                return None
        except InvalidVersion:
            return None
        with open(meson, "rb") as script:
            first = script.readline().decode(errors="replace")
        return first[2:].strip().split()[0] if first.startswith("#!") and "python" in first else None

    @functools.cached_property
    def compilers(self) -> dict[str, str]:
        return host_compilers()

    def prepare(self, log: IO[str], on_line: LineCallback | None = None) -> None:
        pass

    sees_local_files = True
    transport: str | None = None

    @contextmanager
    def session(self, inputs: Sequence[Path] = (), outputs: Sequence[Path] = (), caches: Sequence[Path] = (),
                network: bool = False, work: Path | None = None, local_only: Sequence[Path] = ()) -> Iterator[None]:
        yield

    def visible(self, path: Path) -> str:
        return str(path)

    def for_builder(self, builder: str) -> Runner:
        return self

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "TMPDIR", "TERM")}
        env.update(self.compilers)
        env.update(extra)
        if masquerade := host_ccache():
            env["PATH"] = f"{masquerade}:{env.get('PATH', '/usr/bin:/bin')}"
        else:
            env = {k: v for k, v in env.items() if not k.startswith("CCACHE_")}
        return env

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: LineCallback | None = None) -> int:
        _log_command(log, argv, cwd)

        def each(line: str) -> None:
            log.write(line + "\n")
            if on_line is not None:
                on_line(line + "\n")

        try:  # a Ctrl-C stops make/ninja and the compilers with it
            return procs.stream(argv, on_line=each, cwd=cwd, env=env, groups=self.groups)
        finally:
            log.flush()


class ContainerRunner:
    """One container per build, started idle; every step is an exec in it, as the calling user.
    The container is removed when the session ends, whether the build succeeded, failed or was interrupted."""

    python = "python3"
    is_host = False
    groups: RunningGroups | None = None  # a step dies with its container, which the next build removes

    @property
    def tree_python(self) -> str | None:
        return BUILDER_PYTHON

    def __init__(self, engine: Engine, image: builder_images.BuilderImage, user: tuple[int, int] | None = None) -> None:
        self.engine = engine
        self.name = engine.name.lower() or "docker"
        self.user = user or (os.getuid(), os.getgid())
        self.image_id: str | None = None
        self._client: Any = None
        self._container: Any = None
        self._copier: transfer.Copier | None = None
        self.transport: str | None = None  # in a session: "bind" or "copy"
        self._rootless: bool | None = None
        self._paths = PathMap({})
        self.image = image
        with contextlib.suppress(Exception):  # an engine that went away is reported by the first real step
            self.image = image.with_base_id(self.client)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.image.tag}"

    @property
    def sees_local_files(self) -> bool:
        return self.transport == "bind"

    @property
    def compilers(self) -> dict[str, str]:
        return {}  # the builder image's ENV names them, and its tag covers any change

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = engines.client(self.engine)
        return self._client

    @property
    def _creating_client(self) -> Any:
        """A client that gives up: creating a container is quick, and Ctrl-C waits for it."""
        return engines.client(self.engine, timeout=CREATE_TIMEOUT)

    def prepare(self, log: IO[str], on_line: LineCallback | None = None) -> None:
        self.image_id = builder_images.ensure_builder(self.client, self.image, log, on_line)

    def for_builder(self, builder: str) -> Runner:
        if builder == self.image.builder:
            return self
        return ContainerRunner(self.engine, builder_images.builder_image(builder), self.user)

    @contextmanager
    def session(self, inputs: Sequence[Path] = (), outputs: Sequence[Path] = (), caches: Sequence[Path] = (),
                network: bool = False, work: Path | None = None, local_only: Sequence[Path] = ()) -> Iterator[None]:
        """inputs: read by the steps; outputs: written by them, wanted here afterwards; caches: kept between
        builds; local_only: bind-mounted where the engine sees this machine's files, else left out (a socket's
        directory). network: host networking, for steps that download (cargo's registry) or reach a shared
        compiler cache; builds run without one."""

        self._remove_orphans()
        self._paths = PathMap({work: WORK_IN_CONTAINER} if work else {})
        name = f"qemuprov-build-{os.getpid()}"
        self._container, self._copier, self.transport = None, None, None
        try:  # one try from before the container exists: a Ctrl-C at any moment of its creation removes it
            wanted = container_transport()
            marker_dir = work or next((p for p in (*inputs, *outputs, *caches) if p.is_dir()), None)
            if wanted != "copy":
                every = (*inputs, *outputs, *caches, *local_only)
                outside = [p for p in every if not work or not p.is_relative_to(work)]
                binds = dict.fromkeys([*outside, *([work] if work else [])])  # under work: seen through its mount
                mounts = [self._mount(path, self.visible(path)) for path in binds]
                sees = self._start(name, network, mounts, missing_is_blind=True) and \
                    (marker_dir is None or self._sees(marker_dir))
                if not sees and wanted == "bind":
                    raise InfraError(f"{self.engine.detail} cannot see this machine's files: the build container's "
                                     f"{self.visible(marker_dir or Path('/'))} is not {marker_dir} (a remote engine, "
                                     "docker:dind, or another mount namespace)",
                                     hint="QEMUPROV_CONTAINER_TRANSPORT=bind insists on bind mounts: unset it (or set "
                                          "auto or copy) to copy the build's files through the engine")
                if sees:
                    self.transport = "bind"
                else:
                    self._remove(name)
            if self.transport is None:
                self._start_copying(name, network, inputs, outputs, caches, work)
            yield
            if self._copier is not None:
                with self._engine_trouble("copying the build's results out"):
                    self._copier.finish()
        finally:
            self._copier, self._paths = None, PathMap({})
            self._remove(name)

    def _start(self, name: str, network: bool, mounts: list[Any], missing_is_blind: bool = False) -> bool:
        """Create and start the idle build container; False (nothing left behind) when missing_is_blind and the
        engine has no such directory to bind."""
        import docker.errors
        import requests

        try:
            # An engine finishes a creation whose request was broken off: Ctrl-C waits for its answer.
            with procs.signals_deferred():
                self._container = self._creating_client.containers.create(
                    self.image.tag, ["sleep", "infinity"], detach=True, init=True,
                    network_mode="host" if network else "none", mounts=mounts,
                    labels={CONTAINER_LABEL: f"{os.getpid()}@{socket.gethostname()}"}, name=name,
                    **self._engine_quirks())
            self._container.start()
        except docker.errors.APIError as exc:
            said = str(exc.explanation or exc)
            if missing_is_blind and ("bind source path does not exist" in said or "no such file or directory" in said):
                self._remove(name)
                return False
            hint = ("Podman runs its containers' init from catatonit: install it (Debian/Ubuntu: apt-get "
                    "install catatonit)") if "catatonit" in said else \
                "see `qemuprov doctor`; or build with --runner host"
            raise InfraError(f"{self.engine.detail}: cannot start the build container: {said}", hint=hint) from None
        except requests.RequestException as exc:  # APIError is one, too: it comes first
            raise InfraError(f"{self.engine.detail}: no answer while making the build container "
                             f"(waited up to {CREATE_TIMEOUT:g} s: {str(exc)[:160]})",
                             hint="see `qemuprov doctor`; the next build removes the container if it "
                                  "comes late") from None
        return True

    def _start_copying(self, name: str, network: bool, inputs: Sequence[Path], outputs: Sequence[Path],
                       caches: Sequence[Path], work: Path | None) -> None:
        """The engine cannot see this machine's files: the work directory and the caches are named volumes
        that outlive the container, inputs go in and outputs come out through the engine's archive API."""
        import docker.types

        volumes = {**({WORK_IN_CONTAINER: volume_name("work", work)} if work else {}),
                   **{self.visible(c): volume_name("cache", c) for c in caches}}
        mounts = [docker.types.Mount(inside, volume, type="volume") for inside, volume in volumes.items()]
        self._start(name, network, mounts)
        self.transport = "copy"
        user = self._step_user().split(":")
        self._copier = transfer.Copier(self._container, {self.visible(p): p for p in inputs},
                                       {self.visible(p): p for p in outputs},
                                       transfer.Owner(int(user[0]), int(user[1])),
                                       WORK_IN_CONTAINER if work else None)
        with self._engine_trouble("preparing the build container's volumes"):
            self._copier.prepare([*volumes, *(self.visible(p) for p in outputs if p.is_dir())])

    @contextmanager
    def _engine_trouble(self, doing: str) -> Iterator[None]:
        import docker.errors
        import requests

        try:
            yield
        except (OSError, requests.RequestException, docker.errors.DockerException, unpack.UnsafeArchive) as exc:
            raise InfraError(f"{self.engine.detail}: {doing} failed: {str(exc)[:240]}",
                             hint="see `qemuprov doctor`; the previous install is untouched") from None

    def _mount(self, path: Path, inside: str) -> Any:
        import docker.types

        # A bind of a directory the engine lacks fails (rather than making an empty one there, as -v does)
        return docker.types.Mount(inside, str(path), type="bind")

    def _remove(self, name: str) -> None:
        import docker.errors

        container, self._container = self._container, None
        try:
            with procs.signals_deferred():
                (container or self.client.containers.get(name)).remove(force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # the engine may be gone; say so rather than hide the build's own error
            print(f"qemuprov: warning: could not remove container {name}: {exc}", file=sys.stderr)

    def visible(self, path: Path) -> str:
        return self._paths.inward(str(path))

    def _sees(self, directory: Path) -> bool:
        """Whether the build container sees this machine's directory where it was bound: an engine elsewhere
        (docker:dind, a tcp:// or ssh:// host, another mount namespace) may have a directory of its own there."""
        marker = directory / f".qemuprov-seen-{os.getpid()}"
        marker.write_text("")
        try:
            assert self._container is not None
            status, _ = self._container.exec_run(["test", "-e", self.visible(marker)], user=self._step_user())
        finally:
            marker.unlink(missing_ok=True)
        return status == 0

    def _step_user(self) -> str:
        """Who a step runs as: the caller's uid, whose files the mounts hold; in a rootless engine, root, which
        its user namespace maps to the user who runs the engine (the caller's uid there would be a subuid)."""
        if self._rootless is None:
            self._rootless = engines.is_rootless(self.client)
        return "0:0" if self._rootless else f"{self.user[0]}:{self.user[1]}"

    def _remove_orphans(self) -> None:
        """Build containers of qemuprov processes that died without cleaning up (SIGKILL, a crash)."""
        host = socket.gethostname()
        for container in self.client.containers.list(all=True, filters={"label": CONTAINER_LABEL}):
            owner = container.labels.get(CONTAINER_LABEL, "")
            pid, _, owner_host = owner.partition("@")
            if owner_host == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(Exception):
                    container.remove(force=True)

    def _engine_quirks(self) -> dict[str, Any]:
        if self.name != "podman":
            return {}
        import docker.types

        # Rootless podman refuses the default ulimits of a root engine's clients.
        return {"ulimits": [docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
                            docker.types.Ulimit(name="nproc", soft=4096, hard=4096)]}

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return {"PATH": CONTAINER_PATH, "HOME": "/tmp", "TERM": os.environ.get("TERM", "dumb"), **extra}

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: LineCallback | None = None) -> int:
        if self._container is None:
            raise InfraError("internal: a container step ran outside a container session")
        _log_command(log, argv, cwd, where=f"[{self.image.tag}] ")
        import docker.errors
        import requests

        try:
            if self._copier is not None:
                self._copier.sync()
            return self._exec(argv, cwd, env, log, on_line)
        except (requests.RequestException, docker.errors.DockerException, OSError) as exc:
            raise InfraError(f"lost the container engine during `{shlex.join(argv)[:80]}` ({self.engine.detail}): "
                             f"{str(exc)[:200]}",
                             hint="start the engine again and rerun the build; the previous install is "
                                  "untouched") from None

    def _exec(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], log: IO[str],
              on_line: LineCallback | None) -> int:
        assert self._container is not None
        api = self.client.api
        inward = self._paths.inward
        exec_id = api.exec_create(self._container.id, [inward(a) for a in argv], workdir=self.visible(cwd),
                                  environment={k: inward(v) for k, v in env.items()},
                                  user=self._step_user())["Id"]
        pending = ""
        try:
            for chunk in api.exec_start(exec_id, stream=True):
                pending += chunk.decode(errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    line = self._paths.outward(line)
                    log.write(line + "\n")
                    if on_line is not None:
                        on_line(line + "\n")
            if pending:
                log.write(self._paths.outward(pending) + "\n")
        finally:
            log.flush()
        code = api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else 255


def get_runner(name: str, builder: str, base: str | None = None,
               engine_needed: bool = True) -> tuple[Runner, str | None]:
    """The runner for --runner NAME, and a notice when `auto` had to fall back to the host. engine_needed
    False (an install that only comes from a binary cache): a container runner even where no engine answers,
    since the cache key needs only the builder's Dockerfile and base image name."""
    if name == "host":
        return HostRunner(), None
    container_transport()  # a bad setting is one line now, before the engine is looked for or the fetch
    if not engine_needed:
        engine = engines.find_engine("Podman" if name == "podman" else "any")
        if not engine.reachable:
            engine = Engine(None, False, name="Podman" if name == "podman" else "Docker", detail=engine.detail)
    elif name == "auto":
        engine = engines.find_engine()
        if not engine.reachable:
            return HostRunner(), f"no container engine reachable ({engine.detail}); building on the host"
    else:
        engine = engines.require_engine("Podman" if name == "podman" else "any")
    return ContainerRunner(engine, builder_images.builder_image(builder, base)), None


def one_shot(image: str, script: str, env: Mapping[str, str], out: Path, timeout: float,
             doing: str) -> tuple[int, str]:
    """A throwaway container of `image` runs `sh -c script` with `out` at /out (and the network): for work that
    needs a Debian userland and nothing of a build (the bench guest's fio). Removed whatever happens; its exit
    status and the end of its output. No engine, no image, or no end in time: an InfraError."""
    try:
        engine = engines.require_engine()
    except QemuprovError as exc:
        raise InfraError(f"{doing} runs in a container, and {exc.message}",
                         hint="start Docker or Podman once; what it makes is kept in the cache") from None
    try:
        container = engines.client(engine).containers.run(
            image, ["sh", "-c", script], detach=True, network_mode="host", environment=dict(env),
            volumes={str(out): {"bind": "/out", "mode": "rw"}}, labels={ONE_SHOT_LABEL: doing[:60]})
    except Exception as exc:  # the SDK's ImageNotFound, APIError: no image to run, or no engine
        raise InfraError(f"could not start a {image} container for {doing}: {str(exc)[-300:]}",
                         hint=f"`docker pull {image}` (the engine needs the network once)") from None
    try:
        status = container.wait(timeout=timeout)
        said = container.logs(tail=ONE_SHOT_OUTPUT_LINES).decode(errors="replace").strip()
    except Exception as exc:  # the SDK's read timeout, or an engine gone away
        raise InfraError(f"{doing} in a {image} container did not finish: {str(exc)[-200:]}",
                         hint=f"it is given {timeout:.0f} s; see `docker ps -a --filter label={ONE_SHOT_LABEL}`"
                         ) from None
    finally:
        with contextlib.suppress(Exception):  # an engine gone away keeps it; the label finds it
            container.remove(force=True)
    code = status.get("StatusCode") if isinstance(status, dict) else None
    return (code if isinstance(code, int) else -1), said
