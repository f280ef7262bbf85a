"""`mlsm-controller`: run the controller, migrate its database, manage API tokens.

    mlsm-controller run --repo manifests/ --branch main
    mlsm-controller migrate
    mlsm-controller token issue --role admin        # printed once, stored hashed

Every flag has an environment variable (MLSM_REPO, MLSM_DATABASE_URL, ...). Errors
are one line and exit 1; never a traceback unless MLSM_DEBUG=1.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer
from sqlalchemy import select

from mlsm import __version__
from mlsm.commands import listen_address, run_command
from mlsm.controller import backups
from mlsm.controller.joining import join_script
from mlsm.controller.leading import SqliteLeadership, leadership_for
from mlsm.controller.running import Controller, Settings
from mlsm.controller.sources import SourceError, open_source
from mlsm.errors import UserError
from mlsm.store import Node, Store, Token
from mlsm.store.tokens import issue_token
from mlsm.tls import check_server_files, client_context

__all__ = ["app", "entry", "main"]

app = typer.Typer(
    name="mlsm-controller",
    help="The mlsm controller: follows a git branch of manifests, reconciles them into its "
    "database, and serves the API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
tokens = typer.Typer(help="API tokens: shown once when issued, stored as sha256 digests.",
                     no_args_is_help=True)  # fmt: skip
app.add_typer(tokens, name="token")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mlsm-controller {__version__}")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option("--version", callback=_print_version, is_eager=True,
                 help="Print the version and exit."),
]  # fmt: skip
DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", envvar="MLSM_DATABASE_URL", show_default=False,
                 help="SQLAlchemy URL: postgresql://user@host/db, or sqlite:///path "
                 "(default: sqlite:///.mlsm/mlsm.db)."),
]  # fmt: skip


@app.callback()
def _root(version: VersionOption = False) -> None:
    """The mlsm controller."""


@app.command()
def run(
    repo: Annotated[
        str,
        typer.Option(
            "--repo",
            envvar="MLSM_REPO",
            help="The manifests: a git clone URL, a local git repository, or a "
            "plain local directory.",
        ),
    ],
    branch: Annotated[
        str, typer.Option(envvar="MLSM_BRANCH", help="The branch to follow.")
    ] = "main",
    path: Annotated[
        str,
        typer.Option(
            envvar="MLSM_PATH", help="A folder inside the repository that holds the manifests."
        ),
    ] = "",
    database_url: DatabaseOption = None,
    listen: Annotated[
        str, typer.Option(envvar="MLSM_LISTEN", help="HOST:PORT for the API.")
    ] = "127.0.0.1:8470",
    poll_interval: Annotated[
        float,
        typer.Option(
            envvar="MLSM_POLL_INTERVAL", min=0.1, help="Seconds between polls of the branch."
        ),
    ] = 10.0,
    webhook_secret: Annotated[
        str,
        typer.Option(
            envvar="MLSM_WEBHOOK_SECRET",
            show_default=False,
            help="Shared secret for POST /api/v1/hooks/git (off if empty).",
        ),
    ] = "",
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="MLSM_STATE_DIR", help="Where mirrors of remote repositories are kept."
        ),
    ] = Path(".mlsm"),
    allow_mass_prune: Annotated[
        bool,
        typer.Option(
            "--allow-mass-prune",
            envvar="MLSM_ALLOW_MASS_PRUNE",
            help="Apply commits that would prune all or most objects.",
        ),
    ] = False,
    max_prune_share: Annotated[
        float,
        typer.Option(
            envvar="MLSM_MAX_PRUNE_SHARE",
            min=0.0,
            max=1.0,
            help="A commit pruning more than this share of 10 or more objects is held.",
        ),
    ] = 0.5,
    migrate: Annotated[
        bool,
        typer.Option(
            " /--no-migrate",
            envvar="MLSM_MIGRATE",
            help="--no-migrate: refuse to start on an outdated database instead of migrating it.",
        ),
    ] = True,
    watch: Annotated[
        bool,
        typer.Option(
            " /--no-watch",
            envvar="MLSM_WATCH",
            help="--no-watch: do not watch a local source for changes.",
        ),
    ] = True,
    node_grace: Annotated[
        float,
        typer.Option(
            envvar="MLSM_NODE_GRACE",
            min=0.1,
            help="Seconds without heartbeats before a node is NotReady.",
        ),
    ] = 20.0,
    node_lost: Annotated[
        float,
        typer.Option(
            envvar="MLSM_NODE_LOST",
            min=0.1,
            help="Seconds without heartbeats before its runs are Lost and retried elsewhere.",
        ),
    ] = 300.0,
    token_cache: Annotated[
        float,
        typer.Option(
            envvar="MLSM_TOKEN_CACHE",
            min=0.0,
            help="Seconds live node tokens are held in memory: how long a revoked node "
            "token may still work. (A token issued meanwhile works at once.)",
        ),
    ] = 10.0,
    schedule_interval: Annotated[
        float,
        typer.Option(
            envvar="MLSM_SCHEDULE_INTERVAL",
            min=0.05,
            help="Seconds between scheduling passes; a sync or an agent report starts one at once.",
        ),
    ] = 1.0,
    recheck_interval: Annotated[
        float,
        typer.Option(
            envvar="MLSM_RECHECK_INTERVAL",
            min=0.05,
            help="Seconds between database reads of a waiting long poll (assignments, "
            "logs); a binding or shipped output in this controller answers it at once.",
        ),
    ] = 1.0,
    read_timeout: Annotated[
        float,
        typer.Option(
            envvar="MLSM_READ_TIMEOUT",
            min=0.1,
            help="Seconds a request's headers and body may take to arrive; a slower "
            "client is disconnected.",
        ),
    ] = 10.0,
    max_connections: Annotated[
        int,
        typer.Option(
            envvar="MLSM_MAX_CONNECTIONS",
            min=16,
            help="Connections served at once (each agent holds about two); past it, 503.",
        ),
    ] = 1000,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            envvar="MLSM_FORWARDED_ALLOW_IPS",
            help="Comma-separated addresses of reverse proxies whose X-Forwarded-For "
            "is believed. Empty (the default): the socket's address is the client's.",
        ),
    ] = "",
    require_token: Annotated[
        bool,
        typer.Option(
            "--require-token",
            envvar="MLSM_REQUIRE_TOKEN",
            help="Reads need a read token from this machine too (a host shared with other users).",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="MLSM_TLS_CERT",
            show_default=False,
            help="Serve HTTPS with this PEM certificate (its chain after it); with --tls-key.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            envvar="MLSM_TLS_KEY", show_default=False, help="The certificate's unencrypted PEM key."
        ),
    ] = None,
    version: VersionOption = False,
) -> None:
    """Follow the branch, reconcile it into the database, and serve the API."""  # fmt: skip
    host, port = listen_address(listen, example="127.0.0.1:8470")
    if (tls_cert is None) != (tls_key is None):
        raise UserError("--tls-cert and --tls-key go together: give both, or neither for HTTP")
    if tls_cert is not None and tls_key is not None:
        check_server_files(tls_cert, tls_key)
    settings = Settings(
        repo=repo, branch=branch, path=path, database_url=database_url, host=host, port=port,
        poll_interval=poll_interval, webhook_secret=webhook_secret, state_dir=state_dir,
        allow_mass_prune=allow_mass_prune, max_prune_share=max_prune_share, watch=watch,
        node_grace=node_grace, node_lost=node_lost, token_cache=token_cache,
        schedule_interval=schedule_interval, recheck_interval=recheck_interval,
        read_timeout=read_timeout, max_connections=max_connections,
        forwarded_allow_ips=forwarded_allow_ips, require_token=require_token,
        tls_cert=tls_cert, tls_key=tls_key,
    )  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("alembic", "watchfiles", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    store = Store.open(database_url)
    if migrate:
        store.migrate()
    else:
        store.check_migrated()
    try:
        source = open_source(repo, branch=branch, path=path, state_dir=state_dir)
    except SourceError as exc:
        raise UserError(str(exc)) from exc
    leadership = leadership_for(store, store.engine.url.database)
    if isinstance(leadership, SqliteLeadership):
        leadership.claim()  # a second controller on this file stops here, saying why
    controller = Controller(settings, store, source, leadership)
    anyio.run(controller.run)


@app.command("migrate")
def migrate_command(database_url: DatabaseOption = None, version: VersionOption = False) -> None:
    """Bring the database schema to this version's newest revision."""
    store = Store.open(database_url)
    store.migrate()
    current, _ = store.revisions()
    typer.echo(f"database at revision {current}")


@app.command("join")
def join_command(
    node: Annotated[str, typer.Argument(help="The server's Node name (nodes/NAME.yaml).")],
    controller_url: Annotated[
        str,
        typer.Option(
            "--controller-url",
            envvar="MLSM_PUBLIC_URL",
            help="Where the server reaches the controller (several: comma-separated).",
        ),
    ],
    ca_file: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            help="The CA of the controller's certificate, to install on the server.",
        ),
    ] = None,
    storage_root: Annotated[str, typer.Option(help="The agent's storage root there.")] = (
        "/srv/mlsm"
    ),
    package: Annotated[
        str | None,
        typer.Option(
            envvar="MLSM_PACKAGE",
            show_default=False,
            help="What pip installs mlsm from there (default: the script asks for MLSM_PACKAGE).",
        ),
    ] = None,
    database_url: DatabaseOption = None,
    version: VersionOption = False,
) -> None:
    """Issue NODE's token and print what that server needs next, as a script to run
    there as root: the agent's settings and token, and the two commands that install
    the agent and start it under systemd."""
    urls = [u.strip().rstrip("/") for u in controller_url.split(",") if u.strip()]
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        raise UserError(f"--controller-url must be http(s) URLs, got '{controller_url}'")
    ca_pem = None
    if ca_file is not None:
        try:
            ca_pem = ca_file.read_text()
        except OSError as exc:
            raise UserError(f"--ca-file {ca_file}: {exc.strerror}") from None
        client_context(ca_file)  # a PEM that verifies, or one line saying why not
    store = Store.open(database_url)
    store.check_migrated()
    with store.write() as session:
        merged = session.scalars(
            select(Node).where(Node.name == node, Node.deleted_at.is_(None), Node.generation > 0)
        ).first()
        secret = issue_token(session, "node", node)
    script = join_script(
        node, secret, urls, storage_root=storage_root, ca_pem=ca_pem, package=package
    )
    typer.echo(script, nl=False)
    typer.echo(f"node token {secret[:12]}… issued for {node}; run the script above on it", err=True)
    if merged is None:
        typer.echo(
            f"warning: no Node {node} is merged yet: its agent is refused until "
            f"nodes/{node}.yaml is",
            err=True,
        )


@app.command("backup")
def backup_command(
    path: Annotated[Path, typer.Argument(help="The file to write (replaced whole).")],
    database_url: DatabaseOption = None,
    version: VersionOption = False,
) -> None:
    """Copy the database to PATH while the controller runs: SQLite's online backup
    API (checked before it replaces PATH), or pg_dump --format=custom."""
    store = Store.open(database_url)
    store.check_migrated()
    typer.echo(backups.backup(store, path))


@app.command("restore")
def restore_command(
    path: Annotated[Path, typer.Argument(help="A file `backup` wrote.")],
    database_url: DatabaseOption = None,
    version: VersionOption = False,
) -> None:
    """Replace the database with a backup; stop the controller first (SQLite: it
    refuses while one runs). PostgreSQL: pg_restore --clean."""
    store = Store.open(database_url)
    said = backups.restore(store, path)
    store.dispose()
    Store.open(database_url).check_migrated()
    typer.echo(said)


@tokens.command("issue")
def issue_command(
    role: Annotated[
        str,
        typer.Option(
            help="admin (apply, delete), read (the API from another machine), or node (an agent)."
        ),
    ] = "admin",
    node: Annotated[str | None, typer.Option(help="The node an agent token is for.")] = None,
    database_url: DatabaseOption = None,
) -> None:
    """Issue a token. It is printed once; only its digest is stored."""  # fmt: skip
    if role not in ("admin", "read", "node"):
        raise UserError(f"--role must be admin, read or node, got '{role}'")
    if (role == "node") != (node is not None):
        raise UserError("a node token needs --node NAME, and only a node token takes one")
    store = Store.open(database_url)
    store.check_migrated()
    with store.write() as session:
        secret = issue_token(session, role, node)
    typer.echo(secret)
    typer.echo(f"{role} token {secret[:12]}… issued; it is not shown again", err=True)


@tokens.command("revoke")
def revoke_token(
    prefix: Annotated[str, typer.Argument(help="The token, or its first 12 characters.")],
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a token: an admin or read token stops working at once, a node token
    within 10 s (the agent API holds live node tokens in memory)."""
    store = Store.open(database_url)
    store.check_migrated()
    with store.write() as session:
        rows = session.scalars(select(Token).where(Token.prefix == prefix[:12],
                                                   Token.revoked_at.is_(None))).all()  # fmt: skip
        if not rows:
            raise UserError(f"no live token starts with '{prefix[:12]}'")
        for row in rows:
            row.revoked_at = dt.datetime.now(dt.UTC)
    nodes = sum(1 for row in rows if row.role == "node")
    later = " (a node token stops working within --token-cache, 10 s by default)" if nodes else ""
    typer.echo(f"revoked {len(rows)} token(s) {prefix[:12]}…{later}")


@tokens.command("list")
def list_tokens(database_url: DatabaseOption = None) -> None:
    """List tokens (prefix, role, node, created, revoked)."""
    store = Store.open(database_url)
    store.check_migrated()
    with store.read() as session:
        for row in session.scalars(select(Token).order_by(Token.id)):
            revoked = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "live"
            typer.echo(f"{row.prefix}…  {row.role:5s}  {row.node or '-':20s}  "
                       f"{row.created_at:%Y-%m-%d %H:%M}  {revoked}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return run_command(app, "mlsm-controller", argv)


def entry() -> None:
    sys.exit(main())
