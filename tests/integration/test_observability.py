"""The dashboards and alerts against real data: a real Prometheus (Debian's `prometheus`) scrapes a
real `gateway serve --workers 2` process and two GPU workers (the real worker app with a stand-in
pipeline) while the gateway serves traffic, including refusals, a fallback, failed requests, an
open circuit breaker and a Redis outage. Then every PromQL query in the three Grafana dashboards
must return data, the dashboards' variables must list what was served, the Billing figures must
equal the ledger, and the alerts for the staged conditions must be active.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.accounting.keys import team_prefix
from tests.fakes.server import free_port, serve_in_thread
from tests.fakes.worker_server import RunningWorker, running_worker
from tests.processes import ROOT, Process, python
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS_YML = ROOT / "deploy" / "prometheus" / "alerts.yml"

# What Grafana puts in place of its variables. "All" is the regex .* (each variable's allValue);
# the rate window is wide enough to cover the whole test, so no rate falls to nothing meanwhile.
GRAFANA_VALUES = {"__rate_interval": "5m", "__range": "1h", "__interval": "15s", "team": ".*", "model": ".*",
                  "provider": ".*"}  # fmt: skip
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def grafana_expand(expr: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VALUES, f"unknown dashboard variable ${name} in {expr}"
        return GRAFANA_VALUES[name]

    return VARIABLE.sub(value, expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                out.append((dash["title"], panel["title"], target["expr"]))
    return out


def _query_params() -> list[Any]:
    return [
        pytest.param(d, p, e, id=f"{d.rsplit('/', 1)[-1].strip()}: {p} #{i}")
        for i, (d, p, e) in enumerate(dashboard_queries())
    ]


def dashboard_variables() -> list[tuple[str, dict[str, Any]]]:
    return [
        (json.loads(p.read_text())["title"], v)
        for p in DASHBOARDS
        for v in json.loads(p.read_text())["templating"]["list"]
    ]


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = self.http.get("/api/v1/query", params={"query": expr})
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr}\n{body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, metric: str) -> list[str]:
        body = self.http.get(f"/api/v1/label/{label}/values", params={"match[]": metric}).json()
        assert body["status"] == "success", body
        values: list[str] = body["data"]
        return values

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.http.get("/api/v1/alerts").json()["data"]["alerts"]
        return alerts

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus never saw {what}")
            time.sleep(0.2)

    def wait_scrapes(self, job: str, count: int = 2) -> None:
        """Until `count` more scrapes of every target of `job` have landed."""
        expr = f'min(timestamp(up{{job="{job}"}}))'
        first = self.scalar(expr) or 0.0
        self.wait_for(f"{count} scrapes of {job}", lambda: (self.scalar(expr) or 0.0) >= first + count)


def failing_fal() -> Starlette:
    """fal's queue during an outage of its runners: status lookups answer (so the free probe finds
    fal reachable), every submission is refused with a 500."""

    async def lookup(_: Request) -> JSONResponse:
        return JSONResponse({"detail": "Request not found"}, status_code=404)

    async def submit(_: Request) -> JSONResponse:
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)

    return Starlette(
        routes=[Route("/{path:path}", lookup, methods=["GET"]), Route("/{path:path}", submit, methods=["POST"])]
    )


# A job the test adds: the gateway scraped as the compose file's job does, but without the token.
NO_TOKEN_JOB = "gateway-without-token"


def with_token_file(config: dict[str, Any], token_file: Path) -> dict[str, Any]:
    """The config with the gateway job's token read from `token_file`, where compose would mount
    its secret."""
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token_file)
    return config


def prometheus_config(gateway: str, workers: list[str], prometheus: str, token_file: Path) -> dict[str, Any]:
    """The compose stack's prometheus.yml with loopback targets in place of DNS discovery, the
    metrics token from a local file, and a 1 s scrape and rule evaluation so the test is quick;
    plus one job that scrapes the gateway without the token, which must fail."""
    config = with_token_file(yaml.safe_load(PROMETHEUS_YML.read_text()), token_file)
    targets = {"gateway": [gateway], "gpu-worker": workers, "prometheus": [prometheus]}
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    (gateway_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gateway"]
    without = {k: v for k, v in gateway_job.items() if k != "authorization"}
    config["scrape_configs"].append({**without, "job_name": NO_TOKEN_JOB})
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS_YML)]
    return config


@dataclass
class Observed:
    prom: Prometheus
    teams: dict[str, str]  # name -> id
    redis_url: str
    statuses: dict[str, list[int]] = field(default_factory=dict)

    def ledger(self, team: str) -> list[dict[bytes, bytes]]:
        r = redis.Redis.from_url(self.redis_url)
        try:
            return [f for _, f in r.xrange(team_prefix(self.teams[team]) + "ledger")]
        finally:
            r.close()


class Traffic:
    def __init__(self, base: str, admin_key: str, full: RunningWorker) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        self.admin = {"Authorization": f"Bearer {admin_key}"}
        self.full = full
        self.keys: dict[str, str] = {}
        self.teams: dict[str, str] = {}
        self.statuses: dict[str, list[int]] = {}
        self.admitted = 0  # requests that reached a provider and were settled

    def team(self, name: str, budget: float, rpm: int = 1000, pinning: bool = False) -> None:
        body = {"name": name, "monthly_budget_usd": budget, "allow_provider_pinning": pinning,
                "limits": {"requests_per_minute": rpm, "images_per_minute": 1000, "max_in_flight": 50}}  # fmt: skip
        team = self.http.post("/admin/teams", json=body, headers=self.admin).json()
        self.teams[name] = team["id"]
        self.keys[name] = self.http.post(f"/admin/teams/{team['id']}/keys", headers=self.admin).json()["key"]

    def generate(self, what: str, team: str, model: str, n: int = 1, **headers: str) -> httpx.Response:
        resp = self.http.post(
            "/v1/images/generations",
            json={"model": model, "prompt": f"{what} {secrets.token_hex(2)}", "n": n, "response_format": "url"},
            headers={"Authorization": f"Bearer {self.keys[team]}", **headers},
        )
        self.statuses.setdefault(what, []).append(resp.status_code)
        if resp.status_code in (200, 502, 504):
            self.admitted += 1
        return resp

    def wave(self) -> None:
        """One of everything the dashboards show. Run twice, so that every counter has moved
        between two scrapes (a series' first sample already counts its first increment)."""
        for model, n in (
            ("hidream-i1-full", 1),
            ("hidream-i1-full", 2),
            ("hidream-i1-fast", 1),
            ("hidream-i1-fast", 3),
        ):
            self.generate("served", "design", model, n)
        self.generate("over budget", "small", "hidream-i1-full")
        for _ in range(2):  # the first may be admitted, if the team's last request is a minute old
            self.generate("rate limited", "bursty", "hidream-i1-fast")
        # The GPU worker sends garbage once: the attempt falls back to fal, which fails too.
        self.full.arm("garbage")
        self.generate("every route failed", "design", "hidream-i1-full")
        # Pinned to fal: every attempt fails, and five failures in a row open fal's breaker.
        for _ in range(3):
            self.generate("pinned to fal", "design", "hidream-i1-full", **{"x-gateway-provider": "fal"})


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    binary = shutil.which("prometheus")
    assert binary, "the `prometheus` binary is missing: install Debian's prometheus package (.ci/run does)"
    tmp = tmp_path_factory.mktemp("observability")
    redis_server = RedisServer(tmp / "redis")
    redis_server.start()
    admin_key = "adm-" + secrets.token_hex(8)
    metrics_token = "met-" + secrets.token_hex(16)
    token_file = tmp / "metrics-token"
    token_file.write_text(metrics_token + "\n")
    with ExitStack() as stack:
        stack.callback(redis_server.stop)
        full = stack.enter_context(running_worker("full"))
        fast = stack.enter_context(running_worker("fast"))
        fal = stack.enter_context(serve_in_thread(failing_fal()))
        gw_port, prom_port = free_port(), free_port()
        base = f"http://127.0.0.1:{gw_port}"
        env = {
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_ADMIN_KEY": admin_key,
            "GATEWAY_METRICS_TOKEN": metrics_token,
            "GATEWAY_LOCAL_GPU_URLS": f"{full.url},{fast.url}",
            "GATEWAY_FAL_KEY": f"{secrets.token_hex(4)}:{secrets.token_hex(8)}",
            "GATEWAY_FAL_QUEUE_URL": fal,
            "GATEWAY_DATA_DIR": str(tmp / "data"),
            "GATEWAY_PUBLIC_URL": base,
            "GATEWAY_PROBE_INTERVAL_S": "0.2",
            "GATEWAY_BILLING_METRICS_INTERVAL_S": "0.5",
        }
        gateway = Process(
            "gateway", python("gateway.cli", "serve", "--port", str(gw_port), "--workers", "2"), env, tmp / "gw.log"
        )
        stack.callback(gateway.stop)
        config = tmp / "prometheus.yml"
        workers = [u.removeprefix("http://") for u in (full.url, fast.url)]
        config.write_text(
            yaml.safe_dump(prometheus_config(f"127.0.0.1:{gw_port}", workers, f"127.0.0.1:{prom_port}", token_file))
        )
        prometheus = Process(
            "prometheus",
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            {}, tmp / "prometheus.log",
        )  # fmt: skip
        stack.callback(prometheus.stop)
        gateway.wait_http(base + "/ready")
        prometheus.wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")
        stack.callback(prom.http.close)
        scraped = f'up{{job!="{NO_TOKEN_JOB}"}}'
        prom.wait_for(
            "every target up", lambda: prom.scalar(f"min({scraped})") == 1 and prom.scalar(f"count({scraped})") == 4
        )

        traffic = Traffic(base, admin_key, full)
        stack.callback(traffic.http.close)
        traffic.team("design", 100.0, pinning=True)
        traffic.team("small", 0.105)
        traffic.team("bursty", 100.0, rpm=1)
        for team, model in (("small", "hidream-i1-full"), ("small", "hidream-i1-full"), ("bursty", "hidream-i1-fast")):
            traffic.generate("setup", team, model)  # small: two images at $0.05 are 95% of its budget
        # The first round-robin request of a process tries the second route first: fal, which
        # fails, so it falls back to the GPU worker and is served.
        rr = traffic.generate(
            "fallback served", "design", "hidream-i1-fast", **{"x-gateway-routing-policy": "round_robin"}
        )
        assert rr.headers.get("x-gateway-route-reason") == "fallback_after_error", rr.text
        traffic.wave()
        prom.wait_for("the first wave", lambda: prom.scalar("sum(gateway_requests_total)") == traffic.admitted)
        prom.wait_scrapes("gateway")
        traffic.wave()

        # Redis goes away: a request is refused with 503, and the gateway reports Redis down.
        redis_server.kill()
        traffic.generate("redis down", "design", "hidream-i1-fast")
        prom.wait_for("Redis down", lambda: prom.scalar("min(gateway_redis_up)") == 0)
        prom.wait_for(
            "failed Redis reads counted",
            lambda: (prom.scalar("sum(increase(gateway_redis_errors_total[5m]))") or 0) > 0,
        )
        redis_server.start()  # same port, same append-only file
        prom.wait_for("Redis back", lambda: prom.scalar("min(gateway_redis_up)") == 1)
        traffic.generate("after the outage", "design", "hidream-i1-fast")

        prom.wait_for("every request", lambda: prom.scalar("sum(gateway_requests_total)") == traffic.admitted)
        prom.wait_scrapes("gateway")
        yield Observed(prom, traffic.teams, redis_server.url, traffic.statuses)


def _promtool(*args: str, cwd: Path = PROMETHEUS_YML.parent) -> str:
    binary = shutil.which("promtool")
    assert binary, "the `promtool` binary is missing: install Debian's prometheus package (.ci/run does)"
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_finds_the_prometheus_config_valid(tmp_path: Path) -> None:
    # promtool checks that the token file exists: a copy, with the token where compose mounts it.
    (tmp_path / "token").write_text("met-x\n")
    config = with_token_file(yaml.safe_load(PROMETHEUS_YML.read_text()), tmp_path / "token")
    (tmp_path / PROMETHEUS_YML.name).write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS_YML, tmp_path / ALERTS_YML.name)
    out = _promtool("check", "config", PROMETHEUS_YML.name, cwd=tmp_path)
    assert "is valid prometheus config file syntax" in out and "SUCCESS: 1 rule files found" in out


def test_promtool_finds_the_alert_rules_valid() -> None:
    groups = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in _promtool("check", "rules", ALERTS_YML.name)


def test_the_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_prometheus_scrapes_the_gateway_with_the_token_and_fails_without_it(observed: Observed) -> None:
    prom = observed.prom
    assert prom.scalar('min(up{job="gateway"})') == 1
    assert prom.scalar(f'max(up{{job="{NO_TOKEN_JOB}"}})') == 0
    targets = prom.http.get("/api/v1/targets").json()["data"]["activeTargets"]
    (refused,) = [t for t in targets if t["labels"]["job"] == NO_TOKEN_JOB]
    assert "401" in refused["lastError"], refused


def test_the_collectors_pauses_reach_prometheus_from_the_served_workers(observed: Observed) -> None:
    # Noted by the collector's callback and observed by each worker every second (gateway/collector.py),
    # into the metrics files the workers share: none would show if that second step never ran.
    assert (observed.prom.scalar('sum(gateway_gc_pause_seconds_count{job="gateway"})') or 0) > 0
    assert (observed.prom.scalar('sum(gateway_gc_pause_seconds_sum{job="gateway"})') or 0) > 0


def test_the_staged_traffic_got_the_answers_it_was_staged_for(observed: Observed) -> None:
    s = observed.statuses
    assert s["setup"] == [200, 200, 200]
    assert s["fallback served"] == [200]
    assert s["served"] == [200] * 8
    assert s["over budget"] == [429, 429]
    assert set(s["rate limited"]) <= {200, 429} and s["rate limited"].count(429) >= 2
    assert s["every route failed"] == [502, 502]
    assert s["pinned to fal"] == [502] * 6
    assert s["redis down"] == [503]
    assert s["after the outage"] == [200]


@pytest.mark.parametrize(("dashboard", "panel", "expr"), _query_params())
def test_every_dashboard_query_returns_data(observed: Observed, dashboard: str, panel: str, expr: str) -> None:
    result = observed.prom.query(grafana_expand(expr))
    assert result, f"{dashboard} / {panel}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"{dashboard} / {panel}: only {values} for {expr}"


def test_the_dashboards_have_the_panels_the_issue_asks_for() -> None:
    titles = {json.loads(p.read_text())["title"]: p for p in DASHBOARDS}
    assert set(titles) == {"Image gateway / Billing", "Image gateway / Usage", "Image gateway / Providers"}
    exprs = {d: " ".join(e for dd, _, e in dashboard_queries() if dd == d) for d in titles}
    shown = {
        "Image gateway / Billing": "gateway_team_spend_month_usd gateway_team_budget_usd gateway_spend_usd_total "
        "gateway_provider_cost_usd_total",
        "Image gateway / Usage": "gateway_images_total gateway_requests_total gateway_rejections_total",
        "Image gateway / Providers": "gateway_route_healthy gateway_breaker_state "
        "gateway_upstream_duration_seconds_bucket gateway_upstream_errors_total gateway_fallbacks_total "
        "gateway_worker_queue_depth gateway_route_decisions_total gateway_overhead_seconds_bucket",
    }
    for dashboard, metrics in shown.items():
        for metric in metrics.split():
            assert metric in exprs[dashboard], f"{dashboard} does not show {metric}"


def test_every_dashboard_variable_lists_what_was_served(observed: Observed) -> None:
    seen: dict[str, set[str]] = {}
    for dashboard, var in dashboard_variables():
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        if m := re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query):
            values = set(observed.prom.label_values(m.group(2), m.group(1)))
        else:
            m = re.fullmatch(r"query_result\((.*)\)", query)
            assert m, f"{dashboard}: variable {var['name']} has an unexpected query {query}"
            # Grafana turns each series into `{a="x",b="y"} value timestamp` and applies the regex.
            lines = [
                "{" + ",".join(f'{k}="{v}"' for k, v in sorted(r["metric"].items())) + "} " + r["value"][1]
                for r in observed.prom.query(m.group(1))
            ]
            pattern = re.compile(var["regex"].strip("/").replace("(?<", "(?P<"))
            values = {found.group("text") for line in lines if (found := pattern.search(line))}
        assert values, f"{dashboard}: variable {var['name']} lists nothing"
        seen.setdefault(var["name"], set()).update(values)
    assert seen["team"] >= {"design", "small", "bursty"}
    assert seen["model"] >= {"hidream-i1-full", "hidream-i1-fast"}
    assert seen["provider"] >= {"fal", "local_gpu"}


def test_billing_figures_equal_the_ledger(observed: Observed) -> None:
    prom = observed.prom
    for name, team_id in observed.teams.items():
        events = observed.ledger(name)
        charged = sum(int(e[b"charged_micros"]) for e in events) / 1e6
        images = sum(int(e[b"images"]) for e in events)
        assert prom.scalar(f'max(gateway_team_spend_month_usd{{team="{team_id}"}})') == pytest.approx(charged)
        assert prom.scalar(f'max(gateway_team_images_month{{team="{team_id}"}})') == images
        # The counters summed over both worker processes agree too.
        assert prom.scalar(f'sum(gateway_spend_usd_total{{team="{team_id}"}})') == pytest.approx(charged)
    by_model: dict[str, float] = {}
    for name in observed.teams:
        for e in observed.ledger(name):
            if int(e[b"charged_micros"]):
                model = e[b"model"].decode()
                by_model[model] = by_model.get(model, 0.0) + int(e[b"charged_micros"]) / 1e6
    billed = prom.query("sum by (model) (max by (team, model) (gateway_team_model_spend_month_usd))")
    assert {r["metric"]["model"]: pytest.approx(float(r["value"][1])) for r in billed} == by_model
    used = prom.query(
        "100 * max by (team) (gateway_team_spend_month_usd) / max by (team) (gateway_team_budget_usd > 0)"
        " * on (team) group_left (name) topk by (team) (1, max by (team, name) (gateway_team_info == 1))"
    )
    by_name = {r["metric"]["name"]: float(r["value"][1]) for r in used}
    assert by_name["small"] == pytest.approx(100 * 0.10 / 0.105)


def test_the_alerts_for_the_staged_conditions_are_active(observed: Observed) -> None:
    wanted = {
        ("TeamBudgetNearlySpent", "team", observed.teams["small"]),
        ("ProviderBreakerOpen", "provider", "fal"),
        ("ProviderRouteUnhealthy", "model", "hidream-i1-dev"),  # no GPU worker serves it
        ("GatewayRedisErrors", "operation", "billing_metrics"),
    }

    def active() -> set[tuple[str, str, str]]:
        return {
            (a["labels"]["alertname"], label, a["labels"].get(label, ""))
            for a in observed.prom.alerts()
            if a["state"] in ("pending", "firing")
            for label in ("team", "provider", "model", "operation")
        }

    observed.prom.wait_for(f"the alerts {sorted(wanted)}", lambda: wanted <= active())
    names = {name for name, _, _ in active()}
    # fal is down for every model here, but the GPU workers still serve full and fast.
    assert "ModelHasNoUsableRoute" not in names
    assert "GatewayDown" not in names and "GatewayRedisUnreachable" not in names
