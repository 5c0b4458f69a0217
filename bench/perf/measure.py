"""One measured run: wrk (-t1, closed loop) against one target at one concurrency, with the CPU
time each process group used meanwhile (/proc), the target's RSS after it, and what the upstream
was asked. Any non-2xx answer or socket error fails the run loudly."""

from __future__ import annotations

import os
import re
import resource
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.perf.procs import group_cpu_s, group_rss_mib, machine_busy_s, wait_idle

LUA = Path(__file__).resolve().parent / "post_image.lua"
RESULT_LINE = re.compile(r"^RESULT (.*)$", re.MULTILINE)


class BenchFailure(RuntimeError):
    """A run had non-2xx answers or socket errors, or a target did not come up."""


@dataclass(frozen=True, slots=True)
class Target:
    label: str  # e.g. direct, ours-w2, litellm-w1
    kind: str  # direct | ours | peer
    url: str  # the endpoint wrk posts to
    key: str  # Bearer key ("" sends none)
    pgid: int  # the process group that serves it (for direct: the upstream's)
    workers: int  # worker processes serving requests, for per-worker figures


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non2xx: int
    errors: int
    timeouts: int

    @classmethod
    def parse(cls, stdout: str) -> WrkResult:
        found = RESULT_LINE.search(stdout)
        if found is None:
            raise BenchFailure(f"wrk printed no RESULT line:\n{stdout[-2000:]}")
        values = dict(item.split("=", 1) for item in found.group(1).split())
        return cls(
            requests=int(values["requests"]), duration_s=float(values["duration_s"]), rps=float(values["rps"]),
            p50_ms=float(values["p50_ms"]), p90_ms=float(values["p90_ms"]), p99_ms=float(values["p99_ms"]),
            max_ms=float(values["max_ms"]), mean_ms=float(values["mean_ms"]), non2xx=int(values["non2xx"]),
            errors=int(values["errors"]), timeouts=int(values["timeouts"]),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunRecord:
    label: str
    kind: str
    workers: int
    round: int  # 0 for warm-ups
    concurrency: int
    wrk: WrkResult
    target_cpu_s: float
    upstream_cpu_s: float
    redis_cpu_s: float
    wrk_cpu_s: float
    machine_busy_s: float  # every core, every process: compare with the sum of the above for noise
    idle_wait_s: float
    rss_mib: float
    upstream_calls: Mapping[str, int] = field(default_factory=dict)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.target_cpu_s / self.wrk.requests if self.wrk.requests else float("nan")

    @property
    def other_cores(self) -> float:
        """Cores busy with anything but the target, the upstream, Redis and wrk: other tenants,
        idle servers' housekeeping. Above ~0.2 the run's figures are suspect."""
        upstream = 0.0 if self.kind == "direct" else self.upstream_cpu_s  # direct's target is the upstream
        known = self.target_cpu_s + upstream + self.redis_cpu_s + self.wrk_cpu_s
        return max(0.0, self.machine_busy_s - known) / self.wrk.duration_s

    def as_json(self) -> dict[str, object]:
        return asdict(self) | {"cpu_ms_per_request": self.cpu_ms_per_request, "other_cores": self.other_cores}


@dataclass(frozen=True, slots=True)
class Watched:
    """Process groups whose CPU time a run reports, and which must be idle before it starts."""

    upstream: int
    redis: int
    all: Sequence[int]


def run_wrk(target: Target, concurrency: int, duration_s: int, *, lua: Path = LUA,
            extra_env: Mapping[str, str] | None = None) -> tuple[WrkResult, str]:  # fmt: skip
    """(result, stderr); wrk's own timeout is 30 s so slow answers count as latency, not errors."""
    args = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "30s", "--latency",
            "-s", str(lua), target.url]  # fmt: skip
    env = os.environ | {"BENCH_KEY": target.key} | dict(extra_env or {})
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0:
        raise BenchFailure(f"wrk exited {done.returncode}: {done.stderr[-2000:]}")
    return WrkResult.parse(done.stdout), done.stderr


def measure(
    target: Target, concurrency: int, duration_s: int, watched: Watched, *, round_no: int,
    upstream_stats: Callable[[], Mapping[str, int]] | None = None, extra_env: Mapping[str, str] | None = None,
) -> RunRecord:  # fmt: skip
    idle_wait = wait_idle(watched.all)
    before_calls = dict(upstream_stats()) if upstream_stats else {}
    cpu_before = (group_cpu_s(target.pgid), group_cpu_s(watched.upstream), group_cpu_s(watched.redis))
    wrk_before, busy_before = _children_cpu_s(), machine_busy_s()
    result, stderr = run_wrk(target, concurrency, duration_s, extra_env=extra_env)
    wrk_cpu, busy = _children_cpu_s() - wrk_before, machine_busy_s() - busy_before
    cpu_after = (group_cpu_s(target.pgid), group_cpu_s(watched.upstream), group_cpu_s(watched.redis))
    calls = {}
    if upstream_stats:
        after_calls = upstream_stats()
        calls = {k: v - before_calls.get(k, 0) for k, v in after_calls.items() if v - before_calls.get(k, 0)}
    record = RunRecord(
        label=target.label, kind=target.kind, workers=target.workers, round=round_no, concurrency=concurrency,
        wrk=result, target_cpu_s=cpu_after[0] - cpu_before[0], upstream_cpu_s=cpu_after[1] - cpu_before[1],
        redis_cpu_s=cpu_after[2] - cpu_before[2], wrk_cpu_s=wrk_cpu, machine_busy_s=busy, idle_wait_s=idle_wait,
        rss_mib=group_rss_mib(target.pgid), upstream_calls=calls,
    )  # fmt: skip
    if result.non2xx or result.errors:
        raise BenchFailure(
            f"{target.label} at c={concurrency}: {result.non2xx} non-2xx answers and {result.errors} socket errors"
            f" ({result.timeouts} timeouts) out of {result.requests}; wrk said:\n{stderr[-1500:]}"
        )
    return record


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
