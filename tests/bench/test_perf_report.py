"""The overhead scenario's figures: wrk's RESULT line parsed, differences and ratios taken within a
round, medians with [min-max] over rounds."""

from __future__ import annotations

import pytest

from bench.perf.measure import BenchFailure, RunRecord, Target, WrkResult
from bench.perf.overhead import rows_for, table, verdicts

LINE = ("RESULT requests=1000 duration_s=10.000 rps=100.0 p50_ms=0.500 p90_ms=0.700 p99_ms=1.000 max_ms=3.000"
        " mean_ms=0.550 non2xx=0 errors=0 timeouts=0")  # fmt: skip


def wrk(rps: float, p50: float, p99: float) -> WrkResult:
    return WrkResult(int(rps * 10), 10.0, rps, p50, p50, p99, p99, p50, 0, 0, 0)


def run(label: str, kind: str, workers: int, round_no: int, c: int, rps: float, p50: float, p99: float) -> RunRecord:
    return RunRecord(label, kind, workers, round_no, c, wrk(rps, p50, p99), target_cpu_s=rps * 10 * 0.001,
                     upstream_cpu_s=0.0, redis_cpu_s=0.0, wrk_cpu_s=0.0, machine_busy_s=0.0, idle_wait_s=0.0,
                     rss_mib=50.0)  # fmt: skip


def test_result_line_is_parsed_and_a_missing_one_fails_loudly() -> None:
    parsed = WrkResult.parse("Running 10s test\n" + LINE + "\n")
    assert (parsed.requests, parsed.rps, parsed.p99_ms, parsed.non2xx) == (1000, 100.0, 1.0, 0)
    with pytest.raises(BenchFailure):
        WrkResult.parse("wrk: connection refused")


def test_overhead_and_ratios_are_taken_within_each_round() -> None:
    targets = [
        Target("direct", "direct", "u", "", 1, 1),
        Target("ours-w1", "ours", "u", "k", 2, 1),
        Target("ours-w2", "ours", "u", "k", 3, 2),
        Target("litellm-w1", "peer", "u", "k", 4, 1),
    ]
    records = [run("ours-w1", "ours", 1, 0, 8, 1.0, 99.0, 99.0)]  # a warm-up: ignored
    for n, drift in ((1, 1.0), (2, 2.0), (3, 1.5)):  # the machine's speed drifts between rounds
        records += [
            run("direct", "direct", 1, n, 1, 10_000, 0.1 * drift, 0.2 * drift),
            run("direct", "direct", 1, n, 32, 20_000 / drift, 1.0, 2.0),
            run("ours-w1", "ours", 1, n, 1, 1000, 0.6 * drift, 2.2 * drift),
            run("ours-w1", "ours", 1, n, 32, 2000 / drift, 10.0, 20.0),
            run("ours-w2", "ours", 2, n, 32, 3000 / drift, 10.0, 20.0),
            run("litellm-w1", "peer", 1, n, 32, 100 / drift, 300.0, 800.0),
        ]
    rows = {r.label: r for r in rows_for(records, targets)}
    ours = rows["ours-w1"]
    assert ours.overhead_p50 is not None and ours.overhead_p50.median == pytest.approx(0.75)
    assert ours.overhead_p50.low == pytest.approx(0.5) and ours.overhead_p50.high == pytest.approx(1.0)
    assert ours.ratio_vs_peer is not None and ours.ratio_vs_peer.median == pytest.approx(20.0)
    assert ours.ratio_vs_peer.low == pytest.approx(ours.ratio_vs_peer.high)  # drift cancels within a round
    assert rows["ours-w2"].rps_per_worker is not None and rows["ours-w2"].peer == "litellm-w1"
    assert rows["ours-w2"].rps_per_worker.median == pytest.approx(1000.0)
    assert rows["direct"].overhead_p50 is None and rows["litellm-w1"].ratio_vs_peer is None
    text = table(list(rows.values()))
    assert "| ours-w1 | 0.90 [0.60–1.20] |" in text and "| 20.0 (vs litellm-w1) |" in text
    judged = "\n".join(verdicts(list(rows.values()), records))
    assert "[pass] ours-w1: c=1 p50 overhead 0.750 ms < 1 ms" in judged
    assert "[pass] ours-w1: 20.0x litellm-w1 per worker >= 10x" in judged
    assert "scaling: ours-w2 / ours-w1 c=32 req/s = 1.50" in judged


def test_rss_is_read_round_by_round_and_judged_last_over_first() -> None:
    from dataclasses import replace

    from bench.perf import memory

    targets = [Target("ours-w1", "ours", "u", "k", 2, 1), Target("litellm-w1", "peer", "u", "k", 4, 1)]
    records = [replace(run("ours-w1", "ours", 1, 0, 8, 1.0, 1.0, 1.0), rss_mib=10.0)]  # warm-up: not a round
    for n in range(1, 11):
        records += [
            replace(run("ours-w1", "ours", 1, n, 1, 1000, 0.5, 1.0), rss_mib=999.0),  # c=1: not read
            replace(run("ours-w1", "ours", 1, n, 32, 1000, 0.5, 1.0), rss_mib=80.0 + n),
            replace(run("litellm-w1", "peer", 1, n, 32, 100, 5.0, 9.0), rss_mib=300.0 + 10 * n),
        ]
    rows = {r.label: r for r in memory.rss_by_round(records, targets)}
    assert rows["ours-w1"].rss_mib == tuple(80.0 + n for n in range(1, 11))
    assert rows["ours-w1"].ratio == pytest.approx(90 / 81)
    judged = memory.verdicts(list(rows.values()))
    assert len(judged) == 1 and "[FAIL] ours-w1" in judged[0] and "1.111" in judged[0]  # the peer is not judged
    flat = replace(rows["ours-w1"], rss_mib=(81.0, 95.0, 89.0))
    assert "[pass]" in memory.verdicts([flat])[0] and "only 3 rounds" in memory.verdicts([flat])[0]
    text = memory.table(list(rows.values()))
    assert "| ours-w1 | 81.0 | 82.0 |" in text and "| 1.111 | 1.111 |" in text
