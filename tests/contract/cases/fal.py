"""Contract case for the fal adapter: the fake fal queue server (tests/fakes/fal_server.py) on a
loopback port, the adapter pointed at it with short poll intervals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager

from providers.base import ImageRequest, RouteTarget
from providers.fal import FalProvider
from tests.contract.harness import ContractCase, Fault, image_request
from tests.fakes.fal_server import create_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import serve_in_thread

# fal has no worker warm-up state of ours to see (runners warm up inside its queue), and its
# out-of-credit answer is a 403 told apart from a bad key only by text: no "not_ready", no "quota".
FAULTS: frozenset[Fault] = frozenset(
    {"rate_limited", "unavailable", "auth", "garbage", "hang", "rejected_input", "completed_with_error"}
)

KEY = "fake-key-id:fake-key-secret"
TARGET = RouteTarget(
    provider="fal",
    model="hidream-i1-full",
    upstream_model="fal-ai/hidream-i1-full",
    edit_model="fal-ai/hidream-i1-full/image-to-image",
    max_n=4,
)


class FalUpstream:
    """FakeUpstream over a FakeFal served by a thread that `stop` shuts down."""

    def __init__(self, fake: FakeFal, server: ExitStack) -> None:
        self.fake = fake
        self._server = server

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        self.fake.fail_next(fault, count)

    def jobs_started(self) -> int:
        return self.fake.count("submits")

    def jobs_cancelled(self) -> int:
        return self.fake.count("cancels")

    def stop(self) -> None:
        self._server.close()


def make_request(**overrides: object) -> ImageRequest:
    return image_request("url", **overrides)


@asynccontextmanager
async def make_case() -> AsyncIterator[ContractCase]:
    fake = FakeFal(inference_s=0.05)
    with ExitStack() as server:
        base_url = server.enter_context(serve_in_thread(create_app(fake, key=KEY)))
        # Short poll intervals keep the suite fast; backoff itself is tested in test_fal_adapter.py.
        provider = FalProvider(
            KEY, queue_url=base_url, poll_initial_s=0.01, poll_factor=1.5, poll_max_s=0.05, connect_timeout_s=2.0
        )
        try:
            yield ContractCase(
                provider=provider,
                target=TARGET,
                edit_target=TARGET,
                upstream=FalUpstream(fake, server),
                faults=FAULTS,
                make_request=make_request,
            )
        finally:
            await provider.aclose()
