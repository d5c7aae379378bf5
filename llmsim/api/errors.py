"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with OpenAI's status."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """A refused or failed request: its HTTP status and OpenAI's error fields.

    Raised anywhere in the pipeline; each wire format renders it in its provider's shape.
    `headers` are sent with the response (a 429's retry-after, a 405's Allow).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        """body() encoded as JSON, the response body of OpenAI's formats."""
        return json.dumps(self.body()).encode()


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def type_name(value: Any) -> str:
    """A JSON value's type as OpenAI's messages name it ("a string", "null"), else its class."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def invalid_type(param: str, expected: str, value: Any) -> ApiError:
    """OpenAI's 400 for a parameter of the wrong JSON type (code invalid_type)."""
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def missing(param: str) -> ApiError:
    """OpenAI's 400 for a required parameter that is absent or null."""
    return ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def below_min(param: str, minimum: float, value: Any, integer: bool) -> ApiError:
    """OpenAI's 400 for a number below `minimum`, worded for an integer or a decimal (`integer`)."""
    kind = "integer" if integer else "decimal"
    return ApiError(
        400,
        f"Invalid '{param}': {kind} below minimum value. "
        f"Expected a value >= {minimum}, but got {value} instead.",
        param=param,
        code=f"{kind}_below_min_value",
    )


def above_max(param: str, maximum: float, value: Any, integer: bool) -> ApiError:
    """OpenAI's 400 for a number above `maximum`, worded for an integer or a decimal (`integer`)."""
    kind = "integer" if integer else "decimal"
    return ApiError(
        400,
        f"Invalid '{param}': {kind} above maximum value. "
        f"Expected a value <= {maximum}, but got {value} instead.",
        param=param,
        code=f"{kind}_above_max_value",
    )


def invalid_json() -> ApiError:
    """OpenAI's 400 for a body that is not valid JSON, in OpenAI's words."""
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
    )


def model_not_found(model: str) -> ApiError:
    """OpenAI's 404 for a model the server does not know (with --strict-models)."""
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def not_found_url(method: str, path: str) -> ApiError:
    """OpenAI's 404 for a path no route serves."""
    return ApiError(404, f"Invalid URL ({method} {path})", code="unknown_url")


def method_not_allowed(method: str, path: str) -> ApiError:
    """OpenAI's 405 for a route called with the wrong HTTP method."""
    return ApiError(405, f"Invalid method for URL ({method} {path})", code="method_not_allowed")


def body_too_large(limit: int) -> ApiError:
    """The 413 for a request body above `limit` bytes (--max-body-bytes)."""
    return ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


def server_error() -> ApiError:
    """OpenAI's 500 for an unexpected error while handling a request."""
    return ApiError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
    )


def openai_limit_error(v: Any) -> ApiError:
    """OpenAI's 400 for a request beyond a model's limits (v: engine LimitViolation)."""
    if v.kind == "max_tokens":
        return ApiError(
            400,
            f"{v.param} is too large: {v.requested}. This model supports at most {v.limit} "
            f"completion tokens, whereas you provided {v.requested}.",
            param=v.param,
            code="invalid_value",
        )
    if v.kind == "context":
        if v.param == "input":
            return ApiError(
                400,
                "Your input exceeds the context window of this model. Please adjust your input "
                "and try again.",
                param="input",
                code="context_length_exceeded",
            )
        return ApiError(
            400,
            f"This model's maximum context length is {v.limit} tokens. However, you requested "
            f"{v.requested} tokens ({v.prompt_tokens} in the messages, {v.max_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            param=v.param,
            code="context_length_exceeded",
        )
    return ApiError(
        400,
        f"Invalid 'n': n x max_tokens is {v.requested} output tokens, above this server's limit "
        f"of {v.limit} per request.",
        param="n",
        code="invalid_value",
    )
