"""What a venv job is allowed is what it gets: CPUs by affinity (chosen least used
first), memory watched by the run's shim, which ends the whole group past it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlsm.agent import limits, shim

SHIM = shim.__file__


def test_cpus_are_whole_and_the_least_used_first() -> None:
    chosen = limits.choose(1.5, None, [0, 1, 2, 3], busy=[0, 1, 0])
    assert chosen.cpus == (2, 3)
    assert "cpu 1.5: 2 of 4 CPUs (2,3) by affinity, rounded up from 1.5 (no CPU quota)" in (
        chosen.said
    )
    assert limits.choose(0.5, None, [0, 1], busy=[]).cpus == (0,)
    everything = limits.choose(4, None, [0, 1], busy=[])
    assert everything.cpus == ()
    assert "all 2 CPUs of the node (not limited)" in everything.said
    assert "memory: not limited" in everything.said


def test_memory_is_said_with_how_it_is_watched() -> None:
    said = limits.choose(1, 256 << 20, [0, 1], busy=[]).said
    assert said.startswith("enforced: cpu 1: 1 of 2 CPUs (0) by affinity; memory 256Mi: ")
    assert "OOMKilled past it" in said


def shimmed(tmp_path: Path, *options: str, code: str) -> tuple[int, dict[str, object], str]:
    status = tmp_path / "status.json"
    done = subprocess.run(
        [sys.executable, "-I", SHIM, str(status), *options, "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, start_new_session=True,
    )  # fmt: skip
    return done.returncode, json.loads(status.read_text()), done.stdout


def test_the_shim_ends_a_run_that_grows_past_its_memory(tmp_path: Path) -> None:
    grow = (
        "import time\nheap = []\nwhile True:\n    heap.append(bytearray(8 << 20)); time.sleep(0.01)"
    )
    code, status, _ = shimmed(tmp_path, "--memory", str(64 << 20), code=grow)
    assert status["reason"] == "OOMKilled"
    assert status["exitCode"] == -9
    message = str(status["message"])
    assert message.startswith("killed for memory: its processes used ")
    assert "over the 64.0 MiB it is allowed (resources.memory)" in message
    assert code == 128 + 9


def test_a_run_within_its_memory_ends_as_it_would(tmp_path: Path) -> None:
    code, status, _ = shimmed(tmp_path, "--memory", str(512 << 20), code="import sys; sys.exit(3)")
    assert (code, status) == (3, {"exitCode": 3})


def test_the_shim_pins_a_run_and_all_it_starts_to_its_cpus(tmp_path: Path) -> None:
    one = min(os.sched_getaffinity(0))
    show = "import os; print(sorted(os.sched_getaffinity(0)))"
    probe = f"{show}; import subprocess, sys; subprocess.run([sys.executable, '-c', {show!r}])"
    _, status, out = shimmed(tmp_path, "--cpus", str(one), code=probe)
    assert status == {"exitCode": 0}
    assert out.split() == [f"[{one}]", f"[{one}]"]


def fake_hierarchy(tmp_path: Path) -> Path:
    """A cgroup v1 memory hierarchy as a plain folder, with this process's own path."""
    own = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    [path] = [p for _, controllers, p in own if "memory" in controllers.split(",")] or ["/"]
    base = tmp_path / "memory" / path.lstrip("/")
    base.mkdir(parents=True, exist_ok=True)
    return base


def test_a_memory_cgroup_is_made_below_the_agents_own(tmp_path: Path) -> None:
    base = fake_hierarchy(tmp_path)
    group = limits.memory_cgroup("run-1", 64 << 20, root=tmp_path)
    assert group == base / "mlsm-run-1"
    assert (group / "memory.limit_in_bytes").read_text() == str(64 << 20)
    chosen = limits.choose(1, 64 << 20, [0, 1], busy=[], cgroup=group)
    assert (chosen.memory, chosen.cgroup) == (None, group)  # the kernel holds it, not the watch
    assert f"memory 64Mi: a memory cgroup ({group}), held by the kernel" in chosen.said
    assert limits.oom_killed(group) is None
    (group / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert limits.oom_killed(group) == (
        "killed by the kernel for memory: over the 64Mi it is allowed "
        "(resources.memory, held by a memory cgroup)"
    )


def test_without_a_writable_hierarchy_the_shim_watches(tmp_path: Path) -> None:
    assert limits.memory_cgroup("run-1", 64 << 20, root=tmp_path / "none") is None
    said = limits.choose(1, 64 << 20, [0, 1], busy=[]).said
    assert "watched every 0.25 s, OOMKilled past it (no memory cgroup to use here)" in said


def test_the_kernel_holds_a_real_memory_cgroup(tmp_path: Path) -> None:
    # Machines like CI's offer a memory cgroup the agent may write (cgroup v1's memory
    # hierarchy, as root); where one is missing this fails rather than skip, since
    # the runs there would fall back to the shim's watch.
    group = limits.memory_cgroup(f"test-{os.getpid()}", 64 << 20)
    assert group is not None, "no memory cgroup this process may write"
    try:
        grow = "heap = []\nwhile True:\n    heap.append(bytearray(8 << 20))"
        _, status, _ = shimmed(tmp_path, "--cgroup", str(group), code=grow)
        assert status["exitCode"] == -9  # the kernel's OOM killer, inside the cgroup
        assert limits.oom_killed(group) is not None
        assert not (group / "cgroup.procs").read_text().strip()  # the shim has left it
    finally:
        limits.release(group)
    assert not group.exists()
