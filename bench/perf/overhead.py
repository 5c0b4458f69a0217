"""`python -m bench.perf overhead`: what the gateway adds to one request (c=1) and how many it
serves (c=32) on the full path (real Redis, admission and settlement scripts, a valid key,
metrics on), against the fake upstream directly and LiteLLM's proxy, all measured in one run."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from bench.perf import memory
from bench.perf.measure import BenchFailure, RunRecord, Target
from bench.perf.options import add_common_arguments, plan_from
from bench.perf.report import Runs, Stat, fmt, machine_meta, peer_for, per_worker, write_json
from bench.perf.session import bench_session
from bench.perf.stack import StackOptions

NAME = "overhead"
HELP = "latency overhead at c=1 and throughput at c=32, direct vs ours vs LiteLLM"
CONCURRENCIES = (1, 32)
# Issue 6's targets.
MAX_OVERHEAD_P50_MS = 1.0
MAX_OVERHEAD_P99_MS = 5.0
MIN_RPS_PER_WORKER = 1000.0
MIN_RATIO_VS_PEER = 10.0
NOISY_OTHER_CORES = 0.2


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    kind: str
    workers: int
    c1_p50: Stat | None
    c1_p99: Stat | None
    overhead_p50: Stat | None
    overhead_p99: Stat | None
    c32_rps: Stat | None
    c32_p99: Stat | None
    rps_per_worker: Stat | None
    ratio_vs_peer: Stat | None
    peer: str | None
    cpu_ms: Stat | None
    rss_mib: Stat | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the fake upstream's time per image")


def run(args: argparse.Namespace) -> int:
    plan = plan_from(args, NAME)
    records: list[RunRecord] = []
    targets: list[Target] = []
    versions: dict[str, str] = {}
    failure: BenchFailure | None = None
    try:
        with bench_session(
            plan, StackOptions(workdir=plan.workdir, delay_ms=args.delay_ms, gateway_env=dict(plan.gateway_env))
        ) as session:
            targets, versions = session.targets, session.versions
            session.run_rounds(plan, CONCURRENCIES, records=records)
    except BenchFailure as exc:
        failure = exc
    rows = rows_for(records, targets)
    rss = memory.rss_by_round(records, targets)
    payload = {
        "scenario": NAME, "meta": machine_meta() | {"versions": versions}, "plan": asdict(plan),
        "upstream_delay_ms": args.delay_ms, "targets": [asdict(t) for t in targets],
        "runs": [r.as_json() for r in records], "summary": [asdict(r) for r in rows],
        "rss_by_round": [asdict(r) | {"ratio_last_first": r.ratio} for r in rss],
        "failure": str(failure) if failure else None,
    }  # fmt: skip
    path = write_json(plan.out_dir, NAME, payload)
    print()
    print(table(rows))
    print()
    print("\n".join(verdicts(rows, records)))
    if any(len(r.rss_mib) > 1 for r in rss):
        print()
        print(memory.table(rss))
        print("Issue 16 target 2 (memory stays flat):")
        print("\n".join(memory.verdicts(rss)))
    print(f"\nJSON: {path}\nlogs: {plan.workdir}/logs")
    if failure is not None:
        print(f"\nFAILED: {failure}")
        return 1
    return 0


def rows_for(records: Sequence[RunRecord], targets: Sequence[Target]) -> list[Row]:
    runs = Runs(records)
    direct = next((t.label for t in targets if t.kind == "direct"), None)
    rows = []
    for t in targets:
        peer = peer_for(t, targets) if t.kind == "ours" else None
        rows.append(
            Row(
                label=t.label, kind=t.kind, workers=t.workers,
                c1_p50=runs.stat(t.label, 1, lambda r: r.wrk.p50_ms),
                c1_p99=runs.stat(t.label, 1, lambda r: r.wrk.p99_ms),
                overhead_p50=_diff(runs, t, direct, lambda r: r.wrk.p50_ms),
                overhead_p99=_diff(runs, t, direct, lambda r: r.wrk.p99_ms),
                c32_rps=runs.stat(t.label, 32, lambda r: r.wrk.rps),
                c32_p99=runs.stat(t.label, 32, lambda r: r.wrk.p99_ms),
                rps_per_worker=runs.stat(t.label, 32, per_worker),
                ratio_vs_peer=None if peer is None
                else runs.paired(t.label, peer.label, 32, lambda a, b: per_worker(a) / per_worker(b)),
                peer=peer.label if peer else None,
                cpu_ms=runs.stat(t.label, 32, lambda r: r.cpu_ms_per_request),
                rss_mib=runs.stat(t.label, 32, lambda r: r.rss_mib),
            )
        )  # fmt: skip
    return rows


def _diff(runs: Runs, target: Target, direct: str | None, value: Callable[[RunRecord], float]) -> Stat | None:
    """value(target) - value(direct) at c=1, within each round."""
    if direct is None or target.label == direct:
        return None
    return runs.paired(target.label, direct, 1, lambda a, b: value(a) - value(b))


def table(rows: Sequence[Row]) -> str:
    head = ("target", "c=1 p50 ms", "c=1 p99 ms", "overhead p50 ms (− direct)", "c=32 req/s", "c=32 p99 ms",
            "req/s per worker process", "ratio vs litellm per worker", "CPU ms/request (c=32)", "RSS MiB")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = "—" if r.ratio_vs_peer is None else f"{fmt(r.ratio_vs_peer, 1)} (vs {r.peer})"
        cells = (r.label, fmt(r.c1_p50), fmt(r.c1_p99), fmt(r.overhead_p50), fmt(r.c32_rps, 0), fmt(r.c32_p99, 1),
                 fmt(r.rps_per_worker, 0), ratio, fmt(r.cpu_ms, 3), fmt(r.rss_mib, 0))  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Row], records: Sequence[RunRecord]) -> list[str]:
    """Issue 6's targets, judged on the medians, plus how ours scales with worker processes."""
    out = ["Issue 6 targets (medians over rounds):"]
    ours = [r for r in rows if r.kind == "ours"]
    for r in ours:
        checks: list[tuple[bool, str]] = []
        if r.overhead_p50 is not None:
            m = r.overhead_p50.median
            checks.append((m < MAX_OVERHEAD_P50_MS, f"c=1 p50 overhead {m:.3f} ms < 1 ms"))
        if r.overhead_p99 is not None:
            m = r.overhead_p99.median
            checks.append((m < MAX_OVERHEAD_P99_MS, f"c=1 p99 overhead {m:.3f} ms < 5 ms"))
        if r.rps_per_worker is not None:
            m = r.rps_per_worker.median
            checks.append((m >= MIN_RPS_PER_WORKER, f"{m:.0f} req/s per worker at c=32 >= 1000"))
        if r.ratio_vs_peer is not None:
            m = r.ratio_vs_peer.median
            checks.append((m >= MIN_RATIO_VS_PEER, f"{m:.1f}x {r.peer} per worker >= 10x"))
        out += [f"  [{'pass' if ok else 'FAIL'}] {r.label}: {text}" for ok, text in checks]
    runs = Runs(records)
    measured = [r for r in records if r.round > 0]
    other = statistics.median(r.other_cores for r in measured) if measured else 0.0
    if other > NOISY_OTHER_CORES:
        out.append(f"  NOTE: other processes kept {other:.2f} cores busy during a median run; the figures are noisy")
    base = min(ours, key=lambda r: r.workers, default=None)
    for r in ours:
        if base is not None and r.workers > base.workers:
            scale = runs.paired(r.label, base.label, 32, lambda a, b: a.wrk.rps / b.wrk.rps)
            ideal = r.workers / base.workers
            out.append(f"  scaling: {r.label} / {base.label} c=32 req/s = {fmt(scale)} (ideal {ideal:.1f}; "
                       "2 vCPUs shared with wrk and the upstream)")  # fmt: skip
    return out
