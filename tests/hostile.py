"""A hostile registry and a hostile file server on the loopback, for the tests of what qemuprov takes from outside.

The registry speaks enough of the OCI distribution API (manifests, blobs, uploads, Basic and Bearer auth) to
serve crafted entries, signed with a key the test trusts so that a pull gets past the signature to the checks
behind it. A second server on another loopback address (127.0.0.2) plays "another host": redirects, token
realms and upload locations point there, and every request either server gets is recorded with its headers, so
a test can assert that no credential reached a host it does not belong to."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qemuprov.ci import signing
from qemuprov.ci.oci import digest_of as digest

USER, PASSWORD = "ci", "s3cret-registry-password"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@dataclass
class Member:
    """One tar member, as a hostile archive would hold it."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0


def archive(members: list[Member], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname, info.mode, info.uid, info.mtime = m.kind, m.linkname, m.mode, m.uid, 1700000000
            info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def gzip_bomb(size: int) -> bytes:
    """A tar.gz a few KB long holding one file of `size` zero bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as zipped:
        info = tarfile.TarInfo("bin/zeros")
        info.size = size
        zipped.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        block = bytes(1 << 20)
        left = size
        while left:
            zipped.write(block[:min(left, len(block))])
            left -= min(left, len(block))
        zipped.write(bytes((512 - size % 512) % 512) + bytes(1024))
    return out.getvalue()


@dataclass
class Seen:
    host: str  # the address the request reached: 127.0.0.1 or 127.0.0.2
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    dribble: float = 0.0  # seconds between bytes of the body
    length: int | None = None  # a Content-Length that lies; None: the body's own; -1: none (read to the close)


Route = Callable[["Seen"], "Reply | None"]
ABSENT = object()  # no manifest: 404


class Hostile:
    """Both servers and what they were asked. `routes` decides each answer; the default serves `entry`."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.routes: list[Route] = []
        self.key = Ed25519PrivateKey.generate()
        self.blobs: dict[str, bytes] = {}
        self.manifest: Any = ABSENT
        self.require_auth = False
        self.servers: list[ThreadingHTTPServer] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.servers[0].server_address[1]}"

    @property
    def other(self) -> str:
        return f"127.0.0.2:{self.servers[1].server_address[1]}"

    def entry(self, config: bytes, layer: bytes, *, sign: bool = True, **oci: Any) -> None:
        """Serve this config and layer under every tag, signed for whichever tag is asked (oci: fields to
        replace in the OCI manifest)."""
        self.blobs = {digest(config): config, digest(layer): layer}
        self.manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                         "config": {"mediaType": "application/vnd.qemuprov.install.v1+json",
                                    "digest": digest(config), "size": len(config)},
                         "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                     "digest": digest(layer), "size": len(layer)}],
                         "annotations": {}, "_sign": sign, **oci}

    def signed_manifest(self, tag: str) -> bytes:
        if not isinstance(self.manifest, dict):
            return json.dumps(self.manifest).encode()
        manifest = {k: v for k, v in self.manifest.items() if k != "_sign"}
        if self.manifest.get("_sign"):
            try:
                statement = signing.statement(tag, manifest["config"]["digest"], manifest["layers"][0]["digest"])
                manifest["annotations"] = {**manifest.get("annotations", {}), **signing.sign(self.key, statement)}
            except (KeyError, TypeError, IndexError):
                pass
        return json.dumps(manifest).encode()

    def answer(self, seen: Seen) -> Reply:
        self.seen.append(seen)
        for route in self.routes:
            reply = route(seen)
            if reply is not None:
                return reply
        if seen.host == "127.0.0.2":
            return Reply(404)
        if self.require_auth and seen.headers.get("authorization") != f"Basic {BASIC}":
            return Reply(401, headers={"WWW-Authenticate": 'Basic realm="hostile"'})
        parts = seen.path.split("?")[0].split("/")
        if "manifests" in parts:
            if self.manifest is ABSENT:
                return Reply(404)
            return Reply(200, self.signed_manifest(parts[-1]),
                         {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        if "blobs" in parts and parts[-1] in self.blobs:
            return Reply(200, self.blobs[parts[-1]])
        if "uploads" in parts and seen.method == "POST":
            return Reply(202, headers={"Location": f"/v2/upload/{time.monotonic_ns()}"})
        if seen.method in ("PUT", "PATCH"):
            return Reply(201)
        return Reply(404)

    def to(self, host: str) -> list[Seen]:
        return [s for s in self.seen if s.host == host]


def _handler(hostile: Hostile) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(self.server.server_address[0], self.command, self.path,  # type: ignore[index]
                        {k.lower(): v for k, v in self.headers.items()}, body)
            reply = hostile.answer(seen)
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if reply.length == -1:
                self.close_connection = True
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(reply.length if reply.length is not None else len(reply.body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            try:
                if reply.dribble:
                    for byte in reply.body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(reply.dribble)
                else:
                    self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _serve

    return Handler


@contextmanager
def running() -> Iterator[Hostile]:
    hostile = Hostile()
    for address in ("127.0.0.1", "127.0.0.2"):
        server = ThreadingHTTPServer((address, 0), _handler(hostile))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        hostile.servers.append(server)
    try:
        yield hostile
    finally:
        for server in hostile.servers:
            server.shutdown()
            server.server_close()


def docker_config(directory: Any, *hosts: str) -> str:
    """A Docker config that holds the registry password for these hosts."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": {h: {"auth": BASIC} for h in hosts}}))
    return str(directory)
