"""A job the GPU adapter abandons (its worker missed two /ready reads) fails as unavailable, a
retryable error the dispatcher falls back from, whatever the adapter was awaiting at that moment:
here, checking whether a worker whose pooled connection broke can still be reached. Found by
bench.routing (a worker killed, seed 4): the cancellation escaped as such and the request got a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from providers.base import ProviderUnavailableError
from providers.local_gpu import LocalGpuProvider
from providers.local_gpu.http import ExchangeBroken
from tests.contract.harness import image_request


async def test_abandoned_while_checking_that_the_worker_is_still_there() -> None:
    provider = LocalGpuProvider(["http://127.0.0.1:9"])
    checking, never = asyncio.Event(), asyncio.Event()

    async def broken(*_: Any, **__: Any) -> None:
        raise ExchangeBroken("connection closed", reused=True)

    async def can_connect(_: object) -> bool:
        checking.set()
        await never.wait()  # a connect that takes its time
        return True

    provider._http.request = broken  # type: ignore[method-assign,assignment]
    provider._can_connect = can_connect  # type: ignore[method-assign,assignment]
    (worker,) = provider._workers
    job = asyncio.create_task(provider._post(worker, image_request("b64_json"), {}, None))  # type: ignore[arg-type]
    await checking.wait()
    provider._abandon(worker)
    with pytest.raises(ProviderUnavailableError, match="abandoned") as failed:
        await job
    assert failed.value.retryable
    await provider.aclose()
