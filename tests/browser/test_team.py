"""The team portal at /team in chromium: month-to-date spend equal to /v1/usage, the daily chart,
by model and provider, rate limits, and the team's keys (with their last use) without a secret."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import wait_for
from tests.browser.conftest import screenshot
from tests.integration.gateway_stack import Stack

pytestmark = pytest.mark.slow


def _usage(stack: Stack) -> dict[str, object]:
    r = httpx.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    r.raise_for_status()
    body: dict[str, object] = r.json()
    return body


def test_the_team_page_shows_what_the_api_says(page: Page, stack: Stack) -> None:
    if not any(k["name"] == "spare" for k in stack.admin.get(f"/admin/teams/{stack.team_id}/keys").json()["data"]):
        stack.admin.post(f"/admin/teams/{stack.team_id}/keys", json={"name": "spare"}).raise_for_status()
    started = int(time.time())
    before = len(stack.settled_ledger())
    client = stack.client()
    for n in (1, 2):  # pinned to fal: quick, and a provider of its own in the table
        client.images.generate(model="fal/hidream-i1-full", prompt="for the portal", n=n, response_format="b64_json")
    wait_for(lambda: len(stack.ledger()) >= before + 2, "the requests to be settled")
    usage = _usage(stack)
    page.goto(stack.base + "/team")
    page.get_by_label("API key").fill(stack.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#team-data")).to_be_visible()
    expect(page.locator("#team-name")).to_have_text("Team e2e")
    spent = float(usage["spent_usd"])  # type: ignore[arg-type]
    assert spent >= 0.15
    expect(page.locator("#spent")).to_have_text(f"${spent:.2f}")
    expect(page.locator("#budget")).to_have_text("$50.00")
    expect(page.locator("#requests")).to_have_text(str(usage["requests"]))
    expect(page.locator("#images")).to_have_text(str(usage["images"]))
    # the chart: one group per day, its images bar the day's images
    images_today = sum(int(d["images"]) for d in usage["by_day"])  # type: ignore[attr-defined]
    bars = page.locator("#daily-chart svg rect[data-series=images]")
    expect(bars).to_have_count(len({d["date"] for d in usage["by_day"]}))  # type: ignore[attr-defined]
    assert sum(int(v or 0) for v in (b.get_attribute("data-value") for b in bars.all())) == images_today
    fal = page.locator("#by-provider tr", has_text="fal")
    expect(fal.locator("td").nth(2)).to_have_text(str(_fal_images(stack)))
    expect(page.locator("#by-model tr", has_text="hidream-i1-full")).to_be_visible()
    rpm = page.locator("#limits tr[data-limit='requests per minute'] td")
    expect(rpm.nth(2)).to_have_text("60")
    keys = page.locator("#keys tr")
    expect(keys).to_have_count(2)
    # Each key's last use as the API gives it (recorded within about a second of the first use);
    # the spare key was never used.
    wait_for(lambda: _last_used(stack)["e2e"] is not None, "the key's use to be recorded")
    page.reload()
    expect(page.locator("#team-data")).to_be_visible()
    # Late by at most the interval (60 s) and a flush (1 s): the key may have been used by earlier
    # tests, and each of the gateway's two processes writes its own sightings.
    shown = keys.filter(has_text="e2e (this key)").locator("[data-field=last-used]")
    expect(shown).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$"))
    at = datetime.strptime(shown.inner_text(), "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC).timestamp()
    assert (started - 61) // 60 * 60 <= at <= time.time()
    expect(keys.filter(has_text="spare").locator("[data-field=last-used]")).to_have_text("never")
    failed = usage["failed_requests"]
    assert isinstance(failed, int)
    expect(page.locator("#succeeded")).to_have_text(str(int(str(usage["requests"])) - failed))
    expect(page.locator("#daily-title")).to_have_text("Succeeded requests and their images per day")
    expect(page.locator("#daily-chart svg")).to_contain_text("succeeded requests")
    assert stack.key not in page.content() and stack.key[:7] in page.content()
    screenshot(page, "team")


def _last_used(stack: Stack) -> dict[str, int | None]:
    r = httpx.get(stack.base + "/v1/team", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    r.raise_for_status()
    return {k["name"]: k["last_used"] for k in r.json()["keys"]}


def _fal_images(stack: Stack) -> int:
    lines = stack.admin.get("/admin/usage", params={"team_id": stack.team_id}).json()["lines"]
    return sum(line["images"] for line in lines if line["provider"] == "fal" and line["status"] == "succeeded")
