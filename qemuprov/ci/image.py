"""Ship an install to CI: a runtime container image (the install on PATH, only the libraries it needs), or a
relocatable tarball of the prefix."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from qemuprov.ci.binary_cache import owned_by_root
from qemuprov.errors import InfraError, UserError
from qemuprov.infra import builder_images, engines, paths
from qemuprov.infra.runners import ContainerRunner, HostRunner, Runner
from qemuprov.knowledge import firmware
from qemuprov.recipe import FirmwareSet
from qemuprov.records import manifest
from qemuprov.records.installs import Install
from qemuprov.records.manifest import Manifest

IMAGE_PREFIX = "/opt/qemuprov"
# [registry[:port]/]name[/name...][:tag], as the engines accept it
IMAGE_REFERENCE = re.compile(
    r"^((([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+|localhost)(:\d+)?|[A-Za-z0-9-]+:\d+)/)?"  # a registry: a dot, a port
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
DISTRO_FIRMWARE_SKIP = re.compile(r"^qemu-system-(?!data$)")  # Debian's own emulators own some firmware links
# Prints `ldd` of every binary, then `dpkg -S` owner lines; run where the install was built, so the owners
# are the packages of the distribution the binaries were linked against.
RUNTIME_DEPS_SCRIPT = r"""
cd "$1"; shift
for f in $(find bin libexec -type f 2>/dev/null); do ldd "$f" 2>/dev/null; done \
  | awk '$2 == "=>" { print ($3 == "not" ? "MISSING " $1 : $3) }' | sort -u \
  | while read -r lib rest; do
      case "$lib" in
        MISSING) echo "MISSING $rest" ;;
        *) { dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || echo "UNOWNED $lib"; } \
             | sed 's/^\([^U]\)/OWNER \1/' ;;
      esac
    done
"""
# The distribution firmware an install uses is the host's: its owners are looked up here, on the host.
FIRMWARE_OWNERS_SCRIPT = r"""for file in "$@"; do dpkg -S "$file" 2>/dev/null | sed 's/^/FIRMWARE /'; done"""
TAGS = ("OWNER ", "FIRMWARE ", "MISSING ", "UNOWNED ")


def export_tarball(entry: Install, dest: Path) -> Path:
    """A .tar.gz of the prefix under a top directory named after the install; relocatable (QEMU finds its
    data relative to its binary, the virtiofsd wrapper finds its daemon relative to itself)."""
    dest = dest.resolve()
    if dest.is_dir():
        raise UserError(f"--tar {dest}: is a directory", hint="give a file name such as qemu.tar.gz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        mode = "w:gz" if dest.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(partial, mode) as tar:  # type: ignore[call-overload]
            tar.add(entry.prefix, arcname=entry.name, filter=owned_by_root)
        partial.rename(dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def default_base(entry: Install) -> str:
    builder = entry.record.builder_image
    if builder is not None and builder.base:
        return builder.base
    release = _os_release()
    if release.get("ID") and release.get("VERSION_CODENAME"):
        return f"{release['ID']}:{release['VERSION_CODENAME']}"
    raise UserError(f"{entry.name} was built on the host and this host's distribution is unknown",
                    hint="pass --base IMAGE (the distribution the install was built on)")


def _os_release() -> dict[str, str]:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return {}
    return {k: v.strip('"') for k, _, v in (line.partition("=") for line in text.splitlines()) if k}


def _build_environment(entry: Install) -> Runner:
    """Where the install was built: the host, or its builder image (rebuilt if the engine lost it)."""
    builder = entry.record.builder_image
    if builder is None:
        return HostRunner()
    # The image the binaries came from: the recipe's builder, or for virtiofsd alone the daemon's own builder.
    name = builder.builder or str(entry.record.recipe.get("builder", ""))
    return ContainerRunner(engines.require_engine(), builder_images.builder_image(name, builder.base))


def distribution_firmware(entry: Install) -> list[str]:
    """The files of the distribution's firmware directories the install's arches load (a tree without blobs
    uses them); with a recipe's firmware = "all", every file there."""
    arches = tuple(p.arch for p in entry.qemu_probes)
    keep_all = entry.record.plan is not None and entry.record.plan.firmware == FirmwareSet.ALL
    return [str(f) for d in entry.firmware_dirs if not d.startswith(str(entry.prefix)) and Path(d).is_dir()
            for f in sorted(Path(d).iterdir()) if keep_all or firmware.needed(f.name, arches)]


def runtime_packages(entry: Install, runner: Runner, log: IO[str]) -> tuple[list[str], list[str]]:
    """(packages, firmware files): the distribution packages the install's binaries and firmware come from."""
    firmware_files = distribution_firmware(entry)
    output = io.StringIO()
    runner.prepare(log)
    with runner.session(inputs=[entry.prefix]):
        status = runner.run(["sh", "-c", RUNTIME_DEPS_SCRIPT, "sh", str(entry.prefix)], cwd=entry.prefix,
                            env=runner.env({}), log=output)
    if firmware_files:
        host = HostRunner()
        host.run(["sh", "-c", FIRMWARE_OWNERS_SCRIPT, "sh", *firmware_files], cwd=entry.prefix, env=host.env({}),
                 log=output)
    log.write(output.getvalue())
    if status != 0:
        raise InfraError(f"could not list the runtime libraries of {entry.prefix} (exit status {status})",
                         hint=f"see {getattr(log, 'name', 'the log')}")
    packages: set[str] = set()
    problems: list[str] = []
    for line in output.getvalue().splitlines():
        tag = next((t for t in TAGS if line.startswith(t)), None)
        if tag in ("MISSING ", "UNOWNED "):
            problems.append(line)
        elif tag and ": " in line and "diversion by" not in line:
            owners = line[len(tag):].split(": ", 1)[0]
            for owner in owners.split(", "):
                name = owner.split(":", 1)[0]
                if not (tag == "FIRMWARE " and DISTRO_FIRMWARE_SKIP.match(name)):
                    packages.add(name)
    if problems:
        raise InfraError(f"{entry.name}: libraries the runtime image could not get from a package: "
                         + "; ".join(problems[:5]),
                         hint="the install links against files no package owns; rebuild it in a container")
    return sorted(packages), firmware_files


def check_tag(tag: str) -> None:
    if not IMAGE_REFERENCE.match(tag):
        raise UserError(f'--tag: "{tag}" is not an image reference',
                        hint="lower-case name components with an optional :tag, e.g. ci/qemu-virtiofs:7.2")


def build_runtime_image(entry: Install, tag: str, base: str | None, log: IO[str]) -> str:
    runner = _build_environment(entry)
    packages, firmware_files = runtime_packages(entry, runner, log)
    engine = engines.require_engine()
    docker_client = engines.client(engine)
    record = dataclasses.replace(entry.record, prefix=f"{IMAGE_PREFIX}/{entry.name}")
    with tempfile.TemporaryDirectory(prefix="qemuprov-image-", dir=paths.cache_dir()) as tmp:
        context = Path(tmp)
        shutil.copy2(paths.shipped_dir("containers") / "runtime.Dockerfile", context / "Dockerfile")
        shutil.copytree(entry.prefix, context / "prefix", symlinks=True, copy_function=_link_or_copy)
        (context / "prefix" / manifest.FILE).unlink(missing_ok=True)
        manifest.write(context / "prefix", record)
        labels = _labels(entry, record)
        buildargs = {"BASE": base or default_base(entry), "PACKAGES": " ".join(packages), "NAME": entry.name,
                     "FIRMWARE": " ".join(firmware_files)}
        return builder_images.build_image(docker_client, context, "Dockerfile", tag, buildargs, labels, log)


def _link_or_copy(src: str, dst: str) -> Any:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _labels(entry: Install, record: Manifest) -> dict[str, str]:
    source = entry.source_record
    return {
        "org.qemuprov.manifest": json.dumps(record.to_json(), separators=(",", ":"), default=str),
        "org.qemuprov.summary": entry.summary(),
        "org.opencontainers.image.title": f"qemuprov {entry.name}",
        "org.opencontainers.image.description": entry.summary(),
        "org.opencontainers.image.source": source.url if source else "",
        "org.opencontainers.image.revision": (source.commit or source.sha256 or "") if source else "",
    }
