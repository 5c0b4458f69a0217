"""What one run measured, and the table and ratios the benchmark prints: cost per image to the
organisation (from the route that served each image and pricing.yaml), time to result, failures,
and the share the owned GPUs served. Ratios are ours against each baseline from the same run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.replay import Outcome
from bench.stack import LedgerEntry
from gateway.catalog import MICROS, Catalog, parse_size
from gateway.routing.breaker import percentile

LOCAL = "local_gpu"


@dataclass(frozen=True, slots=True)
class RunSummary:
    scenario: str
    policy: str
    requests: int
    succeeded: int
    failed: int
    failures: dict[str, int]  # "status: message" -> count
    images: int
    local_images: int
    cost_usd: float
    ledger_cost_usd: float  # the same, as the gateway's ledger recorded it
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    reasons: dict[str, int]  # provider/reason -> count
    wall_s: float

    @property
    def cost_per_image_usd(self) -> float | None:
        return self.cost_usd / self.images if self.images else None

    @property
    def local_share(self) -> float | None:
        return self.local_images / self.images if self.images else None


def summarize(
    scenario: str,
    policy: str,
    outcomes: Sequence[Outcome],
    ledger: Sequence[LedgerEntry],
    catalog: Catalog,
    size: str,
    wall_s: float,
) -> RunSummary:
    width, height = parse_size(size)
    ok = [o for o in outcomes if o.status == 200]
    cost_micros = 0
    local_images = 0
    for o in ok:
        if o.provider is not None and "," in o.provider:
            continue  # split over routes (n > 1): counted from the ledger below
        route = next(r for r in catalog.models[o.model].routes if r.provider == o.provider)
        cost_micros += route.cost_micros(width, height, o.n)
        local_images += o.n if o.provider == LOCAL else 0
    for e in ledger:
        if e.status == "succeeded" and "," in e.provider:
            cost_micros += e.provider_cost_micros
            local_images += _local_images(e, catalog, width, height)
    latencies = [o.latency_s for o in ok]
    failures = Counter(f"{o.status}: {(o.error or '')[:80]}" for o in outcomes if o.status != 200)
    return RunSummary(
        scenario=scenario,
        policy=policy,
        requests=len(outcomes),
        succeeded=len(ok),
        failed=len(outcomes) - len(ok),
        failures=dict(failures),
        images=sum(o.n for o in ok),
        local_images=local_images,
        cost_usd=cost_micros / MICROS,
        ledger_cost_usd=sum(e.provider_cost_micros for e in ledger if e.status == "succeeded") / MICROS,
        p50_s=percentile(latencies, 0.50) if latencies else None,
        p95_s=percentile(latencies, 0.95) if latencies else None,
        max_s=max(latencies) if latencies else None,
        reasons=dict(Counter(f"{o.provider}/{o.reason}" for o in ok)),
        wall_s=wall_s,
    )


def _local_images(entry: LedgerEntry, catalog: Catalog, width: int, height: int) -> int:
    """The owned GPUs' images of a request split between them and one other route, from what it
    cost: each model here has exactly those two routes, so the cost says how many each made."""
    routes = catalog.models[entry.model].routes
    local = next(r.cost_micros(width, height, 1) for r in routes if r.provider == LOCAL)
    other = next(r.cost_micros(width, height, 1) for r in routes if r.provider != LOCAL)
    return round((entry.images * other - entry.provider_cost_micros) / (other - local))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(header: Sequence[str], align: str, rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; `align` has one letter per column, l(eft) or r(ight)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def table(runs: Sequence[RunSummary]) -> str:
    header = ("scenario", "policy", "requests", "failed", "$/image", "local share", "p50 s", "p95 s", "max s")
    rows = [
        (
            r.scenario,
            r.policy,
            r.requests,
            r.failed,
            _num(r.cost_per_image_usd, ".4f"),
            _num(None if r.local_share is None else 100 * r.local_share, ".0f") + "%",
            _num(r.p50_s, ".2f"),
            _num(r.p95_s, ".2f"),
            _num(r.max_s, ".2f"),
        )  # fmt: skip
        for r in runs
    ]
    return markdown(header, "llrrrrrrr", rows)


@dataclass(frozen=True, slots=True)
class Comparison:
    scenario: str
    ours: str
    baseline: str
    cost_ratio: float | None  # ours / baseline: below 1 is cheaper
    p95_ratio: float | None  # ours / baseline: at most 1 is equal or better
    ours_failed: int
    baseline_failed: int

    @property
    def meets_bar(self) -> bool:
        """Cheaper at equal or better p95, and no more failures."""
        return (
            self.cost_ratio is not None
            and self.p95_ratio is not None
            and self.cost_ratio < 1.0
            and self.p95_ratio <= 1.0
            and self.ours_failed <= self.baseline_failed
        )


def compare(runs: Sequence[RunSummary], ours: Sequence[str]) -> list[Comparison]:
    """Each of our runs against each baseline run of the same scenario."""
    return [
        versus(mine, other)
        for mine in runs
        if mine.policy in ours
        for other in runs
        if other.scenario == mine.scenario and other.policy not in ours
    ]


def versus(mine: RunSummary, other: RunSummary) -> Comparison:
    return Comparison(
        mine.scenario,
        mine.policy,
        other.policy,
        _ratio(mine.cost_per_image_usd, other.cost_per_image_usd),
        _ratio(mine.p95_s, other.p95_s),
        mine.failed,
        other.failed,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratio_table(comparisons: Sequence[Comparison]) -> str:
    header = ("scenario", "ours", "vs", "cost ratio", "p95 ratio", "failed (ours / theirs)",
              "cheaper at equal or better p95")  # fmt: skip
    rows = [
        (
            c.scenario,
            c.ours,
            c.baseline,
            _num(c.cost_ratio, ".3f"),
            _num(c.p95_ratio, ".3f"),
            f"{c.ours_failed} / {c.baseline_failed}",
            "yes" if c.meets_bar else "no",
        )  # fmt: skip
        for c in comparisons
    ]
    return markdown(header, "lllrrrl", rows)


def matched_table(comparisons: Sequence[Comparison]) -> str:
    """For each baseline, the cheapest of our runs (one per latency target) that is at least as fast
    at p95 with no more failures: the latency target picked per baseline, on the same workload."""
    rows: list[tuple[str, ...]] = []
    for scenario, baseline in dict.fromkeys((c.scenario, c.baseline) for c in comparisons):
        fit = [
            c
            for c in comparisons
            if (c.scenario, c.baseline) == (scenario, baseline)
            and c.p95_ratio is not None
            and c.cost_ratio is not None
            and c.p95_ratio <= 1.0
            and c.ours_failed <= c.baseline_failed
        ]
        best = min(fit, key=lambda c: c.cost_ratio or 0.0, default=None)
        if best is None:
            rows.append((scenario, baseline, "none", "-", "-"))
        else:
            rows.append((scenario, baseline, best.ours, _num(best.cost_ratio, ".3f"), _num(best.p95_ratio, ".3f")))
    header = ("scenario", "vs", "best of ours at equal or better p95", "cost ratio", "p95 ratio")
    return markdown(header, "lllrr", rows)


# The bar of the routing issue (17): on or below each simple policy's cost/latency point.
COST_TOLERANCE = 1.02  # "cost <= 1.02x the baseline's" at some target on the list
DEFAULT_BASELINES = ("round_robin", "least_busy")  # at the default target: never dearer at equal or better p95


@dataclass(frozen=True, slots=True)
class FrontierRow:
    scenario: str
    baseline: str
    best: Comparison | None  # the cheapest of ours within the bar, else the nearest miss
    met: bool


def frontier(comparisons: Sequence[Comparison]) -> list[FrontierRow]:
    """Per scenario and baseline: is there a latency target on the list where ours costs at most
    COST_TOLERANCE x the baseline at a p95 no worse, with no failures of its own?"""
    rows: list[FrontierRow] = []
    for scenario, baseline in dict.fromkeys((c.scenario, c.baseline) for c in comparisons):
        mine = [c for c in comparisons if (c.scenario, c.baseline) == (scenario, baseline)]
        fit = [c for c in mine if _within(c, COST_TOLERANCE)]
        if fit:
            rows.append(FrontierRow(scenario, baseline, min(fit, key=lambda c: c.cost_ratio or 0.0), True))
        else:  # the miss nearest to the bar: the smallest excess over it, cost and p95 together
            near = min(mine, key=_excess, default=None)
            rows.append(FrontierRow(scenario, baseline, near, False))
    return rows


def default_target_misses(comparisons: Sequence[Comparison], default: str) -> list[Comparison]:
    """Ours at the default target against round robin and least busy: dearer, or slower at p95."""
    return [c for c in comparisons if c.ours == default and c.baseline in DEFAULT_BASELINES and not _within(c, 1.0)]


def _within(c: Comparison, cost_tolerance: float) -> bool:
    return (
        c.cost_ratio is not None
        and c.p95_ratio is not None
        and c.cost_ratio <= cost_tolerance
        and c.p95_ratio <= 1.0
        and c.ours_failed == 0
    )


def _excess(c: Comparison) -> float:
    if c.cost_ratio is None or c.p95_ratio is None:
        return float("inf")
    return max(c.cost_ratio - COST_TOLERANCE, 0.0) + max(c.p95_ratio - 1.0, 0.0) + c.ours_failed


def frontier_table(rows: Sequence[FrontierRow]) -> str:
    header = ("scenario", "vs", "best matching target", "cost ratio", "p95 ratio", "met")
    out = [
        (
            r.scenario,
            r.baseline,
            r.best.ours if r.best else "-",
            _num(r.best.cost_ratio if r.best else None, ".3f"),
            _num(r.best.p95_ratio if r.best else None, ".3f"),
            "yes" if r.met else "no",
        )  # fmt: skip
        for r in rows
    ]
    return markdown(header, "lllrrl", out)
