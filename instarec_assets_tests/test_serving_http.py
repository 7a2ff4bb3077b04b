"""The ASGI app under a real uvicorn server on 127.0.0.1, spoken to over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from instarec_assets.backends.serving_store import SQLITE_FILE, SqliteRecommendationStore
from instarec_assets.serving import ServingApi, ServingConfigError, ServingSettings
from instarec_assets.serving.server import build_parser, prepare, uvicorn_options
from instarec_assets.serving.testing import build_sqlite_store, running_server

KEY = "http-key-0123"
ORIGIN = "https://recs.example.com"
REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARE_SETS = ("INSTAREC_HOME", "INSTAREC_ALLOW_ANONYMOUS", "INSTAREC_PAGE_API_KEY")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqlite_store(tmp_path_factory.mktemp("http") / "recommendations.sqlite", users=30)


@pytest.fixture(scope="module")
def base_url(store_path: Path):
    settings = ServingSettings(
        api_keys=(KEY,), allowed_origins=frozenset({ORIGIN}), rate_limit=5, rate_window_s=300
    )
    api = ServingApi(settings, store=SqliteRecommendationStore(store_path, read_only=True), static=True)
    with running_server(api) as url:
        yield url


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def raw_request(base_url: str, request_line: bytes, headers: bytes = b"") -> tuple[int, bytes]:
    """A hand-written HTTP/1.1 request (bytes the client libraries would refuse to send)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: 127.0.0.1\r\n" + headers + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_recommendations_over_http(base_url: str):
    status, headers, body = fetch(
        f"{base_url}/recommendations?user_id=9&k=3", {"x-api-key": KEY, "Origin": ORIGIN}
    )
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "server" not in {name.lower() for name in headers}
    payload = json.loads(body)
    assert payload["user_id"] == 9
    assert [item["product_id"] for item in payload["recommendations"]] == [
        1_000_000_091,
        1_000_000_092,
        1_000_000_093,
    ]


def test_rate_limit_over_http_ignores_spoofed_forwarded_for(base_url: str):
    """5 per 300 s per IP; X-Forwarded-For is not trusted by default, so changing it does not help."""
    statuses = []
    for n in range(6):
        status, headers, body = fetch(
            f"{base_url}/recommendations?user_id=1", {"x-api-key": KEY, "X-Forwarded-For": f"10.9.8.{n}"}
        )
        statuses.append(status)
    assert statuses.count(429) >= 1
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["error"].startswith("too many requests")


def test_page_config_and_description_over_http(base_url: str):
    status, headers, body = fetch(f"{base_url}/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"<h1>Product Recommendations</h1>" in body
    status, _, body = fetch(f"{base_url}/openapi.yaml")
    assert status == 200
    assert body.startswith(b"openapi: 3.")
    status, _, body = fetch(f"{base_url}/config.json")
    assert json.loads(body) == {"apiBaseUrl": "", "apiKeyRequired": True}


def test_preflight_over_http(base_url: str):
    connection = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=10)
    connection.request(
        "OPTIONS",
        "/recommendations",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    response = connection.getresponse()
    assert response.status == 204
    assert response.read() == b""
    assert response.getheader("access-control-allow-origin") == ORIGIN
    assert response.getheader("access-control-allow-headers") == "authorization, content-type, x-api-key"
    connection.close()


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /recommendations?user_id=%D9%A1 HTTP/1.1",
        b"GET /recommendations?user_id=1%27%20OR%201=1-- HTTP/1.1",
        b"GET /recommendations?user_id=" + b"9" * 500 + b" HTTP/1.1",
        b"GET /recommendations?" + b"a=1&" * 400 + b" HTTP/1.1",
        b"GET /recommendations?user_id=1&user_id=2 HTTP/1.1",
    ],
)
def test_hostile_requests_get_400_json(store_path: Path, request_line: bytes):
    api = ServingApi(
        ServingSettings(api_keys=(KEY,)), store=SqliteRecommendationStore(store_path, read_only=True)
    )
    with running_server(api) as url:
        status, body = raw_request(url, request_line, f"x-api-key: {KEY}\r\n".encode())
    assert status == 400
    assert list(json.loads(body)) == ["error"]


def test_missing_key_over_http_is_401_with_www_authenticate(store_path: Path):
    """RFC 9110 requires WWW-Authenticate with a 401, on the ASGI adapter's fast path (the usual
    query) and its general path alike; a wrong key (403) carries none."""
    api = ServingApi(
        ServingSettings(api_keys=(KEY,), allowed_origins=frozenset({ORIGIN})),
        store=SqliteRecommendationStore(store_path, read_only=True),
    )
    with running_server(api) as url:
        for query in ("user_id=3", "user_id=3&k=2", "k=2&user_id=3", "user_id=abc"):
            status, headers, body = fetch(f"{url}/recommendations?{query}", {"Origin": ORIGIN})
            assert status == 401, query
            assert headers["www-authenticate"] == 'ApiKey header="x-api-key"'
            assert headers["access-control-allow-origin"] == ORIGIN
            assert json.loads(body) == {"error": "missing API key: send it in the x-api-key header"}
        status, headers, _ = fetch(f"{url}/recommendations?user_id=3", {"x-api-key": "wrong"})
        assert status == 403
        assert "www-authenticate" not in {name.lower() for name in headers}


def test_raw_non_ascii_request_line_is_refused_by_the_http_parser(base_url: str):
    """httptools rejects the request before the app sees it: uvicorn's plain-text 400, never a 500."""
    status, body = raw_request(
        base_url, b"GET /recommendations?user_id=\xd9\xa1 HTTP/1.1", f"x-api-key: {KEY}\r\n".encode()
    )
    assert status == 400
    assert b"Traceback" not in body


def test_other_methods_and_paths_over_http(base_url: str):
    status, headers, body = fetch(
        f"{base_url}/recommendations?user_id=1", {"x-api-key": KEY}, method="DELETE"
    )
    assert status == 405
    assert headers["allow"] == "GET, OPTIONS"
    status, _, body = fetch(f"{base_url}/etc/passwd")
    assert status == 404
    assert json.loads(body) == {"error": "not found"}


def test_uvicorn_options_trust_forwarded_for_only_from_configured_proxies():
    args = build_parser().parse_args(["--port", "9000"])
    options = uvicorn_options(ServingSettings(api_keys=("k",)), args)
    assert options["proxy_headers"] is False
    assert options["access_log"] is False
    assert options["workers"] == 1
    assert options["factory"] is True
    trusted = uvicorn_options(ServingSettings(api_keys=("k",), trusted_proxies=("10.0.0.0/8",)), args)
    assert trusted["proxy_headers"] is True
    assert trusted["forwarded_allow_ips"] == "10.0.0.0/8"


# ------------------------------------------------------------------------------------------- the command
def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "instarec_assets.serving", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("INSTAREC_")}
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no API keys configured"),
        (("--allow-anonymous", "--host", "0.0.0.0"), {}, "--allow-anonymous serves without API keys"),
        # /config.json needs no key: with --page-key it would hand the key to the whole network
        (("--page-key", "--host", "0.0.0.0"), {"INSTAREC_API_KEYS": "k"}, "--page-key"),
        (("--page-key", "--host", "::"), {"INSTAREC_API_KEYS": "k"}, "refused on ::"),
        (("--host", "192.0.2.1"), {"INSTAREC_API_KEYS": "k", "INSTAREC_PAGE_API_KEY": "1"}, "--page-key"),
        ((), {"INSTAREC_API_KEYS": "k", "INSTAREC_RATE_LIMIT": "fast"}, "INSTAREC_RATE_LIMIT"),
        ((), {"INSTAREC_API_KEYS": "k", "INSTAREC_ALLOWED_ORIGINS": "*"}, "'*' is not accepted"),
    ],
)
def test_serve_refuses_unsafe_or_bad_settings(tmp_path: Path, args, env, message: str):
    done = subprocess.run(
        serve_command("--home", str(tmp_path), "--port", str(free_port()), *args),
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("instarec: error: ")
    assert message in lines[-1]
    assert "Traceback" not in done.stderr


def test_page_key_is_accepted_on_loopback_addresses_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [*(name for name in os.environ if name.startswith("INSTAREC_")), *PREPARE_SETS]:
        # setenv first so that monkeypatch records the variable even where it is unset: prepare()
        # sets these, and the undo must remove them again for the tests that follow.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("INSTAREC_API_KEYS", KEY)
    for host in ("127.0.0.1", "localhost"):
        args = build_parser().parse_args(
            ["--home", str(tmp_path), "--host", host, "--port", "0", "--page-key"]
        )
        assert prepare(args).page_api_key is True
    for host in ("0.0.0.0", "::", "192.0.2.1", "recs.example.com"):
        args = build_parser().parse_args(
            ["--home", str(tmp_path), "--host", host, "--port", "0", "--page-key"]
        )
        with pytest.raises(ServingConfigError, match=f"--page-key .* is refused on {host}: use a loopback"):
            prepare(args)


def test_serve_reports_a_busy_port_in_one_line(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            serve_command("--home", str(tmp_path), "--port", str(port)),
            env=clean_env(INSTAREC_API_KEYS=KEY),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"instarec: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def wait_for(url: str, process: subprocess.Popen, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    deadline = time.monotonic() + 60
    while True:
        try:
            return fetch(url, headers)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {process.communicate()[0]}") from None
            time.sleep(0.1)


def test_serve_command_with_two_workers_and_a_trusted_proxy(tmp_path: Path):
    home = tmp_path / "home"
    build_sqlite_store(home / SQLITE_FILE, users=10)
    port = free_port()
    env = clean_env(INSTAREC_API_KEYS=KEY, INSTAREC_RATE_LIMIT="1/300", INSTAREC_TRUSTED_PROXIES="127.0.0.1")
    process = subprocess.Popen(
        serve_command("--home", str(home), "--port", str(port), "--workers", "2", "--page-key"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        status, _, body = wait_for(
            f"{url}/recommendations?user_id=2", process, {"x-api-key": KEY, "X-Forwarded-For": "192.0.2.1"}
        )
        assert status == 200
        assert json.loads(body)["user_id"] == 2
        # behind a trusted proxy each forwarded client has its own budget of 1 (per worker)
        status, _, _ = fetch(
            f"{url}/recommendations?user_id=2", {"x-api-key": KEY, "X-Forwarded-For": "192.0.2.2"}
        )
        assert status == 200
        assert json.loads(fetch(f"{url}/config.json")[2]) == {
            "apiBaseUrl": "",
            "apiKeyRequired": True,
            "apiKey": KEY,
        }
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "2 worker(s)" in output
    assert "page config includes an API key" in output
    assert "Traceback" not in output


def test_serve_warns_when_the_store_is_empty(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        serve_command("--home", str(tmp_path), "--port", str(port)),
        env=clean_env(INSTAREC_API_KEYS=KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        status, _, body = wait_for(
            f"http://127.0.0.1:{port}/recommendations?user_id=2", process, {"x-api-key": KEY}
        )
        assert status == 503
        assert json.loads(body) == {"error": "recommendations are temporarily unavailable"}
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "warning: the serving store" in output
    assert "Traceback" not in output
