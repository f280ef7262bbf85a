"""deploy/: the systemd units pass `systemd-analyze verify` (and its security
review); the compose file passes `podman-compose config`, and its .env.example holds
every setting of the controller; `mlsm-controller join NODE` prints a script whose
settings the agent accepts, whose token the controller knows, and whose unit is
deploy's. (The images are built and run in test_images.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
import yaml

from mlsm.agent.settings import load_settings
from mlsm.controller.main import app as controller_app
from mlsm.store import Store, Token
from mlsm.store.tokens import token_digest
from tests.integration.conftest import controller_bin

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
COMPOSE = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("unit", ["mlsm-agent.service", "mlsm-controller.service"])
def test_the_systemd_units_verify_and_are_hardened(unit: str, tmp_path: Path) -> None:
    """As installed: mlsm in /opt/mlsm (here: this virtualenv's bin, the one change)."""
    installed = tmp_path / unit
    installed.write_text((UNITS / unit).read_text().replace("/opt/mlsm/bin/", f"{BIN}/"))
    verified = subprocess.run(["systemd-analyze", "verify", str(installed)],
                              capture_output=True, text=True)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr
    review = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(installed)],
                            capture_output=True, text=True)  # fmt: skip
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", review.stdout)
    assert exposure, review.stdout[-500:] + review.stderr
    assert float(exposure.group(1)) <= 5.0, review.stdout[-2000:]
    for setting in ("NoNewPrivileges=true", "ProtectSystem=strict", "User=mlsm",
                    "Restart=on-failure"):  # fmt: skip
        assert setting in installed.read_text()


def test_join_prints_what_a_new_server_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mlsm.db'}"
    assert subprocess.run([*controller_bin(), "migrate", "--database-url", url]).returncode == 0
    ca = tmp_path / "ca.pem"  # one CA certificate of the system's
    bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    ca.write_text(bundle.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    done = subprocess.run(
        [*controller_bin(), "join", "gpu-2", "--controller-url",
         "https://ctl-a.lab:8470, https://ctl-b.lab:8470/", "--ca-file", str(ca),
         "--database-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "warning: no Node gpu-2 is merged yet" in done.stderr

    settings_text = re.search(r"<<'TOML'\n(.*?)TOML\n", script, re.S)
    assert settings_text
    settings = tomllib.loads(settings_text.group(1))
    assert settings == {"controller": "https://ctl-a.lab:8470,https://ctl-b.lab:8470",
                        "node": "gpu-2", "token_file": "/etc/mlsm/agent.token",
                        "storage_root": "/srv/mlsm", "ca_file": "/etc/mlsm/ca.pem"}  # fmt: skip
    (token,) = re.findall(r"printf '%s\\n' '(mlsm_[\w-]+)' > /etc/mlsm/agent.token", script)
    (tmp_path / "agent.token").write_text(token + "\n")
    settings_file = tmp_path / "agent.toml"
    here = settings_text.group(1).replace("/etc/mlsm/agent.token", str(tmp_path / "agent.token"))
    settings_file.write_text(here)
    loaded = load_settings(settings_file, {})
    assert loaded.controllers == ["https://ctl-a.lab:8470", "https://ctl-b.lab:8470"]
    assert loaded.read_token() == token
    store = Store.open(url)
    with store.read() as session:
        row = session.query(Token).filter(Token.digest == token_digest(token)).one()
    store.dispose()
    assert (row.role, row.node) == ("node", "gpu-2")

    unit = re.search(r"<<'UNIT'\n(.*?)UNIT\n", script, re.S)
    assert unit
    assert unit.group(1) == (UNITS / "mlsm-agent.service").read_text()
    assert "${MLSM_PACKAGE:?set MLSM_PACKAGE to where your lab installs mlsm from" in script
    assert "systemctl daemon-reload && systemctl enable --now mlsm-agent" in script


def compose_config(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "podman-compose"), "config"], cwd=project,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_compose_file_is_valid_and_runs_what_production_needs(tmp_path: Path) -> None:
    """As a lab uses it: deploy/compose copied with its .env filled in."""
    project = tmp_path / "deploy" / "compose"
    shutil.copytree(COMPOSE, project)
    shutil.copy2(ROOT / "deploy" / "Dockerfile", tmp_path / "deploy" / "Dockerfile")
    env = (project / ".env.example").read_text()
    (project / ".env").write_text(env)
    missing = compose_config(project)
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD is missing a value: set POSTGRES_PASSWORD in .env" in missing.stderr

    env = env.replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=s3cret\n")
    (project / ".env").write_text(env.replace("\nMLSM_REPO=\n", "\nMLSM_REPO=/m.git\n"))
    done = compose_config(project)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    postgres, controller = config["services"]["postgres"], config["services"]["controller"]
    assert "postgres" in config["volumes"]  # named: the data outlives the container
    assert postgres["volumes"] == ["postgres:/var/lib/postgresql/data"]
    assert controller["environment"]["MLSM_DATABASE_URL"] == (
        "postgresql://mlsm:s3cret@postgres:5432/mlsm"
    )
    assert controller["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for service in (postgres, controller):
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    build = controller["build"]
    assert (Path(build["context"]) / build["dockerfile"]).is_file()
    assert build["target"] == "controller"


def test_the_env_example_holds_every_setting_of_the_controller() -> None:
    command = typer.main.get_command(controller_app).commands["run"]  # type: ignore[attr-defined]
    names = {p.envvar for p in command.params if p.name not in ("version",)}
    assert None not in names, [p.name for p in command.params if p.envvar is None]
    listed = set(re.findall(r"^#? ?(MLSM_[A-Z_]+)=", (COMPOSE / ".env.example").read_text(),
                            re.MULTILINE))  # fmt: skip
    assert names <= listed, sorted(names - listed)
