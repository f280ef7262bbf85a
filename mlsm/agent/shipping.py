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

Every runtime writes its runs' output to the run folder's files, so `Shipper` ships
venv and container runs alike.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from mlsm.agent.client import Complaints, ControllerClient, Gone, Refused, Unreachable
from mlsm.agent.records import RunRecord

__all__ = ["BATCH_BYTES", "LINE_CAP", "SHIP_SECONDS", "Shipper", "read_lines"]

log = logging.getLogger("mlsm.agent")

SHIP_SECONDS = 0.25

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


class Shipper:
    """Ships every recorded run's log and metrics, oldest offset first, and forgets a
    run (its record; its container through `release`) once it is reported, forgotten
    by the reconciler and all its output is held by the controller."""

    def __init__(
        self,
        client: ControllerClient,
        state: Path,
        complaints: Complaints,
        release: Callable[[RunRecord], Awaitable[None]],
    ) -> None:
        self.client = client
        self.state = state
        self.complaints = complaints
        self.release = release
        self.records: dict[str, RunRecord] = {}

    def add(self, record: RunRecord) -> None:
        self.records[record.run] = record

    async def loop(self) -> None:
        while True:
            for record in list(self.records.values()):
                try:
                    await self.ship(record)
                except Refused as exc:
                    self.complaints.complain(
                        "ship", f"cannot ship run {record.run[:8]}'s output: {exc}"
                    )
                except Gone:  # the controller has no such run (a new database): stop trying
                    log.warning("run %s is unknown to the controller: its output stays in %s",
                                record.run[:8], record.directory)  # fmt: skip
                    await self._done(record)
                except Unreachable as exc:
                    self.complaints.complain("ship", f"cannot ship output: {exc}; retrying")
                    break
            await anyio.sleep(SHIP_SECONDS)

    async def ship(self, record: RunRecord) -> None:
        for stream, path in (("log", record.log), ("metrics", record.metrics)):
            while True:
                offset = record.log_offset if stream == "log" else record.metrics_offset
                final = record.ended
                lines, end = await anyio.to_thread.run_sync(
                    functools.partial(read_lines, path, offset, final=final)
                )
                if end == offset:
                    break
                held = await self.client.output(record.run, stream, lines, end)
                self.complaints.recovered("ship")
                if stream == "log":
                    record.log_offset = held
                else:
                    record.metrics_offset = held
                record.save(self.state)
        if record.forgotten and record.ended:
            await self._done(record)

    async def _done(self, record: RunRecord) -> None:
        self.records.pop(record.run, None)
        record.remove(self.state)
        await self.release(record)
