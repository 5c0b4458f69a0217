"""The GPU worker's protocol as the fake upstream serves it (worker/app.py is the real one):
POST /v1/images/generations (b64_json as providers/local_gpu asks, or URLs to /img/ for clients
that ask for them, e.g. LiteLLM), /ready with the load report mapping.parse_ready reads, /health
and /v1/models. Replies only; the server module owns timing and I/O."""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid

from bench.perf.pngs import PngCache, parse_size
from bench.perf.replies import Reply, json_reply, openai_error

# worker/schemas.py RawImages: the images as bytes, for a client that accepts them (our gateway)
RAW_IMAGES = "application/vnd.hidream.images"
SIZES = ("1024x1024", "768x1360", "1360x768", "880x1168", "1168x880", "1248x832", "832x1248")
FORMATS = ("url", "b64_json")


class WorkerApi:
    def __init__(self, *, model: str, delay_s: float, pngs: PngCache, default_format: str, max_queue: int) -> None:
        if default_format not in FORMATS:
            raise ValueError(f"default format must be one of {FORMATS}")
        self.model = model
        self.delay_s = delay_s
        self.in_flight = 0  # generations answered later (delay > 0); /ready reports them
        self._pngs = pngs
        self._default_format = default_format
        self._max_queue = max_queue
        self._image_ids = itertools.count(1)

    def generation(self, body: bytes, request_id: str | None, origin: str, *, raw: bool = False) -> Reply:
        """`raw`: the client's Accept names RAW_IMAGES, which a b64_json answer then is."""
        try:
            payload = json.loads(body)
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(payload, dict):
            return openai_error(400, "The body must be a JSON object.")
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return openai_error(400, "Missing required parameter: 'prompt'.", "prompt")
        n = payload.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 4:
            return openai_error(400, "Invalid 'n': must be between 1 and 4.", "n")
        size_text = payload.get("size") or "1024x1024"
        size = parse_size(size_text)
        if size is None:
            return openai_error(400, f"Invalid 'size' {size_text!r}: expected WIDTHxHEIGHT.", "size")
        fmt = payload.get("response_format") or self._default_format
        if fmt not in FORMATS:
            return openai_error(400, f"Invalid 'response_format' {fmt!r}.", "response_format")
        seed = payload.get("seed")
        if not isinstance(seed, int):
            seed = random.randrange(2**32)
        if raw and fmt == "b64_json":
            fmt = "raw"
        return self._images(prompt, n, size, fmt, seed, request_id or uuid.uuid4().hex, origin)

    def _images(
        self, prompt: str, n: int, size: tuple[int, int], fmt: str, seed: int, request_id: str, origin: str
    ) -> Reply:
        width, height = size
        size_text = f"{width}x{height}"
        headers = (
            ("x-request-id", request_id),
            ("x-actual-size", size_text),
            ("x-seed", str(seed)),
            ("x-queue-ms", "0"),
            ("x-infer-ms", str(round(self.delay_s * 1000))),
        )
        if fmt == "raw":
            png = self._pngs.get(width, height).data
            lengths = ",".join([str(len(png))] * n)
            return Reply(200, [png] * n, content_type=RAW_IMAGES, headers=(*headers, ("x-image-lengths", lengths)))
        revised = json.dumps(prompt).encode()
        parts: list[bytes] = [b'{"created":%d,"data":[' % int(time.time())]
        for i in range(n):
            if fmt == "b64_json":
                parts += [b'{"b64_json":"', self._pngs.get(width, height).b64, b'","revised_prompt":']
            else:
                url = f"{origin}/img/{next(self._image_ids)}.png?size={size_text}"
                parts.append(b'{"url":"%s","revised_prompt":' % url.encode())
            parts.append(revised + (b"}," if i < n - 1 else b"}"))
        parts.append(b'],"seed":%d,"size":"%s"}' % (seed, size_text.encode()))
        return Reply(200, parts, headers=headers)

    def ready(self) -> Reply:
        ewma = round(self.delay_s, 4)
        body = {
            "model": self.model,
            "variant": self.model.rsplit("-", 1)[-1],
            "ready": True,
            "warm": True,
            "phase": "ready",
            "in_flight": self.in_flight,
            "queue_depth": 0,
            "max_queue": self._max_queue,
            "ewma_latency_s": ewma,
            "expected_wait_s": 0.0,
            "sizes": list(SIZES),
            "device": "fake",
        }
        return json_reply(200, body)

    @staticmethod
    def health() -> Reply:
        return json_reply(200, {"status": "ok", "phase": "ready"})

    def models(self) -> Reply:
        entry = {"id": self.model, "object": "model", "created": 1744329600, "owned_by": "self-hosted"}
        return json_reply(200, {"object": "list", "data": [entry]})
