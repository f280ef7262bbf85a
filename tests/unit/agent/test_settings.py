"""Agent settings from a TOML file with flags and env on top; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsm.agent.settings import load_settings
from mlsm.errors import UserError


def test_file_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('controller = "http://ctl:8470/"\nnode = "gpu-1"\n'
                      'token_file = "/etc/t"\nstorage_root = "/srv/mlsm"\n')  # fmt: skip
    settings = load_settings(config, {"node": "gpu-2", "stop_grace": None})
    assert settings.controller == "http://ctl:8470"
    assert settings.node == "gpu-2"
    assert settings.state == Path("/srv/mlsm/.mlsm-agent")
    assert settings.stop_grace == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param('node = "n"', "controller is required (--controller, MLSM_AGENT_CONTROLLER",
                     id="missing"),
        pytest.param('controller = "ctl:8470"', "controller: Value error, must be an http(s) URL",
                     id="bad-url"),
        pytest.param('tokn_file = "x"', "tokn_file: unknown setting", id="unknown"),
        pytest.param("node = ", "not valid TOML", id="toml"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(text + "\n")
    with pytest.raises(UserError) as caught:
        load_settings(config, {})
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(config))
    assert "\n" not in str(caught.value)


def test_a_missing_token_file_says_how_to_get_one(tmp_path: Path) -> None:
    given = {"controller": "http://c", "node": "n1", "token_file": tmp_path / "t",
             "storage_root": tmp_path}  # fmt: skip
    settings = load_settings(None, given)
    with pytest.raises(UserError, match="mlsm-controller token issue --role node --node n1"):
        settings.read_token()
