"""The status site in a real browser: Debian's Chromium driven by Playwright (no
browser download; `make system` installs Chromium). Screenshots of every page go to
tests/e2e/artifacts/ (ignored by git) for people to look at."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import repo, start, start_agent

__all__ = ["ARTIFACTS", "browser", "repo", "start", "start_agent"]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Without the background-networking flags Chromium keeps trying to reach Google's
hosts, which this machine's closed network refuses."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, for one test module: Playwright's sync API keeps an asyncio loop
    running on this thread while it lives, which `anyio.run` elsewhere in the suite
    refuses to share, so it is closed after the module."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"no {CHROMIUM}: the browser tests need Debian's Chromium (`make system`)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
