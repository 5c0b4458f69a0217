"""The exchanges of `bench.perf bytes`, each a pair (direct, ours) of calls that return the image
bytes they moved: generations answered as b64_json or as a URL the caller then fetches, from the
GPU worker protocol or fal's queue API, and edits uploading a 10 MiB PNG (to fal)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable

from bench.perf.loadclient import Answer, Connection, encode_request, error_code
from bench.perf.pngs import make_png
from bench.perf.stack import MODEL, PerfStack

# One exchange -> the image bytes it moved, and for an answer by URL the seconds until that answer
# (before the image was fetched from it), else None.
Call = Callable[[Connection], Awaitable[tuple[int, float | None]]]
PROMPT = "a red fox in the snow, studio light"
EDIT_IMAGE_BYTES = 10 * 1024 * 1024
FAL_T2I = "fal-ai/hidream-i1-full"
FAL_I2I = "fal-ai/hidream-i1-full/image-to-image"
JSON_TYPE = {"Content-Type": "application/json"}


def b64_bytes(answer: Answer) -> int:
    """Decoded size of every b64_json (or base64 data URI) in an answer, found without parsing
    megabytes of JSON."""
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status} {error_code(answer)}")
    total, at = 0, 0
    body = answer.body
    while (found := _next_b64(body, at)) is not None:
        start, end = found
        total += (end - start) * 3 // 4 - body[start:end][-2:].count(b"=")
        at = end
    if total == 0:
        raise RuntimeError("an answer without b64_json")
    return total


def _next_b64(body: bytes, at: int) -> tuple[int, int] | None:
    for marker in (b'"b64_json":"', b'"url":"data:image/png;base64,'):
        start = body.find(marker, at)
        if start >= 0:
            start += len(marker)
            return start, body.index(b'"', start)
    return None


def _urls(answer: Answer) -> list[str]:
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status} {error_code(answer)}")
    body = answer.json()
    assert isinstance(body, dict)
    found = body.get("data") or body.get("images") or []
    return [str(item["url"]) for item in found]


async def _fetch_all(conn: Connection, urls: list[str]) -> int:
    """GET each image URL on the same connection (same host as the answer's); its bytes."""
    if not urls:
        raise RuntimeError("an answer without URLs")
    total = 0
    for url in urls:
        got = await conn.request(encode_request("GET", url, {})[2], timeout_s=60)
        if got.status != 200 or not got.body.startswith(b"\x89PNG"):
            raise RuntimeError(f"GET of the image answered {got.status}")
        total += len(got.body)
    return total


def generations(stack: PerfStack, gateway_url: str, key: str, *, fmt: str) -> tuple[Call, Call]:
    """Our gateway against the worker protocol's own /v1/images/generations."""
    raw = json.dumps({"model": MODEL, "prompt": PROMPT, "n": 1, "size": "1024x1024", "response_format": fmt}).encode()
    direct = encode_request("POST", stack.upstream.url + "/v1/images/generations", JSON_TYPE, raw)[2]
    ours = _ours_generation(gateway_url, key, raw)
    if fmt == "b64_json":

        async def direct_b64(conn: Connection) -> tuple[int, float | None]:
            return b64_bytes(await conn.request(direct, raw, timeout_s=60)), None

        return direct_b64, _ours_b64(ours, raw)

    async def direct_url(conn: Connection) -> tuple[int, float | None]:
        answer = await conn.request(direct, raw, timeout_s=60)
        return await _fetch_all(conn, _urls(answer)), answer.seconds

    return direct_url, _ours_url(ours, raw)


def fal_generations(stack: PerfStack, gateway_url: str, key: str, *, fmt: str) -> tuple[Call, Call]:
    """Our gateway against fal's queue API called as the fal adapter calls it: submit (sync_mode
    for bytes), status until COMPLETED, result (then the image URL, for a URL answer)."""
    fal_input = {"prompt": PROMPT, "image_size": "square_hd", "num_images": 1, "output_format": "png",
                 "sync_mode": fmt == "b64_json"}  # fmt: skip
    submit_body = json.dumps(fal_input).encode()
    raw = json.dumps({"model": MODEL, "prompt": PROMPT, "n": 1, "size": "1024x1024", "response_format": fmt}).encode()
    ours = _ours_generation(gateway_url, key, raw)
    submit = _fal_submit(stack, FAL_T2I, submit_body)

    async def direct_call(conn: Connection) -> tuple[int, float | None]:
        started = time.monotonic()
        result = await submit(conn)
        if fmt == "b64_json":
            return b64_bytes(result), None
        answered = time.monotonic() - started
        return await _fetch_all(conn, _urls(result)), answered

    return direct_call, (_ours_b64(ours, raw) if fmt == "b64_json" else _ours_url(ours, raw))


def edits(stack: PerfStack, gateway_url: str, key: str) -> tuple[Call, Call]:
    """A 10 MiB PNG uploaded as the OpenAI SDK's multipart edit; direct: what the fal adapter sends
    to fal's image-to-image (the image as a data URI), then status and result."""
    png = make_png(1024, 1024, target_bytes=EDIT_IMAGE_BYTES, seed=7)
    boundary = "bench" + secrets.token_hex(8)
    fields = {"model": MODEL, "prompt": PROMPT, "size": "1024x1024", "response_format": "url"}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    multipart = "".join(parts).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    ours_headers = {"Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    ours = encode_request("POST", gateway_url + "/v1/images/edits", ours_headers, multipart)[2]
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    fal_input = {"prompt": PROMPT, "image_size": "square_hd", "num_images": 1, "output_format": "png"}
    submit = _fal_submit(stack, FAL_I2I, json.dumps(fal_input | {"image_url": data_uri}).encode())

    async def direct_call(conn: Connection) -> tuple[int, float | None]:
        result = await submit(conn)
        if result.status != 200:
            raise RuntimeError(f"fal result answered {result.status}")
        return len(png), None

    async def ours_call(conn: Connection) -> tuple[int, float | None]:
        answer = await conn.request(ours, multipart, timeout_s=60)
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status} {error_code(answer)}")
        return len(png), None

    return direct_call, ours_call


def _fal_submit(stack: PerfStack, app: str, body: bytes) -> Callable[[Connection], Awaitable[Answer]]:
    auth = {"Authorization": f"Key {stack.fal_key}"}
    submit = encode_request("POST", f"{stack.upstream.url}/{app}", auth | JSON_TYPE, body)[2]

    async def run(conn: Connection) -> Answer:
        queued = await conn.request(submit, body, timeout_s=60)
        if queued.status != 200:
            raise RuntimeError(f"fal submit answered {queued.status}")
        reply = queued.json()
        assert isinstance(reply, dict)
        status = encode_request("GET", str(reply["status_url"]), auth)[2]
        while (await conn.request(status, timeout_s=60)).status == 202:
            await asyncio.sleep(0.01)
        return await conn.request(encode_request("GET", str(reply["response_url"]), auth)[2], timeout_s=60)

    return run


def _ours_generation(gateway_url: str, key: str, raw: bytes) -> bytes:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return encode_request("POST", gateway_url + "/v1/images/generations", headers, raw)[2]


def _ours_b64(head: bytes, raw: bytes) -> Call:
    async def call(conn: Connection) -> tuple[int, float | None]:
        return b64_bytes(await conn.request(head, raw, timeout_s=60)), None

    return call


def _ours_url(head: bytes, raw: bytes) -> Call:
    async def call(conn: Connection) -> tuple[int, float | None]:
        answer = await conn.request(head, raw, timeout_s=60)
        return await _fetch_all(conn, _urls(answer)), answer.seconds

    return call
