"""The status site's routes over a real store: every page, every method, its filters
and keyset pages, escaping, headers and read access. What reads the database
differently on each (pages, filters, keyset cursors, counts) runs on SQLite and
PostgreSQL; what does not (methods, headers, escaping, access) on SQLite only."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import anyio
import httpx
import pytest

from mlsm.controller.api import create_app
from mlsm.store import Store, SyncState, Token
from mlsm.store.tokens import token_digest
from mlsm.web import create_site
from mlsm.web.site import SECURITY_HEADERS
from tests import postgres, sitedata

PAGES = [
    "/",
    "/jobs",
    "/jobs/resnet-digits",
    "/nodes",
    "/nodes/gpu-1",
    "/datasets",
    "/syncs",
    "/events",
    "/metrics",
    "/healthz",
    "/readyz",
]
WRITES = ["POST", "PUT", "PATCH", "DELETE"]


def _populated(url: str) -> Store:
    store = Store.open(url)
    store.migrate()
    sitedata.populate(store, jobs=120)
    with store.write() as session:
        for role, secret in (("read", "r-token"), ("node", "n-token"), ("admin", "a-token")):
            session.add(Token(role=role, digest=token_digest(secret), prefix=secret[:12]))
    return store


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One populated store per database for the module: the site only reads it."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('site') / 'mlsm.db'}"
        else:
            server = request.getfixturevalue("postgres_server")
            url = stack.enter_context(postgres.fresh_database(server))
        store = _populated(url)
        yield store
        store.dispose()


sqlite_only = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
"""Tests of what does not read the database differently on PostgreSQL."""


def get(
    app: Any, path: str, *, method: str = "GET", address: str = "127.0.0.1", **kwargs: Any
) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://site") as client:
            return await client.request(method, path, **kwargs)

    return anyio.run(call)


@pytest.fixture
def site(store: Store) -> Any:
    return create_site(store, access=True)


@sqlite_only
@pytest.mark.parametrize("path", PAGES)
def test_every_page_loads_with_the_security_headers(site: Any, path: str) -> None:
    answer = get(site, path)
    assert answer.status_code == 200, answer.text
    for header, value in SECURITY_HEADERS.items():
        assert answer.headers[header] == value
    assert "'unsafe-inline'" not in answer.headers["content-security-policy"]
    head = get(site, path, method="HEAD")
    assert head.status_code == 200
    assert head.content == b""
    assert get(site, "/live", method="HEAD").headers["content-type"].startswith("text/event")


@sqlite_only
def test_every_route_refuses_writes_with_405(site: Any, store: Store) -> None:
    for path in [*PAGES, "/live", "/static/site.css"]:
        for method in WRITES:
            answer = get(site, path, method=method)
            assert answer.status_code == 405, (method, path, answer.text)
            assert "read-only" in answer.text or path.startswith("/static")
    # mounted in the controller's app too: the site's routes stay read-only there
    app = create_app(store, site=site)
    for path in PAGES[:-3]:
        assert get(app, path, method="POST").status_code == 405, path


@sqlite_only
def test_no_page_has_a_form_that_writes(site: Any) -> None:
    for path in PAGES[:8]:
        for form in re.findall(r"<form[^>]*>", get(site, path).text):
            assert 'method="get"' in form, (path, form)


@sqlite_only
def test_everything_from_git_agents_and_jobs_is_escaped(site: Any) -> None:
    for path in ["/", "/jobs/resnet-digits", "/syncs", "/events", "/nodes/gpu-1"]:
        text = get(site, path).text
        assert sitedata.XSS not in text, path
    job = get(site, "/jobs/resnet-digits").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job  # the log line, as text
    assert "<script" not in job.replace('<script src="/static/live.js" defer></script>', "")


def test_overview_counts(site: Any) -> None:
    text = get(site, "/").text
    assert "1/2</span> nodes ready" in text
    assert '>1</span> GPUs used, <span class="big">5</span> free' in text
    assert "c0ffeec0ff" in text  # the last synced commit
    assert "jobs/bad.yaml:3:5" in text  # a sync problem with its file:line
    assert "gpu-2</a>: last heartbeat 3m" in text


def _page_names(text: str) -> list[str]:
    return re.findall(r'<td><a href="/jobs/([^"]+)">', text)


def _link(text: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', text)
    return found.group(1).replace("&amp;", "&") if found else None


def test_jobs_keyset_pages_walk_the_whole_list_both_ways(site: Any) -> None:
    seen: list[str] = []
    pages: list[str] = []
    link: str | None = "/jobs?sort=name&order=asc"
    while link:
        text = get(site, link).text
        pages.append(link)
        seen += _page_names(text)
        link = _link(text, "next")
    assert len(seen) == 123
    assert seen == sorted(seen)
    assert len(set(seen)) == 123
    assert "OFFSET" not in link if link else True
    assert all("after=" in p for p in pages[1:])
    # back from the last page, by the "previous" links
    text = get(site, pages[-1]).text
    back = _page_names(text)
    link = _link(text, "prev")
    while link:
        text = get(site, link).text
        back = _page_names(text) + back
        link = _link(text, "prev")
    assert back == seen


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("phase=Running", ["resnet-digits"], id="phase"),
        pytest.param("phase=Failed,Running", ["broke", "resnet-digits"], id="phases"),
        pytest.param("owner=bob", ["waits"], id="owner"),
        pytest.param("node=gpu-1", ["broke", "resnet-digits"], id="node"),
        pytest.param("label=project%3Ddigits", ["resnet-digits"], id="label"),
        pytest.param("q=bulk-0011", [f"bulk-0011{i}" for i in range(10)], id="search"),
        pytest.param("q=%25", [], id="search-escapes-like"),
    ],
)
def test_jobs_filters(site: Any, query: str, expected: list[str]) -> None:
    answer = get(site, f"/jobs?{query}&sort=name&order=asc")
    assert answer.status_code == 200
    assert _page_names(answer.text) == expected


def test_a_pending_job_shows_why_it_waits(site: Any) -> None:
    text = get(site, "/jobs?owner=bob").text
    assert "0/2 nodes available: 1 not ready, 1 has 0 free GPUs" in text


@sqlite_only
@pytest.mark.parametrize(
    "query",
    ["phase=Bogus", "sort=evil", "order=sideways", "after=not-a-cursor", "label=novalue"],
)
def test_bad_list_queries_get_a_400_that_names_them(site: Any, query: str) -> None:
    answer = get(site, f"/jobs?{query}")
    assert answer.status_code == 400
    assert query.split("=")[0] in answer.text.lower()


def test_job_detail(site: Any) -> None:
    text = get(site, "/jobs/resnet-digits").text
    for expected in [
        "Timeline",
        "Runs",
        "gpu-1",
        "Ada &lt;ada@lab&gt;",
        "add resnet-digits",
        "kind: TrainingJob",
        "epoch 299 step 2990",
        "/srv/mlsm/runs/resnet-digits/checkpoints/best",
        "val accuracy 0.8333 at epoch 3",
        'data-metric="loss"',
        'data-metric="accuracy"',
    ]:
        assert expected in text, expected
    assert "epoch 0 step 0" not in text  # the tail, not the whole log
    assert text.count('class="point') == 9  # 3 epochs x (train loss, val loss, val accuracy)
    # the confusion matrix of the latest val evaluation, shaded by share of its row
    classes = text[text.index('data-part="classes"') :]
    assert '<table class="numbers confusion" data-split="val">' in classes
    assert '<td class="heat-4 diagonal" title="cat predicted as cat: 8">8</td>' in classes
    assert 'class="heat-1" title="cat predicted as &lt;script&gt;' in classes
    assert "<td>0.8889</td><td>0.8</td>" in classes  # precision, recall
    parts = get(site, "/jobs/resnet-digits?parts=1").text
    assert "epoch 299" not in parts
    assert 'data-part="runs"' in parts


@sqlite_only
def test_unknown_objects_are_404_pages_that_say_where_to_look(site: Any) -> None:
    answer = get(site, "/jobs/not-merged")
    assert answer.status_code == 404
    assert "no job named &#39;not-merged&#39;: if it was merged, the Syncs page" in answer.text
    for path, said in (
        ("/nodes/nope", "no node named &#39;nope&#39;"),
        ("/sweeps/nope", "no sweep named &#39;nope&#39;: no job is its child"),
    ):
        answer = get(site, path)
        assert (answer.status_code, said in answer.text) == (404, True), answer.text
    assert get(site, "/no/such/page").status_code == 404


def test_node_detail_shows_gpu_bindings_and_datasets(site: Any) -> None:
    text = get(site, "/nodes/gpu-1").text
    assert 'href="/jobs/resnet-digits">resnet-digits</a> (run' in text
    assert "free" in text
    assert "digits" in text
    assert "1797" in text
    assert "no docker: no engine answers" in text


def test_datasets_show_which_node_holds_what_and_checksums(site: Any) -> None:
    text = get(site, "/datasets").text
    assert "agrees" in text
    assert "not reported" in text  # gpu-2 reports nothing
    assert "120.6 KiB" in text


def test_syncs_show_commits_problems_and_the_audit_log_filters(site: Any) -> None:
    text = get(site, "/syncs").text
    assert "jobs/bad.yaml:3:5" in text
    assert "c0ffeec0ff" in text
    events = get(site, "/events?name=waits").text
    assert "FailedScheduling" in events
    assert "created &lt;script&gt;" not in events
    assert "FailedScheduling" not in get(site, "/events?actor=nobody").text


def test_metrics_in_prometheus_format(site: Any) -> None:
    answer = get(site, "/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'mlsm_jobs{phase="Pending"} 121.0' in text
    assert 'mlsm_jobs{phase="Running"} 1.0' in text
    assert 'mlsm_nodes{ready="true"} 1.0' in text
    assert 'mlsm_gpus{state="allocated"} 1.0' in text
    assert 'mlsm_gpus{state="free"} 5.0' in text
    assert 'mlsm_sync_failing{source="git-1"} 0.0' in text


def test_readyz_needs_a_first_sync(tmp_path: Path) -> None:
    store = _populated(f"sqlite:///{tmp_path / 'mlsm.db'}")
    assert get(create_site(store), "/readyz").status_code == 200
    with store.write() as session:
        session.query(SyncState).delete()
    answer = get(create_site(store), "/readyz")
    assert answer.status_code == 503
    assert "synced" in answer.text
    assert get(create_site(store, ready=lambda: False), "/readyz").status_code == 503


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@sqlite_only
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param(_basic("anyone", "r-token"), 200, id="basic-read-token"),
        pytest.param(_basic("", "a-token"), 200, id="basic-admin-token"),
        pytest.param({"Authorization": "Bearer r-token"}, 200, id="bearer-read-token"),
        pytest.param(_basic("x", "n-token"), 401, id="node-token-cannot-read"),
        pytest.param(_basic("x", "wrong"), 401, id="wrong-token"),
        pytest.param({"Authorization": "Basic !!!"}, 401, id="malformed"),
    ],
)
def test_off_loopback_the_site_asks_for_a_read_token(
    store: Store, headers: dict[str, str], expected: int
) -> None:
    for app in (create_site(store, access=True), create_app(store, site=create_site(store))):
        answer = get(app, "/jobs", address="10.0.0.9", headers=headers)
        assert answer.status_code == expected
        if expected == 401:
            assert answer.headers["www-authenticate"].startswith("Basic")
            assert (
                "mlsm-controller token issue --role read" in answer.text or "invalid" in answer.text
            )
    assert get(create_site(store, access=True), "/readyz", address="10.0.0.9").status_code == 200


@sqlite_only
def test_no_page_shows_a_token_or_its_digest(site: Any, store: Store) -> None:
    digests = [token_digest(s) for s in ("r-token", "n-token", "a-token")]
    for path in PAGES:
        text = get(site, path).text
        for secret in [*digests, "r-token", "a-token", "n-token", "a-token"[:12]]:
            assert secret not in text, (path, secret)


@sqlite_only
def test_a_jobs_page_link_keeps_its_filters(site: Any) -> None:
    text = get(site, "/jobs?q=bulk&sort=name&order=asc").text
    following = _link(text, "next")
    assert following is not None
    query = parse_qs(urlparse(following).query)
    assert query["q"] == ["bulk"]
    assert query["sort"] == ["name"]
    assert "after" in query
