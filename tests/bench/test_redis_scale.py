"""bench.redis_scale's figures from its phases: Redis CPU per request, the ceiling one core gives
the busiest node, what a gateway process costs whatever its traffic, and AOF bytes."""

from __future__ import annotations

import math

import pytest

from bench.redis_nodes import CommandStat, NodeReading
from bench.redis_scale import PROCESS_RATES, Phase, model, report


def node(port: int, cpu_s: float, evalsha: int = 0, usec: int = 0, aof: int = 0, rewrites: int = 0) -> NodeReading:
    return NodeReading(port, cpu_s, {"evalsha": CommandStat(evalsha, usec)}, aof, rewrites)


def phases(deployment: str, request_nodes: list[NodeReading], hot: list[NodeReading] | None = None) -> list[Phase]:
    n = len(request_nodes)

    def spread(cpu_s: float, usec: int) -> list[NodeReading]:
        return [node(1 + i, cpu_s / n, 1000 // n, usec // n) for i in range(n)]

    out = [
        Phase(deployment, "requests", 10_000, 5.0, request_nodes),
        Phase(deployment, "admit.lua alone", 1000, 1.0, spread(0.05, 40_000)),
        Phase(deployment, "settle.lua alone", 1000, 1.0, spread(0.03, 30_000)),
        Phase(deployment, "job_poll", 1000, 1.0, [node(1, 0.02)] + [node(2 + i, 0.0) for i in range(n - 1)]),
        Phase(deployment, "route_refresh", 1000, 1.0, [node(1, 0.03)] + [node(2 + i, 0.0) for i in range(n - 1)]),
        Phase(deployment, "billing_refresh", 10, 1.0, [node(1 + i, 0.01 / n) for i in range(n)]),
    ]  # fmt: skip
    if hot is not None:
        out.append(Phase(deployment, "requests, one hot team", 10_000, 5.0, hot))
    return out


def test_a_single_redis_ceiling_is_one_core_over_its_cpu_per_request() -> None:
    figures = model(phases("single", [node(1, 1.0, 20_000, 900_000, aof=25_000_000)]))["single"]
    assert figures["cpu_us_per_request"] == pytest.approx(100.0)
    assert figures["ceiling_rps"] == pytest.approx(10_000.0)
    assert figures["evalsha_usec_per_request"] == pytest.approx(90.0)
    assert figures["admit_cpu_us"] == pytest.approx(50.0) and figures["admit_usec_per_call"] == pytest.approx(40.0)
    assert figures["settle_cpu_us"] == pytest.approx(30.0)
    expected = 20.0 * PROCESS_RATES["job_poll"] + 30.0 * PROCESS_RATES["route_refresh"]
    expected += 1000.0 * PROCESS_RATES["billing_refresh"]
    assert figures["per_process_cpu_us_per_s"] == pytest.approx(expected)
    assert figures["aof_bytes_per_request"] == pytest.approx(2500.0) and figures["aof_rewrites"] == 0
    assert "| 10,000 |" in report({"single": figures})


def test_a_cluster_is_held_back_by_its_busiest_node_and_a_hot_team_by_one_node() -> None:
    spread = [node(1, 0.5), node(2, 0.3), node(3, 0.2)]  # 1 s of CPU over 10,000 requests
    hot = [node(1, 1.2), node(2, 0.01), node(3, 0.01)]
    figures = model(phases("cluster", spread, hot))["cluster"]
    assert figures["cpu_us_per_request"] == pytest.approx(100.0)
    assert figures["busiest_node_share"] == pytest.approx(0.5)
    assert figures["ceiling_rps"] == pytest.approx(20_000.0)  # 1 s / (0.5 s / 10,000)
    assert figures["ceiling_rps_one_hot_team"] == pytest.approx(10_000.0 / 1.2)


def test_aof_bytes_are_not_reported_when_the_file_was_rewritten_during_the_phase() -> None:
    figures = model(phases("single", [node(1, 1.0, aof=1000, rewrites=1)]))["single"]
    assert math.isnan(figures["aof_bytes_per_request"]) and figures["aof_rewrites"] == 1
    assert "bytes per request (— when rewritten meanwhile) | — |" in report({"single": figures})
