"""The target's address, resolved once per process and TTL instead of once per new connection.

geventhttpclient resolves the host each time its pool opens a connection, through gevent's
thread-pool resolver: 0.5-1.9 ms on this kind of machine (measured for the record proxy), all
of it inside the first request's TTFT of every new connection (each user's first request, and
every request after a server closed the connection). An IP literal needs no resolver at all;
a name is resolved once per RESOLVE_TTL_S, so a target that moves is followed.
"""

from __future__ import annotations

import _socket
import ipaddress
import time
from collections.abc import Callable
from typing import Any

RESOLVE_TTL_S = 30.0
_cache: dict[tuple[Any, ...], tuple[float, Any]] = {}


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def install(http_client: Any) -> bool:
    """Give a geventhttpclient HTTPClient's pool the cached resolver; False if it has none."""
    pool = getattr(http_client, "_connection_pool", None)
    original: Callable[[], Any] | None = getattr(pool, "_resolve", None)
    host = getattr(pool, "_connection_host", None)
    port = getattr(pool, "_connection_port", None)
    if pool is None or original is None or host is None:
        return False
    family = _socket.AF_INET if getattr(pool, "disable_ipv6", False) else 0
    key = (host, port, family)
    numeric = _numeric(str(host))

    def resolve() -> Any:
        if numeric:  # no lookup: the C call answers at once, off gevent's thread pool
            return _socket.getaddrinfo(
                str(host).strip("[]"), port, family, _socket.SOCK_STREAM, _socket.SOL_TCP,
                _socket.AI_NUMERICHOST,
            )  # fmt: skip
        now = time.monotonic()
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        info = original()
        _cache[key] = (now, info)
        return info

    pool._resolve = resolve
    return True
