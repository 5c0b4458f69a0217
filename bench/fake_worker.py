"""A GPU worker of fixed capacity for benchmarks: the real worker app (worker.app.create_app) with
the stand-in pipeline, whose step time sets how long a job takes, run as its own process.

    python -m bench.fake_worker --port P [--variant full] [--step-s 0.01] [--max-queue 4]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from tests.fakes.stand_in_pipeline import StandInPipeline
from worker.app import create_app
from worker.inference import Pipeline
from worker.settings import WorkerSettings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in HiDream worker with a fixed time per step.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=["full", "dev", "fast"], default="full")
    parser.add_argument("--step-s", type=float, default=0.01, help="seconds per denoising step")
    parser.add_argument("--max-queue", type=int, default=4, help="waiting jobs beyond the running one")
    args = parser.parse_args(argv)
    settings = WorkerSettings(
        variant=args.variant,
        max_queue=args.max_queue,
        port=args.port,
        weights_dir=None,
        tiny=False,
        log_level="warning",
    )
    pipeline = StandInPipeline(step_s=args.step_s)

    def factory(_: WorkerSettings) -> Pipeline:
        return pipeline

    uvicorn.run(create_app(settings, factory), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
