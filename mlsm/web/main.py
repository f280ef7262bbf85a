"""`mlsm-web`: the status site alone, against the controller's database, for a site on
another host than the controller.

    mlsm-web --database-url postgresql://mlsm@db/mlsm --listen 0.0.0.0:8471

It only reads. Reads follow the API's rule: free on loopback, a read token (HTTP
Basic, the token as password) from elsewhere. Live pages poll the database every
`--live-interval` seconds (the controller's own site is woken by its agents' output
at once). Errors are one line and exit 1.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
import uvicorn

from mlsm import __version__
from mlsm.commands import listen_address, run_command
from mlsm.store import Store
from mlsm.web.site import create_site

__all__ = ["app", "entry", "main"]

app = typer.Typer(
    name="mlsm-web",
    help="The mlsm status site alone: read-only pages over the controller's database.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlsm-web {__version__}")
        raise typer.Exit()


@app.command()
def serve(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="MLSM_DATABASE_URL",
            show_default=False,
            help="The controller's database (default: sqlite:///.mlsm/mlsm.db).",
        ),
    ] = None,
    listen: Annotated[
        str, typer.Option(envvar="MLSM_WEB_LISTEN", help="HOST:PORT to serve on.")
    ] = "127.0.0.1:8471",
    live_interval: Annotated[
        float,
        typer.Option(
            envvar="MLSM_WEB_LIVE_INTERVAL",
            min=0.1,
            help="Seconds between reads of a followed page's state and log.",
        ),
    ] = 1.0,
    require_token: Annotated[
        bool,
        typer.Option(
            "--require-token",
            envvar="MLSM_REQUIRE_TOKEN",
            help="A read token from this machine too (a host shared with other users).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Serve the status site."""
    host, port = listen_address(listen, example="127.0.0.1:8471")
    store = Store.open(database_url)
    store.check_migrated()
    site = create_site(store, live_interval=live_interval, access=True, require_token=require_token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("mlsm.web").info("status site on http://%s:%d", host, port)
    uvicorn.run(
        site,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
    )


def main(argv: list[str] | None = None) -> int:
    return run_command(app, "mlsm-web", argv)


def entry() -> None:
    sys.exit(main())
