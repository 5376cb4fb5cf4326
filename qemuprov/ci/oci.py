"""A small client of the OCI distribution API (any registry: a local `registry`, Harbor, GHCR, GitLab, Docker
Hub) through requests: blobs and manifests by digest and tag, with the credentials Docker keeps (`auths`,
`credsStore`, `credHelpers` of ~/.docker/config.json or $DOCKER_CONFIG, through the docker SDK), Basic or Bearer.

The registry is not trusted: credentials go only to its own origin (and to the token realm its own 401 names,
over https when the registry is https); redirects are followed by hand, without credentials off the origin;
every request has a deadline for the whole of it, not only per read; manifests and configs have a size cap; a
blob stops the moment it passes its declared size, and is checked against its digest."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests

from qemuprov.errors import InfraError, UserError
from qemuprov.infra import config, http, safefile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB_CHUNK = 1 << 20
MANIFEST_CAP = 4 << 20  # real manifests are a few KB
CONFIG_CAP = 16 << 20  # qemuprov.json is tens of KB
TOKEN_CAP = 1 << 20
MAX_REDIRECTS = 5
SMALL_DEADLINE = 60.0  # seconds for a whole manifest, config, token or upload request
MIN_RATE = 256 << 10  # bytes/s a blob must average, past that deadline
DEADLINE_ENV = "QEMUPROV_CACHE_DEADLINE"


class RegistryTrouble(InfraError):
    """The registry did not answer, or answered what cannot be used: on a pull this only costs a notice."""


class RegistryUnreachable(RegistryTrouble):
    """The registry did not answer in time, or at all."""


class DigestMismatch(RegistryTrouble):
    """A blob whose content is not what its digest says."""


class BadAnswer(RegistryTrouble):
    """An answer that is not what the distribution API says it is."""


@dataclass(frozen=True)
class Location:
    host: str  # host[:port]
    repository: str
    scheme: str  # http for the loopback, else https

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def origin(self) -> tuple[str, str]:
        return self.scheme, self.host.lower()


_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def parse(reference: str) -> Location:
    """HOST[:PORT]/REPOSITORY, optionally with http:// or https:// in front."""
    scheme, _, rest = reference.rpartition("://")
    host, _, repository = rest.partition("/")
    if "@" in host:
        raise UserError("binary cache: the URL holds a user name or password, which would be printed and recorded",
                        hint=f"leave it out and log in once: docker login {host.rpartition('@')[2]}")
    if scheme not in ("", "http", "https") or not _HOST.match(host) or not repository or \
            not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", repository):
        shown = reference if len(reference) < 80 and reference.isprintable() else repr(reference[:80])
        raise UserError(f'binary cache "{shown}": give REGISTRY/REPOSITORY, e.g. ghcr.io/me/qemu-cache or '
                        "127.0.0.1:5000/qemuprov")
    local = host.rsplit(":", 1)[0] in ("localhost", "127.0.0.1", "[::1]") if not host.startswith("[") \
        else host.startswith("[::1]")
    return Location(host, repository, scheme or ("http" if local else "https"))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_deadline() -> float:
    return config.seconds(DEADLINE_ENV, SMALL_DEADLINE)


def docker_credentials(host: str) -> str | None:
    """The base64 user:password Docker keeps for host (auths, credsStore or credHelpers), if any."""
    from docker import auth, errors
    from docker.utils import config as docker_config

    where = docker_config.find_config_file()
    try:
        settings = json.loads(safefile.read_bytes(Path(where))) if where else {}  # not a FIFO, not endless
        found = auth.load_config(config_dict=settings if isinstance(settings, dict) else {}).resolve_authconfig(host)
    except (errors.DockerException, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if not isinstance(found, dict):
        return None
    fields = {str(k).lower(): v for k, v in found.items()}
    user, password = fields.get("username"), fields.get("password")
    if isinstance(user, str) and isinstance(password, str) and user:
        return basic_auth(user, password)
    return None


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class Client:
    def __init__(self, location: Location, timeout: float = 30) -> None:
        self.location, self.timeout = location, timeout
        self.base = f"{location.scheme}://{location.host}/v2/{location.repository}"
        self.deadline = small_deadline()
        self._session = http.session(location.host)  # the host's trust and proxy; never ~/.netrc
        self._basic = docker_credentials(location.host)
        self._bearer: str | None = None

    # -- requests ------------------------------------------------------------------------------------------

    def _send(self, method: str, url: str, deadline: float, headers: dict[str, str] | None = None,
              data: bytes | None = None) -> requests.Response:
        """One request with its redirects, credentials only on the registry's origin; headers within the
        deadline (a watchdog, since a server can dribble them); the body is for the caller to read."""
        for _ in range(MAX_REDIRECTS + 1):
            sent = {"Accept-Encoding": "identity", **(headers or {})}
            if _origin(url) == self.location.origin:
                if self._bearer:
                    sent["Authorization"] = f"Bearer {self._bearer}"
                elif self._basic:
                    sent["Authorization"] = f"Basic {self._basic}"
            response = self._within(deadline, functools.partial(
                self._session.request, method, url, headers=sent, data=data, stream=True, allow_redirects=False,
                timeout=self.timeout, proxies=http.proxies_for(url)), url)
            if response.status_code not in (301, 302, 303, 307, 308) or "Location" not in response.headers:
                return response
            response.close()
            url = urljoin(url, response.headers["Location"])
            if urlsplit(url).scheme not in ("http", "https") or \
                    (self.location.scheme == "https" and urlsplit(url).scheme != "https"):
                raise BadAnswer(f"the binary cache {self.location} redirected to {_short_url(url)}, which is not "
                                "https", hint="check the registry's configuration")
            if method in ("POST", "PUT", "PATCH"):
                raise BadAnswer(f"the binary cache {self.location} redirected an upload to {_short_url(url)}",
                                hint="check the registry's configuration")
        raise BadAnswer(f"the binary cache {self.location} redirected more than {MAX_REDIRECTS} times")

    def _within(self, deadline: float, call: Callable[[], requests.Response], url: str) -> requests.Response:
        result: list[requests.Response | BaseException] = []

        def worker() -> None:
            try:
                result.append(call())
            except BaseException as exc:  # handed to the waiting thread
                result.append(exc)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if not result:
            raise RegistryUnreachable(f"the binary cache {self.location} did not answer within its deadline",
                                      hint="check the registry and the network")
        outcome = result[0]
        if isinstance(outcome, requests.exceptions.SSLError):
            raise RegistryUnreachable(f"the binary cache {self.location}: {http.describe_failure(outcome, url)}",
                                      hint=f"{http.TRUST_HINT}, or put it in "
                                           f"{http.docker_cert_dirs(self.location.host)[0]}/ca.crt as for Docker") \
                from None
        if isinstance(outcome, requests.exceptions.ProxyError):
            raise RegistryUnreachable(f"the binary cache {self.location}: {http.describe_failure(outcome, url)}",
                                      hint="check HTTPS_PROXY (or HTTP_PROXY), or name the registry in NO_PROXY") \
                from None
        if isinstance(outcome, requests.RequestException):
            raise RegistryUnreachable(f"the binary cache {self.location} does not answer ({type(outcome).__name__})",
                                      hint="check the registry and the network") from None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _request(self, method: str, url: str, what: str, headers: dict[str, str] | None = None,
                 data: bytes | None = None, cap: int = MANIFEST_CAP) -> tuple[requests.Response, bytes]:
        """A request, authenticated where the registry asks for it: the response and its body (capped). An upload
        gets the time MIN_RATE needs for its size on top of the deadline."""
        deadline = time.monotonic() + self.deadline + (len(data) / MIN_RATE if data else 0)
        for attempt in range(2):
            response = self._send(method, url, deadline, headers, data)
            if response.status_code == 401 and attempt == 0 and not self._bearer and self._token(response, deadline):
                response.close()
                continue
            break
        if method == "HEAD":
            response.close()
            body = b""
        else:
            body = self._read(response, cap, deadline, what)
        if response.status_code == 401:
            self._unauthorized(response)
        return response, body

    def _unauthorized(self, response: requests.Response) -> None:
        """A 401 that stands: the registry refused the credentials (exit 1), or a host it sent us to wants
        credentials that are not its to have (a notice)."""
        if _origin(response.url) != self.location.origin:
            raise BadAnswer(f"the binary cache {self.location} sent the request to {_short_url(response.url)}, "
                            "which answered 401: the registry's credentials are not sent there")
        raise InfraError(f"the binary cache {self.location} refused the credentials "
                         f"({'none given' if not self._basic else 'those in the Docker config'})",
                         hint=f"docker login {self.location.host} (the credentials go to "
                              "$DOCKER_CONFIG/config.json or ~/.docker/config.json)")

    def _read(self, response: requests.Response, cap: int, deadline: float, what: str,
              sink: IO[bytes] | None = None, on_chunk: Callable[[bytes], None] | None = None) -> bytes:
        """The body, at most cap bytes, by the deadline; into sink (returning b"") where one is given."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > cap:
            response.close()
            raise BadAnswer(f"the binary cache {self.location} announced {int(length)} bytes for {what}, more than "
                            f"the {cap} it can be")
        kept, done = bytearray(), 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise RegistryUnreachable(f"the binary cache {self.location} did not send {what} within its "
                                              f"deadline ({done} bytes came)", hint="check the registry and the "
                                              "network")
                try:
                    chunk = response.raw.read1(BLOB_CHUNK, decode_content=False)
                except (requests.RequestException, OSError, ValueError) as exc:  # the network's, not the disk's
                    raise RegistryUnreachable(f"the binary cache {self.location} broke off {what} after {done} "
                                              f"bytes ({type(exc).__name__})",
                                              hint="check the registry and the network") from None
                if not chunk:
                    break
                done += len(chunk)
                if done > cap:
                    raise BadAnswer(f"the binary cache {self.location} sent more than the {cap} bytes {what} can be")
                if on_chunk is not None:
                    on_chunk(chunk)
                if sink is not None:
                    sink.write(chunk)  # a full disk is the machine's state: it reaches the user as one
                else:
                    kept += chunk
        finally:
            response.close()
        return bytes(kept)

    def _token(self, challenge: requests.Response, deadline: float) -> bool:
        """Bearer auth (Docker Hub, GHCR): a token from the realm the registry's own 401 names, asked with the
        Basic credentials; never for a 401 from another host, never over http for an https registry."""
        if _origin(challenge.url) != self.location.origin:
            return False
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer "):
            return False
        fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
        realm = fields.get("realm", "")
        scheme = urlsplit(realm).scheme
        if scheme not in ("http", "https") or (self.location.scheme == "https" and scheme != "https") \
                or not urlsplit(realm).netloc:
            return False
        headers = {"Accept-Encoding": "identity", **({"Authorization": f"Basic {self._basic}"} if self._basic else {})}
        params = {k: v for k, v in fields.items() if k in ("service", "scope")}
        answer = self._within(deadline, lambda: self._session.get(
            realm, headers=headers, params=params, stream=True, allow_redirects=False, timeout=self.timeout,
            proxies=http.proxies_for(realm)), realm)
        body = self._read(answer, TOKEN_CAP, deadline, "a token")
        if answer.status_code == 401:
            return False  # the credentials were refused: the registry's 401 stands
        try:
            data = json.loads(body) if answer.status_code == 200 else None
        except (ValueError, RecursionError):
            data = None
        token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise BadAnswer(f"the token realm {_short_url(realm)} of the binary cache {self.location} answered "
                            f"{answer.status_code} without a token")
        self._bearer = token
        return True

    def _fail(self, response: requests.Response, what: str) -> None:
        if response.status_code >= 400:
            raise BadAnswer(f"the binary cache {self.location} answered {response.status_code} to {what}",
                            hint="see the registry's log")

    # -- the distribution API ----------------------------------------------------------------------------------

    def get_manifest(self, tag: str) -> tuple[dict[str, Any], str] | None:
        """The manifest under tag (a JSON object) and its digest; None where there is none."""
        response, body = self._request("GET", f"{self.base}/manifests/{tag}", f"the manifest {tag[:16]}",
                                       headers={"Accept": OCI_MANIFEST})
        if response.status_code == 404:
            return None
        self._fail(response, f"the manifest {tag[:16]}")
        try:
            found = json.loads(body)
        except (ValueError, RecursionError):
            found = None
        if not isinstance(found, dict):
            raise BadAnswer(f"the binary cache {self.location} served a manifest for {tag[:16]}… that is no JSON "
                            "object", hint="push again")
        return found, digest_of(body)

    def get_blob(self, digest: str, size: int, cap: int = CONFIG_CAP) -> bytes:
        """A small blob of the declared size, checked against its digest."""
        if size > cap:
            raise BadAnswer(f"the binary cache {self.location} declares {size} bytes for {digest[:19]}, more than "
                            f"the {cap} it can be")
        response, data = self._request("GET", f"{self.base}/blobs/{digest}", f"the blob {digest[:19]}", cap=size)
        self._fail(response, f"the blob {digest[:19]}")
        if digest_of(data) != digest:
            raise self._not_its_digest(digest)
        return data

    def download_blob(self, digest: str, size: int, dest: Path,
                      on_progress: Callable[[int, int], None] | None = None) -> None:
        """The blob into dest, streamed: stopped the moment it passes its declared size or its deadline, checked
        against its digest (dest is removed if anything fails)."""
        deadline = time.monotonic() + self.deadline + size / MIN_RATE
        hashed, done = hashlib.sha256(), 0

        def seen(chunk: bytes) -> None:
            nonlocal done
            hashed.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, size)

        try:
            response = self._send("GET", f"{self.base}/blobs/{digest}", deadline)
            if response.status_code == 401 and _origin(response.url) == self.location.origin:
                response.close()
                self._request("HEAD", f"{self.base}/blobs/{digest}", "a blob")  # authenticates, or raises
                response = self._send("GET", f"{self.base}/blobs/{digest}", deadline)
            if response.status_code == 401:
                response.close()
                self._unauthorized(response)
            self._fail(response, f"the blob {digest[:19]}")
            with dest.open("wb") as out:
                self._read(response, size, deadline, f"the blob {digest[:19]}", sink=out, on_chunk=seen)
            if done != size:
                raise BadAnswer(f"the binary cache {self.location} sent {done} bytes of the blob {digest[:19]}, "
                                f"which has {size}")
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
        head, _ = self._request("HEAD", f"{self.base}/blobs/{digest}", "a blob check")
        if head.status_code == 200:
            return digest
        start, _ = self._request("POST", f"{self.base}/blobs/uploads/", "a blob upload")
        self._fail(start, "a blob upload")
        location = start.headers.get("Location")
        if not location:
            raise BadAnswer(f"the binary cache {self.location} started an upload without saying where to send it "
                            "(no Location header)", hint="see the registry's log")
        target = urljoin(f"{self.location.scheme}://{self.location.host}/", location)
        if _origin(target) != self.location.origin:
            raise BadAnswer(f"the binary cache {self.location} sent the upload to another host "
                            f"({_short_url(target)}): not sending it there", hint="check the registry's configuration")
        separator = "&" if "?" in target else "?"
        put, _ = self._request("PUT", f"{target}{separator}digest={digest}", f"the blob {digest[:19]}", data=data,
                               headers={"Content-Type": "application/octet-stream"})
        self._fail(put, f"the blob {digest[:19]}")
        return digest

    def put_manifest(self, tag: str, manifest: dict[str, Any]) -> str:
        body = json.dumps(manifest, separators=(",", ":")).encode()
        put, _ = self._request("PUT", f"{self.base}/manifests/{tag}", f"the manifest {tag[:16]}", data=body,
                               headers={"Content-Type": OCI_MANIFEST})
        self._fail(put, f"the manifest {tag[:16]}")
        return digest_of(body)


def _short_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"[:100]
