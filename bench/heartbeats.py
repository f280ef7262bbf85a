"""Heartbeats per second a real `mlsm-controller` sustains from many simulated agents
on loopback, with latency percentiles, on SQLite and PostgreSQL.

    python bench/heartbeats.py [--nodes 200] [--concurrency 32] [--seconds 10]

Each simulated agent sends its node's heartbeat (an inventory with 8 GPUs and a few
runs) with its own node token, back to back; the controller checks the token,
writes the heartbeat and answers which runs to stop. Target (issue 7): at least
500/s on this 2-core machine with p99 under 100 ms on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlsm.controller.tokens import token_digest  # noqa: E402
from mlsm.store import Store, Token  # noqa: E402
from tests import postgres  # noqa: E402

INVENTORY = {"cpus": 64, "memory": 512 << 30, "runtimes": ["venv", "docker"],
             "gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "H100", "memory": 80 << 30}
                      for i in range(8)]}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(tmp: Path, url: str, nodes: int) -> Path:
    repo = tmp / "repo"
    (repo / "nodes").mkdir(parents=True)
    for i in range(nodes):
        manifest = f"apiVersion: mlsm/v1\nkind: Node\nmetadata: {{name: n{i}}}\n"
        (repo / "nodes" / f"n{i}.yaml").write_text(manifest + "spec: {runtimes: [venv]}\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "nodes"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    store = Store.open(url)
    store.migrate()
    with store.write() as session:
        for i in range(nodes):
            session.add(Token(role="node", node=f"n{i}", digest=token_digest(f"t{i}"),
                              prefix=f"t{i}"))  # fmt: skip
    store.dispose()
    return repo


async def hammer(port: int, nodes: int, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=30) as client:  # fmt: skip

        async def agent(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                node = i % nodes
                start = time.perf_counter()
                response = await client.post(
                    f"/api/v1/agent/nodes/n{node}/heartbeat",
                    json={"inventory": INVENTORY, "runs": []},
                    headers={"Authorization": f"Bearer t{node}"},
                )
                assert response.status_code == 200, response.text
                latencies.append(time.perf_counter() - start)
                i += concurrency

        await asyncio.gather(*(agent(k) for k in range(concurrency)))
    return latencies


def run(kind: str, url: str, args: argparse.Namespace, tmp: Path) -> None:
    repo = prepare(tmp / kind, url, args.nodes)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlsm.controller", "run", "--repo", str(repo), "--database-url",
         url, "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / kind / "state"),
         "--poll-interval", "600", "--no-watch"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get(f"/api/v1/nodes/n{args.nodes - 1}").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("bench: the controller did not come up")
            time.sleep(0.05)
        asyncio.run(hammer(port, args.nodes, args.concurrency, 1.0))  # warm up
        latencies = asyncio.run(hammer(port, args.nodes, args.concurrency, args.seconds))
    finally:
        process.terminate()
        process.wait(10)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"{kind:10s} {len(latencies) / args.seconds:7.0f} heartbeats/s  p50 {p50:6.1f} ms  "
          f"p99 {p99:6.1f} ms  ({args.nodes} nodes, {args.concurrency} in flight)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    kinds = args.databases.split(",")
    cluster = postgres.Cluster.start() if "postgresql" in kinds else None
    try:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            for kind in kinds:
                url = f"sqlite:///{tmp / 'hb.db'}" if kind == "sqlite" else cluster.url  # type: ignore[union-attr]
                run(kind, url, args, tmp)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
