"""read_lines: whole lines with their offsets from a file being written, each line
shipped once, a long one cut, never split in two."""

from __future__ import annotations

from pathlib import Path

from mlsm.agent.shipping import LINE_CAP, read_lines


def test_whole_lines_with_offsets_and_a_line_being_written_waits(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"one\ntwo\nthr")
    assert read_lines(log, 0, final=False) == ([(0, "one"), (4, "two")], 8)
    assert read_lines(log, 8, final=False) == ([], 8)  # 'thr' is not a line yet
    assert read_lines(log, 8, final=True) == ([(8, "thr")], 11)  # the writer ended


def test_a_long_line_is_cut_and_says_how_much_was_left_out(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"x" * 100_000 + b"\nnext\n")
    lines, end = read_lines(log, 0, final=False)
    assert [offset for offset, _ in lines] == [0, 100_001]
    assert lines[0][1] == "x" * LINE_CAP + f"… [line cut: {100_000 - LINE_CAP} more bytes]"
    assert (lines[1][1], end) == ("next", 100_006)


def test_a_long_line_still_being_written_is_shipped_cut_once_and_never_split(
    tmp_path: Path,
) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"a\n" + b"x" * (LINE_CAP + 10))  # a progress bar, or a big line mid-write
    lines, offset = read_lines(log, 0, final=False)
    assert lines == [(0, "a"), (2, "x" * LINE_CAP + "… [line cut: 10 more bytes so far]")]
    with log.open("ab") as more:
        more.write(b"x" * 5_000_000)
    assert read_lines(log, offset, final=False) == ([], LINE_CAP + 12 + 5_000_000)
    offset = LINE_CAP + 12 + 5_000_000
    with log.open("ab") as more:
        more.write(b"xxx\nafter\n")
    assert read_lines(log, offset, final=False) == ([(offset + 4, "after")], offset + 10)
