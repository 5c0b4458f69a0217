"""bench.perf instructions: its arithmetic, and one short count of the real gateway under callgrind
(the scenario a change on the request path is measured with while other work runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.perf.instructions import callgrind_totals, net_per_request
from tests.processes import ROOT


def test_idle_instructions_are_taken_out_in_proportion_to_the_time_under_load() -> None:
    # 10 s of load ran 1,000 requests in 3.0e9 instructions; 20 s idle ran 1.0e9.
    assert net_per_request(3_000_000_000, 10.0, 1_000_000_000, 20.0, 1000) == pytest.approx(2_500_000)
    with pytest.raises(ValueError, match="no requests"):
        net_per_request(1, 1.0, 1, 1.0, 0)


def test_the_totals_line_is_read_not_the_summary_which_a_zeroing_wraps() -> None:
    dump = "events: Ir\nsummary: 18446744073181855677\ntotals: 69295754\n"
    assert callgrind_totals(dump) == 69_295_754


@pytest.mark.slow
def test_a_short_count_of_the_gateway_under_callgrind(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "instructions", "--rounds", "1", "--duration", "3",
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = out.glob("perf-instructions-*.json")
    payload = json.loads(result.read_text())
    (count,) = payload["counts"]
    assert count["requests"] > 0 and count["idle_instructions"] > 0
    # A request through the whole gateway is hundreds of thousands of instructions at the least
    # (about 2 million on this project's benchmark machine); an idle process runs far fewer a second.
    assert 2e5 < count["per_request"] < 2e8
    assert count["load_instructions"] / count["load_s"] > count["idle_instructions"] / count["idle_s"]
