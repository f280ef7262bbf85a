"""The agent's settings, from a TOML file, environment variables (MLSM_AGENT_*) and
flags, later ones winning. Every mistake is one line naming the setting and the fix.

    controller = "http://ctl.lab:8470"
    node = "gpu-1"
    token_file = "/etc/mlsm/agent.token"
    storage_root = "/srv/mlsm"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlsm.errors import UserError

__all__ = ["AgentSettings", "load_settings"]


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    controller: str = Field(
        description="The controller's URL ('https://ctl.lab:8470'), or several, comma-separated, "
        "of controllers on one database: the agent moves to the next when one stops answering."
    )
    node: str = Field(description="This server's Node name, as in nodes/NAME.yaml.")
    token_file: Path = Field(
        description="File holding the node token "
        "(mlsm-controller token issue --role node --node NAME)."
    )
    storage_root: Path = Field(description="Where datasets, environments and runs live.")
    state_dir: Path | None = Field(
        default=None, description="Agent state. Default: <storage_root>/.mlsm-agent."
    )
    runtimes: list[Literal["venv", "docker"]] = Field(
        default=["venv", "docker"],
        description="Runtimes this agent may offer; docker only while a container engine answers.",
    )
    docker_host: str | None = Field(
        default=None,
        description="The container engine's API (default: DOCKER_HOST, else the usual sockets).",
    )
    image_pull_timeout: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds a pull may take before the run fails ImagePullFailed.",
    )
    heartbeat_interval: float = Field(default=5.0, gt=0, le=300)
    stop_grace: float = Field(
        default=10.0, ge=0, le=3600, description="Seconds between SIGTERM and SIGKILL."
    )
    dataset_rescan: float = Field(
        default=60.0,
        ge=1,
        le=86_400,
        description="Seconds between dataset scans (a catalog change scans at once).",
    )
    stop_runs_on_exit: bool = Field(
        default=False,
        description="Stop the runs when the "
        "agent stops (default: they go on and a restarted "
        "agent adopts them).",
    )
    advertise_address: str | None = Field(
        default=None,
        description="The address other nodes reach this one at, for a multi-node job's "
        "rendezvous (default: the address this server reaches the controller from).",
        max_length=253,
        pattern=r"^[A-Za-z0-9.:_-]+$",
    )
    rendezvous_timeout: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds the ranks of a multi-node job wait for one another before "
        "the run fails RendezvousTimeout.",
    )
    long_poll: float = Field(default=30.0, gt=0, le=60)
    gpus_file: Path | None = Field(
        default=None,
        description="A JSON list of GPUs to report instead of asking NVML or nvidia-smi.",
    )
    pip_args: list[str] = Field(
        default_factory=list, description="Extra pip install arguments ('--index-url', ...)."
    )
    ca_file: Path | None = Field(
        default=None,
        description="The CA that signed the controller's certificate (default: the "
        "system's trust store).",
    )
    insecure: bool = Field(
        default=False,
        description="Send the node token over plain HTTP to a controller on another "
        "machine (a trusted network only; https:// is the fix).",
    )

    @field_validator("controller", mode="before")
    @classmethod
    def _url(cls, value: object) -> object:
        urls = value if isinstance(value, list) else str(value).split(",")
        cleaned = [str(url).strip().rstrip("/") for url in urls if str(url).strip()]
        if not cleaned:
            raise ValueError("give the controller's URL, such as https://ctl.lab:8470")
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"must be an http(s) URL such as http://ctl.lab:8470, got '{url}'")
        return ",".join(cleaned)

    @property
    def controllers(self) -> list[str]:
        """Every controller's URL, in the order given."""
        return self.controller.split(",")

    @property
    def state(self) -> Path:
        return self.state_dir or self.storage_root / ".mlsm-agent"

    def read_token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise UserError(
                f"token_file {self.token_file}: {exc.strerror}; issue one on the controller with "
                f"`mlsm-controller token issue --role node --node {self.node}` and save it there"
            ) from None
        if not token:
            raise UserError(f"token_file {self.token_file} is empty")
        return token


def load_settings(config: Path | None, overrides: dict[str, Any]) -> AgentSettings:
    """Settings from the TOML file `config` (if any) with `overrides` (flags and env,
    None meaning not given) on top."""
    values: dict[str, Any] = {}
    where = "settings"
    if config is not None:
        where = str(config)
        try:
            values = tomllib.loads(config.read_text())
        except OSError as exc:
            raise UserError(f"{config}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{config}: not valid TOML: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]) or "settings"
            if error["type"] == "missing":
                flag = key.replace("_", "-")
                problems.append(
                    f"{key} is required (--{flag}, MLSM_AGENT_{key.upper()} "
                    f"or '{key} = ...' in the file)"
                )
            elif error["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown setting")
            else:
                problems.append(f"{key}: {error['msg']}")
        raise UserError(f"{where}: " + "; ".join(problems)) from None
