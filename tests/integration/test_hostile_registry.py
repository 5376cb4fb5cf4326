"""The binary cache against a hostile registry (tests/hostile.py: real HTTP on 127.0.0.1, and 127.0.0.2 as
"another host"). Its entries are signed with a key the test trusts, so each pull gets past the signature to the
check under test. For every case: the pull is refused with a notice naming why (never an internal error),
nothing outside the staging directory changed, no credential reached a host it does not belong to, and the
pull ends within its bounds of size and time."""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from qemuprov.ci import binary_cache, oci
from qemuprov.errors import InfraError, UserError
from tests.hostile import BASIC, PASSWORD, Hostile, Member, Reply, Seen, archive, docker_config, gzip_bomb, running
from tests.manifests import manifest_json

RECIPE = "standin"
KEY = "a" * 64
CONFIG = manifest_json(name="standin", recipe={"name": RECIPE}, binaries=["qemu-system-x86_64", "virtiofsd"],
                       cache_key="b" * 64).encode()
GOOD_LAYER = archive([Member("bin", tarfile.DIRTYPE, mode=0o755), Member("bin/qemu-system-x86_64", data=b"#!")])


@pytest.fixture()
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hostile]:
    with running() as server:
        monkeypatch.setenv("DOCKER_CONFIG", docker_config(tmp_path / "docker", server.url))
        server.entry(CONFIG, GOOD_LAYER)
        yield server


def _settings(hostile: Hostile, tmp_path: Path) -> binary_cache.Settings:
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(hostile.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return binary_cache.Settings(oci.parse(f"{hostile.url}/qemuprov/cache"), trusted_keys=(pub,))


@pytest.fixture()
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("the user's file\n")
    path.chmod(0o600)
    return path


def _pull(hostile: Hostile, tmp_path: Path) -> tuple[binary_cache.Hit | binary_cache.Miss, Path, float]:
    staged = tmp_path / "staging" / "prefix"
    staged.parent.mkdir(exist_ok=True)
    start = time.monotonic()
    outcome = binary_cache.pull(_settings(hostile, tmp_path), KEY, RECIPE, ("x86_64",), staged)
    return outcome, staged, time.monotonic() - start


def _refused(hostile: Hostile, tmp_path: Path, words: str, reason: str = "refused", realm: str = "") -> float:
    """realm: a token realm on the other host that the registry's own 401 named, which gets the credentials."""
    outcome, staged, seconds = _pull(hostile, tmp_path)
    assert isinstance(outcome, binary_cache.Miss), outcome
    assert outcome.reason == reason and words in outcome.message, outcome.message
    assert not staged.exists() and sorted(p.name for p in staged.parent.iterdir()) == []
    assert PASSWORD not in outcome.message and BASIC not in outcome.message
    _no_credentials_elsewhere(hostile, realm)
    return seconds


def _no_credentials_elsewhere(hostile: Hostile, realm: str = "") -> None:
    for seen in hostile.to("127.0.0.2"):
        if realm and seen.path.startswith(realm):
            continue
        assert "authorization" not in seen.headers, f"credentials went to another host: {seen.method} {seen.path}"
        assert BASIC.encode() not in seen.body and PASSWORD.encode() not in seen.body


def test_a_good_entry_installs(hostile: Hostile, tmp_path: Path) -> None:
    outcome, staged, _ = _pull(hostile, tmp_path)
    assert isinstance(outcome, binary_cache.Hit), outcome
    assert (staged / "bin" / "qemu-system-x86_64").read_bytes() == b"#!"
    assert all(s.headers.get("authorization") == f"Basic {BASIC}" for s in hostile.to("127.0.0.1"))


# -- 1. writes outside the staging directory ---------------------------------------------------------------------


@pytest.mark.parametrize("members", [
    [Member("bin", tarfile.DIRTYPE, mode=0o755), Member("bin/x", tarfile.LNKTYPE, linkname="VICTIM"),
     Member("bin/x", data=b"pwned")],
    [Member("bin/x", tarfile.LNKTYPE, linkname="../../victim"), Member("bin/x", data=b"pwned")],
    [Member("x", tarfile.LNKTYPE, linkname="VICTIM", mode=0o4777)],
    [Member("up", tarfile.SYMTYPE, linkname="../.."), Member("up/victim", data=b"pwned")],
    [Member("bin/kvm", tarfile.CHRTYPE)], [Member("bin/pipe", tarfile.FIFOTYPE)],
], ids=["hardlink-then-file", "dotdot-hardlink-then-file", "hardlink-alone", "symlink-then-write", "device",
        "fifo"])
def test_a_layer_that_reaches_outside_is_refused(hostile: Hostile, tmp_path: Path, victim: Path,
                                                 members: list[Member]) -> None:
    for m in members:
        m.linkname = m.linkname.replace("VICTIM", str(victim))
    hostile.entry(CONFIG, archive(members))
    _refused(hostile, tmp_path, "refused the entry")
    assert victim.read_text() == "the user's file\n" and victim.stat().st_mode & 0o7777 == 0o600
    assert victim.stat().st_nlink == 1


def test_members_of_another_owner_and_setuid_bits_are_made_ours(hostile: Hostile, tmp_path: Path) -> None:
    hostile.entry(CONFIG, archive([Member("bin", tarfile.DIRTYPE, mode=0o777, uid=4242),
                                   Member("bin/qemu-system-x86_64", data=b"#!", mode=0o4777, uid=4242)]))
    outcome, staged, _ = _pull(hostile, tmp_path)
    assert isinstance(outcome, binary_cache.Hit)
    info = (staged / "bin" / "qemu-system-x86_64").stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o7777 == 0o755


# -- 3, 4. credentials ------------------------------------------------------------------------------------------


def test_a_blob_redirect_to_another_host_gets_no_credentials(hostile: Hostile, tmp_path: Path) -> None:
    other = hostile.other

    def redirect(seen: Seen) -> Reply | None:
        if seen.host == "127.0.0.1" and "/blobs/" in seen.path:
            return Reply(307, headers={"Location": f"http://{other}/storage{seen.path}"})
        if seen.host == "127.0.0.2" and seen.path.startswith("/storage"):
            return Reply(401, headers={"WWW-Authenticate": f'Bearer realm="http://{other}/token",service="x"'})
        return None

    hostile.routes.append(redirect)
    _refused(hostile, tmp_path, "which answered 401: the registry's credentials are not sent there")
    assert any(s.path.startswith("/storage") for s in hostile.to("127.0.0.2"))
    assert not any(s.path.startswith("/token") for s in hostile.to("127.0.0.2")), "asked a realm the registry " \
                                                                                  "never named"


def test_a_token_realm_the_registry_names_gets_the_basic_credentials_once(hostile: Hostile, tmp_path: Path) -> None:
    """Docker Hub and GHCR work so: the registry's own 401 names the realm, which may be another host."""
    other = hostile.other
    hostile.require_auth = True

    def bearer(seen: Seen) -> Reply | None:
        if seen.host == "127.0.0.2" and seen.path.startswith("/token"):
            return Reply(200, json.dumps({"token": "tok"}).encode())
        if seen.host == "127.0.0.1" and seen.headers.get("authorization") == "Bearer tok":
            seen.headers["authorization"] = f"Basic {BASIC}"  # let the default routes serve it
            return None
        if seen.host == "127.0.0.1":
            return Reply(401, headers={"WWW-Authenticate": f'Bearer realm="http://{other}/token",service="reg"'})
        return None

    hostile.routes.append(bearer)
    outcome, _, _ = _pull(hostile, tmp_path)
    assert isinstance(outcome, binary_cache.Hit), outcome
    tokens = [s for s in hostile.to("127.0.0.2") if s.path.startswith("/token")]
    assert len(tokens) == 1 and tokens[0].headers.get("authorization") == f"Basic {BASIC}"
    assert not [s for s in hostile.to("127.0.0.2") if not s.path.startswith("/token")]


def test_an_http_realm_of_an_https_registry_is_not_asked(hostile: Hostile) -> None:
    cache = oci.Client(oci.parse(f"https://{hostile.url}/qemuprov/cache"))
    challenge = requests.Response()
    challenge.status_code, challenge.url = 401, f"https://{hostile.url}/v2/qemuprov/cache/manifests/x"
    challenge.headers["WWW-Authenticate"] = f'Bearer realm="http://{hostile.other}/token"'
    assert cache._token(challenge, time.monotonic() + 5) is False
    elsewhere = requests.Response()
    elsewhere.status_code, elsewhere.url = 401, f"https://{hostile.other}/v2/x"
    elsewhere.headers["WWW-Authenticate"] = f'Bearer realm="https://{hostile.other}/token"'
    assert cache._token(elsewhere, time.monotonic() + 5) is False  # a 401 that is not the registry's own
    assert hostile.to("127.0.0.2") == []


def test_an_upload_sent_to_another_host_is_not_sent(hostile: Hostile) -> None:
    other = hostile.other
    hostile.routes.append(lambda seen: Reply(202, headers={"Location": f"http://{other}/upload"})
                          if seen.method == "POST" else Reply(404) if seen.method == "HEAD" else None)
    cache = oci.Client(oci.parse(f"{hostile.url}/qemuprov/cache"))
    with pytest.raises(InfraError, match="sent the upload to another host"):
        cache.push_blob(b"layer bytes")
    assert hostile.to("127.0.0.2") == []


def test_an_upload_without_location_is_a_clear_error(hostile: Hostile) -> None:
    hostile.routes.append(lambda seen: Reply(202) if seen.method == "POST" else Reply(404)
                          if seen.method == "HEAD" else None)
    with pytest.raises(InfraError, match="no Location header"):
        oci.Client(oci.parse(f"{hostile.url}/qemuprov/cache")).push_blob(b"layer bytes")


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:5000/q", "user:pw@127.0.0.1:5000/q"])
def test_a_password_in_the_cache_url_is_refused_and_never_shown(url: str) -> None:
    with pytest.raises(UserError) as refused:
        oci.parse(url)
    assert "pw" not in refused.value.message and "docker login 127.0.0.1:5000" in str(refused.value.hint)


def test_docker_credential_helpers_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """credHelpers, as ECR, GCR and `pass` users have them: the helper protocol through the docker SDK."""
    helper = tmp_path / "bin" / "docker-credential-qptest"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\necho \'{"Username": "ci", "Secret": "from-helper"}\'\n')
    helper.chmod(0o755)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"credHelpers": {"127.0.0.1:5999": "qptest"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    assert oci.docker_credentials("127.0.0.1:5999") == oci.basic_auth("ci", "from-helper")
    assert oci.docker_credentials("127.0.0.1:6000") is None


# -- 5. unbounded input -----------------------------------------------------------------------------------------


def test_a_layer_longer_than_declared_is_stopped_at_once(hostile: Hostile, tmp_path: Path) -> None:
    hostile.entry(CONFIG, GOOD_LAYER)
    endless = GOOD_LAYER + bytes(64 << 20)
    hostile.routes.append(lambda seen: Reply(200, endless, length=-1)
                          if seen.path.endswith(oci.digest_of(GOOD_LAYER)) else None)
    seconds = _refused(hostile, tmp_path, f"sent more than the {len(GOOD_LAYER)} bytes")
    assert seconds < 10


def test_a_layer_that_announces_more_than_declared_is_refused_unread(hostile: Hostile, tmp_path: Path) -> None:
    hostile.routes.append(lambda seen: Reply(200, GOOD_LAYER, length=1 << 40)
                          if seen.path.endswith(oci.digest_of(GOOD_LAYER)) else None)
    _refused(hostile, tmp_path, f"announced {1 << 40} bytes")


def test_a_huge_manifest_is_refused_without_reading_it(hostile: Hostile, tmp_path: Path) -> None:
    hostile.routes.append(lambda seen: Reply(200, b"{", length=2 << 30) if "/manifests/" in seen.path else None)
    assert _refused(hostile, tmp_path, "announced 2147483648 bytes", reason="refused") < 10


def test_a_manifest_over_the_cap_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    big = json.dumps({"layers": [], "pad": "x" * (5 << 20)}).encode()
    hostile.routes.append(lambda seen: Reply(200, big, length=-1) if "/manifests/" in seen.path else None)
    _refused(hostile, tmp_path, f"sent more than the {oci.MANIFEST_CAP} bytes")


def test_a_signed_gzip_bomb_stops_at_the_unpack_limit(hostile: Hostile, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUPROV_UNPACK_LIMIT", "8M")
    hostile.entry(CONFIG, gzip_bomb(256 << 20))
    _refused(hostile, tmp_path, "more than the limit of 8 MiB")


def test_a_registry_that_dribbles_is_given_up_at_the_deadline(hostile: Hostile, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(oci.DEADLINE_ENV, "2")
    body = hostile.signed_manifest(KEY)
    hostile.routes.append(lambda seen: Reply(200, body, dribble=0.5) if "/manifests/" in seen.path else None)
    seconds = _refused(hostile, tmp_path, "within its deadline", reason="unreachable")
    assert seconds < 6


# -- 8. malformed answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("manifest", "words"), [
    ([1, 2], "no JSON object"), (None, "no JSON object"), ("a string", "no JSON object"),
    ({"config": {}, "layers": []}, "0 layers"), ({"layers": [{"digest": 5}], "config": "x"}, "not an object"),
    ({"config": {"digest": "sha256:" + "0" * 64, "size": 1}, "layers": [{"digest": "md5:x", "size": 1}]},
     "no sha256 digest"),
])
def test_malformed_manifests_are_a_notice(hostile: Hostile, tmp_path: Path, manifest: object, words: str) -> None:
    hostile.manifest = manifest
    _refused(hostile, tmp_path, words)


@pytest.mark.parametrize(("annotations", "words"), [(["a", "list"], "annotations"),
                                                    ({"org.qemuprov.signature": 5}, "annotations")])
def test_malformed_annotations_are_a_notice(hostile: Hostile, tmp_path: Path, annotations: object,
                                            words: str) -> None:
    hostile.entry(CONFIG, GOOD_LAYER, sign=False, annotations=annotations)
    _refused(hostile, tmp_path, words)


def test_a_token_endpoint_that_answers_a_list_is_a_notice(hostile: Hostile, tmp_path: Path) -> None:
    other = hostile.other
    hostile.routes.append(lambda seen: Reply(200, b"[1]") if seen.host == "127.0.0.2" else
                          Reply(401, headers={"WWW-Authenticate": f'Bearer realm="http://{other}/t"'}))
    _refused(hostile, tmp_path, "without a token", realm="/t")


@pytest.mark.parametrize("status", [500, 502, 418])
def test_a_server_error_is_a_notice(hostile: Hostile, tmp_path: Path, status: int) -> None:
    hostile.routes.append(lambda seen: Reply(status, b"oops"))
    _refused(hostile, tmp_path, f"answered {status}")


def test_a_config_that_is_not_a_manifest_is_a_notice(hostile: Hostile, tmp_path: Path) -> None:
    hostile.entry(b'{"recipe": "\\u0000"}', GOOD_LAYER)
    _refused(hostile, tmp_path, "refused the entry")
