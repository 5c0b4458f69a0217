"""RSS round by round (issue 16's target 2): each target's RSS after its c=32 run of every round,
and the ratio of the last round's to the first's. The bar: after round 10 within 10 % of after
round 1 (`bench.perf overhead --rounds 10`). Bytes, not time: the machine's other tenants move
them little."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.perf.measure import RunRecord, Target
from bench.perf.report import Runs

MAX_GROWTH = 0.10  # RSS after the last round over after the first, minus one
CONCURRENCY = 32  # RSS is read after this run of each round (the most requests in flight)


@dataclass(frozen=True, slots=True)
class RssByRound:
    label: str
    kind: str
    workers: int
    rss_mib: tuple[float, ...]  # after each measured round, in order

    @property
    def ratio(self) -> float | None:
        """After the last round over after the first (None with fewer than two rounds)."""
        if len(self.rss_mib) < 2 or self.rss_mib[0] <= 0:
            return None
        return self.rss_mib[-1] / self.rss_mib[0]


def rss_by_round(records: Sequence[RunRecord], targets: Sequence[Target]) -> list[RssByRound]:
    runs = Runs(records)
    out = []
    for t in targets:
        values = tuple(r.rss_mib for n in runs.rounds if (r := runs.get(t.label, CONCURRENCY, n)) is not None)
        if values:
            out.append(RssByRound(t.label, t.kind, t.workers, values))
    return out


def table(rows: Sequence[RssByRound]) -> str:
    rounds = max((len(r.rss_mib) for r in rows), default=0)
    head = ("target", *(f"r{n}" for n in range(1, rounds + 1)), "last / first", "max / first")
    lines = ["RSS MiB after each round's c=32 run (the target's whole process group):",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        cells = [f"{v:.1f}" for v in r.rss_mib] + [""] * (rounds - len(r.rss_mib))
        ratio = "—" if r.ratio is None else f"{r.ratio:.3f}"
        peak = "—" if r.ratio is None else f"{max(r.rss_mib) / r.rss_mib[0]:.3f}"
        lines.append("| " + " | ".join([r.label, *cells, ratio, peak]) + " |")
    return "\n".join(lines)


def verdicts(rows: Sequence[RssByRound]) -> list[str]:
    """Issue 16's memory bar for our gateways; needs at least two rounds (10 for the bar as set)."""
    out = []
    for r in rows:
        if r.kind != "ours" or r.ratio is None:
            continue
        n = len(r.rss_mib)
        ok = r.ratio <= 1 + MAX_GROWTH
        out.append(f"  [{'pass' if ok else 'FAIL'}] {r.label}: RSS after round {n} / after round 1 = "
                   f"{r.ratio:.3f} ({r.rss_mib[0]:.1f} -> {r.rss_mib[-1]:.1f} MiB) <= {1 + MAX_GROWTH:.2f}"
                   + ("" if n >= 10 else f" (only {n} rounds; the bar is set at 10)"))  # fmt: skip
    return out
