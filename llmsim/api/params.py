"""OpenAI request-parameter checks shared by the OpenAI wire formats, with OpenAI's messages."""

from __future__ import annotations

from typing import Any

from llmsim.api.bounds import check_int64
from llmsim.api.errors import ApiError, above_max, below_min, invalid_type, missing

MAX_N = 128
MAX_STOP = 4


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def body_and_model(body: Any) -> tuple[dict[str, Any], str]:
    """The body as an object and its required, non-empty `model`."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    model = body.get("model")
    if model is None:
        raise missing("model")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if not model:
        raise ApiError(400, "Invalid 'model': empty string.", param="model", code="empty_string")
    return body, model


def int_param(body: dict[str, Any], name: str, lo: int | None, hi: int | None) -> int | None:
    """`body[name]` checked as an integer within [lo, hi] (None: unbounded); None when absent
    or null. Raises OpenAI's 400 naming the parameter.
    """
    v = body.get(name)
    if v is None:
        return None
    check_int64(name, v)  # first: a literal beyond 64 bits may have been read as a float
    if not _is_int(v):
        raise invalid_type(name, "an integer", v)
    if lo is not None and v < lo:
        raise below_min(name, lo, v, integer=True)
    if hi is not None and v > hi:
        raise above_max(name, hi, v, integer=True)
    return v


def num_param(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    """Range-check `body[name]` as a number within [lo, hi] when present (raises OpenAI's 400)."""
    v = body.get(name)
    if v is None:
        return
    if not _is_num(v):
        raise invalid_type(name, "a number", v)
    if v < lo:
        raise below_min(name, lo, v, integer=False)
    if v > hi:
        raise above_max(name, hi, v, integer=False)


def bool_param(body: dict[str, Any], name: str) -> bool:
    """`body[name]` checked as a boolean; False when absent or null."""
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise invalid_type(name, "a boolean", v)
    return v


def sampling_params(body: dict[str, Any]) -> None:
    """Range-check the sampling knobs a simulator accepts and ignores."""
    num_param(body, "temperature", 0, 2)
    num_param(body, "top_p", 0, 1)
    num_param(body, "presence_penalty", -2, 2)
    num_param(body, "frequency_penalty", -2, 2)


def stop_param(body: dict[str, Any]) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings (a string or up to MAX_STOP of them); () when
    absent. Empty strings are accepted and dropped.
    """
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,) if v else ()
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise invalid_type("stop", "a string or an array of strings", v)
    if len(v) > MAX_STOP:
        raise ApiError(
            400,
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
            f"but got an array with length {len(v)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    return tuple(s for s in v if s)


def stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """(include_usage, continuous usage) from `stream_options`, refused without `stream`.

    `continuous_usage_stats` is vLLM's extension (guidellm sends it): with include_usage, every
    chunk carries the usage so far, as vLLM's server does."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
    if not stream:
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )
    include_usage = bool_param(options, "include_usage")
    return include_usage, include_usage and bool_param(options, "continuous_usage_stats")
