"""The admin pages at /admin in chromium: create and edit a team, create a key (shown once) that
then works in the playground, revoke it (the playground says so), disable and enable a team (the
playground says so), usage with the CSV invoice, and each route's live health."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.api.conftest import wait_for
from tests.browser.conftest import screenshot
from tests.integration.gateway_stack import Stack

pytestmark = pytest.mark.slow


def test_admin_creates_a_team_and_a_key_that_works_until_revoked(
    page: Page, context: BrowserContext, stack: Stack, tmp_path: Path
) -> None:
    page.goto(stack.base + "/admin")
    page.get_by_label("Admin key").fill(stack.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#admin-data")).to_be_visible()
    expect(page.locator("#routes tr").first).to_be_visible()
    expect(page.locator("#routes")).to_contain_text("healthy")

    page.get_by_label("Team name").fill("design <b>team</b>")
    page.get_by_label("Monthly budget (USD)").fill("20")
    page.get_by_label("Requests per minute").fill("30")
    page.get_by_role("button", name="Create team").click()
    expect(page.locator("#keys-team")).to_have_text("design <b>team</b>")
    teams = stack.admin.get("/admin/teams").json()["data"]
    made = next(t for t in teams if t["name"] == "design <b>team</b>")
    assert (made["monthly_budget_usd"], made["limits"]["requests_per_minute"]) == (20.0, 30)
    row = page.locator(f"#teams tr[data-team={made['id']}]")
    expect(row).to_contain_text("$20.00")

    row.get_by_role("button", name="Edit").click()
    page.get_by_label("Monthly budget (USD)").fill("25")
    page.get_by_role("button", name="Save team").click()
    expect(row).to_contain_text("$25.00")
    assert stack.admin.get(f"/admin/teams/{made['id']}").json()["monthly_budget_usd"] == 25.0

    page.get_by_label("Key name").fill("web")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#new-key-value")).to_have_text(re.compile(r"^sk-gw-\S{20,}$"))
    key = page.locator("#new-key-value").inner_text()
    expect(page.locator("#keys tr")).to_have_count(1)

    # The new key works in the playground (another tab: its own session storage).
    playground = context.new_page()
    playground.goto(stack.base + "/")
    playground.get_by_label("API key").fill(key)
    playground.get_by_role("button", name="Sign in").click()
    playground.get_by_label("Prompt", exact=True).fill("a new team's first quote")
    expect(playground.locator("#quote-admission")).to_contain_text("$25.00 budget left")

    page.locator("#keys tr").first.get_by_role("button", name="Revoke").click()
    page.get_by_role("button", name="Confirm revoke").click()
    expect(page.locator("#keys tr")).to_have_count(0)
    playground.get_by_label("Images (n)").fill("2")  # the next quote is refused
    expect(playground.locator("#auth-error")).to_contain_text("may have been revoked")
    expect(playground.get_by_label("API key")).to_be_visible()
    screenshot(playground, "playground-key-revoked")

    # Usage: the stack's team, and its CSV invoice.
    page.get_by_label("Team", exact=True).select_option(stack.team_id)
    expect(page.locator("#usage tr")).to_have_count(1)
    expect(page.locator("#usage tr")).to_contain_text("e2e")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV invoice").click()
    saved = tmp_path / "invoice.csv"
    download.value.save_as(saved)
    expected = stack.admin.get("/admin/usage", params={"team_id": stack.team_id, "format": "csv"}).text
    assert saved.read_text() == expected and expected.startswith("time,request_id,")
    assert stack.admin_key not in page.content()
    screenshot(page, "admin")


def test_a_wrong_admin_key_is_told(page: Page, stack: Stack) -> None:
    page.goto(stack.base + "/admin")
    page.get_by_label("Admin key").fill("adm-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#auth-error")).to_contain_text("not the GATEWAY_ADMIN_KEY")
    expect(page.locator("#admin-data")).to_be_hidden()


def _sign_in_admin(page: Page, stack: Stack) -> None:
    page.goto(stack.base + "/admin")
    page.get_by_label("Admin key").fill(stack.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#admin-data")).to_be_visible()


def test_admin_disables_a_team_and_the_playground_says_so_until_it_is_enabled(
    page: Page, context: BrowserContext, stack: Stack
) -> None:
    team = stack.admin.post("/admin/teams", json={"name": "to disable", "monthly_budget_usd": 5.0}).json()
    key = stack.admin.post(f"/admin/teams/{team['id']}/keys", json={"name": "web"}).json()["key"]
    playground = context.new_page()
    playground.goto(stack.base + "/")
    playground.get_by_label("API key").fill(key)
    playground.get_by_role("button", name="Sign in").click()
    playground.get_by_label("Model").select_option("hidream-i1-full")
    playground.get_by_label("Prompt", exact=True).fill("before and after")
    expect(playground.locator("#quote-admission")).to_contain_text("admitted now")

    _sign_in_admin(page, stack)
    row = page.locator(f"#teams tr[data-team={team['id']}]")
    expect(row.locator("[data-field=state]")).to_have_text("active")
    row.get_by_role("button", name="Disable").click()
    row.get_by_role("button", name="Confirm disable").click()
    expect(row.locator("[data-field=state]")).to_have_text("disabled")
    assert stack.admin.get(f"/admin/teams/{team['id']}").json()["disabled"] is True
    screenshot(page, "admin-team-disabled")

    playground.get_by_label("Images (n)").fill("2")  # a new quote: refused, and why
    expect(playground.locator("#quote-admission")).to_contain_text("would be refused now: your team is disabled")
    notice = playground.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Your team is disabled by the gateway's admin")
    playground.get_by_role("button", name="Generate").click()
    expect(playground.locator("#gen-error")).to_have_text(
        "This key's team is disabled; ask your gateway admin to enable it. Nothing was charged."
    )
    expect(playground.get_by_role("button", name="Generate")).to_be_enabled()
    expect(playground.get_by_role("button", name="Sign out")).to_be_visible()  # the key itself is fine
    screenshot(playground, "playground-team-disabled")
    usage = stack.admin.get("/admin/usage", params={"team_id": team["id"]}).json()
    assert usage["lines"] == [] and usage["teams"][0]["requests"] == 0

    row.get_by_role("button", name="Enable").click()
    expect(row.locator("[data-field=state]")).to_have_text("active")
    playground.get_by_label("Images (n)").fill("1")
    expect(playground.locator("#quote-admission")).to_contain_text("admitted now")
    expect(notice).to_be_hidden()


def test_the_admin_page_shows_each_routes_live_health(page: Page, stack: Stack) -> None:
    stack.client().images.generate(
        model="local_gpu/hidream-i1-full", prompt="a sample for p95", response_format="b64_json",
        extra_body={"num_inference_steps": 2},
    )  # fmt: skip

    def gpu_samples() -> int:
        rows = stack.admin.get("/admin/routes").json()["data"]
        gpu = next(r for r in rows if (r["model"], r["provider"]) == ("hidream-i1-full", "local_gpu"))
        return int((gpu["latency"] or {}).get("samples", 0))

    wait_for(lambda: gpu_samples() > 0, "the route's latency to be recorded")
    _sign_in_admin(page, stack)
    expect(page.locator("#routes tr")).to_have_count(6)
    gpu = page.locator("#routes tr[data-route='local_gpu/hidream-i1-full']")
    expect(gpu.locator("[data-field=status]")).to_have_text("healthy")
    expect(gpu.locator("[data-field=breaker]")).to_have_text("closed")
    expect(gpu.locator("[data-field=queue]")).to_have_text(re.compile(r"^\d+ queued, wait \d+\.\d+ s$"))
    expect(gpu.locator("[data-field=latency]")).to_have_text(re.compile(r"^p95 \d+\.\d+ s, avg \d+\.\d+ s \(\d+\)$"))
    expect(gpu).to_contain_text("1/1 workers for hidream-i1-full ready")
    # The tiny worker runs Full only: the other variants' GPU routes are not configured, not failing.
    fast = page.locator("#routes tr[data-route='local_gpu/hidream-i1-fast']")
    expect(fast.locator("[data-field=status]")).to_have_text("not configured")
    expect(fast).to_contain_text("no worker configured for hidream-i1-fast (the workers run hidream-i1-full)")
    expect(page.locator("#routes")).not_to_contain_text("0/0")
    fal = page.locator("#routes tr[data-route='fal/hidream-i1-full']")
    expect(fal.locator("[data-field=status]")).to_have_text("healthy")
    expect(fal.locator("[data-field=queue]")).to_have_text("–")
    screenshot(page, "admin-routes")
