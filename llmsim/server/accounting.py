"""One failure, one count, by its real kind.

The pipeline records how a request ended where it knows (its Generation); the app's error
handlers record only what nobody recorded yet. An exception that was already counted carries a
mark, so the same failure is never counted as both `client_disconnect` and `server_error`.
"""

from __future__ import annotations

import urllib.parse

_MARK = "_llmsim_counted"


def mark_counted(exc: BaseException) -> BaseException:
    """Say that `exc`'s request is already in the stats."""
    try:
        setattr(exc, _MARK, True)
    except (AttributeError, TypeError):  # a builtin without a __dict__: count it once more
        pass
    return exc


def is_counted(exc: BaseException) -> bool:
    """Whether mark_counted was called on `exc`: its request is already in the stats."""
    return bool(getattr(exc, _MARK, False))


def failure_kind(exc: BaseException) -> str:
    """The stats kind of an exception that ended a request before its reply was sent."""
    import gevent

    if isinstance(exc, (OSError, gevent.GreenletExit)) and not isinstance(exc, MemoryError):
        return "client_disconnect"  # the socket went away, or the server killed the handler
    return "server_error"


_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


def header_value(text: str) -> str:
    """`text` as an HTTP header value: printable ASCII as is, anything else percent-encoded.

    A client-chosen model name echoed in `openai-model` must not be able to break the response
    (a non-Latin-1 character makes the server's header encoding fail; CR/LF would split it).
    """
    if text.isascii() and text.isprintable():
        return text
    return urllib.parse.quote(text, safe=_HEADER_SAFE)
