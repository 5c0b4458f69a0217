"""The object store (gateway/images/object_store.py) against a real S3-compatible server (moto's,
a process of its own on loopback): what it writes, streams, signs, reissues, sweeps, and what it
says when the server is gone or refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from gateway.errors import StorageUnavailableError
from gateway.images.blobs import S3Blobs
from gateway.images.object_store import STREAM_PART_BYTES, S3ImageStore, open_s3
from gateway.images.store import OnStoreError
from tests.s3_server import CREDENTIALS, S3Server

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def _store(
    server: S3Server, bucket: str, *, ttl_s: int = 3600, presigned: bool = False, on_error: OnStoreError | None = None
) -> S3ImageStore:
    s3 = open_s3(f"s3://{bucket}/pre/fix", endpoint_url=server.url, region="us-east-1")
    return S3ImageStore(s3, "https://gw.example", b"k" * 32, ttl_s, presigned=presigned, on_error=on_error)


async def test_an_image_is_put_under_the_prefix_and_streamed_back(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket)
    stored = await store.put(PNG, "image/png")
    assert stored.name.endswith(".png")
    assert s3_server.keys(bucket) == [f"pre/fix/images/{stored.name}"]
    head = s3_server.client().head_object(Bucket=bucket, Key=f"pre/fix/images/{stored.name}")
    assert head["ContentType"] == "image/png"
    found = await store.open(stored.name)
    assert found is not None and found.chunks is not None and found.path is None
    assert (found.content_type, found.size) == ("image/png", len(PNG))
    assert b"".join([c async for c in found.chunks]) == PNG
    assert await store.take_back(stored.name) == PNG
    # A gateway URL, signed as the local store signs it.
    url = urlparse(await store.url(stored.name))
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert (url.netloc, url.path) == ("gw.example", f"/v1/files/images/{stored.name}")
    assert store.verify(stored.name, int(q["expires"]), q["sig"])
    assert not store.verify(stored.name, int(q["expires"]) + 1, q["sig"])


async def test_missing_and_impossible_names_are_none_not_errors(s3_server: S3Server) -> None:
    store = _store(s3_server, s3_server.new_bucket())
    assert await store.open("AAAAAAAAAAAAAAAAAAAAAAAA.png") is None
    assert await store.open("../../etc/passwd") is None
    assert await store.reissue("AAAAAAAAAAAAAAAAAAAAAAAA.png") is None
    assert await store.take_back("AAAAAAAAAAAAAAAAAAAAAAAA.png") is None


async def _chunks(parts: int, size: int, *, fail: bool) -> AsyncIterator[bytes]:
    for i in range(parts):
        yield (PNG if i == 0 else b"") + bytes([i % 256]) * size
    if fail:
        raise ConnectionResetError("the source went away")


@pytest.mark.parametrize("parts", [1, 3])  # below one part (one PUT), and past it (a multipart upload)
async def test_a_streamed_put_whose_source_fails_leaves_nothing_behind(s3_server: S3Server, parts: int) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket)
    with pytest.raises(ConnectionResetError):
        await store.put_stream(_chunks(parts, STREAM_PART_BYTES if parts > 1 else 1000, fail=True), "image/png")
    assert s3_server.keys(bucket) == [] and s3_server.open_uploads(bucket) == []
    whole = await store.put_stream(_chunks(parts, STREAM_PART_BYTES if parts > 1 else 1000, fail=False), "image/png")
    got = await store.take_back(whole.name)
    assert got is not None and got.startswith(PNG)
    assert len(got) == len(PNG) + parts * (STREAM_PART_BYTES if parts > 1 else 1000)


async def test_reissue_moves_the_objects_age_to_now_and_the_sweep_goes_by_it(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket, ttl_s=3600)
    kept = await store.put(PNG, "image/png")
    other = await store.put(PNG, "image/png")
    before = s3_server.client().head_object(Bucket=bucket, Key=f"pre/fix/images/{kept.name}")["LastModified"]
    await asyncio.sleep(1.1)  # S3 keeps last-modified to the second
    assert await store.reissue(kept.name) is not None
    after = s3_server.client().head_object(Bucket=bucket, Key=f"pre/fix/images/{kept.name}")["LastModified"]
    assert after > before
    assert sorted(s3_server.keys(bucket)) == sorted(f"pre/fix/images/{n}" for n in (kept.name, other.name))
    assert await store.sweep_expired() == 0  # both are younger than a URL's lifetime
    # One URL lifetime after the first put: the unrenewed image is swept, the renewed one kept.
    now = before.timestamp() + 3600 + 60 + 0.5
    assert await store.sweep_expired(now=now) == 1
    assert s3_server.keys(bucket) == [f"pre/fix/images/{kept.name}"]
    assert await store.sweep_expired(now=time.time() + 3600 + 61) == 1 and s3_server.keys(bucket) == []


async def test_a_presigned_url_downloads_with_a_plain_get_and_says_when_it_expires(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket, ttl_s=600, presigned=True)
    stored = await store.put(PNG, "image/png")
    signed_at = time.time()
    url = await store.url(stored.name)
    assert url.startswith(f"{s3_server.url}/{bucket}/pre/fix/images/{stored.name}?")
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == PNG
    # Expiry is the store's to enforce (SigV4: X-Amz-Date + X-Amz-Expires). moto checks neither
    # the signature nor the expiry of a presigned URL, so what is tested here is what it carries.
    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert q["X-Amz-Expires"] == "600" and q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    date = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    assert abs(date - signed_at) < 5


async def test_discard_deletes_the_named_images(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    store = _store(s3_server, bucket)
    a, b = await store.put(PNG, "image/png"), await store.put(PNG, "image/png")
    await store.discard([a.name, "../escape.png"])
    assert s3_server.keys(bucket) == [f"pre/fix/images/{b.name}"]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


async def test_a_store_that_is_down_or_refuses_is_unavailable_not_an_internal_error(own_server: S3Server) -> None:
    bucket = own_server.new_bucket()
    errors: list[tuple[str, str]] = []
    store = _store(own_server, bucket, on_error=lambda op, kind: errors.append((op, kind)))
    archive = S3Blobs(open_s3(f"s3://{bucket}/pre/fix", endpoint_url=own_server.url, region="us-east-1"), "s3://",
                      on_error=lambda op, kind: errors.append(("archive " + op, kind)))  # fmt: skip
    stored = await store.put(PNG, "image/png")
    await archive.put("ledger/t/2026-12/2026-12-01.manifest.json", b"{}")
    assert errors == []
    own_server.client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in own_server.keys(bucket)]})
    own_server.client().delete_bucket(Bucket=bucket)  # the bucket refuses every write now
    with pytest.raises(StorageUnavailableError) as refused:
        await store.put(PNG, "image/png")
    assert refused.value.status_code == 503 and refused.value.headers["retry-after"]
    own_server.stop()
    with pytest.raises(StorageUnavailableError):
        await store.put(PNG, "image/png")
    with pytest.raises(StorageUnavailableError):
        await store.put_stream(_chunks(1, 10, fail=False), "image/png")
    with pytest.raises(StorageUnavailableError):
        await store.open(stored.name)
    with pytest.raises(StorageUnavailableError):
        await archive.get("ledger/t/2026-12/2026-12-01.manifest.json")
    with pytest.raises(StorageUnavailableError):
        await archive.keys("ledger/t/")
    await store.discard([stored.name])  # best effort: said in the metric and the log, never raised
    # Each failure counted once by operation; a deleted bucket or a server gone are "failed"
    # (neither refused our credentials nor is a full disk).
    assert errors == [("put", "failed"), ("put", "failed"), ("put_stream", "failed"), ("get", "failed"),
                      ("archive get", "failed"), ("archive list", "failed"), ("delete", "failed")]  # fmt: skip
