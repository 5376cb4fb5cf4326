"""A small client of the OCI distribution API (any registry: a local `registry`, Harbor, GHCR, GitLab, Docker
Hub) through requests: blobs and manifests by digest and tag, with the credentials Docker and ORAS users keep
in ~/.docker/config.json (or $DOCKER_CONFIG), Basic or Bearer. Every blob read is checked against its digest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from qemuprov.errors import InfraError, UserError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB_CHUNK = 1 << 20


class RegistryUnreachable(InfraError):
    """The registry did not answer: a binary cache that is down only costs a notice."""


class DigestMismatch(InfraError):
    """A blob whose content is not what its digest says."""


@dataclass(frozen=True)
class Location:
    host: str  # host[:port]
    repository: str
    scheme: str  # http for the loopback, else https

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"


def parse(reference: str) -> Location:
    """HOST[:PORT]/REPOSITORY, optionally with http:// or https:// in front."""
    scheme, _, rest = reference.rpartition("://")
    host, _, repository = rest.partition("/")
    if not host or not repository or not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", repository):
        raise UserError(f'binary cache "{reference}": give REGISTRY/REPOSITORY, e.g. ghcr.io/me/qemu-cache or '
                        "127.0.0.1:5000/qemuprov")
    local = host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
    return Location(host, repository, scheme or ("http" if local else "https"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _docker_auth(host: str) -> str | None:
    """The base64 user:password Docker keeps for host, if any."""
    config = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        auths = json.loads(config.read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    for name in (host, f"https://{host}", f"http://{host}"):
        entry = auths.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            return str(entry["auth"])
    return None


class Registry:
    def __init__(self, location: Location, timeout: float = 30) -> None:
        self.location, self.timeout = location, timeout
        self.base = f"{location.scheme}://{location.host}/v2/{location.repository}"
        self._session = requests.Session()
        self._basic = _docker_auth(location.host)
        self._bearer: str | None = None

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        for _ in range(2):
            headers = dict(kwargs.pop("headers", {}))
            if self._bearer:
                headers["Authorization"] = f"Bearer {self._bearer}"
            elif self._basic:
                headers["Authorization"] = f"Basic {self._basic}"
            try:
                response = self._session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                raise RegistryUnreachable(f"the binary cache {self.location} does not answer ({type(exc).__name__})",
                                          hint="check the registry and the network") from None
            if response.status_code != 401 or self._bearer or not self._token(response):
                break
            kwargs["headers"] = headers
        if response.status_code == 401:
            raise InfraError(f"the binary cache {self.location} refused the credentials "
                             f"({'none given' if not self._basic else 'those in the Docker config'})",
                             hint=f"docker login {self.location.host} (the credentials go to "
                                  "$DOCKER_CONFIG/config.json or ~/.docker/config.json)")
        return response

    def _token(self, challenge: requests.Response) -> bool:
        """Bearer auth (Docker Hub, GHCR): a token from the realm the 401 names, with the Basic credentials."""
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer "):
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
        headers = {"Authorization": f"Basic {self._basic}"} if self._basic else {}
        try:
            answer = self._session.get(fields.get("realm", ""), headers=headers, timeout=self.timeout,
                                       params={k: v for k, v in fields.items() if k in ("service", "scope")})
            token = answer.json().get("token") or answer.json().get("access_token")
        except (requests.RequestException, ValueError):
            return False
        self._bearer = token
        return bool(token)

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code >= 400:
            raise InfraError(f"the binary cache {self.location} answered {response.status_code} to {what}",
                             hint="see the registry's log")
        return response

    def get_manifest(self, tag: str) -> tuple[dict[str, Any], str] | None:
        """The manifest under tag and its digest; None where there is none."""
        response = self._request("GET", f"{self.base}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        if response.status_code == 404:
            return None
        body = self._check(response, f"the manifest {tag}").content
        try:
            return json.loads(body), digest_of(body)
        except ValueError:
            raise DigestMismatch(f"the binary cache {self.location} served a manifest for {tag} that is no JSON",
                                 hint="push again") from None

    def get_blob(self, digest: str) -> bytes:
        data = self._check(self._request("GET", f"{self.base}/blobs/{digest}"), f"the blob {digest}").content
        if digest_of(data) != digest:
            raise self._not_its_digest(digest)
        return data

    def download_blob(self, digest: str, dest: Path, on_progress: Callable[[int, int], None] | None = None) -> None:
        """The blob into dest, streamed and checked against its digest on the way (dest is removed if it fails)."""
        response = self._check(self._request("GET", f"{self.base}/blobs/{digest}", stream=True), f"the blob {digest}")
        total, done, hashed = int(response.headers.get("Content-Length") or 0), 0, hashlib.sha256()
        try:
            with response, dest.open("wb") as out:
                for chunk in response.iter_content(BLOB_CHUNK):
                    hashed.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        except requests.RequestException as exc:
            dest.unlink(missing_ok=True)
            raise RegistryUnreachable(f"the binary cache {self.location} broke off the blob {digest} after "
                                      f"{done} bytes ({type(exc).__name__})", hint="check the registry and the "
                                      "network") from None
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if "sha256:" + hashed.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise self._not_its_digest(digest)

    def _not_its_digest(self, digest: str) -> DigestMismatch:
        return DigestMismatch(f"the binary cache {self.location} served a blob whose content is not {digest}",
                              hint="the registry's storage is damaged or was tampered with; push again")

    def push_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        if self._request("HEAD", f"{self.base}/blobs/{digest}").status_code == 200:
            return digest
        start = self._check(self._request("POST", f"{self.base}/blobs/uploads/"), "a blob upload")
        location = start.headers["Location"]
        if location.startswith("/"):
            location = f"{self.location.scheme}://{self.location.host}{location}"
        separator = "&" if "?" in location else "?"
        self._check(self._request("PUT", f"{location}{separator}digest={digest}", data=data,
                                  headers={"Content-Type": "application/octet-stream"}), f"the blob {digest}")
        return digest

    def put_manifest(self, tag: str, manifest: dict[str, Any]) -> str:
        body = json.dumps(manifest, separators=(",", ":")).encode()
        self._check(self._request("PUT", f"{self.base}/manifests/{tag}", data=body,
                                  headers={"Content-Type": OCI_MANIFEST}), f"the manifest {tag}")
        return digest_of(body)


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()
