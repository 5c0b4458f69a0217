"""The worker's images as bytes (Accept: application/vnd.hidream.images), negotiated: the real
worker app answers them to a client that accepts them and JSON to any other; the local GPU adapter
asks for them and reads either answer, so a gateway and a worker of different ages still work
together."""

from __future__ import annotations

import base64
import io
import json

import httpx
import orjson
import pytest
from PIL import Image

from providers.base import ProviderBadResponseError, RouteTarget
from providers.local_gpu import LocalGpuProvider
from providers.local_gpu.mapping import ACCEPT, RAW_IMAGES, parse_generation
from tests.api.conftest import Routed
from tests.contract.cases.local_gpu import make_request
from tests.fakes.worker_server import running_worker
from worker.schemas import accepts_raw

GEN = "/v1/images/generations"
FULL = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)


def test_raw_images_are_the_pngs_back_to_back_with_their_lengths() -> None:
    with running_worker("full") as worker:
        body = {"prompt": "a barn", "n": 2, "size": "1360x768", "seed": 9, "response_format": "b64_json"}
        raw = httpx.post(f"{worker.url}{GEN}", json=body, headers={"accept": ACCEPT, "x-request-id": "r-1"})
        assert raw.status_code == 200
        assert raw.headers["content-type"] == RAW_IMAGES
        assert (raw.headers["x-actual-size"], raw.headers["x-seed"], raw.headers["x-request-id"]) == (
            "1360x768", "9", "r-1",
        )  # fmt: skip
        lengths = [int(n) for n in raw.headers["x-image-lengths"].split(",")]
        assert len(lengths) == 2 and sum(lengths) == len(raw.content)
        pngs = [raw.content[: lengths[0]], raw.content[lengths[0] :]]
        for png in pngs:
            assert Image.open(io.BytesIO(png)).size == (1360, 768)
        # The same request as JSON carries the same images as base64 (the stand-in is deterministic).
        as_json = httpx.post(f"{worker.url}{GEN}", json=body)
        assert as_json.headers["content-type"] == "application/json"
        assert [base64.b64decode(d["b64_json"]) for d in as_json.json()["data"]] == pngs


@pytest.mark.parametrize(
    ("accept", "raw"),
    [
        (None, False),
        ("application/json", False),
        ("*/*", False),
        (RAW_IMAGES, True),
        (ACCEPT, True),
        ("application/json, application/vnd.hidream.images;q=0.9", True),
        ("application/vnd.hidream.images;q=0", False),
        ("APPLICATION/VND.HIDREAM.IMAGES", True),
        ("application/vnd.hidream.images;q=nope", False),
    ],
)
def test_only_a_client_that_names_raw_images_gets_them(accept: str | None, raw: bool) -> None:
    assert accepts_raw(accept) is raw


def test_errors_stay_json_for_a_client_that_accepts_raw_images() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("fail")
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "x"}, headers={"accept": ACCEPT})
        assert resp.status_code == 500 and resp.json()["error"]["code"] == "inference_failed"
        bad = httpx.post(f"{worker.url}{GEN}", json={"prompt": "x", "n": 0}, headers={"accept": ACCEPT})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "n"


async def test_the_adapter_gets_raw_images_from_a_worker_that_has_them() -> None:
    with running_worker("full") as worker:
        provider = LocalGpuProvider([worker.url], connect_timeout_s=2.0)
        try:
            result = await provider.generate(FULL, make_request(n=2, seed=5))
        finally:
            await provider.aclose()
        assert len(result.images) == 2 and result.seed == 5
        for img in result.images:
            assert img.b64 is None  # bytes came, not base64
            assert img.data is not None and Image.open(io.BytesIO(img.data)).size == (img.width, img.height)


async def test_the_adapter_reads_json_from_a_worker_without_raw_images() -> None:
    with running_worker("full") as worker:
        worker.injector.before_raw_images = True
        provider = LocalGpuProvider([worker.url], connect_timeout_s=2.0)
        try:
            result = await provider.generate(FULL, make_request(n=2, seed=5))
        finally:
            await provider.aclose()
        assert worker.injector.accepts == [ACCEPT]  # asked, and answered JSON
    assert len(result.images) == 2 and result.seed == 5
    for img in result.images:
        assert img.b64 is not None and img.data == base64.b64decode(img.b64)


def test_raw_answers_that_do_not_add_up_are_bad_responses() -> None:
    png = io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(png, "PNG")
    data = png.getvalue()
    request = make_request()
    headers = {"content-type": RAW_IMAGES, "x-actual-size": request.size, "x-seed": "3"}
    ok = parse_generation(headers | {"x-image-lengths": str(len(data))}, data, request)
    assert ok.seed == 3 and ok.images[0].data is data  # one image is the body itself, no copy
    for lengths, body in [
        (str(len(data) - 1), data),  # the body is longer
        (f"{len(data)},1", data + b"x"),  # two images for n=1
        ("many", data),
        ("", data),
        (str(len(data)), data[:-1]),
        (str(len(data)), b"GIF89a" + data[6:]),  # not a PNG, JPEG or WebP
    ]:
        with pytest.raises(ProviderBadResponseError):
            parse_generation(headers | {"x-image-lengths": lengths}, body, request)
    wrong = make_request(width=768, height=1360)
    with pytest.raises(ProviderBadResponseError, match="got an image of 1024x1024"):
        parse_generation({"content-type": RAW_IMAGES, "x-image-lengths": str(len(data))}, data, wrong)
    assert json.dumps(ACCEPT)  # the header the adapter sends is plain ASCII


@pytest.mark.parametrize("before_raw_images", [False, True])
def test_b64_json_answers_are_byte_identical_whichever_way_the_worker_sent_them(
    routed: Routed, before_raw_images: bool
) -> None:
    """The gateway's JSON, its base64 written a piece at a time, is byte for byte what orjson makes
    of the same answer whole (the rendering before), and the images are the worker's own."""
    routed.worker.injector.before_raw_images = before_raw_images
    r = routed.generate(
        headers={"x-gateway-provider": "local_gpu"}, n=2, size="1024x1024", response_format="b64_json", seed=11
    )
    assert r.status_code == 200, r.text
    assert routed.worker.injector.accepts[-1] == ACCEPT
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.content == orjson.dumps(r.json())
    direct = httpx.post(
        f"{routed.worker.url}{GEN}", json={"prompt": "route me", "n": 2, "seed": 11, "num_inference_steps": 2}
    )
    assert [d["b64_json"] for d in r.json()["data"]] == [d["b64_json"] for d in direct.json()["data"]]
