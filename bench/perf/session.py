"""A benchmark session: the stack, our gateways and the peers up at once as wrk targets, plus the
interleaved measuring loop every scenario uses (warm-up, then rounds whose target order reverses
in even rounds, waiting for idle processes before each run).

    with bench_session(plan, StackOptions(workdir=plan.workdir)) as session:
        records = session.run_rounds(plan, concurrencies=(1, 32))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from bench.perf.litellm import ensure_venv, litellm_peers
from bench.perf.measure import RunRecord, Target, Watched, measure
from bench.perf.options import Plan
from bench.perf.stack import PerfStack, Server, StackOptions, perf_stack

PATH = "/v1/images/generations"
WARMUP_CONCURRENCY = 8


@dataclass(slots=True)
class Session:
    stack: PerfStack
    targets: list[Target]
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def watched(self) -> Watched:
        groups = {self.stack.upstream.pgid, self.stack.redis_pgid, *(t.pgid for t in self.targets)}
        return Watched(upstream=self.stack.upstream.pgid, redis=self.stack.redis_pgid, all=sorted(groups))

    def measure(self, target: Target, concurrency: int, duration_s: int, round_no: int,
                extra_env: Mapping[str, str] | None = None) -> RunRecord:  # fmt: skip
        record = measure(
            target, concurrency, duration_s, self.watched, round_no=round_no,
            upstream_stats=self.stack.upstream_stats, extra_env=extra_env,
        )  # fmt: skip
        print(_line(record), flush=True)
        return record

    def run_rounds(
        self, plan: Plan, concurrencies: Sequence[int], *, targets: Sequence[Target] | None = None,
        records: list[RunRecord] | None = None, extra_env: Mapping[str, str] | None = None,
    ) -> list[RunRecord]:  # fmt: skip
        """Warm-up (c=8, discarded: round 0), then plan.rounds rounds; appends to `records` as it
        goes, so a caller still has every finished run when one fails."""
        chosen = list(targets or self.targets)
        out = records if records is not None else []
        if plan.warmup_s > 0:
            print(f"== warm-up (c={WARMUP_CONCURRENCY}, {plan.warmup_s} s each, discarded)", flush=True)
            for target in chosen:
                out.append(self.measure(target, WARMUP_CONCURRENCY, plan.warmup_s, 0, extra_env))
        for round_no in range(1, plan.rounds + 1):
            order = chosen if round_no % 2 else list(reversed(chosen))
            print(f"== round {round_no}/{plan.rounds} (c={', '.join(map(str, concurrencies))})", flush=True)
            for target in order:
                for concurrency in concurrencies:
                    out.append(self.measure(target, concurrency, plan.duration_s, round_no, extra_env))
        return out


def direct_target(upstream: Server) -> Target:
    return Target("direct", "direct", upstream.url + PATH, "", upstream.pgid, 1)


def server_target(server: Server, kind: str) -> Target:
    return Target(server.name, kind, server.url + PATH, server.key, server.pgid, server.workers)


@contextmanager
def bench_session(plan: Plan, options: StackOptions, *, direct: bool = True) -> Iterator[Session]:
    """Redis, the upstream, our gateway at each of plan.workers, and each peer at each of them."""
    version = ensure_venv() if "litellm" in plan.peers else ""
    with ExitStack() as exits:
        stack = exits.enter_context(perf_stack(options))
        print(f"== stack in {plan.workdir}: redis {stack.redis_url}, upstream {stack.upstream.url}", flush=True)
        targets = [direct_target(stack.upstream)] if direct else []
        for gateway in stack.start_gateways(plan.workers):
            print(f"== {gateway.name} on {gateway.url}", flush=True)
            targets.append(server_target(gateway, "ours"))
        session = Session(stack, targets)
        if "litellm" in plan.peers:
            session.versions["litellm"] = version
            peers = exits.enter_context(litellm_peers(plan.workdir, stack.upstream.url))
            for workers in plan.workers:
                server = peers.start(workers)
                print(f"== {server.name} on {server.url}", flush=True)
                targets.append(server_target(server, "peer"))
        yield session


def _line(r: RunRecord) -> str:
    w = r.wrk
    calls = ", ".join(f"{k}={v}" for k, v in sorted(r.upstream_calls.items()))
    return (
        f"  {r.label:<12} c={r.concurrency:<3} {w.rps:9.1f} req/s  p50 {w.p50_ms:7.2f}  p99 {w.p99_ms:7.2f}  "
        f"max {w.max_ms:7.1f} ms  cpu {r.cpu_ms_per_request:6.3f} ms/req  rss {r.rss_mib:5.0f} MiB  "
        f"other {r.other_cores:4.2f} cores  upstream: {calls}"
    )
