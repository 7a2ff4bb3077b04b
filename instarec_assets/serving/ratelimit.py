"""Per-client rate limiting: a sliding-window counter, O(1) time and memory per client.

Each client (an IPv4 address, or the /64 prefix of an IPv6 address, since one IPv6 host usually
owns a whole /64) has two counters: requests in the current fixed window of `window_s` seconds and
in the previous one. The number of requests in the sliding window ending now is estimated as
`previous * (time left of the window / window_s) + current`, the approach of Cloudflare's and
nginx's limiters. A request is allowed while that estimate stays below `limit`; a refused request
is not counted, and `Retry-After` is the exact time after which the same estimate admits the next
request (assuming the client sends nothing meanwhile).

The state lives in the process. Under `instarec serve --workers N` every worker has its own, so one
client may get up to N x limit (one worker per connection); the default is one worker. In Lambda
each warm container counts separately: API Gateway's usage plan and the WAF's rate-based rule
(100 per IP per 5 minutes, `infra/stacks/serving.yaml`) are the real limits there.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable

_EPSILON = 1e-9


class SlidingWindowLimiter:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        # client -> [window index, requests in the previous window, requests in the current one]
        self._clients: dict[str, list[int]] = {}
        self._window = -1

    def __len__(self) -> int:
        return len(self._clients)

    def hit(self, client: str) -> int:
        """0 if the request is allowed (and counted), else the whole seconds to wait (>= 1)."""
        if ":" in client:
            client = _ipv6_prefix(client)
        window_s = self.window_s
        with self._lock:
            now = self._clock()
            index = int(now // window_s)
            if index != self._window:
                self._prune(index)
            entry = self._clients.get(client)
            if entry is None:
                entry = self._clients[client] = [index, 0, 0]
            elif entry[0] != index:
                entry[1] = entry[2] if entry[0] == index - 1 else 0
                entry[2] = 0
                entry[0] = index
            elapsed = now - index * window_s
            previous, current = entry[1], entry[2]
            if previous * (window_s - elapsed) / window_s + current <= self.limit - 1 + _EPSILON:
                entry[2] = current + 1
                return 0
        return max(1, math.ceil(self._wait(previous, current, elapsed) - _EPSILON))

    def _wait(self, previous: int, current: int, elapsed: float) -> float:
        window_s, allowed = self.window_s, self.limit - 1
        if current <= allowed:  # later in this window, once enough of `previous` has slid out
            return window_s - elapsed - (allowed - current) * window_s / previous
        # in the next window `current` becomes the previous window's count
        return window_s - elapsed + window_s * (1 - allowed / current)

    def _prune(self, index: int) -> None:
        """At a window change, forget clients idle for more than a whole window."""
        self._clients = {key: entry for key, entry in self._clients.items() if entry[0] >= index - 1}
        self._window = index


def _ipv6_prefix(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return address
