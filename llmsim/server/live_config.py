"""`GET`/`PATCH /llmsim/config`: change latency, faults, rate limits and capacity while serving.

A PATCH is validated exactly as the flags are (settings' own parsers and checks, one 400 naming
the bad key), then written as JSON into memory every worker process shares, with a version
number. Each worker compares that number with its own at the start of every request (one read
of shared memory) and rebuilds what the change touches; requests already in flight finish under
the values they started with.

Who may call it: with `--admin-key` set, only requests that carry it (`Authorization: Bearer`
or `x-llmsim-admin-key`); without one, only while the server listens on loopback, because
anyone who can reach a server bound to 0.0.0.0 could otherwise reconfigure it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import mmap
import multiprocessing
import struct
from dataclasses import replace
from typing import Any

from llmsim.api.errors import ApiError
from llmsim.settings import _BY_NAME, Settings, SettingsError, _coerce

# What a running server may change: how it behaves, not where it listens or who it trusts.
LATENCY = ("profile", "ttft_ms", "ttft_stddev_ms", "tbt_ms", "tbt_stddev_ms",
           "latency_distribution", "output_tokens", "output_tokens_stddev", "prefill_ms_per_1k",
           "generator", "tool_call_rate")  # fmt: skip
CAPACITY = ("max_concurrency", "queue_limit", "queue_overflow_status", "load_factor")
LIMITS = ("rpm", "tpm")
FAULTS = ("fault", "timeout_after_ms", "timeout_action")
MUTABLE = (*LATENCY, *CAPACITY, *LIMITS, *FAULTS, "per_model")

_HEADER = struct.Struct("QQ")  # version, length of the JSON that follows


class SharedConfig:
    """The changed options as JSON in an anonymous shared mapping, with a version number."""

    def __init__(self, size: int = 256 * 1024) -> None:
        self._mem = mmap.mmap(-1, size)
        self.lock = multiprocessing.get_context("fork").Lock()

    @property
    def version(self) -> int:
        """The number of writes so far (0: nothing changed); read without the lock."""
        return _HEADER.unpack_from(self._mem, 0)[0]

    def read(self) -> tuple[int, dict[str, Any]]:
        """(version, the changed options by name) as last written, under the lock."""
        with self.lock:
            version, length = _HEADER.unpack_from(self._mem, 0)
            raw = self._mem[_HEADER.size : _HEADER.size + length]
        return version, (json.loads(raw) if length else {})

    def write(self, changes: dict[str, Any]) -> int:
        """Replace the stored changes with `changes` and return the new version; ApiError 400
        when their JSON does not fit in the mapping (256 KiB by default)."""
        data = json.dumps(changes).encode()
        if _HEADER.size + len(data) > len(self._mem):
            raise ApiError(
                400, f"configuration too large: {len(data)} bytes of JSON", code="invalid_value"
            )
        with self.lock:
            version = _HEADER.unpack_from(self._mem, 0)[0] + 1
            self._mem[_HEADER.size : _HEADER.size + len(data)] = data
            _HEADER.pack_into(self._mem, 0, version, len(data))
        return version


def apply_changes(base: Settings, changes: dict[str, Any]) -> Settings:
    """The start-up settings with the (already validated) changes on top."""
    values = {k: _coerce(_BY_NAME[k], v, k) for k, v in changes.items()}
    return replace(base, **values)


def validate_patch(body: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The changes a PATCH body asks for merged into the current ones; ApiError names a bad key.

    A key set to null goes back to the value the server started with.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object of option: value", code="invalid_type")
    merged = dict(current)
    for key, value in body.items():
        name = str(key).replace("-", "_")
        if name not in _BY_NAME:
            raise ApiError(
                400,
                f"unknown option {key!r} (changeable: {', '.join(MUTABLE)})",
                param=str(key),
                code="unknown_parameter",
            )
        if name not in MUTABLE:
            raise ApiError(
                400,
                f"{key!r} cannot be changed while the server runs (restart with the flag)",
                param=str(key),
                code="invalid_value",
            )
        if value is None:
            merged.pop(name, None)
            continue
        try:
            parsed = _coerce(_BY_NAME[name], value, str(key))
        except SettingsError as exc:
            raise ApiError(400, str(exc), param=str(key), code="invalid_value") from None
        # Stored as parsed (JSON-safe: numbers, strings, lists and mappings).
        merged[name] = parsed
    return merged


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin(settings: Settings, environ: dict[str, Any]) -> None:
    """Raise ApiError unless this request may read or change the configuration."""
    if settings.admin_key:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        given = given or environ.get("HTTP_X_LLMSIM_ADMIN_KEY", "")
        if not hmac.compare_digest(given.encode(), settings.admin_key.encode()):
            raise ApiError(401, "a valid admin key is required", code="invalid_admin_key")
        return
    if not _is_loopback(settings.host):
        raise ApiError(
            403,
            f"/llmsim/config is disabled on a server listening on {settings.host}: "
            "start it with --admin-key to allow it",
            code="admin_key_required",
        )


def public_view(settings: Settings, changes: dict[str, Any], version: int) -> dict[str, Any]:
    """What GET and PATCH answer: every changeable option's value now, and what was changed."""
    values = settings.to_dict()
    return {
        "version": version,
        "config": {name: values[name] for name in MUTABLE},
        "changed": changes,
    }
