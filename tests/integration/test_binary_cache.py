"""The binary cache against a real registry (scripts/test-registry: Debian's docker-registry on 127.0.0.1 with a
user): one HOME builds, signs and pushes, a fresh HOME that trusts the key installs without building; a registry
that is down, a wrong password, a tampered blob, an entry of another recipe, unsigned entries and entries signed
by a key nobody trusts. Builds of the stand-in tree in the Docker builder."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qemuprov.ci import oci
from tests.integration.conftest import FIXTURES, Env
from tests.integration.standin import make_tree, set_delays
from tests.integration.throttle import throttled
from tests.netfixtures import Proxy, private_ca


@pytest.fixture(scope="module")
def cache(qenv: Env, engine: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    host = os.environ.get("QEMUPROV_TEST_REGISTRY", "")
    if not host:
        pytest.fail("no test registry: run scripts/test, which starts one (QEMUPROV_TEST_REGISTRY)")
    password = (FIXTURES / "registry" / "password").read_text().strip()
    base = tmp_path_factory.mktemp("binary-cache")
    control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "standin-cache" / "control"  # seen in the container
    qenv.write_recipe("standin-cache", make_tree(base / "tree", control))
    set_delays(control)
    good = _docker_config(base / "docker-good", host, "qemuprov", password)
    keys = {name: _keypair(base / name) for name in ("team", "stranger")}
    return {"host": host, "password": password, "url": f"{host}/qemuprov/standin-{os.getpid()}", "good": good,
            "bad": _docker_config(base / "docker-bad", host, "qemuprov", "not-the-password"), "base": str(base),
            "key": keys["team"][0], "pub": keys["team"][1], "stranger": keys["stranger"][0]}


def _keypair(stem: Path) -> tuple[str, str]:
    """An ed25519 key pair as PEM files, as `openssl genpkey -algorithm ed25519` makes them."""
    key = Ed25519PrivateKey.generate()
    stem.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    stem.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(stem.with_suffix(".key")), str(stem.with_suffix(".pub"))


def _docker_config(directory: Path, host: str, user: str, password: str, *more_hosts: str) -> str:
    directory.mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {h: {"auth": auth} for h in (host, *more_hosts)}}))
    return str(directory)


def _fresh_home(qenv: Env, where: Path, docker_config: str, **extra: str) -> dict[str, str]:
    return {**qenv.vars, "HOME": str(where), "QEMUPROV_ROOT": str(where / "root"),
            "QEMUPROV_CACHE": str(where / "cache"), "DOCKER_CONFIG": docker_config, **extra}


@pytest.fixture(scope="module")
def pushed(qenv: Env, cache: dict[str, str]) -> dict[str, object]:
    env = {**qenv.vars, "DOCKER_CONFIG": cache["good"], "QEMUPROV_SIGNING_KEY": cache["key"]}
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], "--push", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no build with this key yet" in result.stderr and "pushed to the binary cache" in result.stdout
    assert f"signed with {cache['key']}" in result.stdout
    return json.loads((qenv.root / "standin-cache" / "qemuprov.json").read_text())


def test_a_fresh_home_installs_what_another_pushed(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                                   tmp_path: Path) -> None:
    env = _fresh_home(qenv, tmp_path / "b", cache["good"], QEMUPROV_TRUSTED_KEYS=cache["pub"])
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from the binary cache" in result.stdout
    assert "==> configure" not in result.stderr and "==> build:" not in result.stderr  # never built
    prefix = tmp_path / "b" / "root" / "standin-cache"
    record = json.loads((prefix / "qemuprov.json").read_text())
    assert record["substituted"]["cache"] == cache["url"] and record["substituted"]["tag"] == pushed["cache_key"]
    assert record["source"] == pushed["source"] and record["prefix"] == str(prefix)
    version = subprocess.run([prefix / "bin" / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    work = tmp_path / "b" / "cache" / "work" / "standin-cache"
    assert version.returncode == 0 and not (work / "build").exists() and not list(work.glob("build-*"))
    again = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=env)
    assert "up to date" in again.stdout, again.stdout + again.stderr


def test_a_ci_job_without_an_engine_installs_with_cache_only(qenv: Env, cache: dict[str, str],
                                                            pushed: dict[str, object], tmp_path: Path) -> None:
    """A CI job that must not compile, on a machine with no container engine (or one whose debian:bookworm
    is another day's): the key is the builder's Dockerfile and base image name, so it finds the entry."""
    env = _fresh_home(qenv, tmp_path / "c", cache["good"], QEMUPROV_TRUSTED_KEYS=cache["pub"],
                      DOCKER_HOST="unix:///nonexistent/docker.sock")
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], "--cache-only",
                      "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "c" / "root" / "standin-cache" / "qemuprov.json").read_text())
    assert record["substituted"]["tag"] == pushed["cache_key"] and json.loads(result.stdout)["from_cache"] is True


def test_a_registry_that_is_down_costs_a_notice(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                                 tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {**qenv.vars, "DOCKER_CONFIG": cache["good"]}
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--force", "--cache",
                      f"127.0.0.1:{port}/qemuprov/down", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not answer" in result.stderr and "==> build:" in result.stderr


def test_a_wrong_password_is_a_clear_error(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                           tmp_path: Path) -> None:
    env = _fresh_home(qenv, tmp_path / "c", cache["bad"])
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=env)
    assert result.returncode == 1 and "refused the credentials" in result.stderr, result.stderr
    assert "not-the-password" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "c" / "root" / "standin-cache").exists()


def _blob_file(digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return FIXTURES / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] / \
        hexdigest / "data"


def test_a_tampered_blob_is_refused_and_nothing_of_it_installed(qenv: Env, cache: dict[str, str],
                                                                pushed: dict[str, object], tmp_path: Path) -> None:
    store = oci.Client(oci.parse(cache["url"]))
    store._basic = base64.b64encode(f"qemuprov:{cache['password']}".encode()).decode()
    found = store.get_manifest(str(pushed["cache_key"]))
    assert found is not None
    layer = _blob_file(found[0]["layers"][0]["digest"])
    original = layer.read_bytes()
    layer.write_bytes(original[:-4] + b"\0\0\0\0")
    try:
        env = _fresh_home(qenv, tmp_path / "d", cache["good"], QEMUPROV_TRUSTED_KEYS=cache["pub"])
        result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=env)
    finally:
        layer.write_bytes(original)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused the entry" in result.stderr and "whose content is not" in result.stderr
    record = json.loads((tmp_path / "d" / "root" / "standin-cache" / "qemuprov.json").read_text())
    assert record["substituted"] is None and "==> build:" in result.stderr  # built from source instead


def test_an_entry_of_another_recipe_under_the_key_is_refused(qenv: Env, cache: dict[str, str],
                                                             pushed: dict[str, object], tmp_path: Path) -> None:
    store = oci.Client(oci.parse(cache["url"]))
    store._basic = base64.b64encode(f"qemuprov:{cache['password']}".encode()).decode()
    entry, _ = store.get_manifest(str(pushed["cache_key"])) or ({}, "")
    config = json.loads(store.get_blob(entry["config"]["digest"], entry["config"]["size"]))
    config["recipe"]["name"] = "something-else"
    forged = json.dumps(config).encode()
    entry["config"] = {**entry["config"], "digest": store.push_blob(forged), "size": len(forged)}
    store.put_manifest(str(pushed["cache_key"]), entry)
    trusting = _fresh_home(qenv, tmp_path / "e", cache["good"], QEMUPROV_TRUSTED_KEYS=cache["pub"])
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=trusting)
    assert result.returncode == 0, result.stdout + result.stderr  # the signature covers the config's digest
    assert "does not match its content" in result.stderr and "==> build:" in result.stderr
    careless = _fresh_home(qenv, tmp_path / "f", cache["good"], QEMUPROV_ALLOW_UNSIGNED="1")
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", cache["url"], env=careless)
    assert result.returncode == 0, result.stdout + result.stderr  # without signatures, the recipe check holds
    assert "is of something-else" in result.stderr and "refused" in result.stderr and "==> build:" in result.stderr


def test_unsigned_and_untrusted_entries(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                        tmp_path: Path) -> None:
    install = str(qenv.root / "standin-cache")
    for name, signer in (("unsigned", None), ("stranger", cache["stranger"])):
        url = f"{cache['url']}-{name}"
        env = {**qenv.vars, "DOCKER_CONFIG": cache["good"], **({"QEMUPROV_SIGNING_KEY": signer} if signer else {})}
        pushing = qenv.run("push", install, url, env=env)
        assert pushing.returncode == 0, pushing.stdout + pushing.stderr
        trusting = _fresh_home(qenv, tmp_path / name, cache["good"], QEMUPROV_TRUSTED_KEYS=cache["pub"])
        result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", url, env=trusting)
        assert result.returncode == 0 and "==> build:" in result.stderr, result.stdout + result.stderr
        assert ("it is not signed" if signer is None else "which is not among the trusted keys") in result.stderr
    default = _fresh_home(qenv, tmp_path / "default", cache["good"])
    refused = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", f"{cache['url']}-unsigned",
                       env=default)
    assert "no trusted keys are set" in refused.stderr and "==> build:" in refused.stderr
    allowed = _fresh_home(qenv, tmp_path / "allowed", cache["good"], QEMUPROV_ALLOW_UNSIGNED="1")
    taken = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", f"{cache['url']}-unsigned",
                     env=allowed)
    assert "from the binary cache" in taken.stdout, taken.stdout + taken.stderr


def _installed_then_pulling_again(qenv: Env, cache: dict[str, str], where: Path, url: str, pull_from: str
                                  ) -> tuple[Path, str, subprocess.Popen[str]]:
    """An install from the cache in a fresh HOME, then a forced pull of it (from pull_from) left running."""
    pushing = qenv.run("push", str(qenv.root / "standin-cache"), url, env={**qenv.vars, "DOCKER_CONFIG": cache["good"]})
    assert pushing.returncode == 0, pushing.stdout + pushing.stderr
    env = _fresh_home(qenv, where, cache["good"], QEMUPROV_ALLOW_UNSIGNED="1")
    prefix = where / "root" / "standin-cache"
    first = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", url, env=env)
    assert first.returncode == 0 and "from the binary cache" in first.stdout, first.stdout + first.stderr
    pulling = subprocess.Popen([sys.executable, "-m", "qemuprov", "--recipes", str(qenv.recipes), "build",
                                "standin-cache", "--runner", "docker", "--force", "--cache", pull_from],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    return prefix, (prefix / "qemuprov.json").read_text(), pulling


def _killed_and_recovered(qenv: Env, cache: dict[str, str], pulling: subprocess.Popen[str], prefix: Path,
                          before: str, url: str) -> None:
    import signal

    os.kill(pulling.pid, signal.SIGKILL)
    pulling.communicate(timeout=30)
    assert pulling.returncode == -signal.SIGKILL
    assert (prefix / "qemuprov.json").read_text() == before  # the previous install, untouched
    env = _fresh_home(qenv, prefix.parent.parent, cache["good"], QEMUPROV_ALLOW_UNSIGNED="1")
    again = qenv.run("build", "standin-cache", "--runner", "docker", "--force", "--cache", url, env=env)
    assert again.returncode == 0 and "from the binary cache" in again.stdout, again.stdout + again.stderr
    assert [p.name for p in prefix.parent.glob(".qemuprov-*")] == []  # the killed pull's leftovers are gone


def test_a_pull_killed_as_it_starts_leaves_the_previous_install(qenv: Env, cache: dict[str, str],
                                                                pushed: dict[str, object], tmp_path: Path) -> None:
    url = f"{cache['url']}-killed"
    prefix, before, pulling = _installed_then_pulling_again(qenv, cache, tmp_path / "killed", url, url)
    assert pulling.stdout is not None
    for line in pulling.stdout:
        if line.startswith("==> substitute"):
            break
    _killed_and_recovered(qenv, cache, pulling, prefix, before, url)


def test_a_pull_killed_in_the_middle_of_its_layer_leaves_the_previous_install(
        qenv: Env, cache: dict[str, str], pushed: dict[str, object], tmp_path: Path) -> None:
    # The layer (the host's QEMU and virtiofsd, about 5 MB) comes through a proxy at 1 MB/s; the kill lands once
    # 1 MB of it has passed, with the rest of the download still to come.
    url = f"{cache['url']}-killed-later"
    with throttled(cache["host"], 1 << 20, mark=1 << 20) as proxy:
        both = {**cache, "good": _docker_config(tmp_path / "docker-both", cache["host"], "qemuprov",
                                                 cache["password"], proxy.address)}
        prefix, before, pulling = _installed_then_pulling_again(
            qenv, both, tmp_path / "killed", url, url.replace(cache["host"], proxy.address))
        assert proxy.past_mark.wait(timeout=60), "the pull never reached the layer"
        deadline = time.monotonic() + 30
        while not (partial := [p for p in prefix.parent.glob(".qemuprov-stage-*/**/*.layer.tar.gz")
                               if p.stat().st_size]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partial, "no layer download under way"
        assert pulling.poll() is None, "the pull ended before the kill"
        _killed_and_recovered(qenv, both, pulling, prefix, before, url)


# -- a registry behind a company CA and a proxy ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(cache: dict[str, str]) -> Iterator[dict[str, str]]:
    """The same registry program, served over TLS with a certificate of a private CA (as a company's internal
    registry is), with the same user; reached as localhost:PORT."""
    base = Path(cache["base"]) / "tls"
    ca, cert, key = private_ca(base)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (base / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
        f"auth:\n  htpasswd:\n    realm: qemuprov-tls\n    path: {FIXTURES / 'registry' / 'htpasswd'}\n")
    with (base / "registry.log").open("wb") as log:
        server = subprocess.Popen(["docker-registry", "serve", str(base / "config.yml")], stdout=log, stderr=log)
    try:
        for _ in range(60):
            try:
                if requests.get(f"https://localhost:{port}/v2/", verify=str(ca), timeout=2).status_code == 401:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            pytest.fail(f"the TLS registry did not start: {(base / 'registry.log').read_text()[-500:]}")
        host = f"localhost:{port}"
        yield {"host": host, "ca": str(ca), "url": f"https://{host}/qemuprov/standin-tls",
               "docker": _docker_config(base / "docker", host, "qemuprov", cache["password"])}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture()
def proxy() -> Iterator[Proxy]:
    started = Proxy().start()
    yield started
    started.stop()


_NETWORK_SETTINGS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                     "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")


def _only(env: dict[str, str], **network: str) -> dict[str, str]:
    """env without the machine's own proxy and CA settings, with these instead (an empty lowercase https_proxy
    would hide HTTPS_PROXY, as it does for every tool that reads them)."""
    return {**{k: v for k, v in env.items() if k not in _NETWORK_SETTINGS}, **network}


def test_a_registry_with_a_private_ca_through_a_proxy(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                                      tls_registry: dict[str, str], proxy: Proxy,
                                                      tmp_path: Path) -> None:
    install = str(qenv.root / "standin-cache")
    signing = _only({**qenv.vars, "DOCKER_CONFIG": tls_registry["docker"], "QEMUPROV_SIGNING_KEY": cache["key"],
                     "XDG_CONFIG_HOME": str(tmp_path / "nothing")})
    # Without the CA: a TLS failure, named as one, with what to set.
    refused = qenv.run("push", install, tls_registry["url"], env=signing)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("qemuprov: error: ")]
    assert len(errors) == 1 and f"the TLS certificate of {tls_registry['host']} is not trusted" in errors[0], \
        refused.stderr
    assert "REQUESTS_CA_BUNDLE" in refused.stderr and f"certs.d/{tls_registry['host']}/ca.crt" in refused.stderr
    # --push with the CA the environment names, through the proxy: the credentials ride inside the tunnel.
    pushing = qenv.run("push", install, tls_registry["url"],
                       env={**signing, "REQUESTS_CA_BUNDLE": tls_registry["ca"], "HTTPS_PROXY": proxy.url})
    assert pushing.returncode == 0 and "pushed to" in pushing.stdout, pushing.stdout + pushing.stderr
    assert proxy.seen and all(line.startswith(f"CONNECT {tls_registry['host']} ") for line in proxy.seen), proxy.seen
    carried = len(proxy.seen)
    # --cache-only in a fresh HOME with no engine, trusting the CA as Docker does (certs.d), through the proxy.
    where = tmp_path / "ci"
    certs = where / ".config" / "docker" / "certs.d" / tls_registry["host"]
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_text(Path(tls_registry["ca"]).read_text())
    env = _only(_fresh_home(qenv, where, tls_registry["docker"], QEMUPROV_TRUSTED_KEYS=cache["pub"],
                            DOCKER_HOST="unix:///nonexistent/docker.sock", XDG_CONFIG_HOME=str(where / ".config")),
                HTTPS_PROXY=proxy.url)
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", tls_registry["url"], "--cache-only",
                      "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["from_cache"] is True and len(proxy.seen) > carried
    # --cache with the CA in SSL_CERT_FILE, and NO_PROXY naming the registry: straight there, not through the proxy.
    carried = len(proxy.seen)
    direct = _only(_fresh_home(qenv, tmp_path / "direct", tls_registry["docker"], QEMUPROV_TRUSTED_KEYS=cache["pub"],
                               XDG_CONFIG_HOME=str(tmp_path / "nothing")),
                   SSL_CERT_FILE=tls_registry["ca"], HTTPS_PROXY=proxy.url, NO_PROXY="localhost")
    taken = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", tls_registry["url"], env=direct)
    assert taken.returncode == 0 and "from the binary cache" in taken.stdout, taken.stdout + taken.stderr
    assert len(proxy.seen) == carried, proxy.seen[carried:]


def test_a_proxy_that_refuses_is_named(qenv: Env, cache: dict[str, str], pushed: dict[str, object],
                                       tls_registry: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = _only(_fresh_home(qenv, tmp_path / "p", tls_registry["docker"], QEMUPROV_TRUSTED_KEYS=cache["pub"],
                            DOCKER_HOST="unix:///nonexistent/docker.sock"),
                REQUESTS_CA_BUNDLE=tls_registry["ca"], HTTPS_PROXY=f"http://127.0.0.1:{port}")
    result = qenv.run("build", "standin-cache", "--runner", "docker", "--cache", tls_registry["url"], "--cache-only",
                      env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the proxy 127.0.0.1:{port} refused or did not carry the request" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
