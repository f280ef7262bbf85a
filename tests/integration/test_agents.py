"""A real controller with real `mlsm-agent` processes on loopback, each with its own
storage root: jobs succeed, fail and retry, exceed maxDuration, wait for a GPU, are
cancelled by removing them from git, move off a node that went silent (whose stale
run is stopped when it comes back), and a bad requirements file fails the run with
EnvBuildFailed. Tokens that are wrong, missing or another node's are refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.databases import sqlite_only
from tests.integration.conftest import (
    AgentProcess,
    GitRepo,
    get_job,
    issue_node_token,
    phase,
    ready,
    runs_of,
    wait_for,
    wait_phase,
)


def node(name: str) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: Node
        metadata: {{name: {name}, labels: {{zone: lab}}}}
        spec: {{runtimes: [venv]}}
    """


def job(name: str, code: str, *, gpus: int = 1, extra: str = "", venv: str = "") -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3"{venv}}}}}
          command: [python, -c, {json.dumps(code)}]
          resources: {{gpus: {gpus}, cpu: 0.1}}{extra}
    """


# A job that writes what it sees (whole, when it is there), then does what it was asked.
REPORT_ENV = (
    "import json, os, sys; "
    "keys = ['MLSM_RUN_ID', 'MLSM_OUTPUT_DIR', 'MLSM_METRICS_FILE', 'CUDA_VISIBLE_DEVICES', "
    "'VIRTUAL_ENV', 'GREETING', 'MLSM_DATASET_DIR']; "
    "seen = os.path.join(os.environ['MLSM_OUTPUT_DIR'], 'seen.json'); "
    "f = open(seen + '.partial', 'w'); "
    "json.dump({'env': {k: os.environ.get(k) for k in keys}, 'cwd': os.getcwd(), "
    "'pgid': os.getpgid(0), 'pid': os.getpid()}, f); "
    "f.close(); os.replace(seen + '.partial', seen); "  # whole when the test sees it
    "print('hello from the job'); "
)


def cli(client: httpx.Client, *args: str) -> str:
    """`mlsmctl ARGS` against the controller; its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "mlsm.cli", *args], capture_output=True, text=True, check=True,
        env={**os.environ, "MLSM_SERVER": str(client.base_url)},
    ).stdout  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie left for the agent to reap still counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def started(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
    nodes: dict[str, int],
    *flags: str,
) -> tuple[httpx.Client, dict[str, AgentProcess]]:
    for name in nodes:
        repo.write(f"nodes/{name}.yaml", node(name))
    repo.commit("nodes")
    client = start(str(repo.root), "--poll-interval", "600", *flags)
    wait_for(lambda: all(client.get(f"/api/v1/nodes/{n}").status_code == 200 for n in nodes))
    agents = {n: start_agent(client, n, issue_node_token(database_url, n), gpus=g)
              for n, g in nodes.items()}  # fmt: skip
    wait_for(lambda: all(ready(client, n) for n in nodes))
    return client, agents


@sqlite_only
def test_jobs_succeed_fail_retry_and_stop_at_max_duration(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 2, "n2": 1})
    repo.write("jobs/ok.yaml", job("ok", REPORT_ENV, extra="\n          env: {GREETING: hi}"))
    repo.write("jobs/bad.yaml", job("bad", "import sys; print('boom'); sys.exit(3)",
                                    extra="\n          retries: 1"))  # fmt: skip
    repo.write("jobs/slow.yaml", job("slow", "import time; time.sleep(120)", gpus=0,
                                     extra="\n          maxDuration: 2s"))  # fmt: skip
    repo.commit("three jobs")

    wait_phase(client, "ok", "Succeeded")
    [run] = runs_of(client, "ok")
    holder = agents[run["node"]]
    seen = json.loads((holder.root / "jobs/ok/output/seen.json").read_text())
    assert seen["env"]["MLSM_RUN_ID"] == run["id"]
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, run["gpus"]))
    assert seen["env"]["GREETING"] == "hi"
    assert seen["env"]["VIRTUAL_ENV"].startswith(str(holder.root / "envs"))
    assert seen["env"]["MLSM_METRICS_FILE"] == str(
        holder.root / "runs" / run["id"] / "metrics.jsonl"
    )
    assert seen["cwd"] == str(holder.root / "runs" / run["id"])
    # The run's own process group, led by its shim (the job is the shim's child).
    assert seen["pgid"] not in (seen["pid"], os.getpgid(0), holder.process.pid)
    log = (holder.root / "runs" / run["id"] / "output.log").read_text()
    assert "hello from the job" in log

    wait_phase(client, "bad", "Failed")
    bad = runs_of(client, "bad")
    assert [r["phase"] for r in bad] == ["Failed", "Failed"], "one retry, then failed"
    assert bad[0]["exitCode"] == 3
    assert "boom" in bad[0]["message"]
    assert get_job(client, "bad")["status"]["restarts"] == 1
    page = cli(client, "describe", "job", "bad")
    assert "Runs:" in page
    assert page.count(" Failed ") >= 2
    assert "Last run (" in page
    assert "exit code 3; last output:" in page
    assert "boom" in page

    wait_phase(client, "slow", "Failed")
    [slow] = runs_of(client, "slow")
    assert slow["reason"] == "DeadlineExceeded"
    stopped = agents[slow["node"]].root / "runs" / slow["id"]
    assert stopped.is_dir()
    wait_for(lambda: "stopping (SIGTERM)" in agents[slow["node"]].output())

    # One environment for all three: the same Python and (no) requirements.
    envs = {p.name for a in agents.values() for p in (a.root / "envs").glob("*") if p.is_dir()}
    assert len(envs) == 1


# Runs until its output dir holds a file named 'finish' (the test's switch).
UNTIL_TOLD = (
    "import os, time; "
    "flag = os.path.join(os.environ['MLSM_OUTPUT_DIR'], 'finish'); "
    "exec('while not os.path.exists(flag): time.sleep(0.05)')"
)


@sqlite_only
def test_a_job_waits_for_a_gpu_runs_when_it_frees_and_is_cancelled_from_git(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 1})
    repo.write("jobs/first.yaml", job("first", REPORT_ENV + UNTIL_TOLD))
    repo.commit("first")
    wait_phase(client, "first", "Running")
    outputs = agents["n1"].root / "jobs"
    wait_for((outputs / "first/output/seen.json").is_file)

    repo.write("jobs/second.yaml", job("second", REPORT_ENV + "import time; time.sleep(120)"))
    repo.commit("second")
    wait_for(lambda: "Unschedulable" in str(get_job(client, "second")["status"]["conditions"]))
    conditions = get_job(client, "second")["status"]["conditions"]
    message = next(c["message"] for c in conditions if c["type"] == "Scheduled")
    assert message == "0/1 nodes available: 1 insufficient GPUs"
    assert phase(client, "second") == "Pending"

    (outputs / "first/output/finish").write_text("")  # the first job ends; its GPU frees
    wait_phase(client, "first", "Succeeded")
    wait_phase(client, "second", "Running")
    wait_for((outputs / "second/output/seen.json").is_file)
    pid = json.loads((outputs / "second/output/seen.json").read_text())["pid"]
    assert alive(pid)

    repo.remove("jobs/second.yaml")
    repo.commit("cancel second")
    wait_phase(client, "second", "Cancelled")
    wait_for(lambda: not alive(pid), timeout=10)
    [run] = runs_of(client, "second")
    assert (run["phase"], run["reason"]) == ("Cancelled", "Pruned")


@sqlite_only
def test_a_silent_node_loses_its_run_and_its_stale_copy_is_stopped_when_it_returns(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 1, "n2": 1},
                             "--node-grace", "1.5", "--node-lost", "3")  # fmt: skip
    repo.write("jobs/long.yaml", job("long", REPORT_ENV + "import time; time.sleep(120)"))
    repo.commit("long")
    wait_phase(client, "long", "Running")
    [first] = runs_of(client, "long")
    cut, other = agents[first["node"]], agents["n2" if first["node"] == "n1" else "n1"]
    seen = cut.root / "jobs/long/output/seen.json"
    wait_for(seen.is_file)
    stale_pid = json.loads(seen.read_text())["pid"]

    cut.process.send_signal(signal.SIGSTOP)  # the agent is cut off; its job runs on
    try:
        wait_for(lambda: len(runs_of(client, "long")) == 2, timeout=20)
        wait_phase(client, "long", "Running")
        current = runs_of(client, "long")[0]
        assert current["node"] != first["node"]
        assert runs_of(client, "long")[1]["phase"] == "Lost"
        assert alive(stale_pid), "the partitioned copy still runs until its agent returns"
    finally:
        cut.process.send_signal(signal.SIGCONT)
    wait_for(lambda: not alive(stale_pid), timeout=15)
    assert "stopping (SIGTERM)" in cut.output()
    assert phase(client, "long") == "Running"
    wait_for((other.root / "jobs/long/output/seen.json").is_file)


def dataset(checksum: str = "") -> str:
    expected = f"\n          checksum: {checksum}" if checksum else ""
    return f"""
        apiVersion: mlsm/v1
        kind: Dataset
        metadata: {{name: cats}}
        spec:
          format: imagefolder
          locations:
            - {{node: n1, path: datasets/cats}}
            - {{node: n2, path: datasets/cats}}{expected}
    """


@sqlite_only
def test_a_job_runs_where_its_dataset_really_lies(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 1, "n2": 1})
    data = agents["n2"].root / "datasets/cats"  # the catalog says both; only n2 has it
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (data / split / label).mkdir(parents=True)
            (data / split / label / "0.png").write_bytes(f"{split}-{label}".encode())
    repo.write("datasets/cats.yaml", dataset())
    repo.write("jobs/uses.yaml", job("uses", REPORT_ENV, extra="\n          dataset: cats"))
    repo.commit("cats")

    wait_phase(client, "uses", "Succeeded")
    [run] = runs_of(client, "uses")
    assert run["node"] == "n2"
    seen = json.loads((agents["n2"].root / "jobs/uses/output/seen.json").read_text())
    assert seen["env"]["MLSM_DATASET_DIR"] == str(data)
    held = client.get("/api/v1/nodes/n2").json()["status"]["datasets"]["cats"]
    assert (held["files"], held["bytes"], held["classes"]) == (4, 32, ["cat", "dog"])
    assert held["checksum"].startswith("sha256:")
    assert client.get("/api/v1/nodes/n1").json()["status"]["datasets"] == {}
    # pinned to the data n2 measured (a reproduction) it runs there; to other data, nowhere
    pinned = f"\n          dataset: cats\n          datasetChecksum: {held['checksum']}"
    repo.write("jobs/pinned.yaml", job("pinned", "print(1)", extra=pinned))
    other = pinned.replace(held["checksum"], "sha256:" + "1" * 64)
    repo.write("jobs/elsewhere.yaml", job("elsewhere", "print(1)", extra=other))
    repo.commit("pinned to a dataset checksum")
    wait_phase(client, "pinned", "Succeeded")
    assert runs_of(client, "pinned")[0]["node"] == "n2"
    wait_for(lambda: "another version" in str(get_job(client, "elsewhere")["status"]))
    said = str(get_job(client, "elsewhere")["status"]["conditions"])
    assert "1 holds another version of dataset cats (not sha256:1111" in said
    assert "1 lacks dataset cats" in said
    repo.remove("jobs/pinned.yaml")
    repo.remove("jobs/elsewhere.yaml")

    # A catalog checksum that n2's copy does not match: no node qualifies, and the
    # job says so.
    repo.write("datasets/cats.yaml", dataset("sha256:" + "0" * 64))
    repo.write("jobs/again.yaml", job("again", "print(1)", extra="\n          dataset: cats"))
    repo.commit("a checksum n2 does not match")
    wait_for(lambda: "Unschedulable" in str(get_job(client, "again")["status"]["conditions"]))
    conditions = get_job(client, "again")["status"]["conditions"]
    message = next(c["message"] for c in conditions if c["type"] == "Scheduled")
    assert message == "0/2 nodes available: 2 lack dataset cats"


@sqlite_only
def test_a_requirement_that_cannot_be_installed_fails_with_env_build_failed(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    missing = ", requirements: [mlsm-no-such-package==9.9]"
    repo.write("jobs/deps.yaml", job("deps", "print(1)", gpus=0, venv=missing))
    repo.commit("deps")
    wait_phase(client, "deps", "Failed", timeout=60)
    [run] = runs_of(client, "deps")
    assert run["reason"] == "EnvBuildFailed"
    assert "mlsm-no-such-package" in run["message"]
    assert not list((agents["n1"].root / "envs").glob("*/.mlsm-ready")), "no half-built env kept"


@sqlite_only
def test_bad_missing_and_cross_node_tokens_are_refused(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
    tmp_path: Path,
) -> None:
    repo.write("nodes/n1.yaml", node("n1"))
    repo.write("nodes/n2.yaml", node("n2"))
    repo.commit("nodes")
    client = start(str(repo.root), "--poll-interval", "600")
    wait_for(lambda: client.get("/api/v1/nodes/n2").status_code == 200)
    n1_token = issue_node_token(database_url, "n1")

    wrong = start_agent(client, "n1", "mlsm_not-a-real-token")
    borrowed = start_agent(client, "n2", n1_token)
    unknown = start_agent(client, "ghost", issue_node_token(database_url, "ghost"))
    wait_for(lambda: "invalid or revoked node token" in wrong.output())
    wait_for(lambda: "this token is node n1's; it cannot act for n2" in borrowed.output())
    wait_for(
        lambda: "node ghost has no merged Node manifest: add nodes/ghost.yaml" in unknown.output()
    )
    assert all(client.get(f"/api/v1/nodes/{n}").json()["status"]["lastHeartbeatAt"] is None
               for n in ("n1", "n2"))  # fmt: skip
    assert wrong.process.poll() is None, "a refused agent keeps retrying (the fix may land)"

    # A run of n1's cannot be reported by n2's token; with no token at all: 401.
    n2_token = issue_node_token(database_url, "n2")
    response = client.post("/api/v1/agent/nodes/n1/heartbeat", json={},
                           headers={"Authorization": f"Bearer {n2_token}"})  # fmt: skip
    assert response.status_code == 403
    assert client.post("/api/v1/agent/nodes/n1/heartbeat", json={}).status_code == 401

    missing = subprocess.run(
        [sys.executable, "-m", "mlsm.agent", "run", "--controller", str(client.base_url),
         "--node", "n1", "--token-file", str(tmp_path / "nope"), "--storage-root", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("mlsm-agent: error: token_file")
    assert "mlsm-controller token issue --role node --node n1" in missing.stderr
    assert "Traceback" not in missing.stderr


CHATTY = """
import os, sys, time
flag = os.path.join(os.environ['MLSM_OUTPUT_DIR'], 'finish')
i = 0
while not os.path.exists(flag):
    for _ in range(50):
        print(f'line {i}', flush=True)
        i += 1
    time.sleep(0.02)
print(f'line {i}', flush=True)
sys.stdout.write('x' * 10_000_000 + '\\n')
sys.stdout.flush()
sys.stdout.buffer.write(b'bad \\xff\\xfe bytes\\n')
sys.stdout.flush()
print('done', flush=True)
"""


def shipped(client: httpx.Client, run: str) -> int:
    return int(client.get(f"/api/v1/runs/{run}/logs", params={"tail": 1}).json()["logOffset"])


def test_logs_survive_a_killed_agent_and_a_restarted_controller_without_gap_or_duplicate(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    repo.write("jobs/chatty.yaml", job("chatty", CHATTY, gpus=0))
    repo.commit("chatty")
    wait_phase(client, "chatty", "Running")
    [run] = runs_of(client, "chatty")
    wait_for(lambda: shipped(client, run["id"]) > 1000, timeout=60)

    # kill -9 the agent mid-shipping; a new agent process on the same storage adopts
    # the run (it is not started again) and ships on from the offset held.
    agents["n1"].process.kill()
    agents["n1"].process.wait()
    agent = start_agent(client, "n1", (agents["n1"].root.parent / "token").read_text().strip(),
                        gpus=0, again=agents["n1"])  # fmt: skip
    wait_for(lambda: "adopted" in agent.output(), timeout=60)
    before = shipped(client, run["id"])
    wait_for(lambda: shipped(client, run["id"]) > before + 1000, timeout=60)

    # The controller killed and restarted (same database and port) mid-shipping.
    port = client.base_url.port
    client.process.kill()  # type: ignore[attr-defined]
    client = start(str(repo.root), "--poll-interval", "600", port=port)
    before = shipped(client, run["id"])
    wait_for(lambda: shipped(client, run["id"]) > before + 1000, timeout=60)

    (agent.root / "jobs/chatty/output/finish").write_text("")
    wait_phase(client, "chatty", "Succeeded", timeout=60)
    assert [r["id"] for r in runs_of(client, "chatty")] == [run["id"]], "never started twice"
    size = (agent.root / "runs" / run["id"] / "output.log").stat().st_size
    wait_for(lambda: shipped(client, run["id"]) == size, timeout=60)

    printed = cli(client, "logs", "job", "chatty").splitlines()
    numbered = [line for line in printed if line.startswith("line ")]
    assert numbered == [f"line {i}" for i in range(len(numbered))], "no gap, no duplicate"
    assert len(numbered) > 3000
    big = printed[len(numbered)]
    # cut at 16 KiB; when the agent read it mid-write, with what had followed so far
    cut = re.fullmatch(r"x{16384}… \[line cut: (\d+) more bytes( so far)?\]", big)
    assert cut, big[-80:]
    assert int(cut[1]) == 10_000_000 - 16 * 1024 or (cut[2] and int(cut[1]) < 10_000_000)
    assert printed[len(numbered) + 1 :] == ["bad \\xff\\xfe bytes", "done"]
    tail = cli(client, "logs", "job", "chatty", "--tail", "2")
    assert tail == "bad \\xff\\xfe bytes\ndone\n"


@sqlite_only
def test_a_run_that_ends_while_its_agent_is_down_is_reported_with_its_exit_status(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    code = REPORT_ENV + UNTIL_TOLD + "; print('bye'); sys.exit(3)"
    repo.write("jobs/lonely.yaml", job("lonely", code, gpus=0))
    repo.commit("lonely")
    wait_phase(client, "lonely", "Running")
    output = agents["n1"].root / "jobs/lonely/output"
    wait_for((output / "seen.json").is_file)

    agents["n1"].process.kill()  # the agent dies; the job goes on, then ends
    agents["n1"].process.wait()
    pid = json.loads((output / "seen.json").read_text())["pid"]
    (output / "finish").write_text("")
    wait_for(lambda: not alive(pid))

    token = (agents["n1"].root.parent / "token").read_text().strip()
    start_agent(client, "n1", token, gpus=0, again=agents["n1"])
    wait_phase(client, "lonely", "Failed")
    [run] = runs_of(client, "lonely")
    assert run["exitCode"] == 3
    assert "bye" in run["message"]
    wait_for(lambda: "bye" in client.get(f"/api/v1/runs/{run['id']}/logs").text)


@sqlite_only
def test_a_damaged_record_never_means_a_second_start(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    # kill -9 of the agent, then its record of the run truncated: the restarted agent
    # used to log nothing and start the run again beside the first copy.
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    code = "print('START', flush=True); " + UNTIL_TOLD + "; print('END')"
    repo.write("jobs/once.yaml", job("once", code, gpus=0))
    repo.commit("once")
    wait_phase(client, "once", "Running")
    [run] = runs_of(client, "once")
    first = agents["n1"]
    log = first.root / "runs" / run["id"] / "output.log"
    wait_for(lambda: log.is_file() and "START" in log.read_text())

    first.process.kill()
    first.process.wait()
    record = first.root / ".mlsm-agent" / "runs" / f"{run['id']}.json"
    record.write_text(record.read_text()[:25])  # cut mid-write

    token = (first.root.parent / "token").read_text().strip()
    again = start_agent(client, "n1", token, gpus=0, again=first)
    wait_for(lambda: "damaged agent state" in again.output(), timeout=30)
    assert f"found from {log.parent / 'process.json'}" in again.output()
    assert "still running: adopted" in again.output()
    wait_for(lambda: "adopted" in again.output())
    (first.root / "jobs/once/output/finish").write_text("")
    wait_phase(client, "once", "Succeeded", timeout=30)
    assert [r["id"] for r in runs_of(client, "once")] == [run["id"]]
    assert log.read_text().count("START") == 1, "started a second time"
    wait_for(lambda: "END" in client.get(f"/api/v1/runs/{run['id']}/logs").text)


def limited_job(name: str, code: str, resources: str) -> str:
    return f"""
        apiVersion: mlsm/v1
        kind: TrainingJob
        metadata: {{name: {name}, owner: ada}}
        spec:
          runtime: {{venv: {{python: "3"}}}}
          command: [python, -c, {json.dumps(code)}]
          resources: {resources}
    """


@sqlite_only
def test_a_venv_job_gets_what_it_is_allowed(
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    repo: GitRepo,
    database_url: str,
) -> None:
    # A job with memory 256Mi and cpu 500m once touched 2 GiB, saw both CPUs and
    # succeeded: nothing enforced `resources`.
    client, agents = started(start, start_agent, repo, database_url, {"n1": 0})
    grow = (
        "import time\nheap = []\nwhile True:\n    heap.append(bytearray(8 << 20)); time.sleep(0.01)"
    )
    pinned = (
        "import json, os; out = os.path.join(os.environ['MLSM_OUTPUT_DIR'], 'cpus.json'); "
        "json.dump(sorted(os.sched_getaffinity(0)), open(out, 'w')); " + UNTIL_TOLD
    )
    repo.write("jobs/greedy.yaml", limited_job("greedy", grow, "{gpus: 0, cpu: 0.5, memory: 64Mi}"))
    repo.write(
        "jobs/pinned.yaml", limited_job("pinned", pinned, "{gpus: 0, cpu: 0.5, memory: 1Gi}")
    )
    repo.commit("limited")
    wait_phase(client, "greedy", "Failed", timeout=60)
    [run] = runs_of(client, "greedy")
    assert run["reason"] == "OOMKilled"
    said = run["message"]  # the kernel's cgroup where there is one, else the shim's watch
    assert "over the 64Mi it is allowed (resources.memory, held by a memory cgroup)" in said or (
        "over the 64.0 MiB it is allowed (resources.memory)" in said
    )

    wait_phase(client, "pinned", "Running")
    cpus = agents["n1"].root / "jobs/pinned/output/cpus.json"
    wait_for(cpus.is_file)
    assert len(json.loads(cpus.read_text())) == 1  # 500m: one CPU, not both
    page = cli(client, "describe", "job", "pinned")
    assert "Limits of run" in page
    assert "cpu 0.5: 1 of" in page
    assert "by affinity, rounded up from 0.5" in page
    assert "memory 1Gi: a memory cgroup" in page or "memory 1Gi: its processes' resident" in page
    (agents["n1"].root / "jobs/pinned/output/finish").write_text("")
    wait_phase(client, "pinned", "Succeeded", timeout=30)
