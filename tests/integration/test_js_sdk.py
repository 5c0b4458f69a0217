"""The JavaScript SDK (`openai` from npm, pinned by tests/js/package-lock.json) against the gateway
as real processes: sizes, n=10, output_format and a dry run work with only baseURL changed."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("js"), team={"allow_provider_pinning": True}) as made:
        yield made


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_code_written_for_openai_in_javascript(stack: Stack) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the JS SDK test (./dev test installs it)"
    assert (JS / "node_modules" / "openai").is_dir(), "run ./dev test: it installs tests/js from its lock"
    done = subprocess.run(
        [node, "unified.mjs", stack.base + "/v1", stack.key], cwd=JS, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    expected = {"256x256": (256, 256), "512x512": (512, 512), "1792x1024": (1792, 1024), "1024x1536": (1024, 1536),
                "auto": (1024, 1024), "16:9": (1360, 765)}  # fmt: skip
    for size, dims in expected.items():
        got = out["sizes"][size]
        assert _decode(got["b64"]).size == dims, size
        assert got["size"] == f"{dims[0]}x{dims[1]}"
    assert out["sizes"]["1792x1024"]["generated"] == "1360x768"
    assert len(out["n10"]) == 10 and {_decode(b).size for b in out["n10"]} == {(256, 256)}
    webp = httpx.get(out["webp"]["url"], timeout=10)
    assert webp.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).format == "WEBP"
    assert out["webp"]["output_format"] == "webp"
    quote = out["dryRun"]
    assert (quote["estimated"], quote["provider"], quote["total_cost_micros"]) == (True, "fal", 150_000)
