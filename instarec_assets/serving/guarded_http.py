"""Connection limits for `instarec serve` that uvicorn's httptools protocol does not have.

uvicorn bounds concurrency (`limit_concurrency`, 503) and idle keep-alive time itself, and h11
bounds the request head (`h11_max_incomplete_event_size`), but under httptools a client may send an
unbounded request head, dribble it forever (slow loris) or send a large body. This subclass counts
the bytes of each request head (431 past `max_header_bytes`), gives the head `header_timeout_s`
to arrive (408, also for connections that never send a byte) and refuses bodies past
`max_body_bytes` (413). Every refusal closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from instarec_assets.serving.settings import ServingSettings

_REASONS = {408: b"Request Timeout", 413: b"Content Too Large", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on the request head's size and time and the body size."""

    _settings: ServingSettings | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol._settings is None:  # once per worker process, from its environment
            GuardedHttpToolsProtocol._settings = ServingSettings.from_env()
        settings = GuardedHttpToolsProtocol._settings
        self.max_header_bytes = settings.max_header_bytes
        self.max_body_bytes = settings.max_body_bytes
        self.header_timeout_s = settings.header_timeout_s
        self._head_bytes = 0
        self._body_bytes = 0
        self._in_head = True
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._start_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._refused:
            self._refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        length = dict(self.headers).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            self._refuse(413 if length.isdigit() else 400)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes:
            self._refuse(413)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._refuse, 408)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: int) -> None:
        """Answer `status` with a short text and close, unless the connection is already gone."""
        if self._refused:
            return
        self._refused = True
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        reason = _REASONS.get(status, b"Bad Request")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(reason), reason)
        )
        self.transport.close()
