"""Serve the generating routes without Flask's per-request machinery.

Flask's request context, URL adapter, session and response finalisation cost about 95 µs per
request on this stack (measured: a minimal Flask endpoint vs. the same endpoint as a bare WSGI
function) — as much as everything else a small non-streaming reply takes. The generating
routes need none of it: `pipeline.handle` reads the WSGI environ and returns a Response.

What stays the same: errors raised on the way are handed to the app's own error handlers
inside a real request context, so they are rendered exactly as Flask would render them; any
other method or path goes to Flask; and the shortcut steps aside while the app has request
hooks or anyone listens to Flask's request signals, which it would otherwise skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flask
from flask import Flask, Response

Environ = dict[str, Any]
_NONE = object()

_SIGNALS = (
    flask.request_started,
    flask.request_finished,
    flask.request_tearing_down,
    flask.appcontext_pushed,
    flask.appcontext_popped,
    flask.appcontext_tearing_down,
)


class _Body:
    """A response's own iterable, handed to the server as is; close() is the response's.

    werkzeug wraps every body in two per-chunk layers (one encodes str chunks, one exists only
    to call close()); for a stream that is a tenth of the server's time per event.
    """

    __slots__ = ("_iterable", "close")

    def __init__(self, response: Response) -> None:
        self._iterable = response.response
        self.close = response.close  # closes the iterable, then the call_on_close callbacks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)


def send(response: Response, environ: Environ, start_response: Callable[..., Any]) -> Any:
    """response(environ, start_response), minus what an ordinary POST answer never needs.

    Falls back to werkzeug for anything its get_wsgi_headers/get_app_iter would change:
    statuses without a body, Location headers, bodies of str, passthrough responses.
    """
    status = response.status_code
    headers = response.headers
    if (
        status < 200
        or status in (204, 304)
        or response.direct_passthrough
        or "Location" in headers
        or "Content-Location" in headers
        or isinstance(response.response, (str, bytes))
        or (
            response.is_sequence
            and (
                "Content-Length" not in headers
                or not all(isinstance(chunk, bytes) for chunk in response.response)
            )
        )
    ):
        return response(environ, start_response)
    start_response(response.status, headers.to_wsgi_list())
    return _Body(response)


class FastRoutes:
    """WSGI middleware for `app.wsgi_app`.

    A route is served fast when it is POST-only, has no URL variables, and its view function
    carries the attribute `tag` (the value is passed to `serve`, e.g. the route's wire format).
    In the error path that value is also set on Flask's request under the same name.
    """

    def __init__(
        self, app: Flask, serve: Callable[[Any, Environ], Response], tag: str = "llmsim_wire"
    ) -> None:
        self.app = app
        self.flask_wsgi = app.wsgi_app
        self.serve = serve
        self.tag = tag
        self._routes: dict[str, Any] | None = None

    def routes(self) -> dict[str, Any]:
        """Path -> tag value of every route served fast, read from the URL map once, on the
        first POST (a route added after that goes through Flask)."""
        if self._routes is None:
            found = {}
            for rule in self.app.url_map.iter_rules():
                view = self.app.view_functions.get(rule.endpoint)
                methods = rule.methods or set()
                if (
                    hasattr(view, self.tag)
                    and "POST" in methods
                    and not methods - {"POST", "OPTIONS"}
                    and not rule.arguments
                    and not rule.host
                    and not rule.subdomain
                ):
                    found[rule.rule] = getattr(view, self.tag)
            self._routes = found
        return self._routes

    def _flask_needed(self) -> bool:
        app = self.app
        hooks = (
            app.before_request_funcs,
            app.after_request_funcs,
            app.teardown_request_funcs,
            app.url_value_preprocessors,
        )
        return (
            any(any(funcs.values()) for funcs in hooks)
            or bool(app.teardown_appcontext_funcs)
            or any(signal.receivers for signal in _SIGNALS)
        )

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Serve a POST to a fast route through `serve` (errors through the app's handlers);
        hand anything else, or everything while Flask's hooks or signals are in use, to Flask."""
        if environ.get("REQUEST_METHOD") == "POST":
            value = self.routes().get(environ.get("PATH_INFO", ""), _NONE)
            if value is not _NONE and not self._flask_needed():
                try:
                    response = self.serve(value, environ)
                except Exception as exc:
                    response = self._error_response(environ, exc, value)
                return send(response, environ, start_response)
        return self.flask_wsgi(environ, start_response)

    def _error_response(self, environ: Environ, exc: Exception, value: Any) -> Response:
        """What Flask's full_dispatch_request makes of an exception raised by the view."""
        app = self.app
        with app.request_context(environ):
            setattr(flask.request, self.tag, value)
            try:
                rv = app.handle_user_exception(exc)
                return app.finalize_request(rv)
            except Exception as unhandled:
                return app.handle_exception(unhandled)
