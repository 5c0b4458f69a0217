"""One contract suite, run over every adapter against its protocol-faithful fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from providers.base import (
    ErrorKind,
    ImageProvider,
    ProviderError,
    sniff_content_type,
)
from tests.contract.cases import CASES
from tests.contract.harness import ContractCase, Fault

FAULT_KINDS: dict[Fault, ErrorKind] = {
    "rate_limited": ErrorKind.RATE_LIMITED,
    "unavailable": ErrorKind.UNAVAILABLE,
    "auth": ErrorKind.AUTH,
    "garbage": ErrorKind.BAD_RESPONSE,
    "hang": ErrorKind.TIMEOUT,
    "rejected_input": ErrorKind.REJECTED_INPUT,
    "not_ready": ErrorKind.NOT_READY,
    "quota": ErrorKind.QUOTA,
    "completed_with_error": ErrorKind.UNAVAILABLE,
}

FAULT_PAIRS = [(name, fault) for name, mod in CASES.items() for fault in sorted(mod.FAULTS)]


@pytest.fixture(params=sorted(CASES))
async def case(request: pytest.FixtureRequest) -> AsyncIterator[ContractCase]:
    async with CASES[request.param].make_case() as c:
        yield c


async def test_adapter_satisfies_the_provider_protocol(case: ContractCase) -> None:
    assert isinstance(case.provider, ImageProvider)
    assert case.provider.name == case.target.provider


async def test_generates_n_images_at_the_requested_size(case: ContractCase) -> None:
    req = case.make_request(n=2, width=1360, height=768, response_format="url")
    result = await case.provider.generate(case.target, req)
    assert len(result.images) == 2
    for img in result.images:
        assert (img.width, img.height) == (1360, 768)
        assert img.data is not None or img.url is not None
    assert case.upstream.jobs_started() == 1


async def test_b64_json_yields_image_bytes(case: ContractCase) -> None:
    req = case.make_request(n=1, response_format="b64_json")
    result = await case.provider.generate(case.target, req)
    assert len(result.images) == 1
    data = result.images[0].data
    assert data is not None and sniff_content_type(data) == result.images[0].content_type


async def test_seed_is_reported_back(case: ContractCase) -> None:
    result = await case.provider.generate(case.target, case.make_request(seed=1234))
    assert result.seed == 1234


@pytest.mark.parametrize(("name", "fault"), FAULT_PAIRS)
async def test_upstream_failure_maps_to_its_error_kind(name: str, fault: Fault) -> None:
    async with CASES[name].make_case() as case:
        case.upstream.fail_next(fault)
        req = case.make_request(timeout_s=1.5 if fault == "hang" else 30.0)
        with pytest.raises(ProviderError) as info:
            await case.provider.generate(case.target, req)
        err = info.value
        assert err.kind == FAULT_KINDS[fault], f"{fault} -> {err.kind}: {err}"
        assert err.provider == name
        assert err.retryable == (fault not in ("rejected_input",))
        if fault == "rate_limited":
            assert err.retry_after_s is not None and err.retry_after_s > 0
        if fault == "rejected_input":
            assert err.param is not None
        # the adapter recovers: the next call succeeds
        ok = await case.provider.generate(case.target, case.make_request())
        assert len(ok.images) == 1


async def test_unreachable_upstream_is_unavailable_and_probe_says_unhealthy(case: ContractCase) -> None:
    assert (await case.provider.probe(case.target)).healthy
    case.upstream.stop()
    with pytest.raises(ProviderError) as info:
        await case.provider.generate(case.target, case.make_request())
    assert info.value.kind == ErrorKind.UNAVAILABLE
    assert not (await case.provider.probe(case.target)).healthy


async def test_cancelling_the_call_cancels_the_upstream_job(case: ContractCase) -> None:
    case.upstream.fail_next("hang")
    task = asyncio.create_task(case.provider.generate(case.target, case.make_request(timeout_s=30.0)))
    for _ in range(200):
        if case.upstream.jobs_started() >= 1:
            break
        await asyncio.sleep(0.01)
    assert case.upstream.jobs_started() == 1
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        if case.upstream.jobs_cancelled() >= 1:
            break
        await asyncio.sleep(0.01)
    assert case.upstream.jobs_cancelled() == 1
