"""Contract case for the local GPU adapter: the real worker app (create_app) with a stand-in
pipeline on a loopback port, the adapter pointed at it. Faults use the worker's real behaviour
where it has one (see tests/fakes/worker_server.py); the counts are the worker's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from providers.base import ImageRequest, RouteTarget
from providers.local_gpu import LocalGpuProvider
from tests.contract.harness import ContractCase, Fault, image_request
from tests.fakes.worker_server import RunningWorker, running_worker

# A worker has no credentials and no account to run out of, and no fal-style COMPLETED-with-error.
FAULTS: frozenset[Fault] = frozenset({"rate_limited", "unavailable", "garbage", "hang", "rejected_input", "not_ready"})

TARGET = RouteTarget(
    provider="local_gpu", model="hidream-i1-full", upstream_model="hidream-i1-full", edit_model=None, max_n=4
)


class WorkerUpstream:
    """FakeUpstream over a RunningWorker."""

    def __init__(self, worker: RunningWorker) -> None:
        self.worker = worker

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        if fault == "unavailable":
            self.worker.pipeline.plan("fail", count)  # the pipeline raises -> a real 500
        elif fault == "hang":
            self.worker.pipeline.plan("hang", count)  # a job that never ends until interrupted
        elif fault == "rate_limited":
            self.worker.fill_queue()  # a real full queue -> a real 429 with Retry-After
            self.worker.arm("rate_limited", count)  # ...released once the 429 is on its way
        elif fault in ("garbage", "rejected_input", "not_ready"):
            self.worker.arm(fault, count)
        else:
            raise ValueError(f"a worker cannot show {fault!r}")

    def jobs_started(self) -> int:
        return self.worker.jobs_started()

    def jobs_cancelled(self) -> int:
        return self.worker.jobs_cancelled()

    def stop(self) -> None:
        self.worker.stop()


def make_request(**overrides: object) -> ImageRequest:
    return image_request("b64_json", **overrides)


@asynccontextmanager
async def make_case() -> AsyncIterator[ContractCase]:
    with running_worker("full", max_queue=2) as worker:
        provider = LocalGpuProvider([worker.url], connect_timeout_s=2.0)
        try:
            yield ContractCase(
                provider=provider,
                target=TARGET,
                edit_target=None,
                upstream=WorkerUpstream(worker),
                faults=FAULTS,
                make_request=make_request,
            )
        finally:
            await provider.aclose()
