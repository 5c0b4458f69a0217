"""The playground at / in chromium: sign in, the quote, generating on the tiny worker, the gallery,
copy as code, cancel, where the key is (and is not), and a prompt that tries to run script."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.api.conftest import wait_for
from tests.browser.conftest import screenshot
from tests.integration.gateway_stack import Stack

pytestmark = pytest.mark.slow


def sign_in(page: Page, stack: Stack, key: str | None = None) -> None:
    page.goto(stack.base + "/")
    page.get_by_label("API key").fill(key or stack.key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#model option").first).to_be_attached()


def fill(page: Page, prompt: str, *, steps: int = 2, n: int = 1) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Images (n)").fill(str(n))


def usage(stack: Stack) -> dict[str, object]:
    r = httpx.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    r.raise_for_status()
    body: dict[str, object] = r.json()
    return body


def _non_blank(page: Page, selector: str) -> bool:
    """The image decoded, and is not one flat colour (drawn on a canvas and its pixels compared)."""
    return bool(
        page.eval_on_selector(
            selector,
            """img => {
                if (!img.complete || img.naturalWidth === 0) return false;
                const c = document.createElement('canvas');
                c.width = img.naturalWidth; c.height = img.naturalHeight;
                const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
                const d = ctx.getImageData(0, 0, c.width, c.height).data;
                for (let i = 4; i < d.length; i += 4)
                    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return true;
                return false;
            }""",
        )
    )


def test_the_quote_appears_and_follows_n(page: Page, stack: Stack) -> None:
    sign_in(page, stack)
    expect(page.get_by_label("Model")).to_have_value("hidream-i1-full")
    fill(page, "a lighthouse at dusk")
    expect(page.locator("#quote-cost")).to_have_text("$0.05 for 1 image")
    # Which route depends on the tiny worker's queue right now; that it names one does not.
    expect(page.locator("#quote-route")).to_have_text(re.compile(r" · route: (local_gpu|fal) \(\w+\), about \d+ s"))
    expect(page.locator("#quote-admission")).to_contain_text("admitted now")
    page.get_by_label("Images (n)").fill("3")
    expect(page.locator("#quote-cost")).to_have_text("$0.15 for 3 images")
    page.get_by_label("Size").select_option("16:9")
    page.get_by_label("Steps").fill("500")  # past the model's range: the quote says which parameter
    expect(page.locator("#quote")).to_contain_text("num_inference_steps")
    screenshot(page, "playground-quote")


def test_generate_shows_the_image_in_the_gallery_charged_as_usage_says(page: Page, stack: Stack) -> None:
    spent = float(usage(stack)["spent_usd"])  # type: ignore[arg-type]
    sign_in(page, stack)
    page.get_by_label("Model").select_option("local_gpu/hidream-i1-full")  # the tiny worker, pinned
    fill(page, "a red bicycle")
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Random seed").uncheck()
    page.get_by_label("Seed", exact=True).fill("1234")
    page.get_by_role("button", name="Generate").click()
    item = page.locator(".gallery-item").first
    expect(item).to_be_visible(timeout=120_000)
    expect(page.locator("#progress")).to_contain_text("Done in")
    assert _non_blank(page, ".gallery-item img")
    expect(item.locator("figcaption")).to_have_text("a red bicycle")
    expect(item.locator("[data-field=provider]")).to_have_text("local_gpu")
    expect(item.locator("[data-field=seed]")).to_have_text("1234")
    expect(item.locator("[data-field=route-reason]")).to_have_text("pinned")
    expect(item.locator("[data-field=cost]")).to_contain_text("$0.05")
    wait_for(lambda: float(usage(stack)["spent_usd"]) > spent, "the request to be settled")  # type: ignore[arg-type]
    assert round(float(usage(stack)["spent_usd"]) - spent, 6) == 0.05  # type: ignore[arg-type]
    assert item.get_by_role("link", name="Download").get_attribute("download") == "image-1234.png"

    item.get_by_text("Copy as code").click()
    code = {lang: item.locator(f"pre[data-lang={lang}]").inner_text() for lang in ("Python", "JavaScript", "curl")}
    assert 'prompt="a red bicycle"' in code["Python"]
    assert '"negative_prompt": "blurry", "num_inference_steps": 2, "seed": 1234' in code["Python"]
    assert 'os.environ["GATEWAY_API_KEY"]' in code["Python"] and stack.base + "/v1" in code["Python"]
    assert "seed: 1234," in code["JavaScript"] and 'prompt: "a red bicycle",' in code["JavaScript"]
    curl_body = code["curl"].split("-d '", 1)[1].rstrip("'")
    assert json.loads(curl_body) == {
        "model": "local_gpu/hidream-i1-full", "prompt": "a red bicycle", "n": 1, "size": "1024x1024",
        "output_format": "png", "negative_prompt": "blurry", "num_inference_steps": 2, "seed": 1234,
    }  # fmt: skip
    assert "$GATEWAY_API_KEY" in code["curl"] and stack.key not in json.dumps(code)

    # The gallery keeps the session's images: a second one joins the first.
    fill(page, "a blue bicycle")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator(".gallery-item")).to_have_count(2, timeout=120_000)
    expect(page.locator(".gallery-item figcaption")).to_have_text(["a blue bicycle", "a red bicycle"])
    screenshot(page, "playground-gallery")


def test_the_key_is_kept_only_in_session_storage(page: Page, stack: Stack) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    sign_in(page, stack)
    fill(page, "where is the key")
    expect(page.locator("#quote-cost")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('gateway.teamKey')") == stack.key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert stack.key not in page.content() and stack.key not in page.url
    assert requests and not any(stack.key in url for url in requests)
    assert page.get_by_label("API key").input_value() == ""
    # Sent only as the Bearer header: the API's calls carry it, the page's assets do not.
    with page.expect_request(lambda r: "dryRun=true" in r.url) as sent:
        page.get_by_label("Images (n)").fill("2")
    assert sent.value.headers["authorization"] == f"Bearer {stack.key}"
    page.get_by_role("button", name="Sign out").click()
    assert page.evaluate("sessionStorage.getItem('gateway.teamKey')") is None


def test_a_wrong_key_shows_the_error_not_a_blank_page(page: Page, stack: Stack) -> None:
    sign_in_page = page
    sign_in_page.goto(stack.base + "/")
    sign_in_page.get_by_label("API key").fill("sk-gw-not-a-real-key-at-all")
    sign_in_page.get_by_role("button", name="Sign in").click()
    alert = page.locator("#auth-error")
    expect(alert).to_contain_text("Incorrect API key provided")
    expect(alert).to_contain_text("revoked")
    expect(page.get_by_label("API key")).to_be_visible()
    screenshot(page, "playground-wrong-key")


def test_a_prompt_with_markup_is_shown_as_text_and_never_runs(page: Page, stack: Stack) -> None:
    sign_in(page, stack)
    attack = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"\'&'
    fill(page, attack)
    page.get_by_role("button", name="Generate").click()
    item = page.locator(".gallery-item").first
    expect(item).to_be_visible(timeout=120_000)
    expect(item.locator("figcaption")).to_have_text(attack)
    item.get_by_text("Copy as code").click()
    assert page.evaluate("window.__xss") is None
    assert page.locator("#gallery img[src=x], #gallery script").count() == 0


def test_cancel_closes_the_stream_and_charges_nothing(page: Page, stack: Stack) -> None:
    before = len(stack.settled_ledger())
    cancels = httpx.get(stack.fal + "/_fake/stats").json()["cancels"]
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "hang"}).raise_for_status()
    sign_in(page, stack)
    page.get_by_label("Model").select_option("fal/hidream-i1-full")  # a route that hangs
    fill(page, "never finishes")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#progress")).to_contain_text("Generating")
    wait_for(lambda: httpx.get(stack.fal + "/_fake/stats").json()["submits"] > 0, "the job to reach fal")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#progress")).to_contain_text("nothing was charged")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    wait_for(lambda: len(stack.ledger()) > before, "the request to be settled")
    assert stack.ledger()[before:] == [("cancelled", 0)]
    wait_for(lambda: httpx.get(stack.fal + "/_fake/stats").json()["cancels"] == cancels + 1, "fal's job cancelled")
    assert page.locator(".gallery-item").count() == 0


def test_the_queue_position_shows_while_the_request_waits(page: Page, stack: Stack) -> None:
    """fal's queue holds one request ahead of ours, then ours (the fake's `queued` fault): the
    progress area says where ours is from the route's gateway.progress events, and when it is done,
    that it waited."""
    submits = httpx.get(stack.fal + "/_fake/stats").json()["submits"]
    httpx.post(stack.fal + "/_fake/faults", json={"fault": "queued", "count": 2}).raise_for_status()
    client = stack.client()
    ahead = threading.Thread(
        target=lambda: client.images.generate(model="fal/hidream-i1-full", prompt="ahead", response_format="b64_json")
    )
    try:
        ahead.start()
        wait_for(lambda: httpx.get(stack.fal + "/_fake/stats").json()["submits"] == submits + 1, "the job ahead")
        sign_in(page, stack)
        page.get_by_label("Model").select_option("fal/hidream-i1-full")
        fill(page, "behind another")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#progress")).to_contain_text("in the queue, 1 job ahead")
        screenshot(page, "playground-queued")
        httpx.post(stack.fal + "/_fake/end-hung", json={"end": "ok"}).raise_for_status()
        expect(page.locator("#progress")).to_contain_text("(waited in the queue behind 1 job).", timeout=60_000)
        expect(page.locator(".gallery-item")).to_have_count(1)
        screenshot(page, "playground-queued-done")
    finally:
        httpx.delete(stack.fal + "/_fake/faults")
        httpx.post(stack.fal + "/_fake/end-hung", json={"end": "ok"})
        ahead.join(timeout=60)


def test_an_image_picked_for_editing_is_sent_as_an_edit(page: Page, stack: Stack, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(photo)
    sign_in(page, stack)
    page.get_by_label("Model").select_option("fal/hidream-i1-full")  # the route with an edit endpoint
    fill(page, "make it blue")
    page.get_by_label("Image to edit").set_input_files(str(photo))
    expect(page.locator("#edit-mode")).to_contain_text("Editing photo.png")
    page.get_by_label("Strength").fill("0.6")
    expect(page.locator("#quote-cost")).to_have_text("$0.05 for 1 image")
    with page.expect_request(lambda r: r.url.endswith("/v1/images/edits")) as sent:
        page.get_by_role("button", name="Generate").click()
    assert sent.value.headers["content-type"].startswith("multipart/form-data")
    item = page.locator(".gallery-item").first
    expect(item).to_be_visible(timeout=60_000)
    expect(item.locator("[data-field=edit-of]")).to_have_text("photo.png")
    expect(item.locator("[data-field=provider]")).to_have_text("fal")
    # decoded at the asked size (the fake fal's images are one flat colour: no blankness check)
    size = page.eval_on_selector(".gallery-item img", "img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert size == [True, 1024, 1024]
    assert stack.ledger()[-1] == ("succeeded", 50_000)
    item.get_by_text("Copy as code").click()
    python = item.locator("pre[data-lang=Python]").inner_text()
    assert "client.images.edit(" in python and 'image=open("photo.png", "rb")' in python and '"strength": 0.6' in python
    assert "-F 'image=@photo.png'" in item.locator("pre[data-lang=curl]").inner_text()
    page.get_by_role("button", name="Clear image and mask").click()
    expect(page.locator("#edit-mode")).to_contain_text("No image")
    screenshot(page, "playground-edit")


@pytest.mark.parametrize("path", ["/", "/team", "/admin"])
def test_pages_fit_a_360_px_wide_screen_and_work_from_the_keyboard(browser: Browser, stack: Stack, path: str) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740})
    try:
        page = context.new_page()
        page.goto(stack.base + path)
        page.keyboard.press("Tab")  # skip the brand link and the nav to the key field
        for _ in range(8):
            if page.evaluate("document.activeElement.id") == "api-key":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.keyboard.type(stack.admin_key if path == "/admin" else stack.key)
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        ready = {"/": "#quote", "/team": "#team-data tbody#keys tr", "/admin": "#routes tr"}[path]
        expect(page.locator(ready).first).to_be_visible()
        if path == "/":
            expect(page.locator("#quote")).to_have_text("Write a prompt to see the price.")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        screenshot(page, f"narrow-{path.strip('/') or 'playground'}")
    finally:
        context.close()
