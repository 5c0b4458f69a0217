"""bench.perf forms runs for real, and both readers it compares read the same upload."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.perf.forms import form_body, readers
from tests.processes import ROOT


def test_both_readers_read_the_whole_upload_in_any_pieces() -> None:
    image = os.urandom(300_000)
    for piece in (1000, 65536):
        got = {name: asyncio.run(read()) for name, read in readers(form_body(image), piece, len(image)).items()}
        assert got == {"starlette": len(image), "ours": len(image)}


def test_the_scenario_prints_a_ratio_and_writes_its_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "forms", "--sizes-mib", "0.5", "--reps", "2", "--rounds", "2",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "ours/Starlette x" in done.stdout
    (result,) = tmp_path.glob("perf-forms-*.json")
    (row,) = json.loads(result.read_text())["results"]
    assert row["size_mib"] == 0.5 and len(row["ms"]["ours"]) == 2 and row["ratio"] > 0
