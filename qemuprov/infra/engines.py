"""Find a reachable container engine: Docker, or Podman through its Docker-compatible API socket."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemuprov.errors import InfraError
from qemuprov.infra import config, safefile

TIMEOUT_ENV = "QEMUPROV_ENGINE_TIMEOUT"
AUTO_TIMEOUT = 5.0  # --runner auto: an engine that is there answers /version in milliseconds, even when busy
REQUIRED_TIMEOUT = 30.0  # --runner docker|podman: a loaded machine's Podman service has taken seconds


@dataclass(frozen=True)
class Engine:
    url: str | None
    reachable: bool
    name: str = ""
    version: str = ""
    detail: str = ""


def docker_config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def context_host() -> str | None:
    """The engine the docker CLI would use through its context ($DOCKER_CONTEXT, else `docker context use`'s
    currentContext in config.json): its endpoint's Host; None for the default context or one that cannot be read
    (the CLI itself would then fail with its own words)."""
    name = os.environ.get("DOCKER_CONTEXT")
    config_dir = docker_config_dir()
    if not name:
        try:
            found = json.loads(safefile.read_bytes(config_dir / "config.json")).get("currentContext")
        except (OSError, ValueError, RecursionError, AttributeError):
            return None
        name = found if isinstance(found, str) else None
    if not name or name == "default":
        return None
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        host = json.loads(safefile.read_bytes(meta))["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    return host if isinstance(host, str) and host.isprintable() else None


def check_docker_config() -> None:
    """The docker SDK reads Docker's config.json with a plain open(): a FIFO there would hang it for ever, and
    /dev/zero would never end. One line instead."""
    from docker.utils import config as docker_config

    where = docker_config.find_config_file()
    if where is None:
        return
    try:
        safefile.read_bytes(Path(where))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InfraError(f"Docker's config {where} cannot be read: {exc.strerror}",
                         hint="make it a regular JSON file (or remove it), or point DOCKER_CONFIG elsewhere") from None


def candidate_urls() -> list[str]:
    """DOCKER_HOST, else the docker CLI's current context, then the usual sockets."""
    urls = []
    if os.environ.get("DOCKER_HOST"):
        urls.append(os.environ["DOCKER_HOST"])
    elif host := context_host():
        urls.append(host)
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    for sock in ("/var/run/docker.sock", f"{runtime}/podman/podman.sock", "/run/podman/podman.sock",
                 f"{runtime}/docker.sock"):
        url = f"unix://{sock}"
        if url not in urls and Path(sock).exists():
            urls.append(url)
    return urls


ANSWER_CAP = 1 << 20  # an engine's /version is about 1 KB


def _unix_get(path: str, request: str, timeout: float) -> str:
    """The whole answer within timeout (for all of it, not each read: an engine that sends a byte a second
    cannot keep us) and at most ANSWER_CAP bytes (nor one that never stops)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(f"GET {request} HTTP/1.0\r\nHost: engine\r\n\r\n".encode())
        chunks, size = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > ANSWER_CAP:
                raise OSError(27, f"answered more than {ANSWER_CAP >> 10} KiB")
    return b"".join(chunks).decode(errors="replace")


def ping(url: str, timeout: float = 2.0) -> Engine:
    if not url.startswith("unix://"):
        return _ping_with_sdk(url, timeout)
    sock = url.removeprefix("unix://")
    try:
        answer = _unix_get(sock, "/version", timeout)
    except TimeoutError:
        return Engine(url, False, detail=f"{url}: did not answer within {timeout:g} s (a busy engine: "
                                         f"{TIMEOUT_ENV} gives it longer)")
    except OSError as exc:
        return Engine(url, False, detail=f"{url}: {exc.strerror or exc}")
    head, _, body = answer.partition("\r\n\r\n")
    status_line = head.splitlines()[0] if head else "nothing"
    if " 200 " not in status_line:
        return Engine(url, False, detail=f"{url}: answered {status_line}")
    try:
        info = json.loads(body)
    except ValueError:
        info = {}
    components = [c.get("Name", "") for c in info.get("Components", [])]
    name = "Podman" if any("Podman" in c for c in components) else "Docker"
    version = str(info.get("Version", "?"))
    return Engine(url, True, name, version, f"{name} {version} at {url}")


def _ping_with_sdk(url: str, timeout: float) -> Engine:
    import docker  # only for non-unix engines (tcp://, ssh://): a slow import

    try:
        client = docker.DockerClient(base_url=url, timeout=int(max(1, timeout)))
        version = client.version()
    except Exception as exc:  # the SDK raises many kinds for an unreachable engine
        return Engine(url, False, detail=f"{url}: {exc}")
    return Engine(url, True, "Docker", str(version.get("Version", "?")), f"Docker {version.get('Version')} at {url}")


def answer_timeout(default: float) -> float:
    """How long an engine gets to answer: $QEMUPROV_ENGINE_TIMEOUT seconds, else default."""
    return config.seconds(TIMEOUT_ENV, default, most=3600)


def find_engine(wanted: str = "any", timeout: float = AUTO_TIMEOUT) -> Engine:
    """The first reachable engine of the wanted name (any, Docker or Podman) among the candidate sockets."""
    urls = candidate_urls()
    failures = []
    for url in urls:
        engine = ping(url, answer_timeout(timeout))
        if engine.reachable and wanted in ("any", engine.name):
            return engine
        failures.append(engine.detail if not engine.reachable else f"{engine.detail} is not {wanted}")
    detail = "; ".join(failures) if failures else "no Docker or Podman socket found (and DOCKER_HOST is unset)"
    return Engine(None, False, detail=detail)


def client(engine: Engine, timeout: float | None = None) -> Any:
    """timeout: for each answer; none by default, as a build step may print nothing for minutes (linking, LTO)."""
    import docker  # a slow import: only commands that talk to an engine pay for it

    check_docker_config()
    return docker.DockerClient(base_url=engine.url, timeout=timeout)  # type: ignore[arg-type]


def is_rootless(docker_client: Any) -> bool:
    """Does the engine run as a normal user (rootless Podman, or rootless Docker)? Podman says so in its own
    API's info; Docker among its security options."""
    api = docker_client.api
    try:
        if "name=rootless" in (api.info().get("SecurityOptions") or []):
            return True
        answer = api._get(api._url("/libpod/info"), timeout=30)
        return bool(answer.ok and answer.json().get("host", {}).get("security", {}).get("rootless"))
    except Exception:  # an engine without the libpod API (Docker), or one that went away: the next call says
        return False


def require_engine(wanted: str = "any") -> Engine:
    """A reachable engine, or an InfraError saying how to get one (the machine's state, not bad input: exit 1).
    wanted: any | Docker | Podman. An engine asked for by name gets the time a loaded machine needs."""
    engine = find_engine(wanted, REQUIRED_TIMEOUT)
    if engine.reachable:
        return engine
    if wanted == "Podman":
        raise InfraError(f"--runner podman: no reachable Podman API socket ({engine.detail})",
                        hint="start one: podman system service --time=0 unix://$XDG_RUNTIME_DIR/podman/podman.sock "
                             "and export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/podman/podman.sock")
    raise InfraError(f"no reachable container engine: {engine.detail}",
                    hint="start Docker (or `podman system service`) and set DOCKER_HOST if its socket is not the "
                         "default; or use --runner host")
