"""vLLM's own endpoints besides the OpenAI API: /tokenize, /detokenize, /version.

Token ids are the model's tiktoken encoding (llmsim has no model's chat template: a chat's ids
are those of its messages' roles and texts in order, so the count may differ from the billed
prompt_tokens by the per-message framing).
"""

from __future__ import annotations

from typing import Any

from llmsim import __version__
from llmsim.api.errors import ApiError
from llmsim.engine.tokens import encoding_for_model, messages_text

# The vLLM release whose V1 scheduler defaults engine mode follows.
VLLM_VERSION = "0.10.0"


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, type="BadRequestError", param=param)


def _model(body: Any, default: str) -> str:
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    model = body.get("model", default)
    if not isinstance(model, str) or not model:
        raise _bad("model must be a non-empty string", "model")
    return model


def tokenize(body: Any, default_model: str, max_model_len: int | None) -> dict[str, Any]:
    """POST /tokenize: {"prompt": str} or {"messages": [...]} -> count, tokens."""
    model = _model(body, default_model)
    enc = encoding_for_model(model)
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise _bad("prompt must be a string", "prompt")
        text = prompt
    elif "messages" in body:
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _bad("messages must be a list of message objects", "messages")
        for i, m in enumerate(messages):  # messages_text reads a string or a list of parts
            if not isinstance(m.get("content"), (str, list, type(None))):
                raise _bad(f"messages[{i}].content must be a string or a list", "messages")
        text = messages_text(messages)
    else:
        raise _bad("Either prompt or messages is required.")
    ids = enc.encode(text, disallowed_special=())
    out: dict[str, Any] = {"count": len(ids), "tokens": ids, "token_strs": None}
    if max_model_len is not None:
        out["max_model_len"] = max_model_len
    if body.get("return_token_strs") is True:
        out["token_strs"] = [
            enc.decode_single_token_bytes(t).decode("utf-8", "replace") for t in ids
        ]
    return out


def detokenize(body: Any, default_model: str) -> dict[str, Any]:
    """POST /detokenize: {"tokens": [ids]} -> {"prompt": text}."""
    model = _model(body, default_model)
    enc = encoding_for_model(model)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        raise _bad("tokens must be a list of integers", "tokens")
    bad = next((t for t in tokens if not 0 <= t < enc.n_vocab), None)
    if bad is not None:
        raise _bad(f"token id {bad} is out of the vocabulary (0..{enc.n_vocab - 1})", "tokens")
    try:
        text = enc.decode(tokens, errors="replace")
    except KeyError as exc:  # an id inside the range that the encoding does not use
        raise _bad(f"token id {exc.args[0]} is not in the vocabulary", "tokens") from None
    return {"prompt": text}


def version() -> dict[str, str]:
    """GET /version: the vLLM release engine mode follows, and llmsim's own version."""
    return {"version": VLLM_VERSION, "llmsim": __version__}
