"""A TCP proxy on 127.0.0.1 that passes requests through and trickles the answers back at a set rate, so a test
can stop a client in the middle of a large download from a real server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

PIECE = 64 * 1024


class Throttle:
    def __init__(self, upstream: tuple[str, int], bytes_per_second: int, mark: int) -> None:
        """mark: once one answer has passed this many bytes, `past_mark` is set."""
        self.upstream, self.rate, self.mark = upstream, bytes_per_second, mark
        self.past_mark = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
                self._open += [client, server]
                threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while piece := source.recv(PIECE):
                sink.sendall(piece)
                sent += len(piece)
                if slow:
                    if sent >= self.mark:
                        self.past_mark.set()
                    time.sleep(len(piece) / self.rate)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in [self._listener, *self._open]:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def throttled(upstream: str, bytes_per_second: int, mark: int) -> Iterator[Throttle]:
    host, _, port = upstream.rpartition(":")
    proxy = Throttle((host, int(port)), bytes_per_second, mark)
    try:
        yield proxy
    finally:
        proxy.close()
