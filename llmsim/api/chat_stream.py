"""The one SSE writer of the chat family: chat completions (text and tool calls) and legacy
completions share one sequence, and each API supplies only how its chunks look.

Per step (one content event of every choice, see Reply.chunking): a choice's opening chunk at
step 0 (the role chunk of chat), its content chunk, and its finish chunk with its last content;
then, after the last step, the usage chunk (with `stream_options.include_usage`) and
`data: [DONE]`, both due with the last token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmsim.engine.request import Choice, Reply

DONE = b"data: [DONE]\n\n"


@dataclass
class ChunkShape:
    """How one API renders the chunks of one reply (made per reply, closures over its head)."""

    content: Callable[[Choice, int], bytes]  # a choice's event(s) at a step with content
    finish: Callable[[Choice], bytes]  # the chunk carrying the choice's finish_reason
    opening: Callable[[Choice], bytes | None] = lambda c: None  # before step 0's content
    first_extra: Callable[[], list[bytes]] | None = None  # step 0, after every choice
    usage: bytes | None = None  # the usage chunk, after the last step


def chat_family_events(reply: Reply, shape: ChunkShape) -> Iterator[tuple[int, bytes]]:
    """(step, bytes) for a streamed chat-family reply: step i is due with its last token."""
    choices = reply.choices
    n_steps = [reply.steps_of(c) for c in choices]
    content, finish, opening = shape.content, shape.finish, shape.opening
    if len(choices) == 1 and n_steps[0] > 1 and shape.first_extra is None:
        # One choice (nearly every request): the same sequence, with nothing to interleave.
        c = choices[0]
        head = opening(c)
        yield 0, (head or b"") + content(c, 0)
        last = n_steps[0] - 1
        for step in range(1, last):
            yield step, content(c, step)
        yield last, content(c, last) + finish(c)
        if shape.usage is not None:
            yield last, shape.usage
        yield last, DONE
        return
    for step in range(max(reply.steps, 1)):
        parts: list[bytes] = []
        for i, c in enumerate(choices):
            if step == 0:
                head = opening(c)
                if head is not None:
                    parts.append(head)
            if step < n_steps[i]:
                parts.append(content(c, step))
            if step == n_steps[i] - 1 or (step == 0 and not c.tokens):
                parts.append(finish(c))
        if step == 0 and shape.first_extra is not None:
            parts.extend(shape.first_extra())
        yield step, b"".join(parts)
    last = max(reply.steps - 1, 0)
    if shape.usage is not None:
        yield last, shape.usage
    yield last, DONE
