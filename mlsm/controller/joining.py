"""`mlsm-controller join NODE`: what a new GPU server needs next, as a script a
person reads and then runs on that server as root: a system user, the agent's
settings and its (just issued) node token, then the two commands that install the
agent and start it under systemd (the unit is deploy/systemd/mlsm-agent.service,
shipped inside mlsm as `mlsm/agent/mlsm-agent.service`)."""

from __future__ import annotations

import json
from importlib.resources import files

__all__ = ["agent_settings", "join_script"]

ETC = "/etc/mlsm"
PREFIX = "/opt/mlsm"


def agent_unit() -> str:
    return files("mlsm.agent").joinpath("mlsm-agent.service").read_text()


def agent_settings(
    node: str, controllers: list[str], storage_root: str, ca_file: str | None
) -> str:
    """The agent's TOML settings (strings quoted as TOML basic strings: JSON's)."""
    lines = [
        f"controller = {json.dumps(','.join(controllers))}",
        f"node = {json.dumps(node)}",
        f'token_file = "{ETC}/agent.token"',
        f"storage_root = {json.dumps(storage_root)}",
    ]
    if ca_file:
        lines.append(f'ca_file = "{ETC}/ca.pem"')
    return "\n".join(lines) + "\n"


def join_script(
    node: str,
    token: str,
    controllers: list[str],
    *,
    storage_root: str = "/srv/mlsm",
    ca_pem: str | None = None,
    package: str | None = None,
) -> str:
    settings = agent_settings(node, controllers, storage_root, ca_pem)
    ca = (
        f"cat > {ETC}/ca.pem <<'PEM'\n{ca_pem.strip()}\nPEM\n"
        if ca_pem
        else "# (no --ca-file: the agent trusts the controller by the system's CA store)\n"
    )
    return f"""\
#!/bin/sh
# The mlsm agent for node {node}: run this on {node}, as root. The node token below
# is shown this once (only its digest is kept); nodes/{node}.yaml must be merged.
set -eu

# 1. A user for the agent, its storage, its settings and its token.
id mlsm >/dev/null 2>&1 || useradd --system --home-dir {storage_root} --create-home mlsm
install -d -o mlsm -g mlsm -m 750 {storage_root}
install -d -m 755 {ETC}
cat > {ETC}/agent.toml <<'TOML'
{settings}TOML
{ca}install -m 640 -g mlsm /dev/null {ETC}/agent.token
printf '%s\\n' '{token}' > {ETC}/agent.token
cat > /etc/systemd/system/mlsm-agent.service <<'UNIT'
{agent_unit()}UNIT

# 2. Install the agent, and start it.
python3 -m venv {PREFIX} && {PREFIX}/bin/pip install --quiet {_package(package)}
systemctl daemon-reload && systemctl enable --now mlsm-agent
"""


def _package(package: str | None) -> str:
    """What pip installs: the lab's mlsm, never a guess at a package index's name."""
    if package:
        return "'" + package.replace("'", "'\\''") + "'"
    return (
        '"${MLSM_PACKAGE:?set MLSM_PACKAGE to where your lab installs mlsm from, '
        'e.g. git+https://github.com/your-lab/mlsm@v0.1.0}"'
    )
