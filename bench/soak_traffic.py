"""The soak's traffic: one request of a kind at a time, each with the answers it may get, sent with
bench.perf's lean client over a small pool of keep-alive connections. Every answer is checked as
it arrives: its status is one the kind expects, an error is in OpenAI's shape, a success carries
its images; whatever else it saw is an unexpected outcome and fails the soak."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.perf.loadclient import Answer, ClientError, Connection, encode_request
from bench.perf.pngs import make_png

MODEL = "hidream-i1-full"
GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
# Weights of the mix; an `idempotent` arrival sends two requests (the original and its retry).
MIX = {"gen_b64": 30, "gen_url": 22, "edit": 10, "bad_input": 10, "rate_limited": 8, "idempotent": 8,
       "disconnect": 8, "stream": 4}  # fmt: skip
EXPECTED = {"capacity": {200}, "gen_b64": {200}, "gen_url": {200}, "image_get": {200}, "edit": {200},
            "bad_input": {400}, "rate_limited": {200, 429}, "idempotent": {200}, "idempotent_replay": {200},
            "stream": {200}, "disconnect": {0}}  # fmt: skip
BAD_BODIES: list[tuple[str, object]] = [
    ("size", {"model": MODEL, "prompt": "a fox", "size": "7x7"}),
    ("n", {"model": MODEL, "prompt": "a fox", "n": 0}),
    ("prompt", {"model": MODEL}),
    ("response_format", {"model": MODEL, "prompt": "a fox", "response_format": "jpeg"}),
]
EDIT_PNG = make_png(64, 64)
TIMEOUT_S = 120.0
IDLE_S = 2.0  # a pooled connection idle longer is closed here, before the server's 5 s keep-alive ends it


@dataclass(frozen=True, slots=True)
class Keys:
    main: str  # generations, edits, bad input, idempotent retries, streams
    limited: str  # a team with a low requests-per-minute limit
    disconnect: str  # a team of its own, whose callers go away mid-request


@dataclass
class Tally:
    """What the traffic saw: answers by kind and status, the request ids served (charged) and the
    ones answered with an error (charged nothing), and anything unexpected."""

    by_kind: Counter[tuple[str, int]] = field(default_factory=Counter)
    served: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # by team
    refused: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    unexpected: Counter[str] = field(default_factory=Counter)  # what, and how often
    unexpected_at: list[float] = field(default_factory=list)  # when (time.monotonic()), the first 10,000
    # Every unexpected answer by minute of the run: whether they bunch (a burst of other work on
    # the machine) or spread (the gateway itself) shows here, past the first 10,000 too.
    unexpected_by_minute: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    t0: float = 0.0  # time.monotonic() when the traffic began

    def note(self, kind: str, status: int, problem: str | None = None, code: str = "") -> None:
        """An answer of `kind`; `code`: its error's code, if it is an error."""
        self.by_kind[(kind, status)] += 1
        if problem is None and status not in EXPECTED[kind]:
            problem = f"HTTP {status} {code}".rstrip()
        if problem is not None:
            self.odd(f"{kind}: {problem}")

    def odd(self, what: str) -> None:
        self.unexpected[what] += 1
        now = time.monotonic()
        self.unexpected_by_minute[int((now - self.t0) // 60)] += 1
        if len(self.unexpected_at) < 10_000:
            self.unexpected_at.append(now)


class Pool:
    """Keep-alive connections to one server, most recently used first."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[float, Connection]] = []

    async def send(self, head: bytes, body: bytes) -> Answer:
        now = time.monotonic()
        conn: Connection | None = None
        while self._idle:
            since, candidate = self._idle.pop()
            if now - since < IDLE_S:
                conn = candidate
                break
            candidate.close()
        conn = conn or Connection(self.host, self.port)
        try:
            answer = await conn.request(head, body, timeout_s=TIMEOUT_S)
        except BaseException:
            conn.close()
            raise
        self._idle.append((time.monotonic(), conn))
        return answer

    def close(self) -> None:
        for _, conn in self._idle:
            conn.close()
        self._idle.clear()


class Traffic:
    def __init__(self, base: str, keys: Keys, tally: Tally, seed: int) -> None:
        self.base = base
        self.keys = keys
        self.tally = tally
        self.rng = random.Random(seed)
        split = urlsplit(base)
        self.pool = Pool(split.hostname or "127.0.0.1", split.port or 80)

    def pick(self) -> str:
        return self.rng.choices(list(MIX), weights=list(MIX.values()))[0]

    async def one(self, kind: str) -> None:
        try:
            await getattr(self, "_" + kind)()
        except (ClientError, TimeoutError) as exc:
            self.tally.note(kind, -1, f"{type(exc).__name__}: {str(exc)[:60]}")
        except Exception as exc:  # noqa: BLE001 - an answer this harness could not read is unexpected too
            self.tally.note(kind, -2, f"{type(exc).__name__}: {str(exc)[:60]}")

    # --- the kinds ------------------------------------------------------------------------------

    async def _gen_b64(self) -> None:
        await self._json("gen_b64", "main", self._gen("b64_json"))

    async def _gen_url(self) -> None:
        answer = await self._json("gen_url", "main", self._gen("url"))
        if answer is not None and answer.status == 200 and self.rng.random() < 0.25:
            url = json.loads(answer.body)["data"][0]["url"]
            _, _, head = encode_request("GET", url, {})
            image = await self.pool.send(head, b"")
            problem = None if image.body.startswith(b"\x89PNG") else "not a PNG"
            self.tally.note("image_get", image.status, problem if image.status == 200 else None)

    async def _edit(self) -> None:
        boundary = "soak" + secrets.token_hex(8)
        fields = {"model": MODEL, "prompt": "the fox, in watercolour", "size": "1024x1024",
                  "response_format": "b64_json"}  # fmt: skip
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]  # fmt: skip
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + EDIT_PNG + b"\r\n")  # fmt: skip
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        await self._send("edit", "main", EDITS, body, f"multipart/form-data; boundary={boundary}")

    async def _bad_input(self) -> None:
        param, payload = self.rng.choice(BAD_BODIES)
        answer = await self._json("bad_input", "main", payload)
        if answer is not None and answer.status == 400:
            got = json.loads(answer.body)["error"].get("param")
            if got != param:
                self.tally.odd(f"bad_input: 400 names param {got!r}, not {param!r}")

    async def _rate_limited(self) -> None:
        answer = await self._json("rate_limited", "limited", self._gen("b64_json"))
        if answer is not None and answer.status == 429 and "retry-after" not in answer.headers:
            self.tally.odd("rate_limited: 429 without retry-after")

    async def _idempotent(self) -> None:
        key = {"Idempotency-Key": "soak-" + secrets.token_hex(12)}
        payload = self._gen("b64_json")
        first = await self._json("idempotent", "main", payload, key)
        if first is None or first.status != 200:
            return
        again = await self._json("idempotent_replay", "main", payload, key, replay=True)
        if again is None or again.status != 200:
            return
        if again.headers.get("x-gateway-original-request-id") != first.headers.get("x-request-id"):
            self.tally.odd("idempotent_replay: names another original request")
        if json.loads(again.body)["data"] != json.loads(first.body)["data"]:
            self.tally.odd("idempotent_replay: other images than the original's")

    async def _stream(self) -> None:
        payload = {**self._gen("b64_json"), "stream": True}
        answer = await self._json("stream", "main", payload, note=False)
        if answer is None:
            return
        problem = None
        if answer.status == 200 and b"event: image_generation.completed" not in answer.body:
            problem = "no completed event"
        elif answer.status == 200 and b"event: error" in answer.body:
            problem = "an error event"
        self.tally.note("stream", answer.status, problem, _code(answer) if answer.status != 200 else "")
        if answer.status == 200 and problem is None:
            self.tally.served["main"].add(answer.headers["x-request-id"])

    async def _disconnect(self) -> None:
        """Send a whole request, then go away before the answer (after 0 to 40 ms)."""
        body = json.dumps(self._gen("b64_json")).encode()
        headers = {"Authorization": f"Bearer {self.keys.disconnect}", "Content-Type": "application/json"}
        host, port, head = encode_request("POST", self.base + GENERATIONS, headers, body)
        _, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head + body)
            await writer.drain()
            await asyncio.sleep(self.rng.uniform(0.0, 0.04))
        finally:
            writer.close()
        self.tally.note("disconnect", 0)

    # --- helpers --------------------------------------------------------------------------------

    def _gen(self, response_format: str) -> dict[str, object]:
        return {"model": MODEL, "prompt": f"a red fox in the snow {self.rng.randrange(10**6)}",
                "size": "1024x1024", "response_format": response_format}  # fmt: skip

    async def _json(
        self, kind: str, team: str, payload: object, extra: dict[str, str] | None = None, *,
        replay: bool = False, note: bool = True,
    ) -> Answer | None:  # fmt: skip
        body = json.dumps(payload).encode()
        return await self._send(kind, team, GENERATIONS, body, "application/json", extra, replay=replay, note=note)

    async def _send(
        self, kind: str, team: str, path: str, body: bytes, content_type: str,
        extra: dict[str, str] | None = None, *, replay: bool = False, note: bool = True,
    ) -> Answer | None:  # fmt: skip
        key = self.keys.limited if team == "limited" else self.keys.main
        headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type, **(extra or {})}
        _, _, head = encode_request("POST", self.base + path, headers, body)
        answer = await self.pool.send(head, body)
        if answer.status == 200:
            self.tally.latencies.append(answer.seconds)
        if not note:
            return answer
        request_id = answer.headers.get("x-request-id", "")
        problem = _problem(answer)
        self.tally.note(kind, answer.status, problem, _code(answer) if answer.status != 200 else "")
        if answer.status == 200 and not replay:
            self.tally.served[team].add(request_id)
        elif answer.status != 200:
            self.tally.refused[team].add(request_id)
        return answer


def _problem(answer: Answer) -> str | None:
    """What is wrong with an answer's body, if anything."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        return f"HTTP {answer.status}: not JSON: {answer.body[:80]!r}"
    if answer.status == 200:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data or not all(("b64_json" in d) or ("url" in d) for d in data):
            return "200 without images"
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return f"HTTP {answer.status}: not an OpenAI-shaped error: {answer.body[:120]!r}"
    return None


def _code(answer: Answer) -> str:
    """An error answer's code (or type), "" if it has none."""
    try:
        error = json.loads(answer.body).get("error", {})
        return str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError):
        return ""
