"""API keys (`--api-keys`, `--api-key-file`): a missing or wrong key answered as each provider does.

A WSGI middleware in front of every API route, installed only when keys are configured (so a
server without keys pays nothing). Any of the providers' key headers is accepted on any route;
the refusal is shaped by the route's API, because that is what its SDK parses:

- OpenAI: 401 `invalid_request_error`, code `invalid_api_key`, "Incorrect API key provided: …".
- Anthropic: 401 `{"type": "error", "error": {"type": "authentication_error", …}}`.
- Azure OpenAI: 401 `{"error": {"code": "401", "message": "Access denied due to invalid
  subscription key or wrong API endpoint…"}}`.
- Gemini: a wrong key 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`; none 403
  `PERMISSION_DENIED`.

/health, /metrics and /llmsim/* are not API routes: a probe or a scraper needs no key
(/llmsim/config has its own admin key, see llmsim.server.live_config).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from llmsim.settings import Settings

Environ = dict[str, Any]
_OPEN_PATHS = ("/health", "/metrics")


def load_keys(settings: Settings) -> frozenset[str]:
    """The accepted keys: --api-keys plus the lines of --api-key-file (not blank or # lines)."""
    keys = {k for k in settings.api_keys if k}
    if settings.api_key_file:
        for line in Path(settings.api_key_file).read_text("utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(line)
    return frozenset(keys)


def api_family(path: str, environ: Environ) -> str:
    """Which provider's API a path belongs to: openai, anthropic, azure or gemini."""
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return "gemini"  # Gemini's SDK also calls /v1/models/{model}:generateContent
    if path.startswith("/openai/"):
        return "azure"
    if (
        path.startswith("/anthropic/")
        or path.startswith("/v1/messages")
        or "HTTP_ANTHROPIC_VERSION" in environ
    ):
        return "anthropic"
    return "openai"


def presented_key(environ: Environ) -> str | None:
    """The key a client sent, in any provider's way: Bearer, x-api-key, api-key,
    x-goog-api-key or Gemini's ?key=."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    for header in ("HTTP_X_API_KEY", "HTTP_API_KEY", "HTTP_X_GOOG_API_KEY"):
        if environ.get(header):
            return environ[header].strip()
    query = environ.get("QUERY_STRING", "")
    if "key=" in query:
        values = parse_qs(query).get("key")
        if values:
            return values[0]
    return None


def _masked(key: str) -> str:
    # OpenAI shows the first and last few characters of a wrong key, never the whole key.
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)


def refusal(family: str, key: str | None) -> tuple[int, dict[str, Any]]:
    """(status, body) with which the provider refuses a missing (None) or wrong key."""
    if family == "anthropic":
        message = "x-api-key header is required" if key is None else "invalid x-api-key"
        return 401, {
            "type": "error",
            "error": {"type": "authentication_error", "message": message},
        }
    if family == "azure":
        return 401, {
            "error": {
                "code": "401",
                "message": "Access denied due to invalid subscription key or wrong API endpoint. "
                "Make sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            }
        }
    if family == "gemini":
        if key is None:
            return 403, {
                "error": {
                    "code": 403,
                    "message": "Method doesn't allow unregistered callers (callers without "
                    "established identity). Please use API Key or other form of API consumer "
                    "identity to call this API.",
                    "status": "PERMISSION_DENIED",
                }
            }
        return 400, {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            }
        }
    if key is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
        code = None
    else:
        message = f"Incorrect API key provided: {_masked(key)}."
        code = "invalid_api_key"
    return 401, {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }


class KeyCheck:
    """WSGI middleware: API routes answer only requests that carry one of `keys`."""

    def __init__(self, app: Callable[..., Iterable[bytes]], keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Pass the request to the app when its path is open or it carries an accepted key;
        else answer the refusal of the path's API (401, or Gemini's 400/403) here."""
        path = environ.get("PATH_INFO", "")
        if path in _OPEN_PATHS or path.startswith("/llmsim/"):
            return self.app(environ, start_response)
        key = presented_key(environ)
        if key is not None and key in self.keys:
            return self.app(environ, start_response)
        status, body = refusal(api_family(path, environ), key)
        data = json.dumps(body).encode()
        reason = {400: "BAD REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status]
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(f"{status} {reason}", headers)
        return [data]
