"""Every relative link in the README and docs/ resolves: the file exists, and so does the
heading an anchor names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "reports" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Pages allowed to be missing for now (none: every page the docs link to exists).
PENDING: set[str] = set()
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _links() -> list[tuple[Path, str]]:
    out = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.S)
        out += [(page, link) for link in _LINK.findall(text) if "://" not in link]
    return out


@pytest.mark.parametrize(("page", "link"), _links(), ids=lambda v: str(v).split("/")[-1])
def test_link_resolves(page: Path, link: str) -> None:
    path, _, anchor = link.partition("#")
    target = (page.parent / path).resolve() if path else page
    rel = target.relative_to(REPO).as_posix() if target.is_relative_to(REPO) else str(target)
    if not target.exists() and rel in PENDING:
        pytest.skip(f"{rel} is another issue's page, not merged yet")
    assert target.exists(), f"{page.relative_to(REPO)}: {link} does not exist"
    if anchor and target.suffix == ".md":
        assert anchor in _anchors(target), f"{page.relative_to(REPO)}: no heading #{anchor}"
