"""The venv runtime for real: environments built once and shared (under a file lock),
a missing Python or a failed pip install as EnvBuildFailed, and a job started in its
own process group with its log file."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from mlsm.agent.records import RunFolder
from mlsm.agent.runtimes import EnvBuildFailed, Launch, StartFailed
from mlsm.agent.runtimes.venv import RunProcess, VenvRuntime


class CountingRuntime(VenvRuntime):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.builds = 0

    def _build(self, *args: object, **kwargs: object) -> None:
        self.builds += 1
        time.sleep(0.3)  # long enough for the second caller to meet the lock
        super()._build(*args, **kwargs)  # type: ignore[arg-type]


def launch(tmp_path: Path, argv: list[str], **extra: object) -> Launch:
    folder = RunFolder(tmp_path / "runs" / "r1")
    return Launch(run="r1", job="j", node="n", folder=folder, argv=argv, env={}, **extra)  # type: ignore[arg-type]


def test_two_runs_needing_one_environment_build_it_once(tmp_path: Path) -> None:
    runtime = CountingRuntime(tmp_path)
    wanted = launch(tmp_path, ["python"], python=".".join(map(str, sys.version_info[:2])))
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(runtime.ensure_env(wanted)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runtime.builds == 1
    assert found[0] == found[1]
    assert (found[0] / ".mlsm-ready").is_file()
    assert runtime.ensure_env(wanted) == found[0]
    assert runtime.builds == 1
    other = runtime.ensure_env(launch(tmp_path, ["python"], system_site_packages=True))
    assert other != found[0], "another key, another environment"


def test_a_half_built_environment_is_built_again(tmp_path: Path) -> None:
    runtime = VenvRuntime(tmp_path)
    wanted = launch(tmp_path, ["python"])
    path, _, _ = runtime.env_dir(wanted)
    path.mkdir(parents=True)
    (path / "junk").write_text("left by a crash")
    assert runtime.ensure_env(wanted) == path
    assert not (path / "junk").exists()


def test_a_python_the_node_lacks_is_env_build_failed(tmp_path: Path) -> None:
    with pytest.raises(EnvBuildFailed, match=r"Python 3\.99 is not installed on this node"):
        VenvRuntime(tmp_path).ensure_env(launch(tmp_path, ["python"], python="3.99"))


def test_a_failed_pip_install_keeps_pips_last_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    runtime = VenvRuntime(tmp_path)
    wanted = launch(tmp_path, ["python"], requirements=["mlsm-no-such-package==9.9"])
    with pytest.raises(EnvBuildFailed) as caught:
        runtime.ensure_env(wanted)
    assert "pip install failed" in str(caught.value)
    assert "mlsm-no-such-package" in str(caught.value)
    path, _, _ = runtime.env_dir(wanted)
    assert not path.exists(), "a failed build leaves nothing to reuse"


def test_a_job_runs_in_its_own_process_group_with_its_log(tmp_path: Path) -> None:
    runtime = VenvRuntime(tmp_path)
    code = "import os, time; print('pgid', os.getpgid(0), flush=True); time.sleep(60)"
    job = launch(tmp_path, ["python", "-c", code])
    process = runtime.start(job, runtime.ensure_env(job))
    deadline = time.monotonic() + 10
    while "pgid" not in job.folder.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    pgid = int(job.folder.log.read_text().split()[1])
    assert pgid == process.pid != os.getpgid(0), "the run's shim leads its own group"
    process.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.code() == -signal.SIGTERM, "the job's own status, through the shim"
    outcome = process.poll()
    assert outcome is not None
    assert outcome.reason == "Killed"
    assert outcome.message.startswith("killed by SIGTERM")
    assert json.loads(job.folder.status.read_text()) == {"exitCode": -signal.SIGTERM}


def test_an_adopted_run_is_watched_through_proc_and_its_status_file(tmp_path: Path) -> None:
    runtime = VenvRuntime(tmp_path)
    job = launch(tmp_path, ["python", "-c", "import sys, time; time.sleep(0.5); sys.exit(7)"])
    started = runtime.start(job, runtime.ensure_env(job))
    adopted = RunProcess(started.pid, job.folder, started.pid_start)  # as after a restart
    assert adopted.poll() is None
    deadline = time.monotonic() + 10
    while started.code() is None and time.monotonic() < deadline:  # reap the shim
        time.sleep(0.02)
    assert adopted.code() == 7
    outcome = adopted.poll()
    assert outcome is not None
    assert (outcome.reason, outcome.exit_code) == ("Error", 7)
    assert not adopted.unknown


def test_a_command_that_does_not_exist_is_start_failed(tmp_path: Path) -> None:
    runtime = VenvRuntime(tmp_path)
    job = launch(tmp_path, ["no-such-program-here"])
    with pytest.raises(StartFailed, match="command not found: 'no-such-program-here'"):
        runtime.start(job, runtime.ensure_env(job))
