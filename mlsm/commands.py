"""What the server commands (`mlsm-controller`, `mlsm-agent`, `mlsm-web`) share:
one way to run a Typer app so that errors are one line, never a traceback, and one
reading of `--listen HOST:PORT`."""

from __future__ import annotations

import os
from typing import Any

import typer

from mlsm.errors import UserError

__all__ = ["listen_address", "run_command"]


def run_command(app: Any, prog: str, argv: list[str] | None) -> int:
    """Run `app` and return its exit status: a UserError is `prog: error: ...` and 1;
    anything else unexpected is one line that says it is a bug, and 70 (the
    traceback with MLSM_DEBUG=1)."""
    try:
        app(args=argv, prog_name=prog)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UserError as exc:
        typer.echo(f"{prog}: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("MLSM_DEBUG"):
            raise
        typer.echo(
            f"{prog}: internal error: {type(exc).__name__}: {exc}\nThis is a bug in mlsm; "
            "rerun with MLSM_DEBUG=1 for the traceback and report it.",
            err=True,
        )
        return 70
    return 0


def listen_address(value: str, *, example: str) -> tuple[str, int]:
    """`--listen HOST:PORT` (an empty host is 127.0.0.1)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UserError(f"--listen '{value}' must be HOST:PORT, e.g. {example}")
    return host or "127.0.0.1", int(port)
