"""`mlsm-controller` as a real process on loopback: polling, the webhook with good
and bad signatures, the read API, and a clean one-line error for bad input."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.conftest import GitRepo, controller_bin, job, node, wait_for

SECRET = "s3cret"


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def generation(client: httpx.Client, name: str) -> int:
    response = client.get(f"/api/v1/jobs/{name}")
    return int(response.json()["metadata"]["generation"]) if response.status_code == 200 else 0


def test_the_webhook_syncs_at_once_and_refuses_bad_signatures(
    start: Callable[..., httpx.Client], repo: GitRepo
) -> None:
    repo.write("jobs/a.yaml", job("a"))
    repo.commit()
    client = start(str(repo.root), "--poll-interval", "600", "--no-watch",
                   "--webhook-secret", SECRET)  # fmt: skip
    wait_for(lambda: generation(client, "a") == 1)
    repo.write("jobs/a.yaml", job("a", epochs=3))
    repo.commit("More epochs")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    for headers in ({}, {"X-Hub-Signature-256": "sha256=" + "0" * 64},
                    {"X-Gitea-Signature": "nope"}, {"X-Gitlab-Token": "wrong"}):  # fmt: skip
        response = client.post("/api/v1/hooks/git", content=body, headers=headers)
        assert response.status_code == 401
        assert "webhook signature" in response.json()["error"]
    time.sleep(0.3)
    assert generation(client, "a") == 1  # refused hooks did not sync
    started = time.monotonic()
    response = client.post("/api/v1/hooks/git", content=body,
                           headers={"X-Hub-Signature-256": sign(body)})  # fmt: skip
    assert response.status_code == 202
    wait_for(lambda: generation(client, "a") == 2, timeout=5)
    assert time.monotonic() - started < 5
    gitea = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert client.post("/api/v1/hooks/git", content=body,
                       headers={"X-Gitea-Signature": gitea}).status_code == 202  # fmt: skip
    assert client.post("/api/v1/hooks/git", content=body,
                       headers={"X-Gitlab-Token": SECRET}).status_code == 202  # fmt: skip


def test_polling_follows_the_branch_and_the_api_reads_it_back(
    start: Callable[..., httpx.Client], repo: GitRepo
) -> None:
    repo.write("nodes/gpu-1.yaml", node("gpu-1"))
    repo.write("nodes/cpu-1.yaml", node("cpu-1", gpus=0).replace("a100", "none"))
    for i in range(5):
        repo.write(f"jobs/j{i}.yaml", job(f"j{i}"))
    sha = repo.commit("Five jobs")
    client = start(str(repo.root), "--poll-interval", "0.2", "--no-watch")
    wait_for(lambda: client.get("/api/v1/sync").json()["items"][0]["commit"]["sha"] == sha)
    page = client.get("/api/v1/jobs", params={"limit": 2}).json()
    names = [o["metadata"]["name"] for o in page["items"]]
    while page["continue"]:
        page = client.get("/api/v1/jobs", params={"limit": 2, "continue": page["continue"]}).json()
        names += [o["metadata"]["name"] for o in page["items"]]
    assert sorted(names) == [f"j{i}" for i in range(5)]
    gpu = client.get("/api/v1/nodes", params={"selector": "gpu=a100"}).json()["items"]
    assert [o["metadata"]["name"] for o in gpu] == ["gpu-1"]
    detail = client.get("/api/v1/jobs/j0").json()
    assert detail["status"]["phase"] == "Pending"
    assert detail["metadata"]["commit"]["sha"] == sha
    reasons = [e["reason"] for e in detail["events"]]
    assert reasons[0] == "Created"
    assert set(reasons) <= {"Created", "FailedScheduling"}  # no Ready node: it waits
    assert detail["runs"] == []
    repo.remove("jobs/j4.yaml")
    repo.commit("Remove j4")
    wait_for(lambda: client.get("/api/v1/jobs/j4").json()["metadata"]["deletedAt"])
    history = client.get("/api/v1/jobs", params={"deleted": "true"}).json()["items"]
    assert len(history) == 5
    assert len(client.get("/api/v1/jobs").json()["items"]) == 4
    events = client.get("/api/v1/events", params={"name": "j4"}).json()["items"]
    assert [e["reason"] for e in events if e["reason"] != "FailedScheduling"] == [
        "Created", "Cancelled", "Pruned"
    ]  # fmt: skip
    for path, status, fragment in [
        ("/api/v1/widgets", 404, "no such kind 'widgets'"),
        ("/api/v1/jobs/missing", 404, "TrainingJob/missing not found"),
        ("/api/v1/jobs?limit=zero", 400, "'limit' must be a whole number"),
        ("/api/v1/jobs?selector=gpu", 400, "must be key=value"),
        ("/api/v2/nope", 404, "no route GET /api/v2/nope"),
    ]:
        response = client.get(path)
        assert response.status_code == status
        assert fragment in response.json()["error"]
    site = client.get("/nope")  # beside the API, the status site answers its own 404s
    assert site.status_code == 404
    assert "no page at /nope" in site.text


def test_a_local_commit_is_seen_through_the_watch(
    start: Callable[..., httpx.Client], repo: GitRepo
) -> None:
    repo.write("jobs/a.yaml", job("a"))
    repo.commit()
    client = start(str(repo.root), "--poll-interval", "600")
    wait_for(lambda: generation(client, "a") == 1)
    repo.write("jobs/a.yaml", job("a", epochs=9))
    repo.commit()
    wait_for(lambda: generation(client, "a") == 2, timeout=5)


def test_bad_input_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "MLSM_DATABASE_URL": f"sqlite:///{tmp_path / 'db'}"}
    for args, fragment in [
        (["run", "--repo", str(tmp_path / "missing")], "no such repository or directory"),
        (["run", "--repo", ".", "--listen", "nowhere"], "must be HOST:PORT"),
        (["run", "--repo", ".", "--database-url", "mysql://x/y"], "'mysql' is not supported"),
        (["token", "issue", "--role", "root"], "--role must be admin, read or node"),
    ]:
        done = subprocess.run([*controller_bin(), *args], capture_output=True, text=True, env=env)
        assert done.returncode == 1, done.stderr
        assert fragment in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
