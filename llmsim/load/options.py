"""The `--llm-...` Locust arguments, their environment variables, and how a user's settings resolve.

Environment variables follow Locust's own convention: --llm-model is LOCUST_LLM_MODEL (the
simulator's LLMSIM_* variables are another namespace; LLMSIM_SEED would otherwise mean two things).

Precedence, most specific first: a value given on the command line, in the environment or in the
web UI's start form; then the user class attribute; then OpenAIChatUser's default. Options
default to "unset" (None, or False for flags) so that an option nobody gave never overrides a
class attribute: that is what lets a locustfile mix classes with different prompt lengths.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

from llmsim.load.arrivals import Arrival, parse_arrival
from llmsim.load.workload import Distribution, parse_distribution


@dataclass(frozen=True)
class Opt:
    """One `--llm-...` option: the user attribute it sets, its flag and environment variable, how
    its value converts (`kind`) and its help; `ui`: shown in the web UI, `secret`: masked there.
    """

    attr: str  # user class attribute (and LLMConfig field)
    flag: str
    env: str
    kind: str  # str | dist | float | int | json | on (flag sets True) | off (flag sets False)
    help: str
    ui: bool = True
    secret: bool = False


OPTIONS: tuple[Opt, ...] = (
    Opt("model", "--llm-model", "LOCUST_LLM_MODEL", "str", "Model name sent in each request."),
    Opt(
        "system_prompt", "--llm-system-prompt", "LOCUST_LLM_SYSTEM_PROMPT", "str", "System prompt."
    ),
    Opt(
        "prompt_tokens",
        "--llm-prompt-tokens",
        "LOCUST_LLM_PROMPT_TOKENS",
        "dist",
        "Prompt length in tokens: N, normal:mean=M,stddev=S[,min=A,max=B], uniform:min=A,max=B "
        "or lognormal:mean=M,stddev=S.",
    ),
    Opt(
        "max_tokens",
        "--llm-max-tokens",
        "LOCUST_LLM_MAX_TOKENS",
        "dist",
        "max_tokens per request, same syntax as --llm-prompt-tokens.",
    ),
    Opt(
        "ignore_eos",
        "--llm-ignore-eos",
        "LOCUST_LLM_IGNORE_EOS",
        "on",
        "Send ignore_eos: the reply is exactly max_tokens long (vLLM, llmsim).",
    ),
    Opt("stream", "--llm-no-stream", "LOCUST_LLM_NO_STREAM", "off", "Ask for whole replies."),
    Opt(
        "include_usage",
        "--llm-no-usage",
        "LOCUST_LLM_NO_USAGE",
        "off",
        "Do not send stream_options.include_usage (tokens are then counted).",
    ),
    Opt("temperature", "--llm-temperature", "LOCUST_LLM_TEMPERATURE", "float", "Temperature."),
    Opt(
        "extra_headers",
        "--llm-headers",
        "LOCUST_LLM_HEADERS",
        "json",
        'Extra HTTP headers, a JSON object: {"X-Tenant": "a"}.',
    ),
    Opt(
        "extra_body",
        "--llm-body",
        "LOCUST_LLM_BODY",
        "json",
        'Extra request body fields, a JSON object: {"top_p": 0.9}.',
    ),
    Opt(
        "dataset",
        "--llm-dataset",
        "LOCUST_LLM_DATASET",
        "str",
        "Prompts from a file: JSONL (prompt, messages or ShareGPT records) or a JSON array.",
    ),
    Opt(
        "turns",
        "--llm-turns",
        "LOCUST_LLM_TURNS",
        "int",
        "Turns per conversation: each reply and a new user turn are appended, K times.",
    ),
    Opt(
        "requests_per_user",
        "--llm-requests-per-user",
        "LOCUST_LLM_REQUESTS_PER_USER",
        "int",
        "Each user stops after this many requests (0: no limit).",
    ),
    Opt(
        "seed",
        "--llm-seed",
        "LOCUST_LLM_SEED",
        "int",
        "Seed for prompts and lengths (reproducible).",
    ),
    Opt(
        "timeout",
        "--llm-timeout",
        "LOCUST_LLM_TIMEOUT",
        "float",
        "Seconds to wait for a connection or for the next bytes of a response.",
    ),
    Opt(
        "rate",
        "--llm-rate",
        "LOCUST_LLM_RATE",
        "float",
        "Open loop: requests per second for the whole swarm (each request in its own greenlet "
        "at its scheduled time, whatever the replies do). Run one user per process.",
    ),
    Opt(
        "arrival",
        "--llm-arrival",
        "LOCUST_LLM_ARRIVAL",
        "str",
        "Open loop: poisson, constant or gamma:cv=C (default poisson).",
    ),
    Opt(
        "max_in_flight",
        "--llm-max-in-flight",
        "LOCUST_LLM_MAX_IN_FLIGHT",
        "int",
        "Open loop: at most this many requests in flight (swarm-wide); arrivals beyond it are "
        "dropped and counted, not queued.",
    ),
    Opt(
        "trace",
        "--llm-trace",
        "LOCUST_LLM_TRACE",
        "str",
        "Open loop: replay a Mooncake JSONL (timestamp ms, input_length, output_length, "
        "hash_ids) or CSV trace.",
    ),
    Opt(
        "trace_speed",
        "--llm-trace-speed",
        "LOCUST_LLM_TRACE_SPEED",
        "float",
        "Trace replay: time runs this many times faster (2: twice the rate).",
    ),
    Opt(
        "prefix_tokens",
        "--llm-prefix-tokens",
        "LOCUST_LLM_PREFIX_TOKENS",
        "int",
        "Each prompt starts with one of --llm-prefix-groups shared prefixes this long.",
    ),
    Opt(
        "prefix_groups",
        "--llm-prefix-groups",
        "LOCUST_LLM_PREFIX_GROUPS",
        "int",
        "How many distinct shared prefixes (default 1).",
    ),
    Opt(
        "api_key",
        "--llm-api-key",
        "LOCUST_LLM_API_KEY",
        "str",
        "API key (default: the API's own variable: $OPENAI_API_KEY, $ANTHROPIC_API_KEY, "
        "$AZURE_OPENAI_API_KEY, $GEMINI_API_KEY or $GOOGLE_API_KEY).",
        secret=True,
    ),
)

# What a user class without the open-loop attributes (one not built on LLMUser) gets.
OPEN_LOOP_DEFAULTS: dict[str, Any] = {
    "rate": None,
    "arrival": "poisson",
    "max_in_flight": None,
    "trace": None,
    "trace_speed": 1.0,
    "prefix_tokens": 0,
    "prefix_groups": 1,
}

# Set by the master at test start (not by users): how many users and processes share the
# open-loop rate. Locust sends custom options to its workers with every spawn message.
SWARM_USERS = "llm_swarm_users"
SWARM_PROCESSES = "llm_swarm_processes"

RESULTS_DIR = Opt(
    "results_dir",
    "--llm-results-dir",
    "LOCUST_LLM_RESULTS_DIR",
    "str",
    "Write llm_metrics.json and requests.csv here at the end of the run (master/standalone).",
    ui=False,
)

DEFAULT_GC = Opt(
    "default_gc",
    "--llm-default-gc",
    "LOCUST_LLM_DEFAULT_GC",
    "on",
    "Keep CPython's default garbage collection in this process. By default llmsim freezes what "
    "is loaded at start-up and scans old objects once a minute, not while streams are timed "
    "(long scans otherwise delay token reads by up to tens of ms; see llmsim/gcpolicy.py).",
    ui=False,
)


def add_arguments(parser: Any) -> None:
    """Register every option on Locust's parser (events.init_command_line_parser)."""
    # Straight on the parser: only LocustArgumentParser.add_argument knows include_in_web_ui.
    for opt in (*OPTIONS, RESULTS_DIR, DEFAULT_GC):
        kwargs: dict[str, Any] = {"env_var": opt.env, "help": opt.help}
        if opt.kind in ("on", "off"):
            kwargs.update(action="store_true", default=False)
        else:
            kwargs.update(type=str, default=None)
        if opt.ui:
            kwargs["include_in_web_ui"] = True
            kwargs["is_secret"] = opt.secret
        else:
            kwargs["include_in_web_ui"] = False
        dest = opt.flag[2:].replace("-", "_")
        parser.add_argument(opt.flag, dest=dest, **kwargs)
    for dest in (SWARM_USERS, SWARM_PROCESSES):
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=int,
            default=None,
            include_in_web_ui=False,
            help=argparse.SUPPRESS,
        )


def option_dest(opt: Opt) -> str:
    """The argparse dest of the option's flag: --llm-max-tokens gives llm_max_tokens."""
    return opt.flag[2:].replace("-", "_")


def _given(opt: Opt, parsed: Any) -> tuple[bool, Any]:
    """(was the option given?, raw value) from parsed options, or the environment without them."""
    if parsed is not None and hasattr(parsed, option_dest(opt)):
        raw = getattr(parsed, option_dest(opt))
    else:
        raw = os.environ.get(opt.env)
        if opt.kind in ("on", "off"):
            raw = raw is not None and raw.strip().lower() in ("1", "true", "yes", "on")
    if opt.kind in ("on", "off"):
        return bool(raw), bool(raw)
    # The web UI submits every field, "" for the ones left empty.
    return raw is not None and str(raw).strip() != "", raw


def convert(opt: Opt, raw: Any) -> Any:
    """Turn an option string into the attribute's type; errors name the option."""
    try:
        if opt.kind == "on":
            return True
        if opt.kind == "off":
            return False
        if opt.kind == "dist":
            return parse_distribution(raw)
        if opt.kind == "float":
            return float(raw)
        if opt.kind == "int":
            return int(raw)
        if opt.kind == "json":
            value = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
        return str(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{opt.flag} / ${opt.env}: {e}") from None


@dataclass
class LLMConfig:
    """One user class's resolved settings (resolve_config): lengths as Distributions, `timeout` in
    seconds, `rate` in requests/s for the whole swarm.
    """

    model: str
    system_prompt: str | None
    prompt_tokens: Distribution
    max_tokens: Distribution
    ignore_eos: bool
    stream: bool
    include_usage: bool
    temperature: float | None
    extra_headers: dict[str, Any]
    extra_body: dict[str, Any]
    dataset: str | None
    turns: int
    requests_per_user: int
    seed: int | None
    timeout: float
    rate: float | None
    arrival: Arrival
    max_in_flight: int | None
    trace: str | None
    trace_speed: float
    prefix_tokens: int
    prefix_groups: int
    api_key: str | None

    @property
    def open_loop(self) -> bool:
        """Requests follow a schedule (--llm-rate or --llm-trace), not the replies."""
        return self.rate is not None or self.trace is not None


def resolve_config(user_class: type, parsed_options: Any) -> LLMConfig:
    """Settings for one user class: given options, else class attributes (see module doc)."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        given, raw = _given(opt, parsed_options)
        if given:
            values[opt.attr] = convert(opt, raw)
        else:
            values[opt.attr] = getattr(user_class, opt.attr, OPEN_LOOP_DEFAULTS.get(opt.attr))
    values["prompt_tokens"] = parse_distribution(values["prompt_tokens"])
    values["max_tokens"] = parse_distribution(values["max_tokens"])
    values["extra_headers"] = dict(values["extra_headers"] or {})
    values["extra_body"] = dict(values["extra_body"] or {})
    values["turns"] = max(1, int(values["turns"] or 1))
    values["requests_per_user"] = max(0, int(values["requests_per_user"] or 0))
    values["timeout"] = float(values["timeout"])
    values["arrival"] = parse_arrival(values["arrival"] or "poisson")
    if values["rate"] is not None and not values["rate"] > 0:
        raise ValueError(f"--llm-rate must be above 0, got {values['rate']:g}")
    if values["max_in_flight"] is not None and values["max_in_flight"] < 1:
        raise ValueError(f"--llm-max-in-flight must be at least 1, got {values['max_in_flight']}")
    values["trace_speed"] = float(values["trace_speed"] or 1.0)
    if not values["trace_speed"] > 0:
        raise ValueError(f"--llm-trace-speed must be above 0, got {values['trace_speed']:g}")
    if (values["rate"] is not None or values["trace"]) and values["turns"] > 1:
        raise ValueError("open-loop arrivals are single requests: --llm-turns needs closed loop")
    if values["rate"] is not None and values["trace"]:
        raise ValueError("--llm-rate and --llm-trace do not mix: the trace has its own times")
    values["prefix_tokens"] = max(0, int(values["prefix_tokens"] or 0))
    values["prefix_groups"] = int(values["prefix_groups"] or 1)
    if values["prefix_groups"] < 1:
        raise ValueError(f"--llm-prefix-groups must be at least 1, got {values['prefix_groups']}")
    # No key given: each user class falls back to its own API's variable (auth_headers).
    values["api_key"] = values["api_key"] or None
    return LLMConfig(**values)


def results_dir(parsed_options: Any) -> str | None:
    """--llm-results-dir (or $LOCUST_LLM_RESULTS_DIR without parsed options); None if not given."""
    given, raw = _given(RESULTS_DIR, parsed_options)
    return str(raw) if given else None
