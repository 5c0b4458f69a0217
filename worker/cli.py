"""`gateway-worker`: run one HiDream worker (one variant, one device) under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway-worker",
        description="Serve one HiDream-I1 variant over the OpenAI images API. Options override WORKER_* settings.",
    )
    p.add_argument("--tiny", action="store_true", default=None, help="random-weight tiny pipeline (CPU, no weights)")
    p.add_argument("--variant", choices=["full", "dev", "fast"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--weights-dir", type=Path, help="local HiDream-I1 snapshot (see worker/loading.py)")
    p.add_argument("--llama-dir", type=Path, help="local Llama-3.1-8B-Instruct (default: next to the weights)")
    p.add_argument("--max-queue", type=int, help="waiting jobs beyond the running one before 429")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}

    from worker.settings import WorkerSettings

    try:
        settings = WorkerSettings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"gateway-worker: {where}: {err['msg']}", file=sys.stderr)
        return 2
    if not settings.tiny and settings.weights_dir is None:
        print("gateway-worker: --weights-dir (WORKER_WEIGHTS_DIR) is required unless --tiny", file=sys.stderr)
        return 2

    import uvicorn

    _log_to_stderr(settings.log_level)

    from worker.app import create_app
    from worker.loading import load_pipeline

    uvicorn.run(
        create_app(settings, load_pipeline),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    return 0


def _log_to_stderr(level: str) -> None:
    """uvicorn configures only its own loggers; job and start-up lines come from "worker"."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("worker")
    logger.addHandler(handler)
    logger.setLevel(level.upper())


if __name__ == "__main__":
    raise SystemExit(main())
