"""A minimal streaming client for timing tests: event times are taken as bytes arrive."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Timed:
    status: int
    headers: dict[str, str]
    ttft_s: float | None = None  # request sent -> first non-empty content
    content_times: list[float] = field(default_factory=list)
    done: bool = False
    text: str = ""

    @property
    def gaps_s(self) -> list[float]:
        t = self.content_times
        return [b - a for a, b in itertools.pairwise(t)]


def stream_chat(base_url: str, body: dict, client: httpx.Client | None = None) -> Timed:
    own = client is None
    client = client or httpx.Client(timeout=60)
    try:
        start = time.monotonic()
        with client.stream(
            "POST", base_url + "/chat/completions", json={**body, "stream": True}
        ) as r:
            result = Timed(r.status_code, dict(r.headers))
            pending = b""
            for chunk in r.iter_raw():  # as it arrives: no line buffering
                now = time.monotonic()
                pending += chunk
                while b"\n\n" in pending:
                    event, pending = pending.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    data = event[6:]
                    if data == b"[DONE]":
                        result.done = True
                        continue
                    for ch in json.loads(data).get("choices", []):
                        content = ch["delta"].get("content")
                        if content:
                            if result.ttft_s is None:
                                result.ttft_s = now - start
                            result.content_times.append(now - start)
                            result.text += content
        return result
    finally:
        if own:
            client.close()
