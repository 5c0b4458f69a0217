"""The workload the routing benchmark replays: arrivals at a rate that follows a piecewise-linear
profile (a ramp above the owned GPUs' capacity and back down), each for a model drawn from a mix.
Seeded, so every policy sees exactly the same requests at the same moments."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int
    at_s: float  # since the start of the run
    model: str
    n: int = 1  # images asked


@dataclass(frozen=True, slots=True)
class Workload:
    duration_s: float
    # (fraction of the run, arrivals per second) points; the rate is linear between them.
    profile: tuple[tuple[float, float], ...]
    mix: tuple[tuple[str, float], ...]  # (public model id, share of requests)
    seed: int = 4
    size: str = "1024x1024"
    n_range: tuple[int, int] | None = None  # images per request, drawn uniformly (None: one each)

    def rate_at(self, t_s: float) -> float:
        x = t_s / self.duration_s
        points = self.profile
        if x <= points[0][0]:
            return points[0][1]
        for (x0, r0), (x1, r1) in zip(points, points[1:], strict=False):
            if x <= x1:
                return r0 + (r1 - r0) * (x - x0) / (x1 - x0) if x1 > x0 else r1
        return points[-1][1]

    def peak_rate(self) -> float:
        return max(r for _, r in self.profile)

    def arrivals(self) -> list[Arrival]:
        """A non-homogeneous Poisson process (thinning of one at the peak rate)."""
        rng = random.Random(self.seed)
        peak = self.peak_rate()
        models = [m for m, _ in self.mix]
        weights = [w for _, w in self.mix]
        out: list[Arrival] = []
        t = 0.0
        while True:
            t += rng.expovariate(peak)
            if t >= self.duration_s:
                return out
            keep = rng.random() < self.rate_at(t) / peak
            model = rng.choices(models, weights)[0]  # drawn either way, so the stream stays aligned
            n = rng.randint(*self.n_range) if self.n_range is not None else 1
            if keep:
                out.append(Arrival(len(out), t, model, n))


def describe(arrivals: Sequence[Arrival]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in arrivals:
        counts[a.model] = counts.get(a.model, 0) + 1
    if any(a.n > 1 for a in arrivals):
        counts["images"] = sum(a.n for a in arrivals)
    return counts
