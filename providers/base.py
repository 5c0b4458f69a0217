"""The narrow contract between the gateway core and every upstream: request/result types,
the ImageProvider protocol and the ProviderError family that adapters raise.

Adapters translate everything upstream-specific (URLs, headers, status codes, body shapes)
into these types at their boundary; the core never sees an httpx error or a fal body.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]
# An image's bytes: a bytearray where an adapter read a body into a buffer made for it (copying it
# into bytes would hold the image twice, briefly); never written to once made.
ImageBytes = bytes | bytearray
# A caller's parameter passed through to the upstream as it was sent.
JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


@dataclass(frozen=True, slots=True)
class InputImage:
    """An uploaded image, already sniffed and decoded once by the gateway."""

    data: ImageBytes  # a bytearray as an upload is read (gateway/api/edit_form.py): never changed after
    content_type: str  # image/png, image/jpeg or image/webp (from the magic bytes)
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One provider route for one public model, as pricing.yaml declares it."""

    provider: str  # registry key, equals the package name under providers/
    model: str  # public model id, e.g. "hidream-i1-full"
    upstream_model: str  # what the upstream calls it, e.g. "fal-ai/hidream-i1-full"
    edit_model: str | None  # upstream id for edits; None when the route cannot edit
    max_n: int  # most images the upstream makes in one call


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A validated request: every value is inside the model's ranges and defaults are filled."""

    request_id: str
    model: str
    prompt: str
    n: int
    width: int
    height: int
    response_format: ResponseFormat
    num_inference_steps: int
    guidance_scale: float | None  # None where the model has no guidance (dev, fast)
    negative_prompt: str | None = None
    seed: int | None = None
    images: tuple[InputImage, ...] = ()  # non-empty for edits
    mask: InputImage | None = None
    strength: float | None = None  # edits only: how far from the input image to move (0..1)
    timeout_s: float = 120.0  # time this attempt may take, already bounded by the request deadline
    # The encoding to answer in where the upstream can make it; the gateway converts what it cannot.
    output_format: OutputFormat = "png"
    # The caller's other parameters, for adapters that pass them on (see PassesThrough).
    extra: Mapping[str, JsonValue] = field(default_factory=dict)
    # Told the upstream's own handle on the request once it has one (Reattachable adapters): an
    # async job keeps it, so a process that takes the job over can wait for that request.
    on_submitted: Callable[[str], Awaitable[None]] | None = field(default=None, compare=False, repr=False)
    # Previews to report while it runs (0-3), for adapters that make them (see ReportsProgress).
    partial_images: int = 0

    @property
    def is_edit(self) -> bool:
        return bool(self.images)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One output image: bytes the gateway stores, or a URL the caller may fetch directly."""

    content_type: str
    width: int
    height: int
    data: ImageBytes | None = None
    url: str | None = None  # a provider CDN URL that may pass through to the caller
    # The provider's own base64 of `data`, when it sent one: a b64_json answer reuses it instead of
    # encoding megabytes again.
    b64: str | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    images: tuple[GeneratedImage, ...]
    seed: int | None = None
    revised_prompt: str | None = None
    upstream_request_id: str | None = None
    upstream_latency_s: float | None = None


class ErrorKind(enum.StrEnum):
    """Closed set of provider failure kinds; used as a metrics label and for routing."""

    UNAVAILABLE = "unavailable"  # connection refused/reset, 5xx, runner failures
    TIMEOUT = "timeout"  # no result within the attempt's time
    RATE_LIMITED = "rate_limited"  # upstream 429 / queue full
    NOT_READY = "not_ready"  # worker loading or warming (503)
    AUTH = "auth"  # our credentials for the upstream were refused (401/403)
    QUOTA = "quota"  # the organisation's upstream account is out of credit
    BAD_RESPONSE = "bad_response"  # a body we cannot parse or that breaks the protocol
    REJECTED_INPUT = "rejected_input"  # the upstream says the input is invalid (422)
    CONTENT_POLICY = "content_policy"  # the upstream refused the prompt/image on safety grounds
    CANCELLED = "cancelled"  # we cancelled it (client gone or deadline)


# Kinds where another route may well succeed. Input and policy rejections would fail the same way
# everywhere, so they go straight back to the caller.
RETRYABLE_KINDS = frozenset(
    {
        ErrorKind.UNAVAILABLE,
        ErrorKind.TIMEOUT,
        ErrorKind.RATE_LIMITED,
        ErrorKind.NOT_READY,
        ErrorKind.AUTH,
        ErrorKind.QUOTA,
        ErrorKind.BAD_RESPONSE,
    }
)


class ProviderError(Exception):
    """Base of everything an adapter raises. `kind` decides status, retry and metrics."""

    kind: ErrorKind = ErrorKind.UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s
        self.param = param

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


class ProviderUnavailableError(ProviderError):
    kind = ErrorKind.UNAVAILABLE


class ProviderTimeoutError(ProviderError):
    kind = ErrorKind.TIMEOUT


class ProviderRateLimitedError(ProviderError):
    kind = ErrorKind.RATE_LIMITED


class ProviderNotReadyError(ProviderError):
    kind = ErrorKind.NOT_READY


class ProviderAuthError(ProviderError):
    kind = ErrorKind.AUTH


class ProviderQuotaError(ProviderError):
    kind = ErrorKind.QUOTA


class ProviderBadResponseError(ProviderError):
    kind = ErrorKind.BAD_RESPONSE


class ProviderRejectedInputError(ProviderError):
    kind = ErrorKind.REJECTED_INPUT


class ProviderContentPolicyError(ProviderError):
    kind = ErrorKind.CONTENT_POLICY


class ProviderCancelledError(ProviderError):
    kind = ErrorKind.CANCELLED


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """What a free probe learned about a route (no image generated)."""

    healthy: bool
    detail: str = ""
    queue_depth: int | None = None
    expected_wait_s: float | None = None
    saturated: bool = False  # up, but its queue is full: a new request would be refused (429)
    # Seconds one job takes once it starts, as the upstream measures it (queue wait excluded).
    service_s: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # False: nothing is set up to serve the route (no worker runs its variant): not healthy, but no
    # fault either, and said so rather than as a failure.
    configured: bool = True

    def with_wait(self, expected_wait_s: float) -> ProviderHealth:
        """This health with another expected wait (a route's live one): what dataclasses.replace
        makes, at a third of its cost; the router asks for one per route on every request."""
        return ProviderHealth(
            self.healthy, self.detail, self.queue_depth, expected_wait_s, self.saturated, self.service_s,
            self.extra, self.configured,
        )  # fmt: skip


@runtime_checkable
class ImageProvider(Protocol):
    """One upstream. Implementations own their httpx client and close it in `aclose`.

    `generate` serves both generations and edits (`request.is_edit`); a route whose
    `edit_model` is None is never asked to edit. Cancellation of the awaiting task must
    cancel the upstream job where the upstream supports it.
    """

    name: str

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult: ...

    async def probe(self, target: RouteTarget) -> ProviderHealth: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PassesThrough(Protocol):
    """Optional: the adapter sends a request's `extra` parameters to its upstream as they are,
    except the fields it sets itself (`owned_params`), which a caller may not override. An adapter
    without it gets no `extra`, and the gateway tells the caller they were ignored."""

    owned_params: frozenset[str]


@dataclass(frozen=True, slots=True)
class Progress:
    """How a job is going, as far as the upstream says (each field None where it says nothing)."""

    queue_position: int | None = None  # jobs ahead of it; 0 once it runs
    step: int | None = None  # denoising steps done
    steps: int | None = None
    expected_s: float | None = None  # until the result, as the adapter expects it now


@dataclass(frozen=True, slots=True)
class PartialImage:
    """A preview of the images being made, one per image of the call, smaller than the result
    (the gateway scales it like a finished image)."""

    index: int  # 0-based, in the order made (OpenAI's partial_image_index)
    images: tuple[GeneratedImage, ...]
    step: int | None = None
    steps: int | None = None


ProgressEvent = Progress | PartialImage
# Called on the event loop, never blocking: the gateway queues what it gets.
ProgressSink = Callable[[ProgressEvent], None]


@runtime_checkable
class ReportsProgress(Protocol):
    """Optional: the adapter reports how a job goes while it runs (queue position, steps) and,
    where `makes_partial_images`, up to `request.partial_images` previews. The same call as
    `generate` otherwise, with the same result and errors."""

    makes_partial_images: bool

    async def generate_reporting(
        self, target: RouteTarget, request: ImageRequest, report: ProgressSink
    ) -> ImageResult: ...


@runtime_checkable
class Reattachable(Protocol):
    """Optional, for upstreams that keep a request after our call ends (fal's queue): wait for the
    request whose handle `generate` reported through `request.on_submitted`, instead of submitting
    it again. Cancellation cancels it upstream, as in `generate`."""

    async def reattach(self, target: RouteTarget, request: ImageRequest, handle: str) -> ImageResult: ...


@runtime_checkable
class QueueEstimator(Protocol):
    """Optional, for providers fronted by queues of their own (the owned GPU workers): how long a
    job sent to the route now would wait before it starts, from what the adapter already knows
    (the last load report, the jobs it sent since, and those `generate` has begun and not yet
    sent). Synchronous and without I/O: the router asks on every request, between the background
    probes. None when it cannot tell; math.inf when the route has gone down since the last probe
    (no worker reachable), which the router then treats as unhealthy until the next probe."""

    def expected_wait_now(self, target: RouteTarget) -> float | None: ...


def png_size(data: ImageBytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (always the first, at a fixed offset), without
    PIL: on the hot path PIL's open cost more than the rest of reading the answer."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def sniff_content_type(data: ImageBytes) -> str | None:
    """The image type from magic bytes (never from a filename or a declared type)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None
