"""OpenAI's model objects for /v1/models."""

from __future__ import annotations

from typing import Any

# A fixed creation time: model objects should not change between calls or restarts.
_CREATED = 1_700_000_000

_OWNERS = (
    ("claude", "anthropic"),
    ("gemini", "google"),
    ("deepseek", "deepseek"),
    ("llama", "meta"),
    ("mistral", "mistralai"),
    ("qwen", "qwen"),
)


def owner(model_id: str) -> str:
    """The `owned_by` of a model id: the vendor of the family its name contains (claude:
    anthropic, llama: meta, ...), "openai" otherwise.
    """
    name = model_id.lower()
    return next((o for prefix, o in _OWNERS if prefix in name), "openai")


def model_object(model_id: str) -> dict[str, Any]:
    """One model as OpenAI's GET /v1/models/{id} returns it."""
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": owner(model_id)}


def models_list(model_ids: list[str]) -> dict[str, Any]:
    """GET /v1/models in OpenAI's shape: a list object of model_object() for each id."""
    return {"object": "list", "data": [model_object(m) for m in model_ids]}
