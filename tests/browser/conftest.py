"""The web pages in a real browser: Debian's chromium (/usr/bin/chromium, never a downloaded
build) driven by Playwright, against the gateway as real processes (tests/integration/gateway_stack.py)
with the tiny CPU worker and the fake fal server. Each test gets a fresh browser context (its own
profile: no storage, no cookies); screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import running_redis

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


# Per module, not per session: Playwright's sync API runs an event loop in the main thread while
# it is open, and every async test after the browser tests (pytest-asyncio) then failed with
# "Runner.run() cannot be called from a running event loop".
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `./dev test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as pw:
        # launch() gives each run a fresh, temporary user-data-dir of its own.
        made = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield made
        made.close()


# For the browser tests only, on a redis-server of their own. On the session's server, kept for the
# session, its job runners went on leasing every later test's jobs: once one took the job of
# tests/integration/test_job_attempts.py (whose lease had lapsed, as the test meant), it served it
# and the test waited for a failure that never came (a fresh-clone CI run, session 9).
@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web")
    with (
        running_redis(tmp / "redis") as server,
        running_stack(
            server,
            tmp,
            tiny_worker=True,
            team={"allow_provider_pinning": True},
            gateway_env={"GATEWAY_STREAM_KEEPALIVE_S": "0.2"},
        ) as made,
    ):
        yield made


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    made.set_default_timeout(30_000)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    made = context.new_page()
    errors: list[str] = []
    made.on("pageerror", lambda exc: errors.append(str(exc)))
    made.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield made
    # A script error (a CSP violation is reported on the console) fails the test that caused it;
    # the 401s a test provokes on purpose are logged by chromium as failed loads, which are fine.
    real = [e for e in errors if "401" not in e and "Failed to load resource" not in e]
    assert not real, real


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
