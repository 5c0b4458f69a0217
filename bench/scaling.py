"""Time scaled down: the benchmark runs a real-world scenario (30 s GPU jobs, a one-minute latency
target, a twenty-minute load swing) in seconds. Every duration the gateway, the workers and fal
see is divided by one factor, and so is every rate; what is priced per second is multiplied."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway.catalog import RoutingPolicy


@dataclass(frozen=True, slots=True)
class TimeScale:
    real_s_per_bench_s: float

    def seconds(self, real_s: float) -> float:
        return real_s / self.real_s_per_bench_s

    def real(self, bench_s: float) -> float:
        return bench_s * self.real_s_per_bench_s


def write_scaled_pricing(src: Path, dst: Path, scale: TimeScale) -> Path:
    """pricing.yaml as it is (routes and costs untouched), except the routing durations, scaled
    like every other: the balanced policy's price of a late second, which is per (real) second
    (left alone, a bench second late would be worth a hundredth of what the catalog says and the
    latency penalty would silently vanish), and the expected time of a route not yet observed
    (left alone, 15 s would be 25 real minutes, and fal would look hopelessly late until the
    first request that had nowhere else to go). The latency target comes with each request."""
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    defaults = RoutingPolicy()
    for model in data["models"].values():
        routing = dict(model.get("routing") or {})
        per_second = float(routing.get("usd_per_late_second", defaults.usd_per_late_second))
        routing["usd_per_late_second"] = per_second * scale.real_s_per_bench_s
        unseen = float(routing.get("default_latency_s", defaults.default_latency_s))
        routing["default_latency_s"] = scale.seconds(unseen)
        model["routing"] = routing
    dst.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dst
