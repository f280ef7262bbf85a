"""The worst single files within the default limits (1 MiB, 10,000 documents, depth
64, 100,000 values a document), each through `mlsmctl validate` as a whole process,
and each committed to a manifests repository and synced by the controller's Syncer
(SQLite), which is what a merged pull request costs the controller.

    python bench/worst_file.py [--only NAME]

Before issue 14 a problem's location re-parsed its file from the start, so N
invalid documents cost O(N²): 2,000 invalid TrainingJobs took 57 s, and 10,001 tiny
documents held the controller's sync for 520 s. Target: every file under 2 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlsm.controller.sources import open_source  # noqa: E402
from mlsm.controller.syncing import Syncer  # noqa: E402
from mlsm.store import Store  # noqa: E402

MAX_BYTES = 1 << 20
MLSMCTL = [sys.executable, "-m", "mlsm.cli"]

BAD_JOB = """apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: job-{i}, owner: ada}}
spec:
  runtime: {{venv: {{python: 3.10}}}}
  command: python
  resources: {{gpus: -1, memory: lots, cpu: many}}
  priority: urgent
  typo{i}: 1
"""


GOOD_JOB = """apiVersion: mlsm/v1
kind: TrainingJob
metadata: {{name: job-{i}, owner: ada}}
spec:
  runtime: {{venv: {{python: "3.11"}}}}
  command: [python, train.py]
"""


def sync_seconds(tmp: Path, text: str) -> float:
    """Commit the file to a fresh repository and time one sync of it."""
    repo = tmp / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "jobs").mkdir(parents=True)
    (repo / "jobs" / "worst.yaml").write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "worst"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    database = tmp / "mlsm.db"
    database.unlink(missing_ok=True)
    store = Store.open(f"sqlite:///{database}")
    store.migrate()
    try:
        syncer = Syncer(store, open_source(str(repo), state_dir=tmp / "state"))
        started = time.monotonic()
        syncer.sync()
        return time.monotonic() - started
    finally:
        store.dispose()


def repeat_to_limit(piece: Callable[[int], str], limit: int = MAX_BYTES, docs: int = 10_000) -> str:
    parts, size = [], 0
    for i in range(docs):
        text = piece(i)
        if size + len(text) > limit:
            break
        parts.append(text)
        size += len(text)
    return "".join(parts)


def cases() -> dict[str, str]:
    deep = "a:\n" + "".join("  " * d + "b:\n" for d in range(1, 63)) + "  " * 63 + "c: 1\n"
    flow = "[" * 60 + "1" + "]" * 60 + "\n"
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    return {
        "10,000 tiny documents": "".join("a: 1\n---\n" for _ in range(10_000)),
        "2,000 invalid TrainingJobs": "---\n".join(BAD_JOB.format(i=i) for i in range(2_000)),
        "1 MiB of invalid TrainingJobs": repeat_to_limit(lambda i: "---\n" + BAD_JOB.format(i=i)),
        "10,000 syntax errors": repeat_to_limit(lambda i: "---\na: [1\nb: }\n"),
        "10,000 unknown kinds": repeat_to_limit(lambda i: f"---\nkind: Thing{i}\n"),
        "10,000 lists nested 60 deep": repeat_to_limit(lambda i: "---\n" + flow),
        "1 MiB of valid TrainingJobs": repeat_to_limit(lambda i: "---\n" + GOOD_JOB.format(i=i)),
        "1 MiB of deep nesting": repeat_to_limit(lambda i: f"---\nk{i}:\n" + deep[3:]),
        "1 MiB of alias bombs": repeat_to_limit(lambda i: "---\n" + laughs),
        "1 MiB, one document, 30,000 keys": "kind: TrainingJob\n"
        + repeat_to_limit(lambda i: f"k{i}: {i}\n", docs=30_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    worst = worst_sync = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in cases().items():
            if args.only and args.only not in name:
                continue
            path = Path(tmp) / "file.yaml"
            path.write_text(text)
            started = time.monotonic()
            try:
                done = subprocess.run([*MLSMCTL, "validate", str(path)], capture_output=True,
                                      text=True, env=env, timeout=args.timeout)  # fmt: skip
            except subprocess.TimeoutExpired:
                print(f"{name:36s} over {args.timeout:.0f} s")
                worst = max(worst, args.timeout)
                continue
            took = time.monotonic() - started
            synced = sync_seconds(Path(tmp), text)
            worst, worst_sync = max(worst, took), max(worst_sync, synced)
            lines = done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""]
            print(f"{name:34s} {len(text) / 1024:5.0f} kB  validate {took:5.2f} s  "
                  f"sync {synced:5.2f} s  {len(lines)} lines: {lines[-1][:60]}")  # fmt: skip
    print(f"worst file: validate {worst:.2f} s (target under 2 s), sync {worst_sync:.2f} s")


if __name__ == "__main__":
    main()
