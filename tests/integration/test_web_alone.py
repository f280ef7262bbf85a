"""`mlsm-web`: the status site as its own process, on another port than the controller,
reading the controller's database: its pages, its read-only routes, its readiness,
and its live feed, which sees what the controller writes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.databases import sqlite_only
from tests.integration.conftest import GitRepo, free_port, job, node, wait_for


@pytest.fixture
def start_web(tmp_path: Path, database_url: str) -> Iterator[Callable[[], httpx.Client]]:
    processes: list[subprocess.Popen[bytes]] = []

    def _start() -> httpx.Client:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlsm.web",
                "--database-url",
                database_url,
                "--listen",
                f"127.0.0.1:{port}",
                "--live-interval",
                "0.2",
            ],
            stdout=(tmp_path / "web.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
        wait_for(lambda: client.get("/healthz").status_code == 200)
        return client

    yield _start
    for process in processes:
        process.terminate()
        process.wait(10)


@sqlite_only
def test_the_site_alone_reads_what_the_controller_writes(
    repo: GitRepo, start: Callable[..., httpx.Client], start_web: Callable[[], httpx.Client]
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.write("jobs/first.yaml", job("first"))
    repo.commit("first job")
    controller = start(str(repo.root), "--poll-interval", "0.2")
    web = start_web()
    wait_for(lambda: web.get("/readyz").status_code == 200)
    page = web.get("/jobs")
    assert page.status_code == 200
    assert "first" in page.text
    assert web.post("/jobs").status_code == 405
    assert web.delete("/").status_code == 405

    # the live feed of the site alone polls the database: a new commit is announced
    digest = web.get("/").text.split('data-after=".-1.', 1)[1].split('"', 1)[0]
    with web.stream("GET", "/live", params={"after": f".-1.{digest}"}, timeout=10) as events:
        repo.write("jobs/second.yaml", job("second"))
        repo.commit("second job")
        seen = ""
        for chunk in events.iter_text():
            seen += chunk
            if "event: changed" in seen:
                break
    assert "id: " in seen
    assert "second" in web.get("/jobs").text
    assert controller.get("/jobs").status_code == 200  # the controller's own site too


def test_mlsm_web_refuses_an_unmigrated_database_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mlsm.web", "--database-url", f"sqlite:///{tmp_path / 'empty.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("mlsm-web: error:")
    assert "Traceback" not in done.stderr
