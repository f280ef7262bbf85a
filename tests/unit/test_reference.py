"""docs/reference/ is generated from the schemas and the commands: it fails here when
either changed and the pages were not made again (`make docs`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_manifest_and_cli_references_are_up_to_date() -> None:
    done = subprocess.run([sys.executable, "tools/make_reference.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_field_has_a_type_a_description_and_an_example() -> None:
    page = (ROOT / "docs" / "reference" / "manifests.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) > 80  # every field of the three kinds
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        field, kind, _default, example, described = [*cells[:4], " | ".join(cells[4:])]
        assert kind, row
        assert example, row
        assert described, f"{field} has no description"
    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for command in ("mlsmctl plan", "mlsmctl validate", "mlsm-controller run", "mlsm-agent run"):
        assert f"### {command}\n" in cli
    assert "| `-f, --filename <str>` |  | Instead of --base" in cli
