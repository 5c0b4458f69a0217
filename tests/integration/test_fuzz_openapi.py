"""Property-based fuzzing of the live gateway from its own OpenAPI schema: `gateway serve` as a real
process on a real redis-server with the fake fal server, driven by schemathesis' command line
(`fuzz.toml` beside this file: seeded, deterministic, bounded per operation). Every documented
operation, the hot path included, gets valid and invalid requests with the key its schema names.

- No answer is a 5xx; every 4xx is in OpenAI's error shape (fuzz_hooks.py); every answer has a
  documented status, content type and body shape.
- The team is charged exactly what its 2xx image answers said (x-gateway-charged-usd), per
  /v1/usage before and after: nothing for a refused request.
- Then the admin API statefully (teams made, read, patched; keys made and revoked), last, since
  it may patch or revoke what the first run uses.

Not checked (fuzz.toml says why): that every schema-valid request is accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import wait_for
from tests.integration.gateway_stack import Stack, running_stack
from tests.processes import ROOT, python
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("fuzz.toml")
IMAGE_PATHS = ("/v1/images/generations", "/v1/images/edits")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Limits, budget and the secret throttle far past what the run sends: a 429 would hide the code
    # behind it (each has its own tests). A redis-server of its own: the throttle counts the run's
    # wrong secrets per client address, and on the session's server that count would refuse the
    # next stack's admin calls from 127.0.0.1 for a minute.
    team = {
        "monthly_budget_usd": 10_000.0,
        "allow_provider_pinning": True,
        "limits": {"requests_per_minute": 1_000_000, "images_per_minute": 1_000_000, "max_in_flight": 100},
    }
    settings = {"GATEWAY_AUTH_FAILURE_LIMIT": "1000000"}
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_redis(tmp / "redis") as server, running_stack(server, tmp, team=team, gateway_env=settings) as made:
        yield made


def _fuzz(stack: Stack, report: Path, *args: str) -> list[dict[str, Any]]:
    """One schemathesis run; its requests and answers (HAR entries)."""
    env = {
        **os.environ,
        "FUZZ_TEAM_KEY": stack.key,
        "FUZZ_ADMIN_KEY": stack.admin_key,
        "FUZZ_METRICS_TOKEN": stack.metrics_token,
        "HYPOTHESIS_STORAGE_DIRECTORY": str(report.parent / "hypothesis"),  # its caches, out of the tree
    }
    command = python("schemathesis.cli", "--config-file", str(CONFIG), "run", stack.base + "/openapi.json")
    command += ["--report", "har", "--report-har-path", str(report), "--output-truncate", "false", *args]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-30_000:] + run.stderr[-5_000:]
    entries: list[dict[str, Any]] = json.loads(report.read_text())["log"]["entries"]
    return entries


def _usage(stack: Stack) -> dict[str, Any]:
    r = httpx.get(stack.base + "/v1/usage", headers={"Authorization": f"Bearer {stack.key}"}, timeout=30)
    assert r.status_code == 200, r.text
    usage: dict[str, Any] = r.json()
    return usage


def _header(entry: dict[str, Any], name: str) -> str | None:
    return next((h["value"] for h in entry["response"]["headers"] if h["name"].lower() == name), None)


def _job_charge(stack: Stack, job_id: str) -> Decimal:
    r = httpx.get(f"{stack.base}/v1/images/jobs/{job_id}", headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] in ("succeeded", "failed", "cancelled"), job  # its reservation was settled
    return Decimal(job["result"]["gateway"]["charged_usd"]) if job["status"] == "succeeded" else Decimal(0)


def test_the_live_gateway_under_fuzzing(stack: Stack, tmp_path: Path) -> None:
    spent_before = Decimal(str(_usage(stack)["spent_usd"]))
    entries = _fuzz(stack, tmp_path / "fuzz.har", "--phases", "examples,coverage,fuzzing")

    answers: Counter[tuple[str, int]] = Counter()
    charged = Decimal(0)
    jobs: list[str] = []
    for entry in entries:
        path, status = urlsplit(entry["request"]["url"]).path, entry["response"]["status"]
        if entry["request"]["method"] == "POST" and path in IMAGE_PATHS:
            answers[path, status] += 1
            if status == 202:  # a job (Prefer: respond-async): charged when it is done
                jobs.append(json.loads(entry["response"]["content"]["text"])["id"])
            elif 200 <= status < 300:
                charged += Decimal(_header(entry, "x-gateway-charged-usd") or "0")  # none on a dry run
    for path in IMAGE_PATHS:  # the fuzz reached both sides of each image operation
        assert any(p == path and s == 200 for p, s in answers), answers
        assert any(p == path and s >= 400 for p, s in answers), answers
    assert charged > 0, answers
    # Settlement lands just after an answer is sent: wait until nothing is held any more.
    wait_for(lambda: _usage(stack)["reserved_usd"] == 0, "every reservation settled or released")
    assert jobs, answers
    charged += sum((_job_charge(stack, job_id) for job_id in jobs), Decimal(0))
    assert Decimal(str(_usage(stack)["spent_usd"])) - spent_before == charged, answers

    admin = _fuzz(stack, tmp_path / "admin.har", "--phases", "stateful", "--include-path-regex", "^/admin/")
    assert any(e["request"]["method"] == "PATCH" and e["response"]["status"] == 200 for e in admin)
