"""How the lines of one process of a job under torchrun are told apart: the agent
has torchrun prefix each process's lines with its rank; the controller stores the
rank with each line, so `mlsmctl logs --rank K` reads one process."""

from __future__ import annotations

import re

__all__ = ["RANK_PREFIX", "line_rank"]

RANK_PREFIX = "[rank${rank}]: "
"""TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE, as the agent sets it (torchrun fills in
the global rank)."""

_RANKED = re.compile(r"\[rank(\d{1,7})\]: ")


def line_rank(text: str) -> int | None:
    """The process rank a line comes from; None for the launcher's own lines."""
    found = _RANKED.match(text)
    return int(found.group(1)) if found else None
