"""Reading a user's YAML file (config, profile, fault script) with a one-line reason on failure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """Why a YAML file could not be read, in a few words ("no such file", "not valid YAML at
    line 3"): callers put the file's name or their own context in front."""


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The parsed contents of a YAML file (None when empty); YamlFileError when unreadable."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise YamlFileError("no such file") from None
    except IsADirectoryError:
        raise YamlFileError("is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise YamlFileError(f"cannot read it ({why})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise YamlFileError(f"not valid YAML{where}") from None
