"""Checks made before anything starts, so a run that cannot work fails in one line, at once."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from llmsim.bench.errors import BenchError


def normalize_target(url: str) -> str:
    """An OpenAI base URL: `http://host:port` gets `/v1`; a URL with a path is kept as given."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BenchError(f"--target {url!r}: expected an http(s) base URL such as http://host/v1")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_reachable(base_url: str, api_key: str | None, timeout: float = 5.0) -> None:
    """GET {base}/models. Any HTTP answer, even 401 or 404, proves the target is there."""
    req = urllib.request.Request(base_url + "/models", method="GET")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(1)
    except urllib.error.HTTPError:
        return
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, socket.gaierror):
            why = f"cannot resolve host ({reason.strerror})"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = f"no answer within {timeout:g} s"
        else:
            why = str(getattr(reason, "strerror", None) or reason)
        raise BenchError(f"target {base_url} is unreachable: {why}") from None
    except TimeoutError:
        raise BenchError(
            f"target {base_url} is unreachable: no answer within {timeout:g} s"
        ) from None
    except OSError as exc:
        raise BenchError(f"target {base_url} is unreachable: {exc.strerror or exc}") from None


def check_port_free(host: str, port: int, host_flag: str, port_flag: str) -> None:
    """Bind and release; Locust would otherwise fail later with a traceback in its log.

    The error names the flag at fault: the host's when the address is not one this machine can
    listen on, the port's when the port is taken.
    """
    bind_host = "" if host in ("*", "") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
    except socket.gaierror as exc:
        # Raised before any port is tried: the host is neither an IP address nor a known name.
        raise BenchError(
            f"{host_flag} {host!r}: not an IP address or a host name that resolves ({exc.strerror})"
        ) from None
    except OSError as exc:
        shown = host if bind_host else "all interfaces"
        if exc.errno == errno.EADDRINUSE:
            raise BenchError(f"port {port} on {shown} is already in use ({port_flag})") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BenchError(
                f"{host_flag} {host!r}: not an address of this machine ({exc.strerror})"
            ) from None
        raise BenchError(
            f"cannot listen on {shown}:{port} ({host_flag}, {port_flag}): {exc.strerror}"
        ) from None
    finally:
        sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on `host` now; nothing reserves it until it is bound."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
