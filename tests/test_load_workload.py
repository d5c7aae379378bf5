"""Prompts of exact token lengths, length distributions, datasets, conversations, options."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys

import pytest

from llmsim.engine.tokens import count_chat_prompt_tokens, encoding_for_model
from llmsim.load.options import OPTIONS, convert, resolve_config
from llmsim.load.workload import (
    Distribution,
    Workload,
    load_dataset,
    parse_distribution,
    synthetic_messages,
    synthetic_text,
    word_pool,
)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "llama-3-8b"])
@pytest.mark.parametrize("system", [None, "You are terse. Answer in one line."])
def test_synthetic_prompts_hit_the_exact_token_count(model, system):
    rng = random.Random(0)
    for target in [30, 31, 64, 100, 128, 513, 2000, 8192]:
        messages, n = synthetic_messages(target, model, system, rng)
        assert n == target
        assert count_chat_prompt_tokens(messages, model) == target


def test_too_short_target_gives_the_least_possible_and_says_so():
    system = "a long system prompt " * 5
    messages, n = synthetic_messages(1, "gpt-4o-mini", system, random.Random(1))
    assert n == count_chat_prompt_tokens(messages, "gpt-4o-mini") > 1


def test_word_pool_words_are_single_tokens():
    enc = encoding_for_model("gpt-4o")
    words = word_pool("gpt-4o")
    assert len(words) > 1000
    for w in words[:: max(1, len(words) // 300)]:
        assert len(enc.encode(w)) == 1 and len(enc.encode(" " + w)) == 1


def test_synthetic_text_is_random_from_the_start():
    a = synthetic_text(50, "gpt-4o", random.Random(1))
    b = synthetic_text(50, "gpt-4o", random.Random(2))
    assert a.split()[:3] != b.split()[:3]  # defeats servers' prefix caches


@pytest.mark.parametrize(
    ("spec", "lo", "hi"),
    [
        ("128", 128, 128),
        (64, 64, 64),
        ("normal:mean=512,stddev=128,min=100,max=900", 100, 900),
        ("uniform:min=10,max=20", 10, 20),
        ("lognormal:mean=300,stddev=150,max=2000", 1, 2000),
        ({"kind": "normal", "mean": 50, "stddev": 5}, 1, 1_000_000),
    ],
)
def test_distributions_sample_within_bounds(spec, lo, hi):
    d = parse_distribution(spec)
    rng = random.Random(5)
    samples = [d.sample(rng) for _ in range(3000)]
    assert lo <= min(samples) and max(samples) <= hi
    assert all(isinstance(s, int) for s in samples)


def test_distribution_means():
    rng = random.Random(9)
    for spec, mean in [("normal:mean=500,stddev=50", 500), ("lognormal:mean=300,stddev=150", 300)]:
        d = parse_distribution(spec)
        avg = sum(d.sample(rng) for _ in range(20_000)) / 20_000
        assert avg == pytest.approx(mean, rel=0.03)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "normal:mean=5", "uniform:min=5", "gamma:mean=1,stddev=1", "normal:mean=5,sd=1"],
)
def test_bad_distributions_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_distribution(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (0, "a length is at least 1 token, got 0"),
        ("0", "a length is at least 1 token, got 0"),
        ("-3", "a length is at least 1 token, got -3"),
        ("normal:mean=4,stddev=1,min=0", "a length is at least 1 token, got min=0"),
        ("uniform:min=0,max=5", "a length is at least 1 token, got min=0"),
        ("uniform:min=0.5,max=5", "min=0.5 is not a whole number"),
        ("normal:mean=0,stddev=1", "mean=0 is outside min=1,max=1000000"),
        ("lognormal:mean=5000,stddev=1,max=2048", "mean=5000 is outside min=1,max=2048"),
        ("fixed:mean=3.5", "fixed needs a whole mean"),
    ],
)
def test_lengths_are_whole_and_at_least_one_token(bad, message):
    # 0 was accepted and sent the chat framing with one word; bench's --prompt-tokens and the
    # users' --llm-prompt-tokens share this parser, so both refuse it.
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_distribution(bad)
    opt = next(o for o in OPTIONS if o.flag == "--llm-prompt-tokens")
    with pytest.raises(ValueError, match=r"^--llm-prompt-tokens / "):
        convert(opt, bad)


def test_datasets(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                json.dumps("plain string prompt"),
                json.dumps({"prompt": "a prompt", "max_tokens": 7}),
                json.dumps({"messages": [{"role": "user", "content": "from messages"}]}),
                "",
                json.dumps(
                    {
                        "conversations": [
                            {"from": "human", "value": "q1"},
                            {"from": "gpt", "value": "a1"},
                            {"from": "human", "value": "q2"},
                        ]
                    }
                ),
            ]
        )
    )
    items = load_dataset(str(jsonl))
    assert [it.turns for it in items] == [
        ["plain string prompt"],
        ["a prompt"],
        ["from messages"],
        ["q1", "q2"],
    ]
    assert items[1].max_tokens == 7
    sharegpt = tmp_path / "sg.json"
    turns = [{"from": "system", "value": "S"}, {"from": "human", "value": "h"}]
    sharegpt.write_text(json.dumps([{"conversations": turns}]))
    (item,) = load_dataset(str(sharegpt))
    assert item.system == "S" and item.turns == ["h"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{nope\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2"):
        load_dataset(str(broken))


def test_multi_turn_synthetic_conversation_tracks_exact_prompt_tokens():
    model = "gpt-4o-mini"
    w = Workload(
        model=model,
        prompt_tokens=parse_distribution(100),
        max_tokens=parse_distribution(10),
        system_prompt="Be brief.",
        turns=3,
        rng=random.Random(4),
    )
    sizes = []
    for turn in range(6):
        req = w.next_request()
        assert req.prompt_tokens == count_chat_prompt_tokens(req.messages, model)
        sizes.append(len(req.messages))
        w.on_reply(f"reply number {turn} with some words", None)
    # system + user, then + assistant + user twice, then a new conversation
    assert sizes == [2, 4, 6, 2, 4, 6]


def test_multi_turn_dataset_conversation_and_failure_restart(tmp_path):
    path = tmp_path / "c.jsonl"
    conv = {"conversations": [{"from": "human", "value": f"q{i}"} for i in range(5)]}
    path.write_text(json.dumps(conv) + "\n")
    w = Workload(
        model="gpt-4o",
        prompt_tokens=parse_distribution(10),
        max_tokens=parse_distribution(5),
        dataset=load_dataset(str(path)),
        turns=2,
    )
    first = w.next_request()
    assert [m["content"] for m in first.messages] == ["q0"]
    w.on_reply("a0", 2)
    second = w.next_request()
    assert [m["content"] for m in second.messages] == ["q0", "a0", "q1"]
    w.on_reply("a1", 2)
    assert [m["content"] for m in w.next_request().messages] == ["q0"]  # K=2: start over
    w.on_failure()
    assert [m["content"] for m in w.next_request().messages] == ["q0"]


class _Defaults:
    # The attributes OpenAIChatUser declares, without importing Locust here.
    model = "gpt-4o-mini"
    system_prompt = None
    prompt_tokens = 128
    max_tokens = 128
    ignore_eos = False
    stream = True
    include_usage = True
    temperature = None
    extra_headers: dict = {}
    extra_body: dict = {}
    dataset = None
    turns = 1
    requests_per_user = 0
    seed = None
    timeout = 60.0
    api_key = None


def _parsed(**given):
    ns = argparse.Namespace()
    for opt in OPTIONS:
        dest = opt.flag[2:].replace("-", "_")
        setattr(ns, dest, False if opt.kind in ("on", "off") else None)
    for k, v in given.items():
        setattr(ns, k, v)
    return ns


def test_given_options_override_class_attributes_and_unset_ones_do_not(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    class Short(_Defaults):
        prompt_tokens = 50
        ignore_eos = True

    cfg = resolve_config(Short, _parsed())
    assert cfg.prompt_tokens == Distribution("fixed", 50.0, 0.0, 50, 50)
    assert cfg.ignore_eos and cfg.stream and cfg.api_key is None
    cfg = resolve_config(
        Short,
        _parsed(
            llm_prompt_tokens="uniform:min=1,max=9",
            llm_no_stream=True,
            llm_model="",  # the web form's empty field means "not given"
            llm_body='{"top_p": 0.5}',
            llm_turns="3",
        ),
    )
    assert cfg.prompt_tokens.kind == "uniform" and not cfg.stream
    assert cfg.model == "gpt-4o-mini" and cfg.extra_body == {"top_p": 0.5} and cfg.turns == 3
    with pytest.raises(ValueError, match="--llm-body"):
        resolve_config(Short, _parsed(llm_body="[1]"))


def test_environment_variables_without_parsed_options(monkeypatch):
    monkeypatch.setenv("LOCUST_LLM_MODEL", "from-env")
    monkeypatch.setenv("LOCUST_LLM_IGNORE_EOS", "true")
    monkeypatch.setenv("LOCUST_LLM_API_KEY", "sk-test")
    cfg = resolve_config(_Defaults, None)
    assert (cfg.model, cfg.ignore_eos, cfg.api_key) == ("from-env", True, "sk-test")


def test_workload_modules_do_not_import_locust():
    code = (
        "import sys, llmsim.load.workload, llmsim.load.sse, llmsim.load.histogram, "
        "llmsim.load.metrics, llmsim.load.options, llmsim.engine.tokens; "
        "assert 'locust' not in sys.modules, 'locust imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messages_record_without_text_turns_is_sent_as_it_is_in_multi_turn_runs(tmp_path):
    parts = [{"role": "user", "content": [{"type": "text", "text": "described in parts"}]}]
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"messages": parts}) + "\n")
    w = Workload(
        model="gpt-4o",
        prompt_tokens=parse_distribution(10),
        max_tokens=parse_distribution(5),
        dataset=load_dataset(str(path)),
        turns=3,
    )
    for _ in range(3):  # once raised IndexError: no text turn to start a conversation with
        assert w.next_request().messages == parts
        w.on_reply("ok", 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": ["not an object"]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: 'messages' must be a list of objects"):
        load_dataset(str(bad))


def test_each_user_reads_its_own_apis_key_variable(tmp_path):
    code = """
import json, types
from llmsim.locust import (AnthropicMessagesUser, AzureOpenAIUser, GeminiUser,
                           OpenAIChatUser, OpenAIResponsesUser)
from llmsim.load.options import resolve_config
out = {}
for cls in (OpenAIChatUser, OpenAIResponsesUser, AnthropicMessagesUser, AzureOpenAIUser,
            GeminiUser):
    stub = types.SimpleNamespace(llm=resolve_config(cls, None), anthropic_version="v")
    out[cls.__name__] = cls.auth_headers(stub)
print(json.dumps(out))
"""
    keys = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a",
            "AZURE_OPENAI_API_KEY": "az", "GEMINI_API_KEY": "gm"}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}

    def headers(**extra: str) -> dict:
        run = subprocess.run([sys.executable, "-c", code], env={**env, **keys, **extra},
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.splitlines()[-1])

    h = headers()
    assert h["OpenAIChatUser"] == {"Authorization": "Bearer sk-o"}
    assert h["OpenAIResponsesUser"] == {"Authorization": "Bearer sk-o"}
    assert h["AnthropicMessagesUser"]["x-api-key"] == "sk-a"  # once got $OPENAI_API_KEY
    assert h["AzureOpenAIUser"] == {"api-key": "az"}
    assert h["GeminiUser"] == {"x-goog-api-key": "gm"}
    given = headers(LOCUST_LLM_API_KEY="given")  # --llm-api-key wins for every API
    assert given["AnthropicMessagesUser"]["x-api-key"] == "given"
    assert given["OpenAIChatUser"] == {"Authorization": "Bearer given"}


def test_one_string_prompt_reads_content_arrays_and_skips_system():
    """Completions and embeddings take one prompt string: a dataset's content arrays give their
    text (not a Python repr), system turns stay out, and earlier turns of the chat stay in."""
    from llmsim.load.workload import prompt_text

    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "alpha "}, {"type": "text", "text": "beta"}],
        },
        {"role": "assistant", "content": "gamma"},
        {"role": "user", "content": "delta"},
    ]
    assert prompt_text(messages) == "alpha beta\n\ngamma\n\ndelta"
