"""`instarec serve`: the API and the web page under uvicorn (httptools and uvloop when installed).

The arguments live here so that `instarec serve` and `python -m instarec_assets.serving` are the
same command. Start-up checks the settings in this process first, so a bad setting is one
`instarec: error:` line, not a traceback from a worker. Each worker process then builds its own
app from the environment (`create_app`, an app factory), opening the store once.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from instarec_assets.serving.settings import ServingConfigError, ServingSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
APP_FACTORY = "instarec_assets.serving.asgi:create_app"
GUARDED_HTTP = "instarec_assets.serving.guarded_http:GuardedHttpToolsProtocol"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; each has its own rate limiter)"
    )
    parser.add_argument(
        "--home", help="INSTAREC_HOME (default ./.instarec); the SQLite store is under serving/"
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="when no API key is configured, serve without keys (loopback addresses only)",
    )
    parser.add_argument(
        "--page-key",
        action="store_true",
        help="put the first API key into the page's /config.json so the page needs no key field "
        "(loopback addresses only)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        help="concurrent connections per worker, beyond them 503 (INSTAREC_MAX_CONNECTIONS, default 1000)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        help="seconds to send a request head, else 408 (INSTAREC_HEADER_TIMEOUT_S, default 10)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be listened on (port in use, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as error:
        raise ServingConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def prepare(args: argparse.Namespace) -> ServingSettings:
    """Put the options into the environment (the workers read it) and check everything once here."""
    if args.home:
        os.environ["INSTAREC_HOME"] = str(Path(args.home).resolve())
    if args.allow_anonymous:
        os.environ["INSTAREC_ALLOW_ANONYMOUS"] = "1"
    if args.page_key:
        os.environ["INSTAREC_PAGE_API_KEY"] = "1"
    if getattr(args, "max_connections", None) is not None:
        os.environ["INSTAREC_MAX_CONNECTIONS"] = str(args.max_connections)
    if getattr(args, "header_timeout", None) is not None:
        os.environ["INSTAREC_HEADER_TIMEOUT_S"] = str(args.header_timeout)
    if args.workers < 1:
        raise ServingConfigError("--workers must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ServingConfigError("--port must be 0 to 65535")
    settings = ServingSettings.from_env()
    if settings.page_api_key and not is_loopback(args.host):
        # /config.json is unauthenticated: the key in it would go to anyone who can reach the host
        raise ServingConfigError(
            f"--page-key (INSTAREC_PAGE_API_KEY) puts an API key into /config.json for anyone who can "
            f"reach the server and is refused on {args.host}: use a loopback address (127.0.0.1)"
        )
    check_address(args.host, args.port)
    from instarec_assets.serving.api import ServingApi

    if settings.auth_jwks_file and not settings.aws and not os.environ.get("INSTAREC_AUTH_JWKS_FILE"):
        from instarec_assets.serving.auth import ensure_local_keys

        ensure_local_keys(settings.home)  # the key pair `instarec token` signs shopper tokens with
    api = ServingApi(settings, static=True)  # raises ServingConfigError when no key is configured
    if api.keys is None and not is_loopback(args.host):
        raise ServingConfigError(
            f"--allow-anonymous serves without API keys and is refused on {args.host}: "
            "use a loopback address (127.0.0.1) or configure INSTAREC_API_KEYS"
        )
    _report_store(api)
    return settings


def _report_store(api: object) -> None:
    try:
        version = api.store.current_version()  # type: ignore[attr-defined]
    except Exception as error:
        version = None
        print(f"instarec serve: warning: the serving store cannot be read yet ({error})", file=sys.stderr)
    else:
        if version is None:
            print(
                "instarec serve: warning: the serving store holds no recommendations yet; "
                "run `instarec materialize` first (requests answer 404/503 until then)",
                file=sys.stderr,
            )
    close = getattr(api.store, "close", None)  # type: ignore[attr-defined]
    if callable(close):
        close()


def log_config() -> dict:
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["instarec_assets"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def http_protocol() -> str:
    """httptools with our head/body limits when installed, else h11 (its own head limit, no head timeout)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return GUARDED_HTTP


def uvicorn_options(settings: ServingSettings, args: argparse.Namespace) -> dict:
    trusted = ",".join(settings.trusted_proxies)
    return {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "factory": True,
        "http": http_protocol(),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "limit_concurrency": settings.max_connections,
        "loop": "auto",  # uvloop when installed
        "access_log": bool(args.access_log),
        # X-Forwarded-For only from configured proxies (uvicorn would trust 127.0.0.1 by default)
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "server_header": False,
        "log_config": log_config(),
        "timeout_keep_alive": settings.keep_alive_s,
    }


def cmd_serve(args: argparse.Namespace) -> None:
    settings = prepare(args)
    import uvicorn

    scheme_host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"instarec serve: http://{scheme_host}:{args.port}/ (API /recommendations, OpenAPI /openapi.yaml), "
        f"{args.workers} worker(s), store: {'DynamoDB' if settings.aws else 'SQLite'}, "
        f"rate limit {settings.rate_limit}/{settings.rate_window_s:g}s per IP"
        + (", page config includes an API key" if settings.page_api_key else ""),
        flush=True,
    )
    uvicorn.run(APP_FACTORY, **uvicorn_options(settings, args))


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="instarec serve", description=__doc__.splitlines()[0]))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cmd_serve(args)
    except ValueError as error:
        print(f"instarec: error: {error}", file=sys.stderr)
        return 1
    return 0
