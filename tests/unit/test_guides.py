"""The guides stay true: every manifest in them is valid, and every `mlsmctl`
command they show exists with the options they use."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
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


@pytest.mark.parametrize("guide", [*GUIDES, "operations.md", "../README.md"])
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


def test_the_readme_s_next_steps_work_as_written(tmp_path: Path) -> None:
    """Steps 2 and 3 of the README's "Next steps", run as written in a copy of the
    example repository (what needs the running installation, `mlsmctl get` and
    `logs`, is left to tests/integration/test_up.py)."""
    readme = (DOCS.parent / "README.md").read_text()
    steps = readme.split("## Next steps", 1)[1].split("\n## ", 1)[0]
    blocks = [textwrap.dedent(b) for b in re.findall(r"```sh\n(.*?)```", steps, re.S)]
    commit, plan = blocks[:2]
    demo = tmp_path / ".mlsm" / "demo" / "manifests"
    shutil.copytree(DOCS.parent / "manifests", demo)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@lab.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@lab.org"}  # fmt: skip
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "The example manifests"]):  # fmt: skip
        subprocess.run(command, cwd=demo, check=True, env=env, capture_output=True)
    offline = "\n".join(line for line in commit.splitlines() if not line.startswith("mlsmctl"))
    done = subprocess.run(["bash", "-e", "-c", offline], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    added = manifests.load_paths([str(demo)])
    assert not added.problems, added.problems
    assert "hello-again" in {o.name for o in added.objects}
    done = subprocess.run(["bash", "-c", plan], cwd=demo, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr  # the last command, git switch
    assert "~ TrainingJob/resnet-digits  (jobs/resnet-digits.yaml:5)  generation 2" in done.stdout
    assert "    ~ spec.trainer.epochs: 15 -> 30" in done.stdout
