"""Figures from the runs of one benchmark: per target, medians over rounds with [min-max]; every
difference or ratio against another target is taken within a round first (the VM's CPU speed
drifts between rounds, not within one), then summarised."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.perf.measure import RunRecord, Target


@dataclass(frozen=True, slots=True)
class Stat:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        clean = [v for v in values if not math.isnan(v)]
        if not clean:
            return None
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))

    def fmt(self, digits: int = 2) -> str:
        median, low, high = (_num(v, digits) for v in (self.median, self.low, self.high))
        return median if low == high else f"{median} [{low}–{high}]"


def _num(value: float, digits: int) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def fmt(stat: Stat | None, digits: int = 2) -> str:
    return "—" if stat is None else stat.fmt(digits)


class Runs:
    """Measured runs (warm-ups excluded) indexed by target, concurrency and round."""

    def __init__(self, records: Sequence[RunRecord]) -> None:
        self._by: dict[tuple[str, int, int], RunRecord] = {}
        for r in records:
            if r.round > 0:
                self._by[(r.label, r.concurrency, r.round)] = r
        self.rounds = sorted({r for _, _, r in self._by})

    def get(self, label: str, concurrency: int, round_no: int) -> RunRecord | None:
        return self._by.get((label, concurrency, round_no))

    def stat(self, label: str, concurrency: int, value: Callable[[RunRecord], float]) -> Stat | None:
        return Stat.of([value(r) for n in self.rounds if (r := self.get(label, concurrency, n)) is not None])

    def paired(
        self, label: str, other: str, concurrency: int, combine: Callable[[RunRecord, RunRecord], float]
    ) -> Stat | None:
        """combine(this run, other's run in the same round), over the rounds that have both."""
        values = []
        for n in self.rounds:
            mine, theirs = self.get(label, concurrency, n), self.get(other, concurrency, n)
            if mine is not None and theirs is not None:
                values.append(combine(mine, theirs))
        return Stat.of(values)


def peer_for(target: Target, targets: Sequence[Target]) -> Target | None:
    """The peer a gateway is compared with: the one with as many workers, else the smallest."""
    peers = sorted((t for t in targets if t.kind == "peer"), key=lambda t: t.workers)
    same = [p for p in peers if p.workers == target.workers]
    choices = same or peers
    return choices[0] if choices else None


def per_worker(r: RunRecord) -> float:
    return r.wrk.rps / r.workers


def write_json(out_dir: Path, scenario: str, payload: Mapping[str, object]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"perf-{scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def machine_meta() -> dict[str, object]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk[0] if wrk else "?",
        "loadavg_at_end": os.getloadavg(),
    }
