"""The status site as a researcher sees it: a real controller and agent running a job
that logs and writes metrics, the site in Chromium. Every page loads without a
console error and fits a phone's width; a new log line and a new metric point
appear without reloading; a log line that is HTML is shown as text; the page
follows on after the controller restarts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.databases import sqlite_only
from tests.e2e.conftest import ARTIFACTS
from tests.integration.conftest import AgentProcess, GitRepo, issue_node_token, node, wait_for

LIVE_JOB = """
    apiVersion: mlsm/v1
    kind: TrainingJob
    metadata: {name: live-logs, owner: ada, labels: {project: site}}
    spec:
      runtime: {venv: {python: "3.11"}}
      resources: {gpus: 1}
      command:
        - python
        - -u
        - -c
        - |
          import json, os, time
          metrics = open(os.environ["MLSM_METRICS_FILE"], "a")
          for i in range(2000):
              print(f"line {i}", flush=True)
              if i % 50 == 3:  # always in the page's tail of 200 lines
                  print("<script>alert(1)</script>", flush=True)
              if i % 8 == 0:
                  point = {"epoch": i // 8 + 1, "split": "train", "name": "loss",
                           "value": 1 / (i + 1)}
                  metrics.write(json.dumps(point) + "\\n")
                  metrics.flush()
              time.sleep(0.1)
"""
PAGES = {
    "overview": "/",
    "jobs": "/jobs",
    "job": "/jobs/live-logs",
    "nodes": "/nodes",
    "node": "/nodes/local",
    "datasets": "/datasets",
    "syncs": "/syncs",
    "events": "/events",
}


class Page:
    """A browser tab that records console errors, page errors and dialogs."""

    def __init__(self, browser: Any, *, width: int = 1280) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.on(
            "dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss())
        )

    def count(self, selector: str) -> int:
        return int(self.page.locator(selector).count())

    def offsets(self) -> list[int]:
        """The byte offsets of the log lines the page shows, in page order."""
        script = "spans => spans.map(s => s.dataset.offset)"
        return [int(o) for o in self.page.locator("#log span").evaluate_all(script)]

    def wait_until(self, script: str, arg: Any = None, timeout: float = 20.0) -> None:
        self.page.wait_for_function(script, arg=arg, timeout=timeout * 1000)


@sqlite_only
def test_the_site_follows_a_running_job_live(
    browser: Any,
    repo: GitRepo,
    start: Callable[..., httpx.Client],
    start_agent: Callable[..., AgentProcess],
    database_url: str,
) -> None:
    repo.write("nodes/local.yaml", node("local", gpus=1))
    repo.write("jobs/live-logs.yaml", LIVE_JOB)
    repo.commit("add the live job <b>bold</b>")
    client = start(str(repo.root))
    port = client.base_url.port
    start_agent(client, "local", issue_node_token(database_url, "local"))
    wait_for(
        lambda: (
            client.get("/api/v1/runs", params={"job": "live-logs"}).json()["items"]
            and client.get("/api/v1/jobs/live-logs").json()["status"]["phase"] == "Running"
        ),
        timeout=60,
    )
    [run] = client.get("/api/v1/runs", params={"job": "live-logs"}).json()["items"]
    wait_for(lambda: len(client.get(f"/api/v1/runs/{run['id']}/logs").json()["lines"]) > 6)
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text  # the controller's own figures beside the store's
    beats = re.search(
        r'mlsm_http_request_duration_seconds_count\{route="heartbeat"\} (\S+)', metrics
    )
    assert beats is not None, metrics
    assert float(beats.group(1)) >= 1
    assert re.search(r"mlsm_sync_duration_seconds_count [1-9]", metrics), metrics
    assert 'mlsm_jobs{phase="Running"} 1.0' in metrics
    assert 'mlsm_gpus{state="allocated"} 1.0' in metrics

    # every page, at desktop and at phone width, without a console error
    for width, suffix in ((1280, ""), (390, "-phone")):
        for name, path in PAGES.items():
            tab = Page(browser, width=width)
            tab.page.goto(f"{client.base_url}{path}")
            tab.page.wait_for_load_state("load")
            tab.page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
            assert tab.problems == [], (path, width, tab.problems)
            overflow = tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than a {width}px window"
            tab.page.close()

    tab = Page(browser)
    tab.page.goto(f"{client.base_url}/jobs/live-logs")
    tab.page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    log = tab.page.locator("#log")
    assert "<script>alert(1)</script>" in log.inner_text()  # the line is text
    assert tab.count("#log script") == 0
    lines, points = tab.count("#log span"), tab.count("svg circle.point")
    tab.wait_until("n => document.querySelectorAll('#log span').length > n + 3", lines)
    tab.wait_until("n => document.querySelectorAll('svg circle.point').length > n", points)
    tab.wait_until("() => document.getElementById('live-state').textContent === 'live'")
    assert tab.page.evaluate("window.loadedOnce") is True, "the page reloaded"
    offsets = tab.offsets()  # once: the page grows between two reads
    assert offsets == sorted(set(offsets)), "every line once, in order"

    # the controller restarts: the page says so, then follows on where it was
    assert tab.problems == []
    client.process.terminate()  # type: ignore[attr-defined]
    client.process.wait(10)  # type: ignore[attr-defined]
    tab.wait_until("() => document.getElementById('live-state').textContent !== 'live'")
    before = tab.count("#log span")
    start(str(repo.root), port=port)
    tab.wait_until("n => document.querySelectorAll('#log span').length > n + 3", before, 30)
    tab.wait_until("() => document.getElementById('live-state').textContent === 'live'")
    assert tab.page.evaluate("window.loadedOnce") is True, "recovered without a reload"
    offsets = tab.offsets()
    assert offsets == sorted(set(offsets)), "no line twice after the restart"
    tab.page.screenshot(path=str(ARTIFACTS / "job-after-restart.png"), full_page=True)
    dropped = ("ERR_INCOMPLETE_CHUNKED_ENCODING", "ERR_CONNECTION_REFUSED")  # the restart
    assert all(any(d in p for d in dropped) for p in tab.problems), tab.problems


@sqlite_only
def test_without_javascript_a_page_shows_the_state_as_of_its_load(
    browser: Any, repo: GitRepo, start: Callable[..., httpx.Client]
) -> None:
    repo.write("nodes/local.yaml", node("local", gpus=1))
    repo.write("jobs/live-logs.yaml", LIVE_JOB)
    repo.commit("add the live job")
    client = start(str(repo.root))  # no agent: the job waits, and says why
    events = {"name": "live-logs", "reason": "FailedScheduling"}
    wait_for(lambda: client.get("/api/v1/events", params=events).json()["items"])
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{client.base_url}/jobs/live-logs")
    assert "Pending" in page.locator("h1").inner_text()
    assert "Waiting: 0/1 nodes available" in page.inner_text("body")
    assert page.locator("#live-state").inner_text() == "static"
    page.goto(f"{client.base_url}/jobs?phase=Pending")
    assert page.locator("table.jobs a", has_text="live-logs").count() == 1
    context.close()
