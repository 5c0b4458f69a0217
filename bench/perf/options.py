"""Command-line options every bench.perf scenario shares, and the plan they make."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from bench.perf.pricing import ROOT

WORKROOT = Path("/tmp/perfbench")


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    duration_s: int  # per measured run
    warmup_s: int  # per target, c=8, discarded
    workers: tuple[int, ...]  # our gateway's worker counts (and LiteLLM's)
    peers: tuple[str, ...]  # () or ("litellm",)
    workdir: Path  # logs, Redis dir, gateway data, LiteLLM configs
    out_dir: Path  # JSON results
    quick: bool
    gateway_env: tuple[tuple[str, str], ...] = ()  # settings for every gateway (--env NAME=VALUE)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (order reversed in even ones)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of c=8 per target before round 1")
    parser.add_argument("--workers", default=None, help="gateway worker processes, comma-separated (default 1,2)")
    parser.add_argument("--peers", choices=("litellm", "none"), default="litellm")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of 3 s runs, 1 worker")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default: a new folder under {WORKROOT}")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for our gateways (repeatable), e.g. GATEWAY_HEAP_TRIM_S=0")  # fmt: skip


def plan_from(args: argparse.Namespace, scenario: str) -> Plan:
    quick = bool(args.quick)
    spec = args.workers or ("1" if quick else "1,2")
    workers = tuple(int(w) for w in spec.split(",") if w.strip())
    if not workers or min(workers) < 1:
        raise SystemExit("--workers needs positive integers, e.g. 1,2")
    workdir = args.workdir or WORKROOT / f"{scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    return Plan(
        rounds=1 if quick else args.rounds,
        duration_s=min(args.duration, 3) if quick else args.duration,
        warmup_s=min(args.warmup, 2) if quick else args.warmup,
        workers=workers,
        peers=() if args.peers == "none" else (args.peers,),
        workdir=workdir,
        out_dir=args.out,
        quick=quick,
        gateway_env=tuple((k, v) for k, _, v in (pair.partition("=") for pair in args.env)),
    )
