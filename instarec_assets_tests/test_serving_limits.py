"""`instarec serve` under hostile clients: raw sockets on 127.0.0.1 against the real command."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE
from instarec_assets.serving.server import GUARDED_HTTP, http_protocol
from instarec_assets.serving.testing import build_sqlite_store
from instarec_assets_tests.test_serving_http import (
    KEY,
    REPO_ROOT,
    clean_env,
    free_port,
    serve_command,
    wait_for,
)

HEADER_TIMEOUT_S = 1.5
MAX_CONNECTIONS = 8
GOOD_REQUEST = (
    b"GET /recommendations?user_id=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + KEY.encode() + b"\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, subprocess.Popen]]:
    home = tmp_path_factory.mktemp("limits")
    build_sqlite_store(home / SQLITE_FILE, users=10)
    port = free_port()
    env = clean_env(INSTAREC_API_KEYS=KEY, INSTAREC_RATE_LIMIT="10000/300", INSTAREC_KEEP_ALIVE_S="1")
    process = subprocess.Popen(
        serve_command(
            "--home",
            str(home),
            "--port",
            str(port),
            "--header-timeout",
            str(HEADER_TIMEOUT_S),
            "--max-connections",
            str(MAX_CONNECTIONS),
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/recommendations?user_id=2", process, {"x-api-key": KEY})
        yield port, process
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Traceback" not in output


def read_all(sock: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything until the server closes (or resets) the connection, within `limit_s`."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def ok(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GOOD_REQUEST + b"Connection: close\r\n\r\n")
        return status_of(read_all(sock))


def test_the_guarded_httptools_protocol_is_used():
    assert http_protocol() == GUARDED_HTTP


def test_normal_request_is_answered(server):
    assert ok(server[0]) == 200


@pytest.mark.parametrize("size", [1 << 20, 8 << 20])
def test_oversized_headers_are_refused_without_memory_growth(server, size: int):
    port, process = server
    before = rss_kib(process.pid)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # the server closes after the first 16 KB: that is the point
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(GOOD_REQUEST + b"X-Big: " + b"a" * size + b"\r\n\r\n")
        response = read_all(sock)
    assert status_of(response) in (431, 0)  # 431, or a reset that swallowed it
    assert time.monotonic() - started < 10
    assert rss_kib(process.pid) - before < 32 * 1024  # not the 1-8 MB header, let alone copies of it
    assert ok(port) == 200


def test_a_header_just_under_the_limit_is_served(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GOOD_REQUEST + b"X-Pad: " + b"a" * 12000 + b"\r\nConnection: close\r\n\r\n")
        assert status_of(read_all(sock)) == 200


def test_a_body_is_refused_with_413(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(GOOD_REQUEST + b"Content-Length: 100000\r\n\r\n" + b"x" * 2000)
        assert status_of(read_all(sock)) == 413


def test_slow_loris_is_closed_within_the_header_timeout(server):
    port, _ = server
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /recommendations?user_id=2 HTTP/1.1\r\n")
        response = b""
        sock.settimeout(0.2)
        for index in range(100):  # one header byte every 0.2 s: would take 20 s, the limit is 1.5 s
            try:
                sock.sendall(b"X-Slow-%d: a\r\n" % index)
                response += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if response:
                break
        response += read_all(sock)
    assert status_of(response) == 408
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_silent_connections_are_closed_after_the_header_timeout(server):
    port, _ = server
    started = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        responses = [read_all(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert [status_of(response) for response in responses] == [408, 408, 408]
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_connections_past_the_limit_get_503_then_service_resumes(server):
    port, _ = server
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(GOOD_REQUEST + b"Connection: close\r\n\r\n")
            assert status_of(read_all(sock)) == 503
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while ok(port) != 200:
        assert time.monotonic() < deadline, "service did not resume after the idle connections closed"
        time.sleep(0.1)
