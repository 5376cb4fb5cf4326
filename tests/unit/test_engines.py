"""Engine discovery speaks the Docker API over a unix socket; here a local socket answers like an engine."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from qemuprov.infra import engines


def answer_once(path: Path, reply: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()
        server.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


def test_docker_and_podman_answers(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    body = b'{"Version": "4.3.1", "Components": [{"Name": "Podman Engine"}]}'
    thread = answer_once(sock, b"HTTP/1.0 200 OK\r\n\r\n" + body)
    found = engines.ping(f"unix://{sock}")
    thread.join()
    assert (found.reachable, found.name, found.version) == (True, "Podman", "4.3.1")


def test_error_answer_and_missing_socket(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    thread = answer_once(sock, b"HTTP/1.0 500 Internal Server Error\r\n\r\n")
    broken = engines.ping(f"unix://{sock}")
    thread.join()
    assert not broken.reachable and "answered HTTP/1.0 500" in broken.detail
    missing = engines.ping(f"unix://{tmp_path / 'none.sock'}")
    assert not missing.reachable and "No such file" in missing.detail
