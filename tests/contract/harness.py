"""What every adapter's contract case provides: the adapter, targets, and a handle on its fake
upstream that injects the upstream's real failure modes and reports what the upstream saw."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

from providers.base import ImageProvider, ImageRequest, RouteTarget

# The failure modes of the upstream, as its real protocol shows them.
Fault = Literal[
    "rate_limited",  # 429 (fal: queue limit; worker: queue full + Retry-After)
    "unavailable",  # 5xx from the upstream / runner failure
    "auth",  # our credentials refused (401/403)
    "garbage",  # a 200 whose body is not the protocol's shape
    "hang",  # never finishes
    "rejected_input",  # 422-style validation error for this input
    "not_ready",  # worker loading/warming (503)
    "quota",  # upstream account out of credit
    "completed_with_error",  # fal: COMPLETED status carrying error/error_type
]


class FakeUpstream(Protocol):
    def fail_next(self, fault: Fault, count: int = 1) -> None: ...

    def jobs_started(self) -> int:
        """Generation jobs the upstream accepted (submits / generation calls)."""
        ...

    def jobs_cancelled(self) -> int:
        """Jobs the upstream was told to cancel or saw abandoned by the client."""
        ...

    def stop(self) -> None:
        """Make the upstream unreachable (connection refused) from now on."""
        ...


@dataclass
class ContractCase:
    provider: ImageProvider
    target: RouteTarget
    edit_target: RouteTarget | None
    upstream: FakeUpstream
    faults: frozenset[Fault]
    make_request: Callable[..., ImageRequest]


CaseFactory = Callable[[], AbstractAsyncContextManager[ContractCase]]
CaseIterator = AsyncIterator[ContractCase]


def image_request(default_format: str, **overrides: object) -> ImageRequest:
    """A small generation request as the gateway hands it to an adapter; each case picks the
    response format its upstream answers natively, which `overrides` may change."""
    fields: dict[str, object] = {
        "request_id": uuid.uuid4().hex,
        "model": "hidream-i1-full",
        "prompt": "a lighthouse at dusk",
        "n": 1,
        "width": 1024,
        "height": 1024,
        "response_format": default_format,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "timeout_s": 30.0,
    }
    fields.update(overrides)
    return ImageRequest(**fields)  # type: ignore[arg-type]
