"""A real S3-compatible server for tests: moto's standalone server, as a process of its own on a
loopback port (MinIO does not install here; docker-compose.yml runs it instead)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.fakes.server import free_port

# moto accepts any credentials; the gateway's client reads these the standard AWS way.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class S3Server:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or start again, on the same port: an outage that ends); its buckets start empty."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "moto.log", "ab")  # noqa: SIM115 - the child holds it; closed with this handle
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}")
            try:
                httpx.get(self.url + "/moto-api/", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("moto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def new_bucket(self) -> str:
        name = "gw-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", [])]

    def open_uploads(self, bucket: str) -> list[str]:
        """Multipart uploads begun and neither completed nor aborted (half-written objects)."""
        listed = self.client().list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in listed.get("Uploads", [])]

    def gateway_env(self, bucket: str, prefix: str = "gw") -> dict[str, str]:
        """The settings that point a gateway process at a bucket of this server."""
        return {
            "GATEWAY_IMAGE_STORE": f"s3://{bucket}/{prefix}",
            "GATEWAY_S3_ENDPOINT_URL": self.url,
            "GATEWAY_S3_REGION": "us-east-1",
            **CREDENTIALS,
        }
