"""Shipping a run's output to the controller: its log (stdout and stderr) and its
metric records ($MLSM_METRICS_FILE), as lines with their byte offsets.

The controller keeps each line under (run, offset) and answers the offset it holds;
the agent reads on from there. A retry after any failure (the network, a restarted
controller, a restarted agent: the offsets are in the run's record) therefore
neither loses nor duplicates a line. A line is capped at LINE_CAP bytes (the rest is
skipped, and said so), so a 10 MB line costs one read, not a 10 MB upload; bytes
that are not UTF-8 are kept readable as backslash escapes. A long line still being
written is shipped cut once it passes LINE_CAP (a progress bar that never ends its
line still shows), saying how much followed so far; the rest of that line, when it
comes, is skipped: a read that starts inside a line (the byte before its offset is
not a newline) goes on from the line's end, so one line never becomes two.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

__all__ = ["BATCH_BYTES", "LINE_CAP", "read_lines"]

LINE_CAP = 16 * 1024
BATCH_BYTES = 1 << 20
_SCAN = 1 << 20


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="backslashreplace")


def _capped(raw: bytes, total: int, *, ended: bool = True) -> str:
    if total <= LINE_CAP:
        return _text(raw)
    more = f"{total - LINE_CAP} more bytes" + ("" if ended else " so far")
    return f"{_text(raw[:LINE_CAP])}… [line cut: {more}]"


def read_lines(
    path: Path, offset: int, *, final: bool, limit: int = BATCH_BYTES
) -> tuple[list[tuple[int, str]], int]:
    """Whole lines from `offset`, about `limit` bytes of them: [(offset, text)] and the
    offset after the last. A last line without its newline is returned only when
    `final` (the writer has ended) or once it passes LINE_CAP."""
    lines: list[tuple[int, str]] = []
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return lines, offset
    with handle:
        if offset > 0:
            handle.seek(offset - 1)
            if handle.read(1) != b"\n":  # inside a line shipped cut: skip to its end
                offset, ended = _end_of_line(handle, offset)
                if not ended:
                    return lines, offset
        handle.seek(offset)
        data = handle.read(limit)
        position = 0
        while True:
            newline = data.find(b"\n", position)
            if newline == -1:
                break
            lines.append((offset + position, _capped(data[position:newline], newline - position)))
            position = newline + 1
        rest = data[position:]
        if not rest or (lines and len(data) == limit):
            return lines, offset + position  # the rest comes with the next batch
        if len(rest) <= LINE_CAP and not final:
            return lines, offset + position  # a line being written: wait for its end
        # A long line (or the unterminated last one): keep its head, skip to its end.
        start, head, length = offset + position, rest[: LINE_CAP + 1], len(rest)
        while True:
            chunk = handle.read(_SCAN)
            if not chunk:
                if not final and length <= LINE_CAP:
                    return lines, start
                lines.append((start, _capped(head, length, ended=final)))
                return lines, start + length
            newline = chunk.find(b"\n")
            if newline != -1:
                head = (head + chunk[:newline])[: LINE_CAP + 1]
                length += newline
                lines.append((start, _capped(head, length)))
                return lines, start + length + 1
            head = (head + chunk)[: LINE_CAP + 1]
            length += len(chunk)


def _end_of_line(handle: BinaryIO, offset: int) -> tuple[int, bool]:
    """The offset just past the newline that ends the line `offset` is inside, and
    True; or the end of the file and False when that line has not ended yet."""
    handle.seek(offset)
    position = offset
    while True:
        chunk = handle.read(_SCAN)
        if not chunk:
            return position, False
        newline = chunk.find(b"\n")
        if newline != -1:
            return position + newline + 1, True
        position += len(chunk)
