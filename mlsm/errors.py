"""The one error tree of mlsm.

`UserError` is something a person can fix (a bad manifest, a missing path): the CLI
prints its message on one line and exits 1, never with a traceback. `HttpError` is
a request refused, with the status and the one line its caller is shown: the one
error type of the controller's APIs and the status site. Other `MlsmError`s are
internal and carry retry meaning for the loops that catch them.
"""

from __future__ import annotations

__all__ = ["HttpError", "MlsmError", "UserError", "first_line"]


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (a driver's error spans several)."""
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


class MlsmError(Exception):
    """Base of every error mlsm raises on purpose."""


class UserError(MlsmError):
    """An error the user can fix; its message says what and how."""


class HttpError(UserError):
    """A request refused: the status and the one-line message the caller is shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
