"""Option precedence (default < YAML < env < flag) and one-line errors for every mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmsim import __version__
from llmsim.settings import Settings, SettingsError, load_settings


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def write(tmp_path, text: str):
    p = tmp_path / "llmsim.yaml"
    p.write_text(text)
    return p


def test_defaults_are_safe():
    s = load_settings(env={})
    assert s.host == "127.0.0.1" and s.port == 8080 and s.workers == 1
    assert s.profile is None and s.generator == "lorem"
    assert s == Settings()


def test_help_shows_the_defaults_that_apply():
    """Settings' field defaults apply and Option.default is what --help shows: they must agree."""
    from llmsim.settings import SERVE_OPTIONS

    applied = Settings()
    differ = {
        o.name: (o.default, getattr(applied, o.name))
        for o in SERVE_OPTIONS
        if getattr(applied, o.name) != o.default
    }
    assert differ == {}, differ


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    cfg = write(tmp_path, "port: 9001\nttft_ms: 50\ntbt-ms: 7\noutput_tokens: 12\n")
    env = {"LLMSIM_PORT": "9002", "LLMSIM_TTFT_MS": "60"}
    s = load_settings(config=cfg, env=env, overrides={"port": 9003})
    assert s.port == 9003  # flag
    assert s.ttft_ms == 60  # env over file
    assert s.tbt_ms == 7  # file (dashed key accepted)
    assert s.output_tokens == 12  # file
    assert s.workers == 1  # default
    assert load_settings(config=cfg, env=env).port == 9002
    assert load_settings(config=cfg, env={}).port == 9001


def test_lists_and_booleans_from_every_source(tmp_path):
    cfg = write(tmp_path, "models: [a, b]\nstrict_models: true\n")
    assert load_settings(config=cfg, env={}).models == ["a", "b"]
    s = load_settings(env={"LLMSIM_MODELS": "x, y", "LLMSIM_STRICT_MODELS": "yes"})
    assert s.models == ["x", "y"] and s.strict_models is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"env": {"LLMSIM_PORT": "eighty"}}, "LLMSIM_PORT='eighty': expected an integer"),
        ({"env": {"LLMSIM_PORT": "70000"}}, "must be a port number"),
        ({"env": {"LLMSIM_WORKERS": "0"}}, "must be at least 1"),
        ({"env": {"LLMSIM_TTFT_MS": "-5"}}, "LLMSIM_TTFT_MS='-5': must be at least 0"),
        ({"env": {"LLMSIM_PROFILE": "gpt-99"}}, "must be one of"),
        ({"env": {"LLMSIM_GENERATOR": "poetry"}}, "unknown generator"),
        ({"env": {"LLMSIM_STRICT_MODELS": "maybe"}}, "expected true or false"),
        ({"overrides": {"tbt_ms": "fast"}}, "--tbt-ms: expected a number"),
        # Finite and bounded: a stddev of 1e308 made every request a 500, nan passed every check.
        ({"overrides": {"tbt_stddev_ms": "1e308"}}, "--tbt-stddev-ms: must be at most 86,400,000"),
        ({"overrides": {"ttft_ms": "nan"}}, "--ttft-ms: must be at most 86,400,000, got nan"),
        ({"env": {"LLMSIM_ITL_JITTER_CV": "inf"}}, "must be at most 100, got inf"),
        ({"overrides": {"keepalive_timeout_s": "inf"}}, "must be at most 86,400"),
    ],
)
def test_bad_values_name_their_source(kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(SettingsError) as exc:
        load_settings(**kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft: 100\n", "unknown key 'ttft'"),
        ("port: [1]\n", "port: expected an integer"),
        ("- a\n- b\n", "expected a mapping"),
        ("port: 80\n  bad: indent\n", "not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(config=write(tmp_path, text), env={})


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(config=tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize("kind", ["config", "profile", "fault script"])
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d / "nope.yaml", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: write(d, "a: [1\n"), "not valid YAML at line 2"),
        (lambda d: write_bytes(d / "bin.yaml", b"\xff\xfe"), "cannot read it"),
    ],
)
def test_every_yaml_file_fails_in_one_line_naming_it(tmp_path, kind, make, reason):
    """Config, profile file and fault script share one reader: the same reasons, one line,
    the file named."""
    from llmsim.record.profile_file import ProfileError, load_profile

    path = make(tmp_path)
    loaders = {
        "config": (SettingsError, lambda: load_settings(config=path, env={})),
        "profile": (ProfileError, lambda: load_profile(path)),
        "fault script": (
            SettingsError,
            lambda: load_settings(env={}, overrides={"fault_script": str(path)}),
        ),
    }
    error, load = loaders[kind]
    with pytest.raises(error) as exc:
        load()
    message = str(exc.value)
    assert reason in message and str(path) in message and "\n" not in message


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmsim", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.split()[-1] == __version__


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["serve", "--port", "abc"], None, "--port: expected an integer"),
        (["serve", "--bogus"], None, "No such option"),
        (["serve", "--profile", "nope"], None, "--profile: must be one of"),
        (["serve"], {"LLMSIM_WORKERS": "x"}, "LLMSIM_WORKERS='x'"),
        (["serve", "--config", "/nonexistent.yaml"], None, "no such file"),
        (["nosuchcommand"], None, "No such command"),
    ],
)
def test_cli_mistakes_are_one_line_and_exit_2(args, env, message):
    r = run_cli(*args, env=env)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("llmsim: error: ") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_taken_port_is_a_one_line_error(llmsim_server):
    server = llmsim_server("--profile", "instant")
    port = server.url.rsplit(":", 1)[1]
    r = run_cli("serve", "--port", port)
    assert r.returncode == 1
    assert r.stderr.strip() == f"llmsim: error: port {port} on 127.0.0.1 is already in use"


def test_serve_help_lists_every_option():
    r = run_cli("serve", "--help")
    assert r.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--body-timeout-s",
        "--workers",
        "--profile",
        "--ttft-ms",
        "--ttft-stddev-ms",
        "--tbt-ms",
        "--tbt-stddev-ms",
        "--output-tokens",
        "--generator",
        "--seed",
        "--config",
        "LLMSIM_TTFT_MS",
    ):
        assert flag in r.stdout
