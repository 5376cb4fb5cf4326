"""HTTP(S) as the user's machine does it, for everything qemuprov downloads (registry blobs, source tarballs,
guest kit packages): the host's trust store (through truststore, as pip does) plus the bundles the user names
(REQUESTS_CA_BUNDLE, SSL_CERT_FILE, SSL_CERT_DIR) and, for a registry, Docker's certs.d/HOST/ca.crt; the
user's proxy (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY). Never ~/.netrc: credentials come only from where
the caller takes them (Docker's config, for a registry), so none reaches a host it does not belong to."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import truststore

BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")
TRUST_HINT = ("add its CA to the system trust store (update-ca-certificates), or set REQUESTS_CA_BUNDLE (or "
              "SSL_CERT_FILE) to a PEM file that holds it")


def docker_cert_dirs(host: str) -> list[Path]:
    """Where Docker keeps a registry's own CA (host with its port, as Docker names it): the daemon's and the
    rootless daemon's directories."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path("/etc/docker/certs.d") / host, config / "docker" / "certs.d" / host]


def extra_cas(host: str | None = None) -> list[Path]:
    """The PEM files and directories the user added to the system's trust: the environment's bundles, and
    Docker's ca.crt for host where one is given."""
    found = [Path(os.environ[v]) for v in BUNDLE_VARIABLES if os.environ.get(v)]
    if os.environ.get("SSL_CERT_DIR"):
        found += [Path(d) for d in os.environ["SSL_CERT_DIR"].split(os.pathsep) if d]
    for directory in docker_cert_dirs(host) if host else []:
        found += sorted(directory.glob("*.crt"))
    return [p for p in dict.fromkeys(found) if p.exists()]


def tls_context(host: str | None = None) -> ssl.SSLContext:
    """The host's trust store and the CAs the user added (see extra_cas)."""
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ca in extra_cas(host):
        try:
            if ca.is_dir():
                context.load_verify_locations(capath=str(ca))
            else:
                context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError):
            continue  # a bundle that cannot be read adds nothing; the handshake says what is missing
    return context


class _TrustAdapter(requests.adapters.HTTPAdapter):
    """requests with our SSL context on every connection, direct or through a proxy."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is not False:
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = self._context
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = conn.ca_cert_dir = None  # the context holds the trust; no certifi on top


def session(host: str | None = None) -> requests.Session:
    """A session that trusts what the host trusts (and Docker's CA for host), without ~/.netrc or the environment's
    other settings; pass proxies_for(url) with each request."""
    made = requests.Session()
    made.trust_env = False
    adapter = _TrustAdapter(tls_context(host))
    made.mount("https://", adapter)
    made.mount("http://", adapter)
    return made


def proxies_for(url: str) -> dict[str, str]:
    """The user's proxy for url (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, in either case), none where NO_PROXY
    names its host."""
    return requests.utils.get_environ_proxies(url, no_proxy=None)


def describe_failure(exc: requests.RequestException, url: str) -> str:
    """What went wrong, in words a user can act on: a certificate not trusted, a proxy, or the network."""
    host = urlsplit(url).netloc.rpartition("@")[2]
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip(" )'\"")
            return f"the TLS certificate of {host} is not trusted here ({reason or 'verify failed'})"
        return f"the TLS handshake with {host} failed ({text[-160:]})"
    if isinstance(exc, requests.exceptions.ProxyError):
        proxy = proxies_for(url).get(urlsplit(url).scheme) or proxies_for(url).get("all", "the proxy")
        return f"the proxy {urlsplit(proxy).netloc.rpartition('@')[2] or proxy} refused or did not carry the " \
               f"request to {host}"
    return f"{host} does not answer ({type(exc).__name__})"
