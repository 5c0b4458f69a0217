"""`python -m bench.perf bytes`: image bytes through the gateway (issue 6, point 4), each measured
against the fake upstream directly in the same run:

- generations answered as b64_json with a ~2 MiB PNG, routed to the GPU worker protocol
  (catalog: local_gpu only; upstream --image-bytes);
- edits uploading a 10 MiB PNG, routed to fal (catalog: fal only), whose adapter sends the image
  as a data URI; the direct baseline posts that same data URI to the fake's fal API and fetches
  the result, as the adapter does.

Per case and concurrency (closed loop, c callers for --duration s): image MB/s (the decoded image
bytes delivered, or uploaded, per second), the ratio ours/direct, and the gateway's RSS: its peak
at each concurrency and the growth per extra request in flight, (peak at c=8 - peak at c=1) / 7,
also as a multiple of the image's size (how many copies of the payload a request holds at once).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.perf.loadclient import (
    Answer,
    ClientError,
    Connection,
    encode_request,
    error_code,
    raise_open_files_limit,
    run_async,
)
from bench.perf.options import WORKROOT
from bench.perf.peaks import PeakSampler
from bench.perf.pngs import make_png
from bench.perf.pricing import ROOT
from bench.perf.report import machine_meta, write_json
from bench.perf.stack import MODEL, PerfStack, StackOptions, perf_stack

NAME = "bytes"
HELP = "b64_json of a 2 MiB image and edits uploading 10 MiB: MB/s ours vs direct, RSS per request in flight"
GEN_IMAGE_BYTES = 2 * 1024 * 1024
EDIT_IMAGE_BYTES = 10 * 1024 * 1024
PROMPT = "a red fox in the snow, studio light"
FAL_I2I = "fal-ai/hidream-i1-full/image-to-image"

Call = Callable[[Connection], Awaitable[int]]  # one exchange -> image bytes it moved


@dataclass(frozen=True, slots=True)
class Run:
    case: str  # generations-b64 | edits-10MiB
    target: str  # direct | ours
    concurrency: int
    requests: int
    errors: int
    seconds: float
    image_mb_per_s: float
    p50_ms: float
    rss_before_mib: float
    peak_rss_mib: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,8", help="two concurrencies, low then high")
    parser.add_argument("--cases", default="generations,edits", help="generations, edits or both")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default: a new folder under {WORKROOT}")


def run(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    low, high = (int(c) for c in args.concurrency.split(","))
    workdir = args.workdir or WORKROOT / f"{NAME}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    cases = {c.strip() for c in args.cases.split(",")}
    runs: list[Run] = []
    if "generations" in cases:
        options = StackOptions(workdir=workdir / "gen", image_bytes=GEN_IMAGE_BYTES, providers=("local_gpu",))
        with perf_stack(options) as stack:
            runs += _case(stack, "generations-b64", _generations, args.duration, (low, high))
    if "edits" in cases:
        with perf_stack(StackOptions(workdir=workdir / "edit", providers=("fal",))) as stack:
            runs += _case(stack, "edits-10MiB", _edits, args.duration, (low, high))
    _report(runs, args, workdir, low, high)
    return 0 if all(r.errors == 0 for r in runs) else 1


def _case(
    stack: PerfStack, case: str, make: Callable[[PerfStack, str, str], tuple[Call, Call]], duration_s: float,
    concurrencies: tuple[int, int],
) -> list[Run]:  # fmt: skip
    gateway = stack.start_gateway(1)
    print(f"== {case}: {gateway.name} on {gateway.url}, upstream {stack.upstream.url}", flush=True)
    direct_call, ours_call = make(stack, gateway.url, gateway.key)
    runs = []
    for concurrency in concurrencies:
        for target, call, url, pgid in (
            ("direct", direct_call, stack.upstream.url, stack.upstream.pgid),
            ("ours", ours_call, gateway.url, gateway.pgid),
        ):
            run = _closed_loop(case, target, url, call, concurrency, duration_s, pgid)
            print(
                f"  {case:<16} {target:<6} c={concurrency:<2} {run.requests:5d} req  {run.image_mb_per_s:7.1f} MB/s"
                f"  p50 {run.p50_ms:7.1f} ms  errors {run.errors}  rss {run.rss_before_mib:5.0f} -> peak"
                f" {run.peak_rss_mib:5.0f} MiB",
                flush=True,
            )
            runs.append(run)
    return runs


def _closed_loop(
    case: str, target: str, url: str, call: Call, concurrency: int, duration_s: float, pgid: int
) -> Run:  # fmt: skip
    host, port, _ = encode_request("GET", url, {})
    moved: list[int] = []
    times: list[float] = []
    errors: list[str] = []

    async def caller(until: float) -> None:
        conn = Connection(host, port)
        try:
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    moved.append(await call(conn))
                    times.append(time.monotonic() - started)
                except (ClientError, TimeoutError, RuntimeError) as exc:
                    errors.append(str(exc)[:200])
                    conn.close()
        finally:
            conn.close()

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(*(caller(started + duration_s) for _ in range(concurrency)))
        return time.monotonic() - started

    with PeakSampler(pgid, every_s=0.05) as sampler:
        seconds = run_async(main)
    if errors:
        print(f"    {len(errors)} errors, e.g. {errors[0]}", flush=True)
    times.sort()
    return Run(
        case=case, target=target, concurrency=concurrency, requests=len(moved), errors=len(errors),
        seconds=seconds, image_mb_per_s=sum(moved) / seconds / 1e6,
        p50_ms=1000 * times[len(times) // 2] if times else float("nan"),
        rss_before_mib=sampler.rss_before, peak_rss_mib=sampler.peak_rss,
    )  # fmt: skip


# --- the exchanges ----------------------------------------------------------------------------------


def _b64_bytes(answer: Answer) -> int:
    """Decoded size of every b64_json in an answer, found without parsing megabytes of JSON."""
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status} {error_code(answer)}")
    total, at = 0, 0
    body = answer.body
    while (start := body.find(b'"b64_json":"', at)) >= 0:
        start += len(b'"b64_json":"')
        end = body.index(b'"', start)
        total += (end - start) * 3 // 4 - body[start:end][-2:].count(b"=")
        at = end
    if total == 0:
        raise RuntimeError("an answer without b64_json")
    return total


def _generations(stack: PerfStack, gateway_url: str, key: str) -> tuple[Call, Call]:
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "n": 1, "size": "1024x1024", "response_format": "b64_json"})
    raw = body.encode()
    json_type = {"Content-Type": "application/json"}
    direct = encode_request("POST", stack.upstream.url + "/v1/images/generations", json_type, raw)[2]
    ours_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ours = encode_request("POST", gateway_url + "/v1/images/generations", ours_headers, raw)[2]

    async def direct_call(conn: Connection) -> int:
        return _b64_bytes(await conn.request(direct, raw, timeout_s=60))

    async def ours_call(conn: Connection) -> int:
        return _b64_bytes(await conn.request(ours, raw, timeout_s=60))

    return direct_call, ours_call


def _edits(stack: PerfStack, gateway_url: str, key: str) -> tuple[Call, Call]:
    png = make_png(1024, 1024, target_bytes=EDIT_IMAGE_BYTES, seed=7)
    # ours: the OpenAI SDK's multipart edit
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
    # direct: what the fal adapter sends to fal's image-to-image, then status and result
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode()
    fal_input = {"prompt": PROMPT, "image_size": "square_hd", "num_images": 1, "output_format": "png"}
    fal_body = json.dumps(fal_input | {"image_url": data_uri}).encode()
    auth = {"Authorization": f"Key {stack.fal_key}"}
    submit_headers = auth | {"Content-Type": "application/json"}
    submit = encode_request("POST", f"{stack.upstream.url}/{FAL_I2I}", submit_headers, fal_body)[2]

    async def direct_call(conn: Connection) -> int:
        queued = await conn.request(submit, fal_body, timeout_s=60)
        if queued.status != 200:
            raise RuntimeError(f"fal submit answered {queued.status}")
        reply = queued.json()
        assert isinstance(reply, dict)
        status = encode_request("GET", str(reply["status_url"]), auth)[2]
        while (await conn.request(status, timeout_s=60)).status == 202:
            await asyncio.sleep(0.01)
        result = await conn.request(encode_request("GET", str(reply["response_url"]), auth)[2], timeout_s=60)
        if result.status != 200:
            raise RuntimeError(f"fal result answered {result.status}")
        return len(png)

    async def ours_call(conn: Connection) -> int:
        answer = await conn.request(ours, multipart, timeout_s=60)
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status} {error_code(answer)}")
        return len(png)

    return direct_call, ours_call


# --- report ---------------------------------------------------------------------------------------


def _report(runs: list[Run], args: argparse.Namespace, workdir: Path, low: int, high: int) -> None:
    print(f"\n== bytes: {args.duration:g} s per run; gateway: 1 worker process")
    by = {(r.case, r.target, r.concurrency): r for r in runs}
    sizes = {"generations-b64": GEN_IMAGE_BYTES, "edits-10MiB": EDIT_IMAGE_BYTES}
    for case in dict.fromkeys(r.case for r in runs):
        for c in (low, high):
            ours, direct = by.get((case, "ours", c)), by.get((case, "direct", c))
            if ours and direct and direct.image_mb_per_s:
                print(
                    f"  {case:<16} c={c:<2} ours {ours.image_mb_per_s:7.1f} MB/s  direct {direct.image_mb_per_s:7.1f}"
                    f" MB/s  ours/direct x{ours.image_mb_per_s / direct.image_mb_per_s:5.2f}"
                    f"  p50 x{ours.p50_ms / direct.p50_ms:5.2f}"
                )
        a, b = by.get((case, "ours", low)), by.get((case, "ours", high))
        if a and b and high > low:
            per = (b.peak_rss_mib - a.peak_rss_mib) / (high - low)
            copies = per * 1024 * 1024 / sizes[case]
            print(
                f"  {case:<16} gateway RSS peak {a.peak_rss_mib:.0f} MiB at c={low}, {b.peak_rss_mib:.0f} MiB"
                f" at c={high}: {per:.1f} MiB per extra request in flight (~{copies:.1f}x the image)"
            )
    meta = machine_meta() | {"workdir": str(workdir), "duration_s": args.duration}
    path = write_json(args.out, NAME, {"meta": meta, "runs": [asdict(r) for r in runs]})
    print(f"\n== JSON: {path}")
