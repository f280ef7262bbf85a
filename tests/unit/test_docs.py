"""The docs stand on their own: every relative link lands on a file in this
repository, and docs/architecture.md's diagram (Mermaid, text in the repository) is
whole: every edge joins nodes it declares, and it shows each part of the system."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("deploy/**/README.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_lands_in_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text, "a link to a file outside the repository"
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the page
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{target}: outside the repository"
        assert path.exists(), f"{target}: no such file"


def mermaid() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    (block,) = re.findall(r"```mermaid\n(.*?)```", text, flags=re.DOTALL)
    return str(block)


NODE = r"([A-Za-z][\w-]*)(?:\(\[\"[^\"]*\"\]\)|\[\(\"[^\"]*\"\)\]|\[\"[^\"]*\"\])?"
ARROW = r"\s*(?:--\s*\"[^\"]*\"\s*-->|<--\s*\"[^\"]*\"\s*-->|-\.\s*\"[^\"]*\"\s*\.-|-->|<-->)\s*"


def test_the_architecture_diagram_is_whole() -> None:
    lines = [line.strip() for line in mermaid().splitlines() if line.strip()]
    assert lines[0] == "flowchart LR"
    declared: set[str] = set()
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line == "end":
            continue
        if line.startswith("subgraph "):
            match = re.fullmatch(r"subgraph ([\w-]+)\[\"[^\"]*\"\]", line)
            assert match, line
            declared.add(match.group(1))
            continue
        alone = re.fullmatch(NODE, line)
        if alone and alone.group(0) != alone.group(1):  # a node with its label, no edge
            declared.add(alone.group(1))
            continue
        parts = re.fullmatch(NODE + ARROW + NODE, line)
        assert parts, f"not a Mermaid edge this test knows: {line}"
        for name, text in ((parts.group(1), line), (parts.group(2), line)):
            if re.search(rf"\b{re.escape(name)}(\(\[|\[\(|\[\")", text):
                declared.add(name)
        edges.append((parts.group(1), parts.group(2)))
    for left, right in edges:
        assert left in declared, f"{left} is never declared with a label"
        assert right in declared, f"{right} is never declared with a label"
    for part in ("git", "sync", "scheduler", "store", "api", "site", "agent1", "mlsmctl", "ci"):
        assert part in declared, f"the diagram lacks {part}"
