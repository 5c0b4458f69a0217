"""The `gateway` command: `serve` runs the gateway (starting the embedded Redis and, on request,
a tiny CPU worker); `teams` and `keys` call the admin API."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.catalog import CatalogError, load_catalog
from gateway.heap import arenas_to_limit, limit_arenas
from gateway.ports import LoopbackPorts
from gateway.redis.embedded import EmbeddedRedis, EmbeddedRedisError
from gateway.settings import Settings


def _private_file(path: Path, make: str | None = None) -> str | None:
    if path.exists():
        return path.read_text().strip()
    if make is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make


def _start_tiny_worker(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = LoopbackPorts().take()
    log = open(data_dir / "tiny-worker.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "--tiny", "--variant", "full", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the tiny worker exited; see {data_dir / 'tiny-worker.log'}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the tiny worker did not become ready in 180 s")


async def _bootstrap_team(redis_url: str, data_dir: Path, settings: Settings) -> str | None:
    """On a fresh install, create a 'default' team and a first key, kept in a private file."""
    from gateway.accounting.keys import KeyStore, TeamLimits
    from gateway.redis.client import connect

    key_file = data_dir / "first-team-key"
    existing = _private_file(key_file)
    if existing:
        return existing
    redis = connect(redis_url)
    try:
        store = KeyStore(redis)
        if await store.list_teams():
            return None
        limits = TeamLimits(
            settings.default_requests_per_minute, settings.default_images_per_minute, settings.default_max_in_flight
        )
        team = await store.create_team("default", settings.default_monthly_budget_usd, limits)
        _, plain = await store.create_key(team.id, "first key")
        return _private_file(key_file, plain)
    finally:
        await redis.aclose()


def _raise_open_files_limit() -> None:
    """Thousands of generations in flight hold two sockets each (caller and upstream): lift the
    soft limit on open files to the hard one (often 1024 -> 1048576)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.api.server import HttpLimits, http_protocol
    from gateway.api.supervisor import serve

    settings = Settings()
    arenas = arenas_to_limit(settings.malloc_keep_free_bytes, settings.malloc_arena_max)
    if arenas:  # before this process starts a thread (with one worker, it is the server)
        limit_arenas(arenas)
    try:
        load_catalog(settings.pricing_file)
    except CatalogError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    _raise_open_files_limit()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GATEWAY_DATA_DIR"] = str(data_dir)
    host_for_url = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    os.environ.setdefault("GATEWAY_PUBLIC_URL", f"http://{host_for_url}:{args.port}")
    if not settings.admin_key:
        os.environ["GATEWAY_ADMIN_KEY"] = (
            _private_file(data_dir / "admin-key", "adm-" + secrets.token_urlsafe(24)) or ""
        )
    if not settings.metrics_token:
        os.environ["GATEWAY_METRICS_TOKEN"] = (
            _private_file(data_dir / "metrics-token", "met-" + secrets.token_urlsafe(24)) or ""
        )
    if args.workers > 1 and settings.prometheus_multiproc_dir is None:
        # Counters summed across worker processes; the folder must start empty on every boot.
        metrics_dir = data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    embedded: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis(data_dir)
            embedded.start()
            os.environ["GATEWAY_REDIS_URL"] = embedded.url
        if args.tiny_worker:
            print("starting a tiny HiDream worker on the CPU (first start builds the pipeline)...", flush=True)
            worker, worker_url = _start_tiny_worker(data_dir)
            urls = [*settings.local_gpu_urls, worker_url]
            os.environ["GATEWAY_LOCAL_GPU_URLS"] = ",".join(urls)
        key = asyncio.run(_bootstrap_team(os.environ["GATEWAY_REDIS_URL"], data_dir, settings))
        base = os.environ["GATEWAY_PUBLIC_URL"]
        print(f"\n  playground: {base}/   (open it in a browser; sign in with the team key)", flush=True)
        print(f"  gateway:    {base}/v1   (OpenAI base_url)", flush=True)
        if key:
            print(f"  team key:   {key}   (team 'default'; kept in {data_dir / 'first-team-key'})")
        if not settings.admin_key:
            print(f"  admin key:  in {data_dir / 'admin-key'}")
        if not settings.metrics_token:
            print(f"  metrics:    {base}/metrics with the Bearer token in {data_dir / 'metrics-token'}")
        print(f"  try:        curl {base}/v1/models -H 'Authorization: Bearer <team key>'\n", flush=True)
        # uvicorn re-raises SIGTERM after its graceful shutdown; without a Python handler that would
        # kill this process before the finally below stops the tiny worker and the embedded Redis.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        http = http_protocol(HttpLimits.from_settings(settings))
        if arenas:
            # Read by glibc as each worker process starts, so that uvicorn's thread in it, which
            # allocates before the app is built (and calls limit_arenas), takes no arena either.
            os.environ["MALLOC_ARENA_MAX"] = str(arenas)
        serve(
            "gateway.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
            log_level=settings.log_level, access_log=False, loop="uvloop", http=http,
            ws="none", backlog=args.backlog,
            # A worker that does not answer uvicorn's ping within this is killed and replaced. Its
            # first answer comes once the spawned child has imported the gateway: at the default
            # 5 s, on a loaded 2-core machine every child was replaced before it ever answered.
            timeout_worker_healthcheck=30,
        )  # fmt: skip
    except EmbeddedRedisError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    finally:
        # The worker and Redis stop side by side: the worker may take a while to let go of a job.
        if worker is not None:
            worker.terminate()
        if embedded is not None:
            embedded.stop()
        if worker is not None:
            worker.wait(timeout=30)
    return 0


# --- admin commands (over the admin API, so they work against any replica) -------------------


def _admin_client(args: argparse.Namespace) -> httpx.Client:
    settings = Settings()
    key = args.admin_key or settings.admin_key or _private_file(settings.data_dir / "admin-key")
    if not key:
        raise SystemExit("no admin key: pass --admin-key or set GATEWAY_ADMIN_KEY")
    url = args.url or settings.public_url
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    with _admin_client(args) as client:
        resp = client.request(method, path, json=body)
    data = resp.json()
    if resp.status_code >= 400:
        raise SystemExit(f"error {resp.status_code}: {data.get('error', {}).get('message', data)}")
    return data


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_teams(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = _call(args, "GET", "/admin/teams")["data"]
        print(f"{'id':<22} {'name':<20} {'state':<8} {'budget_usd':>10} {'rpm':>6} {'ipm':>6} {'in_flight':>9}")
        for t in rows:
            lim = t["limits"]
            state = "disabled" if t["disabled"] else "active"
            print(
                f"{t['id']:<22} {t['name']:<20} {state:<8} {t['monthly_budget_usd']:>10.2f} "
                f"{lim['requests_per_minute']:>6} {lim['images_per_minute']:>6} {lim['max_in_flight']:>9}"
            )
        return 0
    if args.action in ("disable", "enable"):
        _print(_call(args, "PATCH", f"/admin/teams/{args.team_id}", {"disabled": args.action == "disable"}))
        return 0
    limits = {
        k: v
        for k, v in {
            "requests_per_minute": args.rpm, "images_per_minute": args.ipm, "max_in_flight": args.max_in_flight,
        }.items()
        if v is not None
    }  # fmt: skip
    body: dict[str, Any] = {"limits": limits} if limits else {}
    if args.budget is not None:
        body["monthly_budget_usd"] = args.budget
    if args.action == "create":
        _print(_call(args, "POST", "/admin/teams", {"name": args.name, **body}))
    else:
        if args.name:
            body["name"] = args.name
        _print(_call(args, "PATCH", f"/admin/teams/{args.team_id}", body))
    return 0


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "create":
        data = _call(args, "POST", f"/admin/teams/{args.team_id}/keys", {"name": args.name or ""})
        print(f"key id: {data['id']}\nkey:    {data['key']}   (shown once; store it now)")
    elif args.action == "list":
        for k in _call(args, "GET", f"/admin/teams/{args.team_id}/keys")["data"]:
            used = "never used" if k["last_used"] is None else "last used " + _utc(k["last_used"])
            print(f"{k['id']:<22} {k['prefix']}...  {used:<32} {k['name']}")
    else:
        _print(_call(args, "DELETE", f"/admin/keys/{args.key_id}"))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    params = {"month": args.month} if args.month else {}
    if args.team_id:
        params["team_id"] = args.team_id
    with _admin_client(args) as client:
        resp = client.get("/admin/usage", params={**params, "format": "csv" if args.csv else "json"})
    if resp.status_code >= 400:
        raise SystemExit(f"error {resp.status_code}: {resp.json()['error']['message']}")
    if args.csv:
        print(resp.text, end="")
        return 0
    report = resp.json()
    print(f"usage for {report['month']}")
    print(f"{'team':<22} {'name':<16} {'requests':>8} {'failed':>6} {'images':>7} {'spent_usd':>10} {'budget_usd':>10}")
    for t in report["teams"]:
        print(
            f"{t['team_id']:<22} {t['team_name']:<16} {t['requests']:>8} {t['failed_requests']:>6} "
            f"{t['images']:>7} {t['spent_usd']:>10.2f} {t['budget_usd']:>10.2f}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible image-generation gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--backlog", type=int, default=8192, help="pending connections the listening socket holds (bursts)"
    )
    serve.add_argument("--tiny-worker", action="store_true", help="also start a tiny HiDream worker on the CPU")
    serve.set_defaults(func=cmd_serve)

    def admin_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="gateway base URL (default GATEWAY_PUBLIC_URL)")
        p.add_argument("--admin-key", help="admin key (default GATEWAY_ADMIN_KEY or the data dir's admin-key)")

    teams = sub.add_parser("teams", help="manage teams").add_subparsers(dest="action", required=True)
    t_list = teams.add_parser("list")
    t_create = teams.add_parser("create")
    t_create.add_argument("name")
    t_update = teams.add_parser("update")
    t_update.add_argument("team_id")
    t_update.add_argument("--name")
    for p in (t_create, t_update):
        p.add_argument("--budget", type=float, help="monthly budget in USD")
        p.add_argument("--rpm", type=int, help="requests per minute")
        p.add_argument("--ipm", type=int, help="images per minute")
        p.add_argument("--max-in-flight", type=int)
    # disable: every request of the team's keys is refused (403 team_disabled) until enabled
    t_toggles = [teams.add_parser(action) for action in ("disable", "enable")]
    for p in t_toggles:
        p.add_argument("team_id")
    for p in (t_list, t_create, t_update, *t_toggles):
        admin_opts(p)
        p.set_defaults(func=cmd_teams)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    k_create = keys.add_parser("create")
    k_create.add_argument("team_id")
    k_create.add_argument("--name")
    k_list = keys.add_parser("list")
    k_list.add_argument("team_id")
    k_revoke = keys.add_parser("revoke")
    k_revoke.add_argument("key_id")
    for p in (k_create, k_list, k_revoke):
        admin_opts(p)
        p.set_defaults(func=cmd_keys)

    usage = sub.add_parser("usage", help="a month's usage and spend per team (from the ledger)")
    usage.add_argument("--team-id")
    usage.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    usage.add_argument("--csv", action="store_true", help="the month's invoice lines as CSV")
    admin_opts(usage)
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
