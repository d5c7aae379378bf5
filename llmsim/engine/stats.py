"""Server-side statistics, shared by every worker process and cheap to update.

Each worker writes only its own section of one shared float64 table (no locks on the hot
path); readers add the sections up. The same numbers feed /llmsim/stats (JSON) and /metrics
(Prometheus, with vLLM's metric names and buckets).
"""

from __future__ import annotations

import math
import time
from typing import Any

from llmsim.engine.shared import SharedTable

# vLLM's histogram buckets (seconds), so dashboards built for vLLM read ours unchanged.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip

ERROR_KINDS = (
    "bad_request", "not_found", "too_large", "rate_limited", "queue_full",
    "fault_429", "fault_500", "fault_502", "fault_503", "fault_529", "fault_timeout",
    "fault_drop", "fault_stream_error", "client_disconnect", "server_error",
)  # fmt: skip
FINISH_REASONS = ("stop", "length", "tool_calls", "other")
OTHER_MODEL = "__other__"

_GLOBALS = ("requests", "streaming", "non_streaming", "active", "succeeded", "failed",
            "prompt_tokens", "completion_tokens", "throttled_requests", "throttled_tokens",
            "queue_overflow")  # fmt: skip
_MODEL_FIELDS = ("requests", "succeeded", "failed", "prompt_tokens", "completion_tokens",
                 "running", "waiting")  # fmt: skip
_RING = 64  # seconds kept for the last-minute rates
_RING_FIELDS = ("second", "requests", "prompt_tokens", "completion_tokens", "errors")
# Fine histograms for the JSON percentiles: 2 % wide log buckets from 0.1 ms to ~2 hours.
_FINE_RATIO = math.log(1.02)
_FINE_BUCKETS = 850


def _hist_size(buckets: tuple[float, ...]) -> int:
    return len(buckets) + 1 + 2  # one count per bucket, +Inf, sum, count


class _Layout:
    def __init__(self, models: int) -> None:
        self.offset = 0
        self.g = {name: self._take(1) for name in _GLOBALS}
        self.errors = self._take(len(ERROR_KINDS))
        self.ring = self._take(_RING * len(_RING_FIELDS))
        self.fine_ttft = self._take(_FINE_BUCKETS + 3)  # + count, max, sum
        self.fine_e2e = self._take(_FINE_BUCKETS + 3)
        self.model_base = self.offset
        self.m = {name: i for i, name in enumerate(_MODEL_FIELDS)}
        self.m_finish = len(_MODEL_FIELDS)
        self.m_ttft = self.m_finish + len(FINISH_REASONS)
        self.m_tpot = self.m_ttft + _hist_size(TTFT_BUCKETS)
        self.m_e2e = self.m_tpot + _hist_size(TPOT_BUCKETS)
        self.model_size = self.m_e2e + _hist_size(E2E_BUCKETS)
        self._take(models * self.model_size)
        self.size = self.offset

    def _take(self, n: int) -> int:
        start = self.offset
        self.offset += n
        return start


def _fine_index(ms: float) -> int:
    if ms <= 0.1:
        return 0
    return min(_FINE_BUCKETS - 1, 1 + int(math.log(ms / 0.1) / _FINE_RATIO))


def _fine_value(index: int) -> float:
    return 0.1 if index == 0 else 0.1 * math.exp((index - 0.5) * _FINE_RATIO)


def _observe(d: Any, base: int, buckets: tuple[float, ...], value: float) -> None:
    for i, bound in enumerate(buckets):
        if value <= bound:
            d[base + i] += 1
            break
    else:
        d[base + len(buckets)] += 1
    d[base + len(buckets) + 1] += value
    d[base + len(buckets) + 2] += 1


class Stats:
    """Counters, gauges and histograms of one server (all its workers)."""

    def __init__(self, workers: int = 1, max_models: int = 32, name_ttl_s: float = 600.0) -> None:
        self.workers = workers
        self.max_models = max_models
        self.layout = _Layout(max_models + 1)
        self.table = SharedTable(self.layout.size * workers)
        # Model names by slot, shared so every worker gives a model the same slot.
        self.names = SharedTable(max_models * 17)  # 128 bytes of name + length per slot
        # Per name slot: its generation (bumped when the slot changes hands) and last use.
        # Names expire: when every slot is taken, one idle for name_ttl_s goes to the new name,
        # so junk model names cannot hold the table for good.
        self.name_meta = SharedTable(max_models * 2)
        self.name_ttl_s = name_ttl_s
        self._slots: dict[str, tuple[int, float]] = {}
        self.started = time.time()
        self._base = 0
        self._other = max_models

    def bind_worker(self, index: int) -> None:
        """Make this process write its own section (call once, after fork)."""
        self._base = index * self.layout.size

    # --- model slots -------------------------------------------------------------------------
    def _name_at(self, slot: int) -> str | None:
        v = self.names.values
        n = int(v[slot * 17])
        if n == 0:
            return None
        raw = bytes(memoryview(self.names._mem)[(slot * 17 + 1) * 8 : (slot * 17 + 1) * 8 + n])
        return raw.decode("utf-8", "replace")

    def model_slot(self, model: str) -> int:
        """The slot of `model`'s counters, the same in every worker; the __other__ slot when
        every slot is taken by a name still in use.

        A new name takes the first free slot, else the one idle longest past `name_ttl_s` with
        nothing running or waiting. Names are compared on their first 128 bytes of UTF-8.
        """
        meta = self.name_meta.values
        cached = self._slots.get(model)
        if cached is not None and meta[cached[0] * 2] == cached[1]:
            meta[cached[0] * 2 + 1] = time.time()
            return cached[0]
        encoded = model.encode("utf-8")[:128]
        wanted = encoded.decode("utf-8", "replace")
        now = time.time()
        with self.names.lock:
            slot = self._other
            free = None
            for i in range(self.max_models):
                name = self._name_at(i)
                if name is None:
                    free = i if free is None else free
                    break
                if name == wanted:
                    slot = i
                    break
            else:
                free = self._expired(now)
            if slot == self._other and free is not None:
                self._take_name(free, encoded, now)
                slot = free
            if slot != self._other:
                meta[slot * 2 + 1] = now
            gen = meta[slot * 2] if slot != self._other else -1.0
        if slot != self._other and len(self._slots) < 10_000:
            self._slots[model] = (slot, gen)
        return slot

    def _expired(self, now: float) -> int | None:
        """The name slot idle longest, if idle past the TTL with nothing in flight."""
        meta, best = self.name_meta.values, None
        for i in range(self.max_models):
            idle = now - meta[i * 2 + 1]
            if idle < self.name_ttl_s:
                continue
            values = self.model_values(i)
            if values[self.layout.m["running"]] or values[self.layout.m["waiting"]]:
                continue
            if best is None or meta[i * 2 + 1] < meta[best * 2 + 1]:
                best = i
        return best

    def _take_name(self, slot: int, encoded: bytes, now: float) -> None:
        """Give `slot` to a new name: its counters start from zero in every worker's section."""
        d, lay = self.table.values, self.layout
        for worker in range(self.workers):
            base = worker * lay.size + lay.model_base + slot * lay.model_size
            for k in range(lay.model_size):
                d[base + k] = 0.0
        start = (slot * 17 + 1) * 8
        memoryview(self.names._mem)[start : start + 128] = bytes(128)
        memoryview(self.names._mem)[start : start + len(encoded)] = encoded
        self.names.values[slot * 17] = len(encoded)
        meta = self.name_meta.values
        meta[slot * 2] += 1
        meta[slot * 2 + 1] = now

    def worker_died(self, index: int) -> None:
        """Zero the gauges of a dead worker's section: nobody will decrement them now."""
        d, lay = self.table.values, self.layout
        base = index * lay.size
        d[base + lay.g["active"]] = 0.0
        for slot in range(self.max_models + 1):
            m = base + lay.model_base + slot * lay.model_size
            d[m + lay.m["running"]] = 0.0
            d[m + lay.m["waiting"]] = 0.0

    def _model(self, slot: int) -> int:
        return self._base + self.layout.model_base + slot * self.layout.model_size

    # --- hot path ----------------------------------------------------------------------------
    def request_started(self, model: str, stream: bool) -> int:
        """Count a request arriving for `model` and make it active; returns its model slot."""
        d, g, b = self.table.values, self.layout.g, self._base
        slot = self.model_slot(model)
        d[b + g["requests"]] += 1
        d[b + g["streaming" if stream else "non_streaming"]] += 1
        d[b + g["active"]] += 1
        d[self._model(slot) + self.layout.m["requests"]] += 1
        return slot

    def gauge(self, slot: int, field: str, delta: int) -> None:
        """field: running or waiting (per model)."""
        self.table.values[self._model(slot) + self.layout.m[field]] += delta

    def _ring(self, field: str, amount: float) -> None:
        d, lay = self.table.values, self.layout
        sec = int(time.time())
        base = self._base + lay.ring + (sec % _RING) * len(_RING_FIELDS)
        if d[base] != sec:
            for i in range(len(_RING_FIELDS)):
                d[base + i] = 0.0
            d[base] = sec
        d[base + _RING_FIELDS.index(field)] += amount

    def request_succeeded(
        self,
        slot: int,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_s: float,
        e2e_s: float,
        finish_reason: str,
    ) -> None:
        """Count a completed request: its tokens and finish reason, and its TTFT, end-to-end
        time and time per output token (seconds) in the histograms; it is no longer active."""
        d, lay, b = self.table.values, self.layout, self._base
        m = self._model(slot)
        d[b + lay.g["active"]] -= 1
        d[b + lay.g["succeeded"]] += 1
        d[b + lay.g["prompt_tokens"]] += prompt_tokens
        d[b + lay.g["completion_tokens"]] += completion_tokens
        d[m + lay.m["succeeded"]] += 1
        d[m + lay.m["prompt_tokens"]] += prompt_tokens
        d[m + lay.m["completion_tokens"]] += completion_tokens
        reason = finish_reason if finish_reason in FINISH_REASONS else "other"
        d[m + lay.m_finish + FINISH_REASONS.index(reason)] += 1
        _observe(d, m + lay.m_ttft, TTFT_BUCKETS, ttft_s)
        _observe(d, m + lay.m_e2e, E2E_BUCKETS, e2e_s)
        if completion_tokens > 1:
            _observe(d, m + lay.m_tpot, TPOT_BUCKETS, (e2e_s - ttft_s) / (completion_tokens - 1))
        for base, ms in ((lay.fine_ttft, ttft_s * 1000), (lay.fine_e2e, e2e_s * 1000)):
            d[b + base + _fine_index(ms)] += 1
            d[b + base + _FINE_BUCKETS] += 1
            if ms > d[b + base + _FINE_BUCKETS + 1]:
                d[b + base + _FINE_BUCKETS + 1] = ms
            d[b + base + _FINE_BUCKETS + 2] += ms
        self._ring("requests", 1)
        self._ring("prompt_tokens", prompt_tokens)
        self._ring("completion_tokens", completion_tokens)

    def request_failed(
        self, slot: int | None, kind: str, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        """A request that ended in an error; slot None when it never got as far as a model."""
        d, lay, b = self.table.values, self.layout, self._base
        if slot is not None:
            d[b + lay.g["active"]] -= 1
            d[self._model(slot) + lay.m["failed"]] += 1
            d[self._model(slot) + lay.m["prompt_tokens"]] += prompt_tokens
            d[self._model(slot) + lay.m["completion_tokens"]] += completion_tokens
            d[b + lay.g["prompt_tokens"]] += prompt_tokens
            d[b + lay.g["completion_tokens"]] += completion_tokens
        d[b + lay.g["failed"]] += 1
        d[b + lay.errors + ERROR_KINDS.index(kind)] += 1
        if kind == "queue_full":
            d[b + lay.g["queue_overflow"]] += 1
        self._ring("errors", 1)

    def throttled(self, kind: str) -> None:
        """Count a request a rate limit refused: `kind` "requests" (RPM), anything else TPM."""
        d, g = self.table.values, self.layout.g
        d[self._base + g["throttled_requests" if kind == "requests" else "throttled_tokens"]] += 1

    # --- reading -----------------------------------------------------------------------------
    def _sum(self, offset: int, n: int = 1) -> list[float]:
        d, size = self.table.values, self.layout.size
        out = [0.0] * n
        for w in range(self.workers):
            base = w * size + offset
            for i in range(n):
                out[i] += d[base + i]
        return out

    def _fine_summary(self, offset: int) -> dict[str, Any]:
        d, size = self.table.values, self.layout.size
        counts = self._sum(offset, _FINE_BUCKETS + 1)
        total = int(counts[_FINE_BUCKETS])
        peak = max(d[w * size + offset + _FINE_BUCKETS + 1] for w in range(self.workers))
        out: dict[str, Any] = {"count": total}
        if not total:
            return out
        out["mean"] = round(self._sum(offset + _FINE_BUCKETS + 2)[0] / total, 2)
        for pct in (50, 90, 95, 99):
            rank, seen = math.ceil(total * pct / 100), 0
            for i, c in enumerate(counts[:_FINE_BUCKETS]):
                seen += c
                if seen >= rank:
                    out[f"p{pct}"] = round(min(_fine_value(i), peak), 2)
                    break
        out["max"] = round(peak, 2)
        return out

    def models(self) -> list[tuple[str, int]]:
        """(name, slot) of every model that holds a slot, then (__other__, its slot)."""
        with self.names.lock:
            named = [(self._name_at(i), i) for i in range(self.max_models)]
        out = [(name, i) for name, i in named if name is not None]
        return [*out, (OTHER_MODEL, self._other)]

    def model_values(self, slot: int) -> list[float]:
        """One model slot's fields summed over the workers, in the layout's order."""
        lay = self.layout
        return self._sum(lay.model_base + slot * lay.model_size, lay.model_size)

    def totals(self) -> dict[str, float]:
        """The server-wide counters and gauges, summed over the workers, by name."""
        g = self.layout.g
        values = self._sum(0, len(_GLOBALS))
        return {name: values[g[name]] for name in _GLOBALS}

    def errors(self) -> dict[str, int]:
        """Failed requests by error kind, summed over the workers (kinds with none left out)."""
        values = self._sum(self.layout.errors, len(ERROR_KINDS))
        return {k: int(v) for k, v in zip(ERROR_KINDS, values, strict=True) if v}

    def last_minute(self) -> dict[str, float]:
        """Per-second rates over the last 60 s (the uptime if shorter, at least 1 s).

        `requests_per_s` and the token rates count succeeded requests only; `errors_per_s`
        counts failed ones.
        """
        d, lay, size = self.table.values, self.layout, self.layout.size
        now = int(time.time())
        sums = dict.fromkeys(_RING_FIELDS[1:], 0.0)
        for w in range(self.workers):
            for s in range(_RING):
                base = w * size + lay.ring + s * len(_RING_FIELDS)
                # The current second counts too: a burst that all fell in it is not "0/s".
                if now - 60 < d[base] <= now:
                    for i, name in enumerate(_RING_FIELDS[1:], start=1):
                        sums[name] += d[base + i]
        window = max(1.0, min(60.0, now - self.started))
        return {
            "requests_per_s": round(sums["requests"] / window, 3),
            "prompt_tokens_per_s": round(sums["prompt_tokens"] / window, 3),
            "completion_tokens_per_s": round(sums["completion_tokens"] / window, 3),
            "errors_per_s": round(sums["errors"] / window, 3),
            "window_s": window,
        }

    def snapshot(self) -> dict[str, Any]:
        """The server-wide part of /llmsim/stats: counts, rates, TTFT and end-to-end
        percentiles (ms), and per-model counts (__other__ only when it has any)."""
        t = self.totals()
        lay = self.layout
        models = {}
        for name, slot in self.models():
            v = self.model_values(slot)
            entry = {field: int(v[i]) for field, i in lay.m.items()}
            if name == OTHER_MODEL and not any(entry.values()):
                continue
            models[name] = entry
        waiting = sum(m["waiting"] for m in models.values())
        running = sum(m["running"] for m in models.values())
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "workers": self.workers,
            "requests": {
                "total": int(t["requests"]),
                "active": int(t["active"]),
                "running": running,
                "waiting": waiting,
                "streaming": int(t["streaming"]),
                "non_streaming": int(t["non_streaming"]),
                "succeeded": int(t["succeeded"]),
                "failed": int(t["failed"]),
            },
            "tokens": {
                "prompt": int(t["prompt_tokens"]),
                "completion": int(t["completion_tokens"]),
            },
            "errors": self.errors(),
            "throttled": {
                "requests": int(t["throttled_requests"]),
                "tokens": int(t["throttled_tokens"]),
            },
            "queue": {"depth": waiting, "overflowed": int(t["queue_overflow"])},
            "last_minute": self.last_minute(),
            "ttft_ms": self._fine_summary(lay.fine_ttft),
            "e2e_ms": self._fine_summary(lay.fine_e2e),
            "models": models,
        }
