"""`python -m bench.perf forms`: reading an edit's multipart body, the gateway's form reader
(gateway/api/edit_form.py) against Starlette's MultiPartParser as the gateway used it before (an
UploadFile in memory up to the limit, read back whole), in one process, on the same bodies, in
alternating rounds. CPU time per form (process time), for uploads of the given sizes fed in pieces
of the given size, as a server hands them over; the ratio is ours over Starlette's."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartParser

from bench.perf.report import machine_meta, write_json
from gateway.api.edit_form import FormLimits, read_edit_form
from tests.processes import ROOT

NAME = "forms"
HELP = "an edit's multipart body read by the gateway's form reader and by Starlette's parser (CPU a form)"
BOUNDARY = "bench-boundary-7d0c"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes-mib", default="2,10", help="upload sizes, MiB")
    parser.add_argument("--piece-kib", type=int, default=64, help="the pieces the body arrives in, KiB")
    parser.add_argument("--reps", type=int, default=10, help="forms per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per reader (alternating)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")


def form_body(image: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def readers(body: bytes, piece: int, size: int) -> dict[str, Callable[[], Awaitable[int]]]:
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    async def starlette() -> int:
        async def stream() -> Any:
            for p in pieces:
                yield p

        parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=8, max_fields=64)
        parser.spool_max_size = size + 1  # as the gateway set it: in memory up to the limit
        form = await parser.parse()
        upload = form["image"]
        data = await upload.read(size + 1)  # type: ignore[union-attr]
        await form.close()
        return len(data)

    async def ours() -> int:
        messages = iter([{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                         for i, p in enumerate(pieces)])  # fmt: skip

        async def receive() -> Any:
            return next(messages)

        limits = FormLimits(max_files=8, max_fields=64, max_field_bytes=1 << 20, max_file_bytes=size + 1)
        form = await read_edit_form(content_type, receive, limits, len(body))
        return len(form.files[0][1])

    return {"starlette": starlette, "ours": ours}


def run(args: argparse.Namespace) -> int:
    results: list[dict[str, object]] = []
    for size_mib in (float(s) for s in args.sizes_mib.split(",")):
        size = int(size_mib * 1024 * 1024)
        body = form_body(os.urandom(size))
        ms: dict[str, list[float]] = {"starlette": [], "ours": []}
        for name, read in readers(body, args.piece_kib * 1024, size).items():
            if asyncio.run(read()) != size:  # a warm-up that also checks what is read
                raise SystemExit(f"{name} read the wrong number of bytes")
        for round_no in range(args.rounds):
            order = list(readers(body, args.piece_kib * 1024, size).items())
            for name, read in order if round_no % 2 == 0 else reversed(order):

                async def reps(read: Callable[[], Awaitable[int]] = read) -> None:
                    for _ in range(args.reps):
                        await read()

                started = time.process_time()
                asyncio.run(reps())
                ms[name].append((time.process_time() - started) / args.reps * 1000)
        median = {name: statistics.median(v) for name, v in ms.items()}
        ratio = median["ours"] / median["starlette"]
        print(
            f"  {size_mib:g} MiB in {args.piece_kib} KiB pieces: Starlette {median['starlette']:.2f} ms, ours "
            f"{median['ours']:.2f} ms a form (median of {args.rounds} rounds)  ours/Starlette x {ratio:.2f}"
        )
        results.append({"size_mib": size_mib, "piece_kib": args.piece_kib, "ms": ms, "ratio": ratio})
    path = write_json(args.out, NAME, {"meta": machine_meta(), "results": results})
    print(f"results: {path}")
    return 0
