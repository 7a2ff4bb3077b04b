"""A TCP proxy on 127.0.0.1 in front of the moto server that a test can cut or freeze."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

FORWARD, DROP, FREEZE = "forward", "drop", "freeze"


class FaultProxy:
    """Forwards connections to `upstream`; `mode` DROP closes every connection (open ones too) at
    once, FREEZE accepts and never answers (open ones stop forwarding), FORWARD restores service."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.mode = FORWARD
        self.connections = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != FORWARD:
            with self._lock:
                for sock in self._open:
                    _close(sock)
                self._open.clear()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.mode == DROP:
                _close(client)
                continue
            with self._lock:
                self._open.add(client)
            if self.mode == FREEZE:
                continue  # held open, never read, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.add(server)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.mode != FORWARD:
                    break
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)

    def close(self) -> None:
        self._stopped.set()
        _close(self._listener)
        self.set_mode(DROP)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()
