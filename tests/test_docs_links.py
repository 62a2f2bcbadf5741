"""Every relative link of the README, docs/ and the results' markdown points at a file that
exists, and every ``#anchor`` at a heading of its target (GitHub's heading ids)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"#{1,6} (.+)")
FENCE = "```"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("results/**/*.md"))]


def heading_id(title: str) -> str:
    """GitHub's id of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def heading_ids(doc: Path) -> set[str]:
    ids, seen, in_code = set(), Counter(), False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith(FENCE):
            in_code = not in_code
        elif not in_code and (match := HEADING.match(line)):
            base = heading_id(match.group(1))
            ids.add(f"{base}-{seen[base]}" if seen[base] else base)  # GitHub numbers a repeated heading
            seen[base] += 1
    return ids


def broken_links(doc: Path) -> list[str]:
    """The relative links of ``doc`` whose file, or whose anchor in that file, does not exist."""
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path) if path else doc
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_ids(linked):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    assert broken_links(doc) == []


def test_a_missing_file_and_a_missing_anchor_are_found(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Every make target\n\n```bash\n# not a heading\n```\n## Notes\n## Notes\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#every-make-target) [gone](docs/other.md) [no anchor](other.md#not-a-heading) "
                   "[again](other.md#notes-1) [third](other.md#notes-2) [web](https://example.org/x.md) "
                   "[self](#title)\n# Title\n")
    assert broken_links(doc) == ["docs/other.md", "other.md#not-a-heading", "other.md#notes-2"]
