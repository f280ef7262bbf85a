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
GUIDES = ["researchers.md", "admins.md"]
PROGRAMS = ("mlsmctl", "mlsm-controller", "mlsm-agent")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("guide", GUIDES)
def test_every_manifest_in_a_guide_is_valid(guide: str) -> None:
    found = blocks((DOCS / guide).read_text(), "yaml")
    assert found, "the guide shows manifests"
    for text in found:
        result = manifests.load_bytes(text.encode(), guide, cross_checks=False)
        assert not result.problems, "\n".join(map(str, result.problems))


def commands(text: str) -> list[list[str]]:
    """The command lines of a guide's sh blocks (continuations joined, comments cut)."""
    found = []
    for block in blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = line.split("#")[0].split()
            if words and words[0] in PROGRAMS:
                found.append(words)
    return found


@pytest.mark.parametrize("guide", GUIDES)
def test_every_command_in_a_guide_exists_with_its_options(guide: str) -> None:
    from mlsm.agent.main import app as agent
    from mlsm.controller.main import app as controller

    apps = {"mlsmctl": app, "mlsm-controller": controller, "mlsm-agent": agent}
    found = commands((DOCS / guide).read_text())
    assert found, "the guide shows commands"
    runner = CliRunner()
    for program, *words in found:
        path = [w for w in words if not w.startswith("-")][:2]
        shown = runner.invoke(apps[program], [*path, "--help"])
        assert shown.exit_code == 0, f"{program} {' '.join(path)}: {shown.output}"
        for option in (w.split("=")[0] for w in words if w.startswith("-")):
            assert option in shown.output, f"{program} {' '.join(path)} has no {option}"
