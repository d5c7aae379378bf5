"""OpenAI legacy completions wire format: POST /v1/completions.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each prompt
gets `n` choices (index = prompt × n + j, as OpenAI numbers them). `max_tokens` defaults to 16,
as OpenAI's does. `echo` puts the prompt before the completion; `suffix` and `logprobs` are
accepted (logprobs come back null). Streaming sends one chunk per token, a chunk with the
finish_reason, the usage chunk with `stream_options.include_usage`, and `data: [DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llmsim.api.chat_stream import ChunkShape, chat_family_events
from llmsim.api.errors import (
    ApiError,
    above_max,
    below_min,
    invalid_type,
    missing,
)
from llmsim.api.params import (
    MAX_N,
    body_and_model,
    bool_param,
    int_param,
    sampling_params,
    stop_param,
    stream_options,
)
from llmsim.api.wire import OpenAIErrors, RenderContext
from llmsim.engine.request import Choice, EngineRequest, Reply
from llmsim.engine.tokens import encoding_for_model

DEFAULT_MAX_TOKENS = 16


@dataclass
class CompletionOptions:
    """How to render a completion: streaming and usage chunks, each prompt's text when `echo` is
    on, and `n` (choices per prompt, to find a choice's prompt).
    """

    stream: bool = False
    include_usage: bool = False
    echo_texts: list[str] = field(default_factory=list)  # per prompt, when echo is on
    n: int = 1
    continuous_usage: bool = False  # vLLM's continuous_usage_stats: usage so far per chunk


def _prompts(body: dict[str, Any], model: str) -> tuple[list[str], int]:
    """The prompts as text, and their token count."""
    raw = body.get("prompt")
    if raw is None:
        raise missing("prompt")
    enc = encoding_for_model(model)

    def ids_text(ids: list[Any], where: str) -> str:
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise invalid_type(where, "an array of integers", ids)
        try:
            return enc.decode(ids)
        except Exception:
            raise ApiError(400, f"Invalid token id in '{where}'.", param=where) from None

    if isinstance(raw, str):
        return [raw], len(enc.encode(raw, disallowed_special=()))
    if not isinstance(raw, list) or not raw:
        raise invalid_type("prompt", "a string or a non-empty array", raw)
    if all(isinstance(p, str) for p in raw):
        return list(raw), sum(len(enc.encode(p, disallowed_special=())) for p in raw)
    if all(isinstance(p, int) and not isinstance(p, bool) for p in raw):
        return [ids_text(raw, "prompt")], len(raw)
    if all(isinstance(p, list) for p in raw):
        texts = [ids_text(p, f"prompt[{i}]") for i, p in enumerate(raw)]
        return texts, sum(len(p) for p in raw)
    raise invalid_type("prompt", "a string, an array of strings or of token arrays", raw)


def parse_completion_request(body: Any) -> tuple[EngineRequest, CompletionOptions]:
    """Validate a legacy completions body the way OpenAI does and build the engine's request.

    Every prompt gets `n` choices; `max_tokens` 0 is allowed only with `echo`, and then nothing
    is generated (n=0): the reply is the prompts alone.
    """
    body, model = body_and_model(body)
    prompts, prompt_tokens = _prompts(body, model)
    max_tokens = int_param(body, "max_tokens", 0, None)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    n = int_param(body, "n", 1, MAX_N) or 1
    best_of = int_param(body, "best_of", 1, 20)
    if best_of is not None and best_of < n:
        raise ApiError(400, "best_of must be greater than or equal to n.", param="best_of")
    logprobs = int_param(body, "logprobs", 0, 5)
    del logprobs  # accepted; logprobs come back null
    seed = int_param(body, "seed", None, None)
    sampling_params(body)
    stream = bool_param(body, "stream")
    echo = bool_param(body, "echo")
    ignore_eos = bool_param(body, "ignore_eos")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid_type("suffix", "a string", suffix)
    include_usage, continuous_usage = stream_options(body, stream)
    if len(prompts) > MAX_N:  # no n fits: saying "n <= 0" would blame the wrong parameter
        raise ApiError(
            400,
            f"Invalid 'prompt': array too long. Expected an array with maximum length {MAX_N} "
            f"(each prompt gets n choices, at most {MAX_N} in all), but got an array with "
            f"length {len(prompts)} instead.",
            param="prompt",
            code="array_above_max_length",
        )
    if len(prompts) * n > MAX_N:
        raise above_max("n", MAX_N // len(prompts), n, integer=True)
    if max_tokens == 0 and not echo:
        raise below_min("max_tokens", 1, 0, integer=True)
    req = EngineRequest(
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens if max_tokens > 0 else None,
        n=len(prompts) * n if max_tokens > 0 else 0,
        stop=stop_param(body),
        seed=seed,
        ignore_eos=ignore_eos,
        stream=stream,
        prompt_text=prompts[0],
        fingerprint=json.dumps(prompts) if seed is not None else "",
        prefix_text=lambda: prompts[0],
    )
    opts = CompletionOptions(
        stream=stream,
        include_usage=include_usage,
        echo_texts=prompts if echo else [],
        n=n,
        continuous_usage=continuous_usage,
    )
    return req, opts


def usage(reply: Reply) -> dict[str, Any]:
    """OpenAI's usage object for a completion: prompt, completion and total tokens."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _echo(opts: CompletionOptions, index: int) -> str:
    return opts.echo_texts[index // opts.n] if opts.echo_texts else ""


def render(reply: Reply, opts: CompletionOptions, system_fingerprint: str) -> dict[str, Any]:
    """The non-streaming text_completion body, each choice's text after its echoed prompt."""
    if reply.choices:
        choices = [
            {
                "text": _echo(opts, c.index) + c.text,
                "index": c.index,
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in reply.choices
        ]
    else:  # max_tokens 0 with echo: the prompts alone
        choices = [
            {"text": t, "index": i, "logprobs": None, "finish_reason": "length"}
            for i, t in enumerate(opts.echo_texts)
        ]
    return {
        "id": "cmpl-" + reply.id,
        "object": "text_completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
        "usage": usage(reply),
    }


def stream_events(
    reply: Reply, opts: CompletionOptions, system_fingerprint: str
) -> Iterator[tuple[int, bytes]]:
    """SSE bytes for a streamed completion (api/chat_stream.py's sequence, no role chunk)."""
    rid = "cmpl-" + reply.id
    head = (
        'data: {"id":%s,"object":"text_completion","created":%d,"model":%s,'
        '"system_fingerprint":%s,"choices":['
        % (
            json.dumps(rid),
            reply.created,
            json.dumps(reply.model),
            json.dumps(system_fingerprint),
        )
    ).encode()

    prompt = reply.prompt_tokens

    def chunk(index: int, text: str, finish: str | None, done: int = 0) -> bytes:
        fin = b"null" if finish is None else json.dumps(finish).encode()
        end = b"}\n\n"
        if opts.continuous_usage:  # as vLLM: the tokens so far, in every chunk
            end = b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
                prompt,
                done,
                prompt + done,
            )
        return (
            head
            + b'{"text":%s,"index":%d,"logprobs":null,"finish_reason":%s}]'
            % (
                json.dumps(text).encode(),
                index,
                fin,
            )
            + end
        )

    step_end = reply.step_end

    def content(c: Choice, step: int) -> bytes:
        text = reply.text_at(c, step)
        if step == 0:
            text = _echo(opts, c.index) + text
        return chunk(c.index, text, None, min(len(c.tokens), step_end(step)))

    def echo_only() -> list[bytes]:  # max_tokens 0 with echo: the prompts alone
        if reply.choices:
            return []
        return [chunk(i, t, "length") for i, t in enumerate(opts.echo_texts)]

    usage_chunk = None
    if opts.include_usage:
        tail = {
            "id": rid,
            "object": "text_completion",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": system_fingerprint,
            "choices": [],
            "usage": usage(reply),
        }
        usage_chunk = b"data: " + json.dumps(tail).encode() + b"\n\n"
    shape = ChunkShape(
        content=content,
        finish=lambda c: chunk(c.index, "", c.finish_reason, len(c.tokens)),
        first_extra=echo_only,
        usage=usage_chunk,
    )
    return chat_family_events(reply, shape)


class OpenAICompletions(OpenAIErrors):
    """The legacy completions wire format for the server pipeline."""

    name = "openai.completions"

    def parse(self, body: Any) -> tuple[EngineRequest, CompletionOptions]:
        """Validate a completions body; see parse_completion_request."""
        return parse_completion_request(body)

    def render(self, reply: Reply, opts: CompletionOptions, ctx: RenderContext) -> dict[str, Any]:
        """The text_completion body (render)."""
        return render(reply, opts, ctx.system_fingerprint)

    def stream_events(
        self, reply: Reply, opts: CompletionOptions, ctx: RenderContext
    ) -> Iterator[tuple[int, bytes]]:
        """The text_completion chunk events (stream_events)."""
        return stream_events(reply, opts, ctx.system_fingerprint)
