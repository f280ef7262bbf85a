"""The status site's costs: pages over a large store, and live feeds under load.

    python bench/site.py [--jobs 10000] [--lines 100000] [--clients 100]
                         [--seconds 20] [--databases sqlite,postgresql]

1. Server time of the jobs page with --jobs jobs in the store, first page and a deep
   one (the last page by name), in-process through the ASGI app (no network), median
   of 20. Beside it, the same deep page read as OFFSET would read it, for the ratio
   that keyset pagination buys. Target: under 100 ms each.
2. The job page of a job whose run has --lines log lines (it reads the tail). Target:
   under 100 ms.
3. --clients SSE clients on one job of a real controller and agent while the job
   logs 1,000 lines/s for 20 s: whether every client got every line, the
   controller's CPU over that time, and each line's latency from the job's print to
   a client (p50, p99, on 5 of the clients that parse as lines arrive; the others
   parse afterwards, so that the bench's own parsing is not what it measures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Harness, databases, wait
from sqlalchemy import select

from mlsm.store import Job, Run, Store
from mlsm.web import create_site
from mlsm.web.pages import encode_cursor
from tests import sitedata

PROBES = 5
SPEAK = (
    "import time\n"
    "start = time.time()\n"
    "for i in range({n}):\n"
    "    target = start + i / 1000\n"
    "    pause = target - time.time()\n"
    "    if pause > 0: time.sleep(pause)\n"
    "    print(f'line {{i}} {{time.time():.6f}}', flush=i % 10 == 9)\n"
)


def server_ms(app: Any, path: str, repeat: int = 20) -> float:
    async def timed() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as client:
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text[:300])
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                answer = await client.get(path)
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1000

    return anyio.run(timed)


def pages(kind: str, url: str, jobs: int, lines: int) -> None:
    store = Store.open(url)
    store.migrate()
    sitedata.populate(store, jobs=jobs)
    with store.write() as session:
        run = session.scalars(select(Run).join(Job).where(Job.name == "resnet-digits")).one()
        sitedata.add_lines(
            session,
            run.id,
            [f"step {i} loss {1 / (i + 1):.5f}" for i in range(lines)],
            start=run.log_offset,
        )
        last = session.scalars(select(Job).order_by(Job.name.desc()).limit(1)).one()
        deep = encode_cursor([last.name, last.id])
    app = create_site(store)
    first = server_ms(app, "/jobs?sort=name&order=asc")
    # the last page: everything before the last name, newest first, read backwards
    deep_ms = server_ms(app, f"/jobs?sort=name&order=asc&before={deep}")
    with store.read() as session:
        start = time.perf_counter()
        for _ in range(20):
            list(
                session.scalars(
                    select(Job)
                    .where(Job.deleted_at.is_(None))
                    .order_by(Job.name)
                    .offset(jobs - 50)
                    .limit(51)
                )
            )
        offset_ms = (time.perf_counter() - start) / 20 * 1000
        start = time.perf_counter()
        for _ in range(20):
            list(
                session.scalars(
                    select(Job)
                    .where(Job.deleted_at.is_(None), Job.name < last.name)
                    .order_by(Job.name.desc())
                    .limit(51)
                )
            )
        keyset_ms = (time.perf_counter() - start) / 20 * 1000
    detail = server_ms(app, "/jobs/resnet-digits")
    print(
        f"{kind:10s} jobs page ({jobs} jobs): first {first:.1f} ms, last {deep_ms:.1f} ms "
        f"(its query by keyset {keyset_ms:.2f} ms, by OFFSET {offset_ms:.2f} ms: "
        f"{offset_ms / max(keyset_ms, 1e-6):.1f}x)"
    )
    print(f"{kind:10s} job page with {lines} log lines: {detail:.1f} ms")
    store.dispose()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def follow(
    base: str, job: str, after: str, until: float, *, probe: bool, connected: list[float]
) -> list[tuple[int, float, float]]:
    """One SSE client: (offset, print time, latency) of every line it got until `until`.
    A probe parses as lines arrive (its latencies are the figure); the others keep
    the bytes and parse them afterwards, so that 100 clients in this one process
    do not measure their own parsing instead of the controller."""
    got: list[tuple[int, float, float]] = []
    raw: list[bytes] = []
    async with httpx.AsyncClient(base_url=base, timeout=None) as client:
        try:
            with anyio.fail_after(until - time.time()):
                params = {"job": job, "after": after}
                async with client.stream("GET", "/live", params=params) as stream:
                    connected.append(time.time())
                    if not probe:
                        async for chunk in stream.aiter_raw():
                            raw.append(chunk)
                    else:
                        async for line in stream.aiter_lines():
                            if line.startswith("data: ") and '"lines"' in line:
                                now = time.time()
                                got += _lines(line, now)
        except TimeoutError:
            pass
    for line in b"".join(raw).decode().splitlines():
        if line.startswith("data: ") and '"lines"' in line:
            got += _lines(line, math.nan)
    return got


def _lines(data: str, now: float) -> list[tuple[int, float, float]]:
    out = []
    for offset, text in json.loads(data[6:])["lines"]:
        parts = text.split()
        if len(parts) == 3:
            printed = float(parts[2])
            out.append((offset, printed, now - printed))
    return out


def live(kind: str, url: str, tmp: Path, clients: int, seconds: float) -> None:
    lines = int(seconds * 1000)
    with Harness(tmp / f"live-{kind}", database_url=url) as h:
        h.commit_job("warm", ["python", "-c", "print(1)"])
        wait(lambda: h.phase("warm") == "Succeeded")
        h.commit_job("speaks", ["python", "-u", "-c", SPEAK.format(n=lines)])
        run = h.run_of("speaks")
        page = h.client.get("/jobs/speaks").text
        after = page.split('data-after="', 1)[1].split('"', 1)[0]  # what the page shows
        shown = int(after.split(".")[1])
        assert h.controller is not None
        cpu = cpu_seconds(h.controller.pid)
        started = time.time()

        connected: list[float] = []

        async def everyone() -> list[list[tuple[int, float, float]]]:
            until = started + seconds + 15
            return await asyncio.gather(
                *(
                    follow(
                        str(h.client.base_url),
                        "speaks",
                        after,
                        until,
                        probe=i < PROBES,
                        connected=connected,
                    )
                    for i in range(clients)
                )
            )

        results = asyncio.run(everyone())
        used = cpu_seconds(h.controller.pid) - cpu
        elapsed = time.time() - started
        held: list[int] = []
        cursor = -1
        while True:
            page_ = h.client.get(
                f"/api/v1/runs/{run['id']}/logs", params={"after": cursor, "limit": 1000}
            ).json()
            if not page_["lines"]:
                break
            held += [line["offset"] for line in page_["lines"] if line["offset"] > shown]
            cursor = page_["next"]
    complete = sum(1 for r in results if [o for o, _, _ in r] == held)
    everyone_in = max(connected)
    latencies = sorted(
        lat for r in results[:PROBES] for _, printed, lat in r if printed > everyone_in
    )
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{kind:10s} {clients} SSE clients on a job logging 1,000 lines/s for {seconds:.0f} s: "
        f"{complete}/{clients} got all {len(held)} lines after the page's, in order; "
        f"controller CPU "
        f"{used / elapsed * 100:.0f}% of a core; print -> browser p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms ({PROBES} probe clients, lines printed once all were in)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as name,
        databases(args.databases.split(","), Path(name)) as urls,
    ):
        for kind, url in urls:
            pages(kind, url, args.jobs, args.lines)
        # the live feed's cost is the controller's (one reader per job), on its default store
        live(
            "sqlite", f"sqlite:///{Path(name) / 'live.db'}", Path(name), args.clients, args.seconds
        )


if __name__ == "__main__":
    main()
