"""serve --profile-file and --replay: bad files are refused in one line (the serving itself is
tested with a real server in test_record_proxy.py, on a recording it made)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from llmsim.cli import cli


def run_cli(*args: str) -> tuple[int, str]:
    """`llmsim ARGS` in this process (no interpreter start-up): exit status and stderr."""
    result = CliRunner().invoke(cli, list(args), prog_name="llmsim")
    return result.exit_code, result.stderr


def test_replay_without_bodies_is_refused_in_one_line(tmp_path):
    path = tmp_path / "r.jsonl"
    line = {"v": 1, "api": "chat", "model": "m", "status": 200, "stream": True, "gaps_ms": []}
    path.write_text(json.dumps({**line, "key": "sha256:00"}) + "\n")
    code, err = run_cli("serve", "--port", "0", "--replay", str(path))
    assert code == 2
    (msg,) = err.strip().splitlines()
    assert msg.startswith("llmsim: error: --replay:") and "--with-bodies" in msg


def test_replay_file_must_exist(tmp_path):
    missing = Path(tmp_path / "nope.jsonl")
    code, err = run_cli("serve", "--replay", str(missing))
    assert code == 2 and "no such file" in err
