"""Images on an S3-compatible object store (a real moto server on loopback), through the real app:
URL answers from either route are the gateway's own and download from the bucket, fal's CDN
images are copied in, b64_json replays read the bytes back from the bucket, and a store that is
down or refuses fails the request with 503, charged nothing and leaving nothing behind."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from PIL import Image

from gateway.accounting.metering import Idempotency
from tests.api.conftest import Routed, routed_stack, wait_for
from tests.s3_server import CREDENTIALS, S3Server

FAL = {"x-gateway-provider": "fal"}


@contextmanager
def _stack(
    s3: S3Server, bucket: str, redis_url: str, tmp_path: Path, pricing_file: Path, **more: Any
) -> Iterator[Routed]:
    env = s3.gateway_env(bucket)
    with routed_stack(
        redis_url, tmp_path, pricing_file,
        image_store=env["GATEWAY_IMAGE_STORE"], s3_endpoint_url=env["GATEWAY_S3_ENDPOINT_URL"],
        s3_region=env["GATEWAY_S3_REGION"], **more,
    ) as stack:  # fmt: skip
        yield stack


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def on_s3(
    s3_server: S3Server, bucket: str, redis_url: str, tmp_path: Path, pricing_file: Path, request: pytest.FixtureRequest
) -> Iterator[Routed]:
    with _stack(s3_server, bucket, redis_url, tmp_path, pricing_file, **getattr(request, "param", {})) as stack:
        yield stack


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def _usage(stack: Routed) -> dict[str, Any]:
    got: dict[str, Any] = stack.client.get("/v1/usage", headers={"Authorization": f"Bearer {stack.key}"}).json()
    return got


def _object(s3: S3Server, bucket: str, name: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=bucket, Key=f"gw/images/{name}")["Body"].read()
    return body


@pytest.mark.parametrize("headers", [{}, FAL], ids=["local_gpu", "fal"])
def test_a_url_answer_is_the_gateways_own_and_downloads_from_the_bucket(
    on_s3: Routed, s3_server: S3Server, bucket: str, headers: dict[str, str]
) -> None:
    r = on_s3.generate(headers=headers, response_format="url", size="512x512", output_format="png")
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-provider"] == ("fal" if headers else "local_gpu")
    (item,) = r.json()["data"]
    url = item["url"]
    # fal's CDN URL never reaches the caller: its image was copied into the bucket.
    assert url.startswith("http://127.0.0.1:8000/v1/files/images/") and "/cdn/" not in url  # public_url
    assert s3_server.keys(bucket) == [f"gw/images/{_name(url)}"]
    got = on_s3.client.get(_path(url))
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == _object(s3_server, bucket, _name(url))
    assert Image.open(io.BytesIO(got.content)).size == (512, 512)


@pytest.mark.parametrize("on_s3", [{"upstream_image_urls": "pass"}], indirect=True)
def test_the_admin_may_pass_fals_urls_through_uncopied(on_s3: Routed, s3_server: S3Server, bucket: str) -> None:
    r = on_s3.generate(headers=FAL, response_format="url")
    assert r.status_code == 200, r.text
    assert "/cdn/files/" in r.json()["data"][0]["url"] and s3_server.keys(bucket) == []


def test_a_fal_image_that_cannot_be_downloaded_fails_uncharged(on_s3: Routed, s3_server: S3Server, bucket: str) -> None:
    on_s3.fal.cdn_gone = True
    r = on_s3.generate(headers=FAL, response_format="url")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    usage = _usage(on_s3)
    assert (usage["spent_usd"], usage["reserved_usd"], usage["failed_requests"]) == (0, 0, 1)
    assert s3_server.keys(bucket) == [] and s3_server.open_uploads(bucket) == []


def test_a_url_to_an_object_that_is_gone_is_a_404(on_s3: Routed, s3_server: S3Server, bucket: str) -> None:
    url = on_s3.generate(response_format="url").json()["data"][0]["url"]
    s3_server.client().delete_object(Bucket=bucket, Key=f"gw/images/{_name(url)}")
    gone = on_s3.client.get(_path(url))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_b64_json_replay_reads_the_bytes_back_from_the_bucket(
    on_s3: Routed, s3_server: S3Server, bucket: str, redis_url: str
) -> None:
    headers = {"Idempotency-Key": "s3-b64"}
    first = on_s3.generate(headers=headers, response_format="b64_json", n=2)
    assert first.status_code == 200, first.text
    images = [d["b64_json"] for d in first.json()["data"]]
    names = [k.rsplit("/", 1)[1] for k in s3_server.keys(bucket)]
    assert len(names) == 2
    with redis.Redis.from_url(redis_url) as r:
        key = Idempotency("s3-b64", "").redis_key(on_s3.team_id)
        assert r.memory_usage(key) < 1024  # names, not megabytes of base64
    again = on_s3.generate(headers=headers, response_format="b64_json", n=2)
    assert again.status_code == 200 and again.headers["x-gateway-idempotent-replay"] == "true"
    assert [d["b64_json"] for d in again.json()["data"]] == images
    # Read from the bucket, not kept anywhere else: with the objects gone, the replay says so.
    s3_server.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"gw/images/{n}"} for n in names]})
    gone = on_s3.generate(headers=headers, response_format="b64_json", n=2)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "idempotency_images_gone"


def test_a_bucket_that_refuses_the_write_is_a_503_charged_nothing(
    on_s3: Routed, s3_server: S3Server, bucket: str
) -> None:
    s3_server.client().delete_bucket(Bucket=bucket)  # every write refused (NoSuchBucket)
    for headers in ({}, FAL):
        r = on_s3.generate(headers=headers, response_format="url")
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert r.json()["error"]["code"] == "storage_unavailable"
    usage = _usage(on_s3)
    assert (usage["spent_usd"], usage["reserved_usd"], usage["failed_requests"]) == (0, 0, 2)


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


def test_the_store_stopped_mid_request_is_a_503_charged_nothing_then_recovers(
    own_s3: S3Server, redis_url: str, tmp_path: Path, pricing_file: Path
) -> None:
    bucket = own_s3.new_bucket()
    with _stack(own_s3, bucket, redis_url, tmp_path, pricing_file) as stack:
        stack.fal.fail_next("hang")
        answer: list[httpx.Response] = []
        caller = threading.Thread(target=lambda: answer.append(stack.generate(headers=FAL, response_format="url")))
        caller.start()
        wait_for(lambda: stack.fal.count("submits") >= 1, "the submit")
        own_s3.stop()  # the store goes away while fal is still generating
        stack.fal.end_hung("ok")
        caller.join(timeout=60)
        (r,) = answer
        assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "storage_unavailable"
        usage = _usage(stack)
        assert (usage["spent_usd"], usage["reserved_usd"], usage["failed_requests"]) == (0, 0, 1)
        own_s3.start()  # back (empty, as a new server is): the next request is stored and served
        own_s3.client().create_bucket(Bucket=bucket)
        ok = stack.generate(headers=FAL, response_format="url")
        assert ok.status_code == 200, ok.text
        assert own_s3.keys(bucket) == [f"gw/images/{_name(ok.json()['data'][0]['url'])}"]


@pytest.mark.parametrize("on_s3", [{"image_urls": "presigned"}], indirect=True)
def test_presigned_urls_are_the_buckets_and_work_with_a_plain_get(
    on_s3: Routed, s3_server: S3Server, bucket: str
) -> None:
    r = on_s3.generate(response_format="url")
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith(f"{s3_server.url}/{bucket}/gw/images/") and "X-Amz-Signature=" in url
    assert f"X-Amz-Expires={on_s3.client.app.state.gateway.settings.image_url_ttl_s}" in url  # type: ignore[attr-defined]
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == _object(s3_server, bucket, _name(url))
    # An idempotent replay is answered with a presigned URL signed anew, for the same object.
    first = on_s3.generate(headers={"Idempotency-Key": "presigned-1"}, response_format="url")
    again = on_s3.generate(headers={"Idempotency-Key": "presigned-1"}, response_format="url")
    assert again.headers["x-gateway-idempotent-replay"] == "true"
    (before,), (after,) = ([d["url"] for d in r.json()["data"]] for r in (first, again))
    assert _name(after) == _name(before) and after.startswith(f"{s3_server.url}/{bucket}/gw/images/")
    assert httpx.get(after).content == _object(s3_server, bucket, _name(after))


def test_with_the_local_directory_fals_images_are_copied_there_too(routed: Routed, tmp_path: Path) -> None:
    r = routed.generate(headers=FAL, response_format="url", output_format="png")
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith("http://127.0.0.1:8000/v1/files/images/") and "/cdn/" not in url
    got = routed.client.get(_path(url))
    assert got.status_code == 200 and got.content == (tmp_path / "data" / "images" / _name(url)).read_bytes()
