"""Put and get of a 2 MiB PNG through each async S3 client against moto's server on loopback, with
the local file store measured in the same run as the baseline: p50/p99 wall time and CPU per op.

    python -m bench.store_clients [--ops 100]

Every client installed is measured (obstore is the gateway's; aiobotocore was the other candidate:
`pip install aiobotocore` into a scratch venv to compare). Ops run one at a time on one event loop,
as a request does; CPU is the process's own (user + system) over the ops, which includes moto's
threads only when moto runs in-process, so moto runs as a process of its own here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from PIL import Image

from gateway.ports import LoopbackPorts

Op = Callable[[str], Awaitable[None]]


def png_2mib() -> bytes:
    """A PNG of about 2 MiB (noise does not compress)."""
    side = 836
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = LoopbackPorts().take()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto did not start")


async def measure(name: str, put: Op, get: Op, ops: int) -> None:
    keys = [f"bench/{uuid.uuid4().hex}.png" for _ in range(ops)]
    for label, op in (("put", put), ("get", get)):
        await op(keys[0])  # warm the connection
        walls: list[float] = []
        cpu0 = time.process_time()
        for key in keys:
            t0 = time.perf_counter()
            await op(key)
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / ops
        q = statistics.quantiles(walls, n=100)
        p50, p99 = q[49] * 1000, q[98] * 1000
        print(f"{name:12s} {label}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  cpu/op {cpu * 1000:6.2f} ms")


async def main(ops: int) -> None:
    data = png_2mib()
    print(f"image: {len(data)} bytes, {ops} ops each")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        async def file_put(key: str) -> None:
            path = root / key.replace("/", "_")
            await asyncio.to_thread(path.write_bytes, data)

        async def file_get(key: str) -> None:
            path = root / key.replace("/", "_")
            assert len(await asyncio.to_thread(path.read_bytes)) == len(data)

        await measure("file", file_put, file_get, ops)

    proc, url = start_moto()
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    try:
        httpx.put(url + "/bench")
        if importlib.util.find_spec("obstore"):
            from obstore.store import S3Store

            store = S3Store("bench", endpoint=url, region="us-east-1", client_options={"allow_http": True}, **creds)

            async def ob_put(key: str) -> None:
                await store.put_async(key, data)

            async def ob_get(key: str) -> None:
                got = await store.get_async(key)
                assert len(await got.bytes_async()) == len(data)

            await measure("obstore", ob_put, ob_get, ops)
        if importlib.util.find_spec("aiobotocore"):
            from aiobotocore.session import get_session

            async with get_session().create_client("s3", endpoint_url=url, region_name="us-east-1", **creds) as client:

                async def abc_put(key: str) -> None:
                    await client.put_object(Bucket="bench", Key=key, Body=data)

                async def abc_get(key: str) -> None:
                    got = await client.get_object(Bucket="bench", Key=key)
                    async with got["Body"] as body:
                        assert len(await body.read()) == len(data)

                await measure("aiobotocore", abc_put, abc_get, ops)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=100)
    asyncio.run(main(parser.parse_args().ops))
