"""The front door: `mlsmctl up` on a copy of the example manifests (the example
trainer job made short), as `make run` starts it. It trains the job to completion
where the digits dataset lies, as `python -m mlsm.training` in its venv, with its
metrics shipped and shown by the API, `mlsmctl metrics` and `describe`, and prints
where to look; Ctrl-C stops everything; a second `up` carries on from the same
state without running the job again. A machine with no Node manifest is told what
to add. (The trainer under torchrun, one process per GPU, is in test_multinode.py.)"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlsm.training.demo import write_digits
from tests.engine import Engine
from tests.integration.conftest import GitRepo, free_port, wait_for
from tests.integration.test_agents import cli

ROOT = Path(__file__).resolve().parents[2]


def _ctrl_c_as_in_a_terminal() -> None:
    # A suite started in the background (`make test &`, nohup) inherits SIGINT
    # ignored, and Python then keeps ignoring it: `up` gets Ctrl-C as a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Up:
    def __init__(self, repo: Path, state: Path, port: int, *flags: str) -> None:
        self.out = state.parent / f"up-{time.monotonic_ns()}.out"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlsm.cli", "up", "--repo", str(repo), "--state-dir",
             str(state), "--port", str(port), *flags],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )  # fmt: skip

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


@pytest.fixture
def example(tmp_path: Path) -> GitRepo:
    repo = GitRepo(tmp_path / "manifests")
    shutil.copytree(ROOT / "manifests", repo.root, dirs_exist_ok=True)
    job = repo.root / "jobs" / "resnet-digits.yaml"
    job.write_text(job.read_text().replace("epochs: 15", "epochs: 2"))
    repo.commit("the example manifests, with a short job")
    return repo


def trained_and_shown(client: httpx.Client, node: Path) -> None:
    """The example trainer job's checkpoints, metrics, and what mlsmctl says of them."""
    [run] = client.get("/api/v1/runs", params={"job": "resnet-digits"}).json()["items"]
    output = node / "jobs" / "resnet-digits" / "output"
    assert run["outputDir"] == str(output)
    assert (output / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (output / "checkpoints" / "last").is_dir()
    records = client.get(f"/api/v1/runs/{run['id']}/metrics").json()["records"]
    accuracies = [r["value"] for r in records if r["split"] == "val" and r["name"] == "accuracy"]
    assert len(accuracies) == 2, "one evaluation per epoch"
    assert max(accuracies) > 0.2, "better than chance (0.1)"
    table = cli(client, "metrics", "job", "resnet-digits").splitlines()
    assert table[0].split()[0] == "EPOCH"
    assert "VAL/ACCURACY" in table[0]
    assert [row.split()[0] for row in table[1:]] == ["1", "2"]
    page = cli(client, "describe", "job", "resnet-digits")
    assert f"Best:         val accuracy {max(accuracies):.4g}" in page
    assert f"Checkpoints:  local:{output}/checkpoints (best/, last/)" in page
    assert "Weakest:      val recall " in page
    assert "Weakest:      test recall " in page
    assert "epoch 2/2" in cli(client, "logs", "job", "resnet-digits")


def provenance_shown(client: httpx.Client, node: Path, head: str) -> str:
    """What made the checkpoints, beside each and in describe; the manifest that
    reruns it (returned)."""
    output = node / "jobs" / "resnet-digits" / "output" / "checkpoints"
    made = json.loads((output / "best" / "provenance.json").read_text())
    assert made["commit"]["sha"] == head
    assert made["dataset"]["checksum"].startswith("sha256:")
    assert made["environment"]["runtime"] == "venv"
    assert made["trainer"]["seed"] == 0
    page = cli(client, "describe", "job", "resnet-digits")
    assert f"  commit:      {head[:12]} by " in page
    assert f"  dataset:     digits on local, {made['dataset']['checksum']}" in page
    again = cli(client, "reproduce", "job", "resnet-digits")
    assert f"datasetChecksum: {made['dataset']['checksum']}" in again
    assert f"mlsm.dev/commit: {head}" in again
    return again


def predicted(client: httpx.Client, node: Path) -> None:
    """`mlsmctl predict` through the node's agent, and read here (the node is this
    machine): the same labels, mostly right."""
    images = sorted((node / "datasets" / "digits" / "val").glob("*/*.png"))[::25]
    answers = {}
    for how in ("--remote", "--top-k=3"):
        shown = json.loads(cli(client, "predict", "job", "resnet-digits", how, "-o", "json",
                               *map(str, images)))  # fmt: skip
        answers[how] = [p["labels"] for p in shown["predictions"]]
        where = f"local:{node / 'jobs' / 'resnet-digits' / 'output' / 'checkpoints' / 'best'}"
        how_it_went = "(through the node's agent)" if how == "--remote" else "(on this machine)"
        assert shown["source"] == f"{where} {how_it_went}"
    assert answers["--remote"] == answers["--top-k=3"]
    assert all(len(labels) == 3 for labels in answers["--remote"])
    right = sum(labels[0][0] == image.parent.name
                for labels, image in zip(answers["--remote"], images, strict=True))  # fmt: skip
    assert right / len(images) > 0.2, "better than chance (0.1)"


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_runs_the_example_job_stops_cleanly_and_carries_on(
    example: GitRepo, tmp_path: Path, engine: Engine
) -> None:
    state, port = tmp_path / "state", free_port()
    write_digits(state / "node" / "datasets" / "digits")
    up = Up(example.root, state, port, "--follow", "resnet-digits")
    try:
        wait_for(lambda: "job resnet-digits succeeded." in up.output(), timeout=240)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        trained_and_shown(client, state / "node")
        again = provenance_shown(client, state / "node", example.git("rev-parse", "HEAD").strip())
        predicted(client, state / "node")
        wait_for(lambda: client.get("/api/v1/jobs/hello-venv").json()["status"]["phase"]
                 == "Succeeded", timeout=60)  # fmt: skip
        # The engine `make engine` serves: the local node offers docker, and the example
        # container job runs on it.
        wait_for(lambda: client.get("/api/v1/jobs/busybox-docker").json()["status"]["phase"]
                 == "Succeeded", timeout=60)  # fmt: skip
        [boxed] = client.get("/api/v1/runs", params={"job": "busybox-docker"}).json()["items"]
        logs = f"/api/v1/runs/{boxed['id']}/logs"
        wait_for(lambda: "hello from a container"
                 in [line["text"] for line in client.get(logs).json()["lines"]])  # fmt: skip
        page = client.get("/jobs/busybox-docker")  # the status site, at the URL up prints
        assert page.status_code == 200
        assert "hello from a container" in page.text
        # the reproduction is a valid manifest that a pull request can add as it is
        example.write("jobs/resnet-digits-repro.yaml", again)
        checked = subprocess.run([sys.executable, "-m", "mlsm.cli", "validate", str(example.root)],
                                 capture_output=True, text=True)  # fmt: skip
        assert checked.returncode == 0, checked.stdout
    finally:
        code = up.stop()
    printed = up.output()
    assert code == 0, printed
    for line in ("controller: http://127.0.0.1:", "agent:      node local Ready",
                 "runtimes:   docker, venv", "site:       http://127.0.0.1:",
                 "job resnet-digits: Running", "epoch 2/2", "job resnet-digits: Succeeded",
                 "  best val accuracy 0.", "; test accuracy 0.",
                 "  classify images with it: mlsmctl predict job resnet-digits IMAGE...",
                 f"  1. open the site: http://127.0.0.1:{port}/",
                 f"  2. commit a job into {example.root.resolve()}: it starts within a second",
                 "  3. a pull request: copy deploy/manifest-repo/",
                 "stopped. `mlsmctl up` again carries on"):  # fmt: skip
        assert line in printed, f"{line!r} not in:\n{printed}"
    assert "Traceback" not in printed
    assert not listening(port), "the controller stopped"

    again = Up(example.root, state, port)
    try:
        wait_for(lambda: "ready." in again.output(), timeout=120)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        runs = client.get("/api/v1/runs", params={"job": "resnet-digits"}).json()["items"]
        assert [r["phase"] for r in runs] == ["Succeeded"], "carried on: not run again"
        assert "job resnet-digits: Succeeded" in again.output()
    finally:
        assert again.stop() == 0


def test_up_explains_a_missing_node_manifest(example: GitRepo, tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.cli", "up", "--repo", str(example.root), "--state-dir",
         str(tmp_path / "state"), "--port", str(port), "--node", "lab-laptop"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "declares no Node 'lab-laptop'" in done.stderr
    assert "Add nodes/lab-laptop.yaml:" in done.stderr
    assert "name: lab-laptop" in done.stderr
    assert "Traceback" not in done.stderr
    assert not listening(port), "nothing left running"
