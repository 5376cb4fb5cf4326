"""Builder images (one per QEMU era, from containers/builder-*.Dockerfile),
tagged by a hash of what defines them so they are built once and reused until their Dockerfile changes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from qemuprov.errors import InfraError, UserError
from qemuprov.infra import paths

BASE_ARG = re.compile(r"^ARG\s+BASE=(\S+)", re.MULTILINE)
PULL_FAILURE = re.compile(r"pull access denied|manifest unknown|not found|no such host|dial tcp|lookup .*registry"
                          r"|failed to resolve|connection refused", re.IGNORECASE)


def dockerfile(builder: str) -> Path:
    for directory in (paths.user_containers_dir(), paths.shipped_dir("containers")):
        candidate = directory / f"builder-{builder}.Dockerfile"
        if candidate.is_file():
            return candidate
    raise UserError(f'builder "{builder}": no containers/builder-{builder}.Dockerfile',
                    hint=f"available builders: {', '.join(paths.builder_names())}")


# Where hosts keep the CAs they trust beyond their distribution's bundle (a TLS-inspecting proxy's, a company's).
HOST_CA_DIRS = ("/usr/local/share/ca-certificates", "/etc/pki/ca-trust/source/anchors")


def host_cas() -> tuple[Path, ...]:
    found = []
    for directory in map(Path, HOST_CA_DIRS):
        if directory.is_dir():
            found += sorted(p for p in directory.rglob("*") if p.suffix in (".crt", ".pem") and p.is_file())
    return tuple(found)


@dataclass(frozen=True)
class BuilderImage:
    builder: str
    dockerfile: Path
    base: str

    base_id: str = ""  # the base image's id where the engine has it: a re-made base means a new builder
    cas: tuple[Path, ...] = ()  # the host's own CAs, handed to the image build as host-ca/ in its context

    @functools.cached_property
    def tag(self) -> str:
        parts = [self.dockerfile.read_bytes(), self.base.encode(), self.base_id.encode(),
                 *(ca.read_bytes() for ca in self.cas)]
        digest = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
        return f"qemuprov-builder-{self.builder}:{digest}"

    @contextmanager
    def context(self) -> Iterator[Path]:
        """The build context: the Dockerfile and host-ca/ with the host's own CAs (pip, git and cargo in the
        builder then trust what the host trusts). Builder images stay on this machine; runtime images, which
        may be pushed, never get them."""
        with tempfile.TemporaryDirectory(prefix="qemuprov-context-") as tmp:
            context = Path(tmp)
            shutil.copyfile(self.dockerfile, context / self.dockerfile.name)
            (context / "host-ca").mkdir()
            for index, ca in enumerate(self.cas):
                shutil.copyfile(ca, context / "host-ca" / f"{index:02d}-{ca.stem}.crt")
            yield context

    def with_base_id(self, docker_client: Any) -> BuilderImage:
        import docker.errors
        import requests

        try:
            return dataclasses.replace(self, base_id=str(docker_client.images.get(self.base).id))
        except (docker.errors.DockerException, requests.RequestException):
            return self  # not here (a registry may have it), or the engine is down: the build will say


def builder_image(builder: str, base: str | None = None) -> BuilderImage:
    path = dockerfile(builder)
    default = BASE_ARG.search(path.read_text())
    chosen = base or (default.group(1) if default else None)
    if not chosen:
        raise UserError(f"{path}: no `ARG BASE=IMAGE` line", hint="builder Dockerfiles start with ARG BASE=IMAGE")
    return BuilderImage(builder, path, chosen, cas=host_cas())


def ensure_builder(docker_client: Any, image: BuilderImage, log: IO[str],
                   on_line: Callable[[str], None] | None = None) -> str:
    """The id of the builder image, building it first if this engine does not have it yet."""
    import docker.errors

    try:
        return str(docker_client.images.get(image.tag).id)
    except docker.errors.ImageNotFound:
        pass
    with image.context() as context:
        return build_image(docker_client, context, image.dockerfile.name, image.tag, {"BASE": image.base},
                           {"org.qemuprov.builder": image.builder}, log, on_line)


def build_image(docker_client: Any, context: Path, dockerfile: str, tag: str, buildargs: dict[str, str],
                labels: dict[str, str], log: IO[str], on_line: Callable[[str], None] | None = None,
                nocache: bool = False) -> str:
    """`docker build` through the engine's API, streaming its output; the new image's id. nocache: no layer
    from an earlier build is reused."""
    args = " ".join(f"--build-arg {k}={v}" for k, v in buildargs.items() if "\n" not in v)
    log.write(f"$ docker build {args} -t {tag} -f {dockerfile} {context}\n")
    failure = ""
    # Host networking: images install packages, and engines without a bridge have no other network.
    chunks = docker_client.api.build(path=str(context), dockerfile=dockerfile, tag=tag, buildargs=buildargs,
                                     labels=labels, network_mode="host", rm=True, forcerm=True, decode=True,
                                     nocache=nocache)
    for chunk in chunks:
        line = str(chunk["stream"]) if "stream" in chunk else f"ERROR: {chunk['error']}\n" if "error" in chunk else ""
        log.write(line)
        if on_line is not None and line:
            on_line(line)
        if line.startswith("ERROR: "):
            failure = line[len("ERROR: "):].strip()
    log.flush()
    base = buildargs.get("BASE", "")
    if failure and base and PULL_FAILURE.search(failure) and not has_image(docker_client, base):
        raise InfraError(f"{tag}: the base image {base} is not in the engine and could not be pulled: {failure}",
                         hint=f"import one made locally: debootstrap --variant=minbase <suite> DIR && "
                              f"tar -C DIR -c . | docker import - {base}; or pick another base image")
    if failure:
        raise InfraError(f"image {tag} did not build: {failure}",
                         hint=f"see {getattr(log, 'name', 'the log')}; the Dockerfile is {context / dockerfile}")
    return str(docker_client.images.get(tag).id)


def has_image(docker_client: Any, name: str) -> bool:
    import docker.errors

    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True
