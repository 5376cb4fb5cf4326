"""Sources that are wrong or go wrong, through the real command line: each is one line with the right exit code
(2: the recipe's own input, 1: network or environment), no traceback, and nothing left behind."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


def _qemuprov(recipes: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(recipes), *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _recipe(recipes: Path, name: str, qemu: str) -> None:
    recipes.mkdir(exist_ok=True)
    (recipes / f"{name}.toml").write_text(f'format = 1\nname = "{name}"\nextends = "qemu-7.2"\n[qemu]\n{qemu}')


def _tarball_recipe(recipes: Path, name: str, url: str, data: bytes) -> None:
    _recipe(recipes, name, f'git = ""\ntarball = "{url}"\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n')


def _assert_one_line(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("qemuprov: ")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def _leftovers(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.name.startswith((".unpack-", ".init-")) or p.suffix == ".part"]


def test_a_file_that_is_no_tarball(tmp_path: Path, isolated_home: Path) -> None:
    data = b"this is not a tarball\n" * 100
    (tmp_path / "qemu.tar.xz").write_bytes(data)
    _tarball_recipe(tmp_path / "r", "notar", f"file://{tmp_path / 'qemu.tar.xz'}", data)
    result = _qemuprov(tmp_path / "r", "build", "notar", "--runner", "host")
    _assert_one_line(result, 2, "is not a tarball that can be unpacked")
    assert _leftovers(isolated_home) == []


def test_a_tarball_that_reaches_outside(tmp_path: Path, isolated_home: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"hi\n"))
    data = buffer.getvalue()
    (tmp_path / "evil.tar.gz").write_bytes(data)
    _tarball_recipe(tmp_path / "r", "evil", f"file://{tmp_path / 'evil.tar.gz'}", data)
    result = _qemuprov(tmp_path / "r", "build", "evil", "--runner", "host")
    _assert_one_line(result, 2, "is unsafe to unpack")
    assert _leftovers(isolated_home) == [] and not list(isolated_home.rglob("escaped.txt"))


class _HalfServer(http.server.BaseHTTPRequestHandler):
    """Serves 4 MiB: the first request gets 64 KiB and a dropped connection; later ones honour Range."""

    data = bytes(range(256)) * (4 << 12)
    ranges: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the handler API's name)
        asked = self.headers.get("Range")
        self.ranges.append(asked or "")
        if len(self.ranges) == 1:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.data)))
            self.end_headers()
            self.wfile.write(self.data[:64 << 10])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.data) - start))
        self.end_headers()
        self.wfile.write(self.data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def half_server() -> Iterator[str]:
    _HalfServer.ranges = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _HalfServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/qemu-7.2.0.tar.xz"
    server.shutdown()
    server.server_close()


def test_a_server_that_drops_the_connection_half_way(tmp_path: Path, isolated_home: Path, half_server: str) -> None:
    _tarball_recipe(tmp_path / "r", "dropped", half_server, _HalfServer.data)
    result = _qemuprov(tmp_path / "r", "build", "dropped", "--runner", "host")
    _assert_one_line(result, 1, "cannot download")
    assert "resumes" in result.stderr
    (partial,) = [p for p in _leftovers(isolated_home) if p.suffix == ".part"]  # kept for the next try
    assert partial.stat().st_size == 64 << 10


def test_an_interrupted_download_resumes(tmp_path: Path, half_server: str) -> None:
    from qemuprov.errors import InfraError
    from qemuprov.recipe import Source
    from qemuprov.sources import trees

    tarball = Source(tarball=half_server, sha256=hashlib.sha256(_HalfServer.data).hexdigest())
    store = tmp_path / "store.tar.xz"
    with pytest.raises(InfraError):
        trees._download_checked(tarball, store, "qemu", None)
    trees._download_checked(tarball, store, "qemu", None)
    assert store.read_bytes() == _HalfServer.data and _HalfServer.ranges == ["", f"bytes={64 << 10}-"]
    assert not store.with_suffix(".xz.part").exists()


def test_a_server_that_is_not_there(tmp_path: Path, isolated_home: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _tarball_recipe(tmp_path / "r", "refused", f"http://127.0.0.1:{port}/qemu.tar.xz", b"whatever")
    result = _qemuprov(tmp_path / "r", "build", "refused", "--runner", "host")
    _assert_one_line(result, 1, "cannot download")
    assert "insteadOf" not in result.stderr and len(result.stderr) < 600


def test_git_shows_its_own_reason(tmp_path: Path, isolated_home: Path) -> None:
    _recipe(tmp_path / "r", "nowhere", f'git = "{tmp_path / "nowhere"}"\nref = "v1"\n')
    _assert_one_line(_qemuprov(tmp_path / "r", "build", "nowhere", "--runner", "host"), 2,
                     "does not appear to be a git repository")
    (tmp_path / "plain").mkdir()
    _recipe(tmp_path / "r", "plain", f'git = "file://{tmp_path / "plain"}"\nref = "v1"\n')
    _assert_one_line(_qemuprov(tmp_path / "r", "build", "plain", "--runner", "host"), 2,
                     "does not appear to be a git repository")


def test_git_names_the_safe_directory_fix_for_a_mirror_of_another_user(tmp_path: Path,
                                                                       isolated_home: Path) -> None:
    repo = tmp_path / "shared"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["chown", "-R", "65534:65534", str(repo)], check=True)
    _recipe(tmp_path / "r", "shared", f'git = "{repo}"\nref = "v1"\n')
    result = _qemuprov(tmp_path / "r", "build", "shared", "--runner", "host")
    _assert_one_line(result, 1, "detected dubious ownership")
    assert "safe.directory" in result.stderr


def test_an_option_shaped_git_url_is_refused_before_git_runs(tmp_path: Path, isolated_home: Path) -> None:
    marker = tmp_path / "touched"
    _recipe(tmp_path / "r", "opt", f'git = "-ufoo@h:;touch${{IFS}}{marker};"\nref = "v1"\n')
    _assert_one_line(_qemuprov(tmp_path / "r", "build", "opt", "--runner", "host"), 2, "is not a git URL")
    assert not marker.exists()


def _served_build(tmp_path: Path, data: bytes, sha_of: bytes | None = None, **env: str
                  ) -> subprocess.CompletedProcess[str]:
    """Build a recipe whose tarball the hostile file server serves (data, announced or streamed to the close)."""

    from tests.hostile import Reply, running

    with running() as server:
        server.routes.append(lambda seen: Reply(200, data, length=-1) if seen.path == "/qemu.tar.gz" else None)
        _tarball_recipe(tmp_path / "r", "served", f"http://{server.url}/qemu.tar.gz", sha_of or data)
        return subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(tmp_path / "r"), "build", "served",
                               "--runner", "host"], capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, **env})


@pytest.mark.parametrize("kind", ["hardlink-then-write", "symlink-then-write", "device"])
def test_a_served_tarball_that_reaches_outside_writes_nothing(tmp_path: Path, isolated_home: Path,
                                                              kind: str) -> None:
    from tests.hostile import Member, archive

    victim = tmp_path / "victim"
    victim.write_text("the user's file\n")
    members = {"hardlink-then-write": [Member("qemu-7.2.0/VERSION", tarfile.LNKTYPE, linkname=str(victim)),
                                       Member("qemu-7.2.0/VERSION", data=b"pwned")],
               "symlink-then-write": [Member("qemu-7.2.0", tarfile.SYMTYPE, linkname=str(tmp_path)),
                                      Member("qemu-7.2.0/victim", data=b"pwned")],
               "device": [Member("qemu-7.2.0/kvm", tarfile.CHRTYPE)]}[kind]
    result = _served_build(tmp_path, archive(members))
    _assert_one_line(result, 2, "is unsafe to unpack")
    assert victim.read_text() == "the user's file\n" and victim.stat().st_nlink == 1
    assert _leftovers(isolated_home) == []


def test_a_served_tarball_bomb_stops_at_the_unpack_limit(tmp_path: Path, isolated_home: Path) -> None:
    from tests.hostile import gzip_bomb

    result = _served_build(tmp_path, gzip_bomb(128 << 20), QEMUPROV_UNPACK_LIMIT="16M")
    _assert_one_line(result, 2, "unpacks to more than the limit of 16 MiB")
    assert _leftovers(isolated_home) == []


def test_a_download_without_end_stops_at_its_limit(tmp_path: Path, isolated_home: Path) -> None:
    result = _served_build(tmp_path, bytes(64 << 20), sha_of=b"what the recipe expects",
                           QEMUPROV_DOWNLOAD_LIMIT="8M")
    _assert_one_line(result, 1, "more than 8 MiB came")
    assert _leftovers(isolated_home) == []


# -- git speaks English to qemuprov whatever the user's locale, and never waits for ever ----------------------------


GERMAN = {"LANG": "de_DE.UTF-8", "LANGUAGE": "de", "LC_ALL": ""}


def _german_available() -> bool:
    probe = subprocess.run(["git", "ls-remote", "/nonexistent/repository"], capture_output=True, text=True,
                           check=False, env={**os.environ, **GERMAN})
    return "Schwerwiegend" in probe.stderr  # git's "fatal:"


def _bad_git_cases(tmp_path: Path) -> Path:
    recipes = tmp_path / "r"
    _recipe(recipes, "nowhere", f'git = "{tmp_path / "nowhere"}"\nref = "v1"\n')
    (tmp_path / "plain").mkdir(exist_ok=True)
    _recipe(recipes, "plain", f'git = "file://{tmp_path / "plain"}"\nref = "v1"\n')
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    _recipe(recipes, "noref", f'git = "{repo}"\nref = "v9.9"\n')
    shared = tmp_path / "shared"
    subprocess.run(["git", "init", "-q", str(shared)], check=True)
    subprocess.run(["chown", "-R", "65534:65534", str(shared)], check=True)
    _recipe(recipes, "shared", f'git = "{shared}"\nref = "v1"\n')
    # locked: the fetch runs without an ls-remote first
    _recipe(recipes, "locked", f'git = "{tmp_path / "gone"}"\nref = "v1"\n')
    (recipes / "locked.lock").write_text(f'format = 1\nrecipe = "locked"\n[qemu]\ngit = "{tmp_path / "gone"}"\n'
                                         f'ref = "v1"\ncommit = "{"a" * 40}"\n')
    return recipes


def test_bad_git_sources_get_the_same_answers_under_a_german_locale(tmp_path: Path, isolated_home: Path) -> None:
    assert _german_available(), ("the German locale and git's German messages are needed (the README's test "
                                 "command installs locales and generates de_DE.UTF-8)")
    recipes = _bad_git_cases(tmp_path)
    for name, code, words in (("nowhere", 2, "does not appear to be a git repository"),
                              ("plain", 2, "does not appear to be a git repository"),
                              ("noref", 2, '"v9.9" is neither a branch, a tag nor a commit'),
                              ("shared", 1, "detected dubious ownership"),
                              ("locked", 2, "does not appear to be a git repository")):
        answers = []
        for extra in ({}, GERMAN):
            result = subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(recipes), "build", name,
                                     "--runner", "host"], capture_output=True, text=True, timeout=120, check=False,
                                    env={**os.environ, **extra})
            _assert_one_line(result, code, words)
            answers.append([ln for ln in result.stderr.splitlines() if ln.startswith("qemuprov: ")])
        assert answers[0] == answers[1], f"{name}: {answers}"


def test_a_git_remote_that_never_answers_is_cut_off_at_its_deadline(tmp_path: Path, isolated_home: Path) -> None:
    import time

    with socket.socket() as silent:  # accepts, then says nothing: git waits for the server's greeting
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        _recipe(tmp_path / "r", "silent", f'git = "git://127.0.0.1:{port}/qemu.git"\nref = "v1"\n')
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "qemuprov", "--recipes", str(tmp_path / "r"), "build",
                                 "silent", "--runner", "host"], capture_output=True, text=True, timeout=120,
                                check=False, env={**os.environ, "QEMUPROV_GIT_TIMEOUT": "3"})
        took = time.monotonic() - start
    _assert_one_line(result, 1, "did not finish within 3 s")
    assert took < 30, took


def test_a_tarball_behind_a_company_ca_and_proxy(tmp_path: Path, isolated_home: Path) -> None:
    """A release tarball on a host whose certificate a private CA signed, reached through a proxy: untrusted, it
    is a TLS failure naming the host; with the CA in REQUESTS_CA_BUNDLE it downloads (through the proxy, which
    saw the CONNECT), and this file being no tarball is what stops the build."""
    import ssl

    from tests.netfixtures import Proxy, private_ca

    ca, cert, key = private_ca(tmp_path / "ca")
    data = b"not a tarball\n" * 64
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "qemu.tar.xz").write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = Proxy().start()
    host = f"localhost:{server.server_address[1]}"
    try:
        _tarball_recipe(tmp_path / "r", "tls", f"https://{host}/qemu.tar.xz", data)
        plain = {k: v for k, v in os.environ.items()
                 if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE",
                                      "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")}
        argv = [sys.executable, "-m", "qemuprov", "--recipes", str(tmp_path / "r"), "build", "tls", "--runner", "host"]
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                                 env={**plain, "HTTPS_PROXY": proxy.url})
        _assert_one_line(refused, 1, f"the TLS certificate of {host} is not trusted here")
        assert "REQUESTS_CA_BUNDLE" in refused.stderr
        trusted = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                                 env={**plain, "HTTPS_PROXY": proxy.url, "REQUESTS_CA_BUNDLE": str(ca)})
        _assert_one_line(trusted, 2, "is not a tarball that can be unpacked")
        assert proxy.seen and proxy.seen[-1].startswith(f"CONNECT {host} ")
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()
