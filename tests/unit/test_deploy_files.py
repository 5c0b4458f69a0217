"""The deployment files agree with each other and with the code: the compose file's services,
volumes, profiles and mounts; Prometheus' discovery names against the compose services; the
Grafana provisioning against the compose mounts; and every metric the dashboards and alerts use
is one the gateway or the worker exports. (No Docker engine here: the compose file is parsed.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.accounting.billing_metrics import BillingMetrics
from gateway.metrics import Metrics
from gateway.redis.client import connect
from gateway.settings import Settings
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
ALERTS = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
DASHBOARDS = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))}
# ${NAME}, ${NAME:-default}, ${NAME:?message}; not $${NAME}, which compose leaves to the container's shell
INTERPOLATED = re.compile(r"(?<!\$)\$\{(\w+)(?::?[-?][^}]*)?\}")


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts, for those from the repo."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out.append((source, target))
    return out


def _mount_target(service: str, repo_path: str) -> str:
    return dict(_bind_mounts(SERVICES[service]))[repo_path]


def test_the_stack_has_its_services_and_only_the_gpu_worker_is_optional() -> None:
    assert set(SERVICES) == {"redis", "minio", "minio-init", "gateway", "prometheus", "grafana", "gpu-worker"}
    assert {name for name, s in SERVICES.items() if "profiles" in s} == {"gpu-worker"}
    assert SERVICES["gpu-worker"]["profiles"] == ["gpu"]


def test_redis_is_append_only_on_a_named_volume_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "redis-data:/data" in redis["volumes"]
    assert SERVICES["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_gateway_runs_several_workers_and_takes_its_redis_url_from_env() -> None:
    gateway = SERVICES["gateway"]
    command = gateway["command"]
    assert command[:2] == ["gateway", "serve"]
    workers = command[command.index("--workers") + 1]
    assert re.fullmatch(r"\$\{GATEWAY_WORKERS:-(\d+)\}", workers) and int(workers.split("-")[1][:-1]) > 1
    assert gateway["environment"]["GATEWAY_REDIS_URL"].startswith("${GATEWAY_REDIS_URL:-redis://redis:6379")
    assert gateway["env_file"] == ".env"


def test_the_gateway_keeps_its_images_in_the_bucket_minio_init_makes() -> None:
    gateway, init, minio = SERVICES["gateway"], SERVICES["minio-init"], SERVICES["minio"]
    env = gateway["environment"]
    bucket = init["environment"]["BUCKET"]
    assert bucket.startswith("${MINIO_BUCKET:-")
    assert env["GATEWAY_IMAGE_STORE"] == "${GATEWAY_IMAGE_STORE:-s3://" + bucket.split(":-")[1].rstrip("}") + "/gw}"
    assert env["GATEWAY_S3_ENDPOINT_URL"] == "${GATEWAY_S3_ENDPOINT_URL:-http://minio:9000}"
    assert {"image_store", "s3_endpoint_url", "s3_region"} <= set(Settings.model_fields)
    # The gateway starts once the bucket exists, with the user minio-init made for it.
    assert gateway["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = init["command"][0]
    assert 'mc mb --ignore-existing "local/$$BUCKET"' in script
    assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_GATEWAY_ACCESS_KEY:?")
    assert init["environment"]["GATEWAY_ACCESS_KEY"] == env["AWS_ACCESS_KEY_ID"]
    assert init["environment"]["GATEWAY_SECRET_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert 'mc admin user add local "$$GATEWAY_ACCESS_KEY" "$$GATEWAY_SECRET_KEY"' in script
    assert "minio-data:/data" in minio["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in minio["ports"])  # reachable from this machine only


def test_the_buckets_expiry_rule_covers_the_images_and_never_the_ledger_archive() -> None:
    init = SERVICES["minio-init"]
    script = init["command"][0]
    assert init["environment"]["IMAGE_STORE"] == SERVICES["gateway"]["environment"]["GATEWAY_IMAGE_STORE"]
    rules = [line.strip() for line in script.splitlines() if "mc ilm rule add" in line]
    assert rules == ['mc ilm rule add --prefix "$${PREFIX}images/" --expire-days 2 "local/$$BUCKET"']
    # What the container's shell makes of the prefix, for the default store and others.
    case = next(line.strip() for line in script.splitlines() if line.strip().startswith("case "))
    stores = {"s3://gateway-images/gw": "gw/images/", "s3://b/a/b": "a/b/images/", "s3://b": "images/"}
    for store, prefix in stores.items():
        shell = case.replace("$$", "$") + '\nprintf %s "${PREFIX}images/"'
        out = subprocess.run(["sh", "-c", shell], env={"IMAGE_STORE": store}, capture_output=True, text=True)
        assert out.stdout == prefix, (store, out.stdout)


def test_the_gpu_worker_reserves_a_gpu() -> None:
    devices = SERVICES["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_every_named_volume_is_declared_and_every_declared_one_used() -> None:
    used = {
        v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(("./", "/", "$"))
    }
    named = {"redis-data", "minio-data", "gateway-data", "prometheus-data", "grafana-data"}
    assert used == set(COMPOSE["volumes"]) == named


def test_every_file_mounted_from_the_repo_exists() -> None:
    mounts = [(name, src) for name, s in SERVICES.items() for src, _ in _bind_mounts(s)]
    assert len(mounts) >= 4
    for service, source in mounts:
        assert (ROOT / source).exists(), f"{service} mounts {source}, which is not in the repo"
    for service in SERVICES.values():
        build = service.get("build")
        if isinstance(build, dict) and "dockerfile" in build:
            assert (ROOT / build.get("context", ".") / build["dockerfile"]).is_file()
    assert (ROOT / "Dockerfile").is_file()


def test_no_secret_is_written_in_the_compose_file_and_every_variable_is_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.M))
    for variable in INTERPOLATED.findall(text):
        assert variable in documented, f"${{{variable}}} is used in docker-compose.yml but not in .env.example"
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M), "the example must not suggest a password"
    assert re.search(r"^GATEWAY_FAL_KEY=$", example, re.M)
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"KEY|PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the compose file"


def test_prometheus_finds_the_compose_services_on_their_ports_and_loads_the_mounted_rules() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    for job, service, port in (("gateway", "gateway", 8000), ("gpu-worker", "gpu-worker", 9000)):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port
        assert str(port) in " ".join(SERVICES[service]["command"])
    config_dir = Path(_mount_target("prometheus", "./deploy/prometheus/prometheus.yml")).parent
    for rule_file in PROMETHEUS["rule_files"]:
        in_container = config_dir / rule_file
        assert in_container.as_posix() in {t for _, t in _bind_mounts(SERVICES["prometheus"])}
    alert_jobs = set(re.findall(r'job="([^"]+)"', (ROOT / "deploy/prometheus/alerts.yml").read_text()))
    assert alert_jobs <= set(jobs)


def test_prometheus_scrapes_the_gateway_with_the_metrics_token_compose_hands_both() -> None:
    """One value in .env: the gateway reads it as GATEWAY_METRICS_TOKEN, Prometheus as a secret file."""
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    auth = jobs["gateway"]["authorization"]
    assert auth["type"] == "Bearer" and "credentials" not in auth  # no token written in the repo
    secret = Path(auth["credentials_file"])
    assert secret.parent == Path("/run/secrets") and secret.name in SERVICES["prometheus"]["secrets"]
    assert COMPOSE["secrets"][secret.name] == {"environment": "GATEWAY_METRICS_TOKEN"}
    assert "metrics_token" in Settings.model_fields and Settings.model_config["env_prefix"] == "GATEWAY_"
    required = SERVICES["gateway"]["environment"]["GATEWAY_METRICS_TOKEN"]
    assert required.startswith("${GATEWAY_METRICS_TOKEN:?"), "compose must refuse to start without it"
    assert re.search(r"^GATEWAY_METRICS_TOKEN=$", (ROOT / ".env.example").read_text(), re.M)
    # The worker's /metrics (queue depth, timings) carries no team's data and takes no token.
    assert "authorization" not in jobs["gpu-worker"]


def test_grafana_is_provisioned_from_the_mounted_folders() -> None:
    provisioning = _mount_target("grafana", "./deploy/grafana/provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/image-gateway.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == _mount_target("grafana", "./deploy/grafana/dashboards")
    for name, dash in DASHBOARDS.items():
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == datasource["uid"], f"{name}: {panel['title']}"
        for variable in dash["templating"]["list"]:
            assert variable["datasource"]["uid"] == datasource["uid"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_panels_are_well_formed(name: str) -> None:
    dash = DASHBOARDS[name]
    assert dash["uid"] and dash["title"].startswith("Image gateway / ")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{name}: {panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"])
    assert len({d["uid"] for d in DASHBOARDS.values()}) == len(DASHBOARDS)


def _exported_metric_names() -> set[str]:
    """Every sample name the gateway (with its budget gauges) and the worker can export."""
    metrics = Metrics()
    BillingMetrics(connect("redis://127.0.0.1:1/0"), metrics)  # never connects: nothing is awaited
    worker = WorkerMetrics(lambda: 0.0, lambda: 0.0, lambda: 0.0)
    names = {"up"}
    registry: CollectorRegistry
    for registry in (metrics.registry, worker.registry):
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


def test_every_metric_in_the_dashboards_and_alerts_is_exported() -> None:
    exported = _exported_metric_names()
    exprs = [t["expr"] for d in DASHBOARDS.values() for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for d in DASHBOARDS.values() for v in d["templating"]["list"]]
    exprs += [rule["expr"] for group in ALERTS["groups"] for rule in group["rules"]]
    for expr in exprs:
        for metric in re.findall(r"\b((?:gateway|hidream)_\w+)", expr):
            assert metric in exported, f"{metric} (in {expr}) is not exported"
