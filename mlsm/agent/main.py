"""`mlsm-agent`: the node agent.

    mlsm-agent run --controller http://ctl.lab:8470 --node gpu-1 \\
        --token-file /etc/mlsm/agent.token --storage-root /srv/mlsm
    mlsm-agent run --config /etc/mlsm/agent.toml

Every flag has an environment variable (MLSM_AGENT_CONTROLLER, MLSM_AGENT_NODE, ...)
and a key in the TOML file; flags win over the environment, which wins over the file.
Errors are one line and exit 1; never a traceback unless MLSM_DEBUG=1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from mlsm import __version__
from mlsm.agent.client import ControllerClient
from mlsm.agent.running import Agent
from mlsm.agent.settings import load_settings
from mlsm.commands import run_command
from mlsm.tls import client_context, refuse_clear_text

__all__ = ["app", "entry", "main"]

app = typer.Typer(
    name="mlsm-agent",
    help="The mlsm node agent: runs the jobs the controller assigns to this server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mlsm-agent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:  # fmt: skip
    """The mlsm node agent."""


def _opt(name: str, help: str) -> Any:
    return typer.Option(f"--{name}", envvar=f"MLSM_AGENT_{name.upper().replace('-', '_')}",
                        show_default=False, help=help)  # fmt: skip


@app.command()
def run(
    config: Annotated[Path | None, _opt("config", "A TOML file with these settings.")] = None,
    controller: Annotated[str | None, _opt("controller", "The controller's URL.")] = None,
    node: Annotated[str | None, _opt("node", "This server's Node name.")] = None,
    token_file: Annotated[Path | None, _opt("token-file", "File holding the node token.")] = None,
    storage_root: Annotated[Path | None, _opt("storage-root", "Datasets, envs and runs.")] = None,
    state_dir: Annotated[Path | None, _opt("state-dir", "Agent state (default: under "
                                                        "the storage root).")] = None,
    heartbeat_interval: Annotated[float | None, _opt("heartbeat-interval", "Seconds.")] = None,
    stop_grace: Annotated[float | None, _opt("stop-grace", "Seconds from SIGTERM "
                                                           "to SIGKILL.")] = None,
    gpus_file: Annotated[Path | None, _opt("gpus-file", "JSON list of GPUs to report "
                                                        "instead of NVML/nvidia-smi.")] = None,
    stop_runs_on_exit: Annotated[bool | None, _opt("stop-runs-on-exit", "Stop the runs when "
                                                   "the agent stops.")] = None,
    advertise_address: Annotated[str | None, _opt("advertise-address", "The address other "
                                 "nodes reach this one at (multi-node jobs; default: the "
                                 "one that reaches the controller).")] = None,
    rendezvous_timeout: Annotated[float | None, _opt("rendezvous-timeout", "Seconds a "
                                  "multi-node job's ranks wait for one another.")] = None,
    ca_file: Annotated[Path | None, _opt("ca-file", "The CA of the controller's "
                       "certificate (default: the system's).")] = None,
    insecure: Annotated[bool | None, _opt("insecure", "Send the node token over plain "
                        "HTTP to another machine.")] = None,
) -> None:  # fmt: skip
    """Run the agent until interrupted."""
    settings = load_settings(config, {
        "controller": controller, "node": node, "token_file": token_file,
        "storage_root": storage_root, "state_dir": state_dir,
        "heartbeat_interval": heartbeat_interval, "stop_grace": stop_grace,
        "gpus_file": gpus_file, "stop_runs_on_exit": stop_runs_on_exit,
        "advertise_address": advertise_address, "rendezvous_timeout": rendezvous_timeout,
        "ca_file": ca_file, "insecure": insecure,
    })  # fmt: skip
    for url in settings.controllers:
        refuse_clear_text(url, insecure=settings.insecure, secret="node token")
    verify = client_context(settings.ca_file)
    token = settings.read_token()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise

    async def serve() -> None:
        client = ControllerClient(settings.controllers, settings.node, token, verify=verify)
        try:
            logging.getLogger("mlsm.agent").info(
                "mlsm-agent %s: node %s, controller %s, storage %s", __version__,
                settings.node, settings.controller, settings.storage_root,
            )  # fmt: skip
            await Agent(settings, client).run()
        finally:
            await client.aclose()

    anyio.run(serve)


def main(argv: list[str] | None = None) -> int:
    return run_command(app, "mlsm-agent", argv)


def entry() -> None:
    sys.exit(main())
