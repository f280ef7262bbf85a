"""The guides stay true: every manifest in them is valid, and every `mlsmctl`
command they show exists with the options they use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlsm import manifests
from mlsm.cli.main import app

DOCS = Path(__file__).parents[2] / "docs"
GUIDES = ["researchers.md"]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("guide", GUIDES)
def test_every_manifest_in_a_guide_is_valid(guide: str) -> None:
    found = blocks((DOCS / guide).read_text(), "yaml")
    assert found, "the guide shows manifests"
    for text in found:
        result = manifests.load_bytes(text.encode(), guide, cross_checks=False)
        assert not result.problems, "\n".join(map(str, result.problems))


@pytest.mark.parametrize("guide", GUIDES)
def test_every_mlsmctl_command_in_a_guide_exists_with_its_options(guide: str) -> None:
    runner = CliRunner()
    commands = [line.split("#")[0].split() for block in blocks((DOCS / guide).read_text(), "sh")
                for line in block.splitlines() if line.startswith("mlsmctl ")]  # fmt: skip
    assert commands
    for words in commands:
        name = words[1]
        shown = runner.invoke(app, [name, "--help"])
        assert shown.exit_code == 0, f"mlsmctl {name}: {shown.output}"
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("-")):
            assert option in shown.output, f"mlsmctl {name} has no {option}"
