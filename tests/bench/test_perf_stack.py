"""The perf stack every bench.perf scenario builds on: redis-server, the fake upstream and a real
`gateway serve`, with a team and key that serve an image through local_gpu."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bench.perf.procs import group_cpu_s, group_pids, group_rss_mib
from bench.perf.stack import BODY, StackOptions, perf_stack

pytestmark = pytest.mark.slow


def test_stack_serves_an_image_through_the_gateway_and_stops_every_process(tmp_path: Path) -> None:
    with perf_stack(StackOptions(workdir=tmp_path)) as stack:
        gateway = stack.start_gateway(1)
        stack.reset_upstream_stats()
        resp = httpx.post(gateway.url + "/v1/images/generations", json=BODY,
                          headers={"Authorization": f"Bearer {gateway.key}"}, timeout=30)  # fmt: skip
        assert resp.status_code == 200 and resp.headers["x-gateway-provider"] == "local_gpu"
        assert stack.upstream_stats()["generations"] == 1
        assert group_rss_mib(gateway.pgid) > 10 and group_cpu_s(gateway.pgid) > 0
        groups = [gateway.pgid, stack.upstream.pgid, stack.redis_pgid]
    assert all(not group_pids(g) for g in groups)
