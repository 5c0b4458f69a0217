"""Two gateway replicas as real processes, each with its own data directory, on one redis-server and
one bucket of a real S3-compatible server (moto, on loopback): every replica serves every image,
and one that is killed takes none of them with it."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import redis

from gateway.accounting.metering import Idempotency
from tests.integration.replicas import Cluster, running_cluster
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(s3_server: S3Server, tmp_path: Path) -> Iterator[tuple[Cluster, str, Path]]:
    bucket = s3_server.new_bucket()
    with running_cluster(tmp_path, fal_inference_s=0.05, gateway_env=s3_server.gateway_env(bucket)) as made:
        yield made, bucket, tmp_path


def _through(base: str, url: str) -> str:
    """The same URL, sent to another replica (as a load balancer would)."""
    parts = urlsplit(url)
    return f"{base}{parts.path}?{parts.query}"


def test_an_image_made_on_one_replica_is_served_by_the_other_even_after_it_is_killed(
    cluster: tuple[Cluster, str, Path], s3_server: S3Server
) -> None:
    made, bucket, tmp = cluster
    a, b = made.bases
    team_id, key = made.team("replicas")
    with (
        openai.OpenAI(base_url=a + "/v1", api_key=key, max_retries=0) as on_a,
        openai.OpenAI(base_url=b + "/v1", api_key=key, max_retries=0) as on_b,
    ):
        url_answer = on_a.images.generate(model="hidream-i1-full", prompt="a", response_format="url", n=2)
        b64_answer = on_a.images.generate(
            model="hidream-i1-full", prompt="b", response_format="b64_json",
            extra_headers={"Idempotency-Key": "made-on-a"},
        )  # fmt: skip
        assert url_answer.data is not None and b64_answer.data is not None
        urls = [d.url for d in url_answer.data if d.url is not None]
        assert len(urls) == 2 and all(u.startswith(a + "/v1/files/images/") for u in urls)
        # Each replica keeps nothing of its own: the images are in the bucket only.
        for data_dir in (tmp / "data0", tmp / "data1"):
            assert not (data_dir / "images").exists() or not any((data_dir / "images").iterdir())
        stored = {}
        for url in urls:
            name = urlsplit(url).path.rsplit("/", 1)[1]
            stored[url] = s3_server.client().get_object(Bucket=bucket, Key=f"gw/images/{name}")["Body"].read()
            got = httpx.get(_through(b, url), timeout=10)
            assert got.status_code == 200 and got.content == stored[url]

        os.killpg(made.processes[0].proc.pid, signal.SIGKILL)  # A and its workers, at once
        for url in urls:
            got = httpx.get(_through(b, url), timeout=10)
            assert got.status_code == 200 and got.content == stored[url]
        # An idempotent b64_json answer made on A, replayed by B: the same bytes, read from the
        # bucket, while Redis holds under a kilobyte for it.
        replay = on_b.images.with_raw_response.generate(
            model="hidream-i1-full", prompt="b", response_format="b64_json",
            extra_headers={"Idempotency-Key": "made-on-a"},
        )  # fmt: skip
        assert replay.headers["x-gateway-idempotent-replay"] == "true"
        first = b64_answer.data[0].b64_json
        again = replay.parse().data
        assert first is not None and again is not None and again[0].b64_json == first
        assert len(base64.b64decode(first)) > 1000
        with redis.Redis.from_url(made.redis.url) as r:
            assert 0 < r.memory_usage(Idempotency("made-on-a", "").redis_key(team_id)) < 1024
