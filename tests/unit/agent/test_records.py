"""The agent's run records: written durably, and a damaged or missing one rebuilt
from the run's own folder (its process file, else its shim found in /proc), so that
a restarted agent never starts a run a second time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.agent.records import PROCESS_FILE, RunRecord, load_records, write_durably

RUN = "2f1e0c9a-run"


@pytest.fixture
def shim() -> Iterator[subprocess.Popen[bytes]]:
    """A process leading its own group with the run's MLSM_RUN_ID, as a shim does."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "MLSM_RUN_ID": RUN}, start_new_session=True,
    )  # fmt: skip
    yield process
    process.kill()
    process.wait()


def started(tmp_path: Path, pid: int) -> tuple[Path, Path, RunRecord]:
    state, runs = tmp_path / "state", tmp_path / "runs"
    record = RunRecord(run=RUN, job="train", pid=pid, pid_start=None,
                       directory=str(runs / RUN), assignment={"job": "train", "gpus": [1]},
                       log_offset=123)  # fmt: skip
    (runs / RUN).mkdir(parents=True)
    record.save_process()
    record.save(state)
    return state, runs, record


def test_a_record_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r.json"
    write_durably(path, '{"a": 1}')
    write_durably(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left


def test_a_readable_record_is_loaded_as_written(
    tmp_path: Path, shim: subprocess.Popen[bytes]
) -> None:
    state, runs, record = started(tmp_path, shim.pid)
    assert load_records(state, runs) == ([record], [])


def test_a_truncated_record_is_rebuilt_from_the_process_file(
    tmp_path: Path, shim: subprocess.Popen[bytes]
) -> None:
    state, runs, _ = started(tmp_path, shim.pid)
    (state / "runs" / f"{RUN}.json").write_text('{"run": "2f1e')
    [record], [damage] = load_records(state, runs)
    assert (record.run, record.job, record.pid) == (RUN, "train", shim.pid)
    assert record.assignment == {"job": "train", "gpus": [1]}
    assert record.log_offset == 0  # shipped again from the start; the controller dedupes
    assert record.alive()
    assert f"run {RUN}: its record" in damage
    assert "was damaged (JSONDecodeError" in damage
    assert f"found from {runs / RUN / PROCESS_FILE}, pid {shim.pid}, still running" in damage
    assert load_records(state, runs) == ([record], [])  # saved again, whole


def test_without_a_process_file_the_shim_is_found_by_its_run_id(
    tmp_path: Path, shim: subprocess.Popen[bytes]
) -> None:
    state, runs, _ = started(tmp_path, shim.pid)
    (runs / RUN / PROCESS_FILE).unlink()
    (state / "runs" / f"{RUN}.json").write_bytes(b"")
    [record], [damage] = load_records(state, runs)
    assert record.pid == shim.pid
    assert record.alive()
    assert f"its shim found in /proc by MLSM_RUN_ID={RUN}" in damage


def test_a_run_with_no_process_left_is_reported_as_ended(tmp_path: Path) -> None:
    state, runs, _ = started(tmp_path, 0)
    (runs / RUN / PROCESS_FILE).unlink()
    (state / "runs" / f"{RUN}.json").write_text("garbage")
    [record], [damage] = load_records(state, runs)
    assert record.pid == 0
    assert not record.alive()
    assert "no process of it found, pid 0, ended" in damage


def test_a_damaged_record_of_a_run_that_never_started_is_dropped(tmp_path: Path) -> None:
    state, runs = tmp_path / "state", tmp_path / "runs"
    write_durably(state / "runs" / f"{RUN}.json", "{")
    records, [damage] = load_records(state, runs)
    assert records == []
    assert "it never started here" in damage
    assert not (state / "runs" / f"{RUN}.json").exists()


def test_a_run_folder_without_a_record_is_found_again(
    tmp_path: Path, shim: subprocess.Popen[bytes]
) -> None:
    state, runs, _ = started(tmp_path, shim.pid)
    (state / "runs" / f"{RUN}.json").unlink()
    [record], [damage] = load_records(state, runs)
    assert record.pid == shim.pid
    assert "had no record" in damage


def test_a_forgotten_run_is_not_found_again(tmp_path: Path, shim: subprocess.Popen[bytes]) -> None:
    state, runs, record = started(tmp_path, shim.pid)
    record.remove(state)
    assert load_records(state, runs) == ([], [])
    assert (runs / RUN).is_dir()  # the folder stays: it is the run's output
