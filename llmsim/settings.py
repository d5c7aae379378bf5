"""One settings object for the simulator: defaults < YAML file < LLMSIM_* env < flags.

Every option is declared once here; the CLI builds its flags from this table, so a new option is
a flag, an env var and a YAML key at once, with one error message per bad value that names where
the value came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from llmsim.engine.frontend import HANDOVER_ORDERS
from llmsim.engine.generators import make_generator
from llmsim.engine.profiles import DISTRIBUTIONS, PROFILES
from llmsim.engine.steptime import preset_names
from llmsim.yaml_file import YamlFileError, read_yaml

ENV_PREFIX = "LLMSIM_"


class SettingsError(ValueError):
    """A bad option value; str() is a one-line message naming the option and its source."""


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a list of names, got {value!r}")


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    return _int(value)


def _pairs(value: Any, shape: str) -> list[str]:
    """`K=V` items from a YAML mapping, a comma-separated string or a list."""
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    raise ValueError(f"expected {shape} items, got {value!r}")


def _optional_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return _float(value)


def _finite_at_least(minimum: float) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v is not None and not (minimum <= v < float("inf")):
            raise ValueError(f"must be a finite number of at least {minimum:g}, got {v}")

    return check


def _faults(value: Any) -> list[str]:
    from llmsim.engine.faults import parse_fault_rates

    items = _pairs(value, "KIND=RATE")  # YAML: {500: 0.1, drop: 2%}
    parse_fault_rates(items)  # raises ValueError with the reason
    return items


def _per_model(value: Any) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON object of model: {option: value}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of model: {option: value}")
    out: dict[str, dict[str, Any]] = {}
    for model, overrides in value.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"{model}: expected a mapping of option: value")
        checked = {}
        for key, v in overrides.items():
            name = str(key).replace("-", "_")
            if name not in PER_MODEL_KEYS:
                raise ValueError(
                    f"{model}: {key!r} cannot be set per model (allowed: "
                    f"{', '.join(sorted(PER_MODEL_KEYS))})"
                )
            checked[name] = _coerce(_BY_NAME[name], v, f"{model}.{key}")
        out[str(model)] = checked
    return out


def _chunk_spec(value: Any) -> str:
    from llmsim.engine.timing import ChunkSpec

    return str(ChunkSpec.parse(value))  # raises ValueError with the reason


def _at_least(minimum: float, maximum: float | None = None) -> Callable[[Any], None]:
    # The maxima keep every later computation finite: a standard deviation of 1e308 ms made
    # every request a 500 (the sampler overflowed), and a timer of inf cannot be armed.
    def check(v: Any) -> None:
        if v is not None and v < minimum:
            raise ValueError(f"must be at least {minimum:g}, got {v}")
        if v is not None and maximum is not None and not v <= maximum:
            shown = f"{maximum:,.0f}" if maximum == int(maximum) else f"{maximum:g}"
            raise ValueError(f"must be at most {shown}, got {v}")

    return check


DAY_MS = 86_400_000.0  # the longest time any ms option may ask for
DAY_S = 86_400.0
MAX_CV = 100.0  # a coefficient of variation beyond this is noise, not a distribution


def _port(v: int) -> None:
    if not 0 <= v <= 65535:
        raise ValueError(f"must be a port number from 0 to 65535, got {v}")


def _choice(options: tuple[str, ...]) -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if v is not None and v not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {v!r}")

    return check


def _generator(v: str) -> None:
    make_generator(v)


def _overflow_status(v: int) -> None:
    if v not in (429, 503):
        raise ValueError(f"must be 429 or 503, got {v}")


def _block_size(v: int) -> None:
    if not 1 <= v <= 256:
        raise ValueError(f"must be from 1 to 256, got {v}")


def _readable_file(v: str) -> None:
    if not os.path.isfile(v) or not os.access(v, os.R_OK):
        raise ValueError(f"no readable file {v!r}")


def _deployments(value: Any) -> dict[str, str]:
    items = _pairs(value, "NAME=MODEL")  # YAML: {prod-chat: gpt-4o}
    out: dict[str, str] = {}
    for item in items:
        name, sep, model = item.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise ValueError(f"expected NAME=MODEL, got {item!r}")
        out[name.strip()] = model.strip()
    return out


def _rate_check(v: float) -> None:
    if not 0 <= v <= 1:
        raise ValueError(f"must be between 0 and 1, got {v:g}")


def _profile_file(v: str) -> None:
    from llmsim.record.profile_file import load_profile

    load_profile(v)  # ProfileError (a ValueError) names the key


def _replay_file(v: str) -> None:
    from llmsim.record.replay import ReplayIndex

    ReplayIndex.load(v)


@dataclass(frozen=True)
class Option:
    """One simulator option: its Settings field name, parser, --help default and help text.

    `parse` turns a raw flag, env or YAML value into the field's type and `check` validates the
    parsed value; both raise ValueError, which becomes a SettingsError naming the value's source.
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    check: Callable[[Any], None] | None = None
    metavar: str | None = None
    is_flag: bool = False
    multiple: bool = False  # a repeatable flag; env and YAML take a comma-separated list

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. `--ttft-ms` for `ttft_ms`."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable, e.g. `LLMSIM_TTFT_MS` for `ttft_ms`."""
        return ENV_PREFIX + self.name.upper()


DEFAULT_MODELS = [
    "gpt-5",
    "gpt-5-mini",
    "gpt-4.1",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4",
    "gpt-3.5-turbo",
    "o3",
    "o4-mini",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-haiku-4",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "deepseek-chat",
    "deepseek-reasoner",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
]

SERVE_OPTIONS: tuple[Option, ...] = (
    Option(
        "host", str, "127.0.0.1", "Address to bind (0.0.0.0 exposes the simulator).", None, "ADDR"
    ),
    Option("port", _int, 8080, "Port to listen on (0 picks a free one).", _port, "PORT"),
    Option("workers", _int, 1, "Server processes sharing the port.", _at_least(1), "N"),
    Option(
        "profile",
        str,
        None,
        f"Force one latency profile for every model ({', '.join(PROFILES)}).",
        _choice(tuple(PROFILES)),
        "NAME",
    ),
    Option(
        "ttft_ms",
        _float,
        None,
        "Mean time to first token, ms (overrides the profile).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "ttft_stddev_ms",
        _float,
        None,
        "TTFT standard deviation, ms (0: exact).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "tbt_ms",
        _float,
        None,
        "Mean time between tokens, ms (overrides the profile).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "tbt_stddev_ms",
        _float,
        None,
        "Time-between-tokens standard deviation, ms (0: exact).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "latency_distribution",
        str,
        "lognormal",
        "Distribution TTFT and TBT are sampled from.",
        _choice(DISTRIBUTIONS),
        "KIND",
    ),
    Option(
        "output_tokens",
        _int,
        256,
        "Mean reply length in tokens when nothing caps it.",
        _at_least(1),
        "N",
    ),
    Option(
        "output_tokens_stddev",
        _float,
        None,
        "Reply length standard deviation (default: a quarter of the mean; 0: exact).",
        _at_least(0, 1e9),
        "N",
    ),
    Option(
        "generator",
        str,
        "lorem",
        "Reply text: lorem, echo, random, sequence or fixed:TEXT.",
        _generator,
        "KIND",
    ),
    Option(
        "tool_call_rate",
        _float,
        1.0,
        "With tools and tool_choice auto, the share of replies that call a tool (a reply to a "
        "tool result is always text).",
        _rate_check,
        "F",
    ),
    Option("seed", _int, None, "Seed for a repeatable run (timing, lengths and text).", None, "N"),
    Option(
        "models",
        _str_list,
        DEFAULT_MODELS,
        "Model catalogue listed by /v1/models (comma-separated).",
        None,
        "LIST",
    ),
    Option(
        "strict_models",
        _bool,
        False,
        "Answer models outside the catalogue with 404 model_not_found.",
        None,
        None,
        True,
    ),
    Option(
        "max_body_bytes",
        _int,
        8 * 1024 * 1024,
        "Largest request body accepted (413 above).",
        _at_least(1024),
        "BYTES",
    ),
    # Capacity, rate limits and faults: all off by default.
    Option(
        "max_concurrency",
        _optional_int,
        None,
        "Requests generating at once; more wait in a queue (their wait adds to TTFT).",
        _at_least(1),
        "N",
    ),
    Option(
        "queue_limit",
        _optional_int,
        None,
        "Requests allowed to wait for a slot; more are refused (default: unbounded).",
        _at_least(0),
        "N",
    ),
    Option(
        "queue_overflow_status",
        _int,
        429,
        "Status for requests refused by a full queue: 429 or 503.",
        _overflow_status,
        "STATUS",
    ),
    Option(
        "load_factor",
        _float,
        0.0,
        "Time between tokens grows as tbt × (1 + load_factor × running / max_concurrency).",
        _finite_at_least(0),
        "F",
    ),
    Option(
        "prefill_ms_per_1k",
        _float,
        None,
        "Extra TTFT per 1,000 prompt tokens, ms (default: the profile's; 0: off).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "rpm", _optional_int, None, "Requests per minute per API key and model.", _at_least(1), "N"
    ),
    Option(
        "tpm",
        _optional_int,
        None,
        "Tokens per minute (prompt + max_tokens) per API key and model.",
        _at_least(1),
        "N",
    ),
    Option(
        "fault",
        _faults,
        [],
        "Inject a fault at a rate, e.g. 500=0.05 or drop=2% (repeatable; kinds: "
        "429, 500, 502, 503, 529, timeout, drop, stream-error).",
        None,
        "KIND=RATE",
        multiple=True,
    ),
    Option(
        "timeout_after_ms",
        _float,
        10_000.0,
        "How long a `timeout` fault hangs before it answers 504 (or closes).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "timeout_action",
        str,
        "504",
        "What a `timeout` fault does after hanging: 504 or close.",
        _choice(("504", "close")),
        "ACTION",
    ),
    Option(
        "fault_script",
        str,
        None,
        "YAML file of scripted faults (e.g. fail 3 times with 503, then succeed).",
        None,
        "PATH",
    ),
    Option(
        "per_model",
        _per_model,
        {},
        "Per-model overrides, e.g. {gpt-5: {max_concurrency: 4, ttft_ms: 900}} (JSON or YAML).",
        None,
        "JSON",
    ),
    Option(
        "stats_max_models",
        _int,
        32,
        "Models tracked by name in /llmsim/stats and /metrics; the rest fold into __other__.",
        _at_least(1),
        "N",
    ),
    Option(
        "grace_period_s",
        _float,
        10.0,
        "On SIGTERM/SIGINT, how long in-flight streams may finish.",
        _at_least(0, DAY_S),
        "S",
    ),
    Option("access_log", _bool, False, "Log every request to stderr.", None, None, True),
    # The stream loop's timing model, per-model limits and event log (docs/timing.md).
    Option(
        "itl_jitter_cv",
        _float,
        None,
        "Per-token jitter: each gap is lognormal around the request's mean with this "
        "coefficient of variation (default: the profile's; 0 with stddev 0 runs: exact).",
        _at_least(0, MAX_CV),
        "F",
    ),
    Option(
        "stall_probability",
        _float,
        None,
        "Chance that a gap is a stall, longer by an exponential of mean --stall-ms "
        "(default: the profile's).",
        _rate_check,
        "P",
    ),
    Option(
        "stall_ms",
        _float,
        None,
        "Mean length of a stall, ms (default: the profile's).",
        _at_least(0, DAY_MS),
        "MS",
    ),
    Option(
        "chunk_tokens",
        _chunk_spec,
        None,
        "Tokens per SSE content event: N or normal:mean=4,stddev=1 (default: the API's: "
        "OpenAI 1, Anthropic and Gemini several).",
        None,
        "SPEC",
    ),
    Option(
        "context_window",
        _int,
        128_000,
        "Context window of models the catalogue does not know (prompt + max_tokens).",
        _at_least(1),
        "N",
    ),
    Option(
        "max_output_tokens",
        _int,
        32_768,
        "Largest max_tokens of models the catalogue does not know.",
        _at_least(1),
        "N",
    ),
    Option(
        "coalesce_ms",
        _float,
        2.0,
        "Under load, the stream loop's longest wait between sweeps: events due within it "
        "leave together (each its own write), sharing wake-ups. Grows with the event rate "
        "from 0.25 ms to this at 20,000 events/s; an idle server stays exact. 0: always "
        "0.25 ms.",
        _at_least(0, 60_000),
        "MS",
    ),
    Option(
        "request_log_size",
        _int,
        256,
        "Requests whose event timing GET /llmsim/requests/{id} keeps, per worker (0: off).",
        _at_least(0),
        "N",
    ),
    # Engine mode (--engine vllm): continuous-batching replicas stepped on the server's clock.
    Option(
        "engine",
        str,
        "api",
        "Timing model: api (hosted APIs: sampled TTFT and gaps) or vllm (simulated "
        "continuous-batching replicas: TTFT and gaps come out of the schedule).",
        _choice(("api", "vllm")),
        "KIND",
    ),
    Option(
        "replicas",
        _int,
        1,
        "Engine replicas per worker process (--engine vllm); requests go to the least loaded.",
        _at_least(1),
        "N",
    ),
    Option(
        "preset",
        str,
        "llama-3-8b-a100",
        f"Model x hardware step-time preset for --engine vllm ({', '.join(preset_names())}).",
        _choice(tuple(preset_names())),
        "NAME",
    ),
    Option(
        "max_num_seqs",
        _optional_int,
        None,
        "Sequences one replica batches at once (default: the preset's, 256).",
        _at_least(1),
        "N",
    ),
    Option(
        "max_num_batched_tokens",
        _optional_int,
        None,
        "Tokens one step may compute (default: the preset's, 8192; without chunked prefill at "
        "least max_model_len).",
        _at_least(1),
        "N",
    ),
    Option(
        "max_model_len",
        _optional_int,
        None,
        "Longest prompt plus reply a replica accepts (default: the preset's).",
        _at_least(16),
        "N",
    ),
    Option(
        "enable_chunked_prefill",
        _bool,
        True,
        "Prefill prompts in chunks beside running decodes (vLLM V1); off: whole prompts in "
        "prefill-only steps (vLLM V0).",
        None,
        None,
        True,
    ),
    Option("block_size", _int, 16, "Tokens per KV-cache block.", _block_size, "N"),
    Option(
        "num_gpu_blocks_override",
        _optional_int,
        None,
        "KV-cache blocks per replica (default: what the preset's GPU memory holds).",
        _at_least(1),
        "N",
    ),
    Option(
        "enable_prefix_caching",
        _bool,
        True,
        "Reuse the cached KV blocks of equal prompt prefixes (vLLM V1's default).",
        None,
        None,
        True,
    ),
    Option(
        "step_jitter_cv",
        _float,
        0.0,
        "Coefficient of variation of each engine step's time (lognormal; 0: exact).",
        _at_least(0, MAX_CV),
        "F",
    ),
    # Engine mode, vLLM v0.6's multi-step scheduling and API-server front end (docs/engine.md).
    Option(
        "num_scheduler_steps",
        _int,
        1,
        "Decode steps per scheduling round (vLLM V0 multi-step): a round's tokens are sent at "
        "its end, prefills wait for the next round and their first tokens go out when the "
        "next step ends; >1 needs --no-enable-chunked-prefill.",
        _at_least(1),
        "K",
    ),
    Option(
        "frontend_ms_per_request",
        _optional_float,
        None,
        "CPU ms vLLM's API server spends taking a request in, serially; a burst reaches the "
        "engine after all of it (default: the preset's; 0 with --frontend-us-per-prompt-token "
        "0: no front end).",
        _finite_at_least(0),
        "MS",
    ),
    Option(
        "frontend_us_per_prompt_token",
        _optional_float,
        None,
        "CPU µs the API server spends per prompt token on top (default: the preset's).",
        _finite_at_least(0),
        "US",
    ),
    Option(
        "frontend_handover_order",
        str,
        "fifo",
        "Order in which the API server hands the requests of one burst (taken in together) "
        "to the engine's waiting queue: fifo (as sent) or random (shuffled, repeatable with "
        "--seed); requests that arrive apart keep their order, and without a front end (both "
        "its costs 0) nothing is reordered.",
        _choice(HANDOVER_ORDERS),
        "fifo|random",
    ),
    # Record, calibrate, replay (llmsim.record): behave like a recorded provider.
    Option(
        "profile_file",
        str,
        None,
        "YAML profiles per model (`llmsim calibrate` writes them); other models keep the "
        "built-in profiles.",
        _profile_file,
        "FILE",
    ),
    Option(
        "replay",
        str,
        None,
        "Recording (made with `llmsim record --with-bodies`) whose replies are replayed to "
        "requests with the same model and messages; others are simulated.",
        _replay_file,
        "FILE",
    ),
    # Keys, TLS, live configuration and Azure deployments (docs/serve.md, docs/apis.md).
    Option(
        "api_keys",
        _str_list,
        [],
        "Accept only these API keys (comma-separated); others get each API's own 401/403.",
        None,
        "KEY[,KEY…]",
    ),
    Option(
        "api_key_file",
        str,
        None,
        "File of accepted API keys, one per line (# comments); adds to --api-keys.",
        _readable_file,
        "PATH",
    ),
    Option(
        "ssl_certfile", str, None, "TLS certificate (PEM): serve HTTPS.", _readable_file, "PATH"
    ),
    Option(
        "ssl_keyfile",
        str,
        None,
        "TLS private key (PEM) for --ssl-certfile.",
        _readable_file,
        "PATH",
    ),
    Option(
        "admin_key",
        str,
        None,
        "Key PATCH/GET /llmsim/config require (Bearer); without one they answer only on loopback.",
        None,
        "KEY",
    ),
    Option(
        "azure_deployment",
        _deployments,
        {},
        "Azure deployment name to model, e.g. prod-chat=gpt-4o (repeatable; default: the name).",
        None,
        "NAME=MODEL",
        multiple=True,
    ),
    # --- hardening (docs/hardening.md) ---
    Option(
        "header_timeout_s",
        _float,
        10.0,
        "A request's line and headers must arrive within this; else 408 and close.",
        _at_least(0.01, DAY_S),
        "S",
    ),
    Option(
        "body_timeout_s",
        _float,
        60.0,
        "A request's body must arrive within this of its head; else 408 and close.",
        _at_least(0.01, DAY_S),
        "S",
    ),
    Option(
        "keepalive_timeout_s",
        _float,
        60.0,
        "An idle keep-alive connection is closed after this.",
        _at_least(0.01, DAY_S),
        "S",
    ),
    Option(
        "max_header_bytes",
        _int,
        32 * 1024,
        "Largest request head (request line and headers) accepted; beyond it 431.",
        _at_least(1024),
        "BYTES",
    ),
    Option(
        "max_headers", _int, 100, "Most request headers accepted; beyond it 431.", _at_least(8), "N"
    ),
    Option(
        "allow_fault_header",
        _bool,
        True,
        "Honour the x-llmsim-fault request header (turn off for shared targets).",
        None,
        None,
        True,
    ),
    Option(
        "rate_limit_keys",
        _int,
        65536,
        "API key x model pairs the rate limiter tracks exactly (shared by all workers).",
        _at_least(16),
        "N",
    ),
    Option(
        "stats_name_ttl_s",
        _float,
        600.0,
        "A model name idle this long gives its stats slot to a new name when all are taken.",
        _at_least(0, DAY_S),
        "S",
    ),
)

_BY_NAME = {o.name: o for o in SERVE_OPTIONS}

# Never printed, logged or reported.
SECRET_OPTIONS = ("api_keys", "admin_key")

# What a model may override: how it behaves, not how the server runs.
PER_MODEL_KEYS = frozenset(
    {
        "profile",
        "ttft_ms",
        "ttft_stddev_ms",
        "tbt_ms",
        "tbt_stddev_ms",
        "latency_distribution",
        "output_tokens",
        "output_tokens_stddev",
        "max_concurrency",
        "queue_limit",
        "load_factor",
        "prefill_ms_per_1k",
        "rpm",
        "tpm",
        "itl_jitter_cv",
        "stall_probability",
        "stall_ms",
        "chunk_tokens",
        "context_window",
        "max_output_tokens",
    }
)


@dataclass(frozen=True)
class Settings:
    """Every simulator option's resolved value, one field per SERVE_OPTIONS entry.

    Build it with load_settings, which parses and checks each value. The field defaults here are
    the ones that apply; Option.default is only shown in --help (an import-time assert checks
    that the names agree, tests/test_settings_and_cli.py that the defaults do).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    profile: str | None = None
    ttft_ms: float | None = None
    ttft_stddev_ms: float | None = None
    tbt_ms: float | None = None
    tbt_stddev_ms: float | None = None
    latency_distribution: str = "lognormal"
    output_tokens: int = 256
    output_tokens_stddev: float | None = None
    generator: str = "lorem"
    tool_call_rate: float = 1.0
    seed: int | None = None
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    strict_models: bool = False
    max_body_bytes: int = 8 * 1024 * 1024
    max_concurrency: int | None = None
    queue_limit: int | None = None
    queue_overflow_status: int = 429
    load_factor: float = 0.0
    prefill_ms_per_1k: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    fault: list[str] = field(default_factory=list)
    timeout_after_ms: float = 10_000.0
    timeout_action: str = "504"
    fault_script: str | None = None
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats_max_models: int = 32
    grace_period_s: float = 10.0
    access_log: bool = False
    itl_jitter_cv: float | None = None
    stall_probability: float | None = None
    stall_ms: float | None = None
    chunk_tokens: str | None = None
    context_window: int = 128_000
    max_output_tokens: int = 32_768
    coalesce_ms: float = 2.0
    request_log_size: int = 256
    engine: str = "api"
    replicas: int = 1
    preset: str = "llama-3-8b-a100"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_chunked_prefill: bool = True
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    enable_prefix_caching: bool = True
    step_jitter_cv: float = 0.0
    num_scheduler_steps: int = 1
    frontend_ms_per_request: float | None = None
    frontend_us_per_prompt_token: float | None = None
    frontend_handover_order: str = "fifo"
    profile_file: str | None = None
    replay: str | None = None
    api_keys: list[str] = field(default_factory=list)
    api_key_file: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    admin_key: str | None = None
    azure_deployment: dict[str, str] = field(default_factory=dict)
    # --- hardening (docs/hardening.md) ---
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 60.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    allow_fault_header: bool = True
    rate_limit_keys: int = 65536
    stats_name_ttl_s: float = 600.0

    def for_model(self, model: str) -> Settings:
        """These settings with the model's per_model overrides applied."""
        overrides = self.per_model.get(model)
        return replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """Every option's value, keys masked: this goes into reports and /llmsim/config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in SECRET_OPTIONS:
            if out[name]:
                out[name] = ["***"] * len(out[name]) if isinstance(out[name], list) else "***"
        return out


assert {f.name for f in fields(Settings)} == set(_BY_NAME), "Settings and SERVE_OPTIONS disagree"


def _coerce(option: Option, value: Any, source: str) -> Any:
    if value is None:
        return None
    try:
        parsed = option.parse(value)
        if option.check is not None:
            option.check(parsed)
    except ValueError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    return parsed


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config; keys may be spelled ttft_ms or ttft-ms."""
    p = Path(path)
    try:
        raw = read_yaml(p)
    except YamlFileError as exc:
        raise SettingsError(f"config file {p}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"config file {p}: expected a mapping of option: value")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in _BY_NAME:
            raise SettingsError(
                f"config file {p}: unknown key {key!r} (known: {', '.join(sorted(_BY_NAME))})"
            )
        out[name] = _coerce(_BY_NAME[name], value, f"config file {p}: {key}")
    return out


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings: defaults < YAML file < LLMSIM_* environment < overrides (flags)."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(read_config_file(config))
    env = os.environ if env is None else env
    for option in SERVE_OPTIONS:
        if option.env in env and env[option.env] != "":
            values[option.name] = _coerce(
                option, env[option.env], f"{option.env}={env[option.env]!r}"
            )
    for name, value in (overrides or {}).items():
        if name not in _BY_NAME:
            raise SettingsError(f"unknown option {name!r}")
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value, _BY_NAME[name].flag)
    settings = Settings(**values)
    if settings.engine == "vllm":
        from llmsim.server.config import vllm_config

        try:
            vllm_config(settings).check()
        except ValueError as exc:
            raise SettingsError(f"--engine vllm: {exc}") from None
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise SettingsError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    if settings.fault_script:
        from llmsim.engine.faults import load_fault_script

        try:
            load_fault_script(settings.fault_script)
        except ValueError as exc:
            raise SettingsError(f"fault script {settings.fault_script}: {exc}") from None
    return settings
