"""The example trainer job as `make run` runs it: its wall time and its accuracy.

    python bench/example_job.py [--state-dir DIR]

Starts `mlsmctl up` on a copy of manifests/ (a new git repository) with the digits
written into the node's storage, as `make run` does, follows `resnet-digits`, and
prints: the time from `up` to the job Running (the controller's and agent's start,
and on a new state dir the job's venv), from Running to Succeeded (the trainer's
process: imports, data, every epoch, the test split), the trainer's own time in
training steps, and the best validation and the test accuracy. Target (issue 20):
at least 0.95 validation accuracy in about a minute of training on 2 CPU cores.
Then `mlsmctl predict` on 30 test images, read here and through the node's agent
(`--remote`), median of 3 each: the relay's cost over reading the checkpoint here.

--state-dir reuses a state (and its venv) between runs; by default a new one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, git, wait  # noqa: E402

JOB = "resnet-digits"


def run(state: Path, repo: Path) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "mlsm.training.demo", "digits",
                    str(state / "node" / "datasets" / "digits")], check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    out = (state / "bench-up.out").open("wb")
    started = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "mlsm.cli", "up", "--repo", str(repo),
                           "--state-dir", str(state), "--port", str(port)],
                          stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    phases: dict[str, float] = {}

    def phase() -> str:
        try:
            answer = client.get(f"/api/v1/jobs/{JOB}")
        except httpx.TransportError:
            return ""
        now = answer.json().get("status", {}).get("phase", "") if answer.is_success else ""
        phases.setdefault(now, time.monotonic())
        return str(now)

    try:
        wait(lambda: phase() in ("Succeeded", "Failed"), timeout=900, step=0.2)
        [job_run] = client.get("/api/v1/runs", params={"job": JOB}).json()["items"]
        lines = client.get(f"/api/v1/runs/{job_run['id']}/logs", params={"limit": 1000}).json()
        records = client.get(f"/api/v1/runs/{job_run['id']}/metrics").json()["records"]
        final = phase()
        predicted = predict_times(port, state / "node" / "datasets" / "digits" / "test")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        out.close()
    text = "\n".join(line["text"] for line in lines["lines"])
    trained = re.search(r"in ([0-9.]+) s of training", text)
    val = [r["value"] for r in records if r.get("split") == "val" and r.get("name") == "accuracy"]
    test = [r["value"] for r in records if r.get("split") == "test" and r.get("name") == "accuracy"]
    return {
        "phase": final,
        "to_running_s": phases.get("Running", float("nan")) - started,
        "running_to_done_s": phases.get("Succeeded", float("nan"))
        - phases.get("Running", float("nan")),
        "training_s": float(trained.group(1)) if trained else float("nan"),
        "epochs": len(val),
        "best_val_accuracy": max(val, default=float("nan")),
        "test_accuracy": test[-1] if test else float("nan"),
        **predicted,
    }


def predict_times(port: int, test: Path) -> dict[str, Any]:
    images = [str(p) for p in sorted(test.glob("*/*.png"))[::10][:30]]
    figures: dict[str, Any] = {"images": len(images)}
    env = {**os.environ, "MLSM_SERVER": f"http://127.0.0.1:{port}"}
    for how in ("here", "remote"):
        times = []
        for _ in range(3):
            command = [sys.executable, "-m", "mlsm.cli", "predict", "job", JOB, "-o", "json",
                       *(["--remote"] if how == "remote" else []), *images]  # fmt: skip
            started = time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            times.append(time.monotonic() - started)
        answer = json.loads(done.stdout)["predictions"]
        right = sum(Path(a["image"]).parent.name == a["labels"][0][0] for a in answer)
        figures[f"predict_{how}_s"] = statistics.median(times)
        figures["predict_right"] = right
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "manifests"
        shutil.copytree(ROOT / "manifests", repo)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "The example manifests")
        state = args.state_dir or Path(tmp) / "state"
        figures = run(state, repo)
    print(f"{JOB}: {figures['phase']}")
    print(f"  up -> Running           {figures['to_running_s']:7.1f} s")
    print(
        f"  Running -> Succeeded    {figures['running_to_done_s']:7.1f} s  (the trainer's process)"
    )
    print(f"  in training steps       {figures['training_s']:7.1f} s  ({figures['epochs']} epochs)")
    print(f"  best val accuracy       {figures['best_val_accuracy']:7.4f}  (target >= 0.95)")
    print(f"  test accuracy           {figures['test_accuracy']:7.4f}")
    n, right = figures["images"], figures["predict_right"]
    here, remote = figures["predict_here_s"], figures["predict_remote_s"]
    print(f"  mlsmctl predict, here   {here:7.2f} s  ({n} test images, {right} right)")
    print(f"  through the agent       {remote:7.2f} s  ({remote - here:+.2f} s for the relay)")


if __name__ == "__main__":
    main()
