"""The one error tree of mlsm.

`UserError` is something a person can fix (a bad manifest, a missing path): the CLI
prints its message on one line and exits 1, never with a traceback. Other
`MlsmError`s are internal and carry retry meaning for the loops that catch them.
"""

from __future__ import annotations

__all__ = ["MlsmError", "UserError"]


class MlsmError(Exception):
    """Base of every error mlsm raises on purpose."""


class UserError(MlsmError):
    """An error the user can fix; its message says what and how."""
