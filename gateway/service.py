"""The request pipeline, as plain code: admit, decode uploads, route, call with fallbacks, store, settle.

Every admitted request is settled exactly once (success, failure, timeout or a caller that went
away), and a failed request is charged nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pybase64

from gateway.accounting.keys import Principal
from gateway.accounting.metering import Admission, Idempotency, Meter, Replay, Settlement, StillRunning
from gateway.catalog import micros_to_usd
from gateway.errors import (
    ConflictError,
    GatewayError,
    GoneError,
    StorageFullError,
    UpstreamTimeoutError,
)
from gateway.images.convert import render
from gateway.images.copy import UpstreamImageCopier
from gateway.images.decoding import UploadDecoder
from gateway.images.encoded import Base64Of
from gateway.images.parameters import MIME
from gateway.images.store import ImageStorage, give_back
from gateway.images.validation import ValidRequest
from gateway.metrics import Metrics
from gateway.quote import dry_run
from gateway.routing.dispatch import Attempted, Dispatcher, OnSubmitted, RoutingRequest
from providers.base import (
    GeneratedImage,
    ProgressEvent,
    ProviderError,
)

log = logging.getLogger(__name__)


class Delivery:
    """Settles a served request exactly once, after its answer was handed to the caller's
    connection: delivered, it is charged; the caller gone first, it is settled as cancelled and
    charged nothing. Never called (the process died), the reservation expires uncharged. `None`:
    the request was handed to another process (a job taken over), which settles it."""

    def __init__(self, settle: Callable[[bool | None], Awaitable[None]], outcome: Settlement | None = None) -> None:
        self._settle = settle
        self.done = False
        self.outcome = outcome  # what a delivered answer is settled as (a job keeps it, to settle it after a crash)

    async def __call__(self, delivered: bool | None) -> None:
        if self.done:
            return
        self.done = True
        await self._settle(delivered)


@dataclass(frozen=True, slots=True)
class ImagesResponse:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delivery: Delivery | None = None  # None: nothing left to settle (a replay)
    kept: tuple[str | None, ...] = ()  # each image's name in the store, where it was kept


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request admitted and not yet served (ImageService.serve settles it)."""

    principal: Principal
    valid: ValidRequest
    admission: Admission
    routing: RoutingRequest
    keep: bool = False  # keep every image in the store, b64_json ones too (a job answers them later)
    # An async job's: the upstream request to re-attach to (provider, handle) before submitting
    # anew, and where to report the handle of a new one.
    upstream: tuple[str, str] | None = None
    on_submitted: OnSubmitted | None = None
    # A job's: whether this process still holds it. One another process took over (this one's lease
    # lapsed) is not settled here: that process serves it under the same reservation.
    still_ours: Callable[[], Awaitable[bool]] | None = None

    def headers(self) -> dict[str, str]:
        """What is known of the answer before it is served (a stream's headers)."""
        headers = {"x-gateway-generated-size": self.valid.generated_size, **self.admission.limits.headers()}
        if self.valid.ignored:
            headers["x-gateway-ignored-params"] = ", ".join(self.valid.ignored)
        return headers


@dataclass(frozen=True, slots=True)
class PartServed:
    """Images of a streamed request made and rendered as asked, before the others are."""

    first: int  # index of its first image in the request's
    b64: tuple[str, ...]
    seed: int | None
    facts: dict[str, Any]  # what its completed events say of the gateway (provider, charge, ...)


class StreamListener(Protocol):
    """A streamed request's: its progress and each part as it is served (neither may block)."""

    def progress(self, first: int, event: ProgressEvent) -> None: ...

    def served(self, part: PartServed) -> None: ...


class _Parts:
    """The dispatcher's Listener for a stream: renders each call's images as asked when they come
    (kept, so the answer's body reuses them) and tells the stream."""

    def __init__(self, valid: ValidRequest, quote: int, outer: StreamListener) -> None:
        self._valid = valid
        self._quote = quote
        self._outer = outer
        self.rendered: dict[int, GeneratedImage] = {}  # id() of an upstream image -> as asked

    def progress(self, first: int, event: ProgressEvent) -> None:
        self._outer.progress(first, event)

    async def part_done(self, first: int, attempted: Attempted) -> None:
        b64 = []
        for img in attempted.result.images:
            done = await _as_asked(self._valid, img)
            assert done.data is not None
            if done.b64 is None:  # encoded once: the answer's body reuses it
                done = replace(done, b64=pybase64.b64encode_as_string(done.data))
            self.rendered[id(img)] = done
            b64.append(done.b64 or "")
        facts = {
            "provider": attempted.provider,
            "route_reason": attempted.reason,
            "charged_usd": f"{micros_to_usd(self._quote):.6f}",
            "ignored_params": sorted({*self._valid.ignored, *attempted.ignored}),
        }
        self._outer.served(PartServed(first, tuple(b64), attempted.result.seed, facts))


class ImageService:
    def __init__(
        self,
        dispatcher: Dispatcher,
        meter: Meter,
        store: ImageStorage,
        metrics: Metrics,
        decoder: UploadDecoder,
        *,
        deadline_s: float,
        copier: UpstreamImageCopier | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._meter = meter
        self._store = store
        self._metrics = metrics
        self._decoder = decoder
        self._deadline_s = deadline_s
        self._copier = copier  # None: an upstream's image URL passes through to the caller

    async def generate(
        self,
        principal: Principal,
        valid: ValidRequest,
        request_id: str,
        routing: RoutingRequest | None = None,
        idempotency_key: str | None = None,
    ) -> ImagesResponse:
        admitted = await self.admit(principal, valid, request_id, routing, idempotency_key)
        if isinstance(admitted, ImagesResponse):
            return admitted
        return await self.serve(admitted)

    async def admit(
        self,
        principal: Principal,
        valid: ValidRequest,
        request_id: str,
        routing: RoutingRequest | None = None,
        idempotency_key: str | None = None,
        hold_s: float | None = None,
    ) -> Admitted | ImagesResponse:
        """`generate` in two steps, for a stream, which answers the caller in between: admit
        (limits, budget, idempotency; or answer from an earlier request with the same
        Idempotency-Key), then `serve`, which must follow and settles the request. `hold_s`: how long
        the reservation holds unsettled (a job's waits in its queue too); default the deadline and a minute."""
        routing = routing or RoutingRequest(valid.model.routing)
        admitted = await self._admitted(principal, valid, request_id, routing, idempotency_key, hold_s)
        if isinstance(admitted, ImagesResponse):
            return admitted
        return Admitted(principal, valid, admitted, routing)

    async def serve(self, admitted: Admitted, listener: StreamListener | None = None) -> ImagesResponse:
        """Route, call, store and answer an admitted request; settled here if it fails, else by
        its Delivery once answered. A stream's `listener` hears its progress and each image as
        it is made (the answer then holds them all, as usual)."""
        parts = None if listener is None else _Parts(admitted.valid, admitted.admission.quote_micros, listener)
        return await self._serve(
            admitted.principal, admitted.valid, admitted.admission, admitted.routing, admitted, parts
        )

    async def _admitted(
        self,
        principal: Principal,
        valid: ValidRequest,
        request_id: str,
        routing: RoutingRequest,
        idempotency_key: str | None,
        hold_s: float | None = None,
    ) -> Admission | ImagesResponse:
        if routing.pinned is not None:
            self._dispatcher.check_pin(valid, routing.pinned)
        if (valid.response_format == "url" or idempotency_key) and not self._store.has_room():
            raise StorageFullError()  # before admission: the upstream is not paid for images we cannot keep
        idem = Idempotency(idempotency_key, fingerprint(valid)) if idempotency_key else None
        admitted = await self._admit(principal, valid, request_id, idem, hold_s)
        if isinstance(admitted, Replay):
            assert idem is not None  # only a request with an Idempotency-Key is replayed
            return await self._replayed(admitted, idem.key)
        return admitted

    async def dry_run(self, principal: Principal, valid: ValidRequest, routing: RoutingRequest) -> dict[str, Any]:
        """The quote, the route and the admission verdict, with nothing generated or charged."""
        if routing.pinned is not None:
            self._dispatcher.check_pin(valid, routing.pinned)
        return await dry_run(self._meter, self._dispatcher, principal, valid, routing)

    async def _admit(
        self,
        principal: Principal,
        valid: ValidRequest,
        request_id: str,
        idem: Idempotency | None,
        hold_s: float | None = None,
    ) -> Admission | Replay:
        """Admit, or find the earlier request with the same Idempotency-Key and wait for it."""
        quote = valid.model.price_micros(valid.size, valid.n)
        give_up = time.monotonic() + self._deadline_s
        while True:
            # Shielded: a caller that goes away while Redis admits it would otherwise leave the
            # reservation (budget and an in-flight slot) held until it expires, minutes later.
            # (create_task: what ensure_future does for a coroutine, less its checks, on every request)
            admitting = asyncio.get_running_loop().create_task(
                self._meter.admit(
                    principal.team_id,
                    request_id,
                    valid.n,
                    quote,
                    hold_s=hold_s if hold_s is not None else self._deadline_s + 60,
                    idempotency=idem,
                )
            )
            try:
                got = await asyncio.shield(admitting)
            except asyncio.CancelledError:
                await self._release(admitting, principal, valid)
                raise
            except GatewayError as exc:
                self._metrics.rejections.labels(principal.team_id, exc.kind).inc()
                raise
            if not isinstance(got, StillRunning):
                return got
            if time.monotonic() > give_up:
                raise ConflictError(
                    "A request with this Idempotency-Key is still running; retry shortly.",
                    param="Idempotency-Key",
                    headers={"retry-after": "1"},
                )
            await asyncio.sleep(0.2)

    async def _release(
        self, admitting: asyncio.Future[Admission | Replay | StillRunning], principal: Principal, valid: ValidRequest
    ) -> None:
        """Settle, charged nothing, a request admitted for a caller that has gone meanwhile."""
        await asyncio.wait((admitting,))  # unlike `await`, a second cancel here leaves the admission be
        if admitting.cancelled() or admitting.exception() is not None:
            return  # refused (or Redis failed): nothing was reserved
        got = admitting.result()
        if isinstance(got, Admission):
            gone = Settlement("cancelled", 0, 0, 0, valid.model.id, _fields(principal, valid, None, 0.0, "cancelled"))
            await self._settle(got, gone, principal, "cancelled", 0.0)

    async def _serve(
        self,
        principal: Principal,
        valid: ValidRequest,
        admission: Admission,
        routing: RoutingRequest,
        job: Admitted | None = None,
        parts: _Parts | None = None,
    ) -> ImagesResponse:
        spec = valid.model
        quote = admission.quote_micros
        request_id = admission.request_id
        started = time.monotonic()
        upstream_s = 0.0
        in_flight = self._metrics.in_flight.labels(spec.id)
        in_flight.inc()
        outcome: Settlement | None = None  # None until known: an unexpected error's, made if it comes
        status = "failed"
        handed_over = False
        try:
            if valid.images:
                # Only now, admitted: an edit refused by its limits or budget decodes nothing, and
                # a truncated or corrupt upload fails here and is settled, charged nothing.
                await self._decoder.check(valid)
            attempt = await self._call(valid, request_id, started + self._deadline_s, routing, principal, job, parts)
            upstream_s = attempt.upstream_s
            images = attempt.result.images
            if parts is not None:  # each rendered as asked when it came
                images = tuple(parts.rendered[id(img)] for img in images)
            keep = (job is not None and job.keep) or admission.idempotency is not None
            data, kept = await self._render(valid, images, keep=keep, as_asked=parts is not None)
            latency = time.monotonic() - started
            headers = {
                "x-gateway-provider": attempt.provider,
                "x-gateway-route-reason": attempt.reason,
                "x-gateway-charged-usd": f"{micros_to_usd(quote):.6f}",
                "x-gateway-generated-size": valid.generated_size,
            }
            ignored = sorted({*valid.ignored, *attempt.ignored})
            if ignored:
                headers["x-gateway-ignored-params"] = ", ".join(ignored)
            body: dict[str, Any] = {
                "created": int(time.time()),
                "data": data,
                # As newer OpenAI responses echo them (values inside OpenAI's enums).
                "output_format": valid.output_format,
                "size": valid.size,
                "quality": spec.quality,
                "background": "opaque",
            }
            if attempt.result.seed is not None:
                body["seed"] = attempt.result.seed
            replay = ""
            if admission.idempotency is not None:
                # With the names of the images kept here, so that a replay can sign their URLs anew,
                # and without base64: Redis (noeviction) holds a reference, never the megabytes.
                kept_body = {**body, "data": [{k: v for k, v in d.items() if k != "b64_json"} for d in data]}
                record = {"body": kept_body, "headers": headers, "request_id": request_id, "images": kept}
                replay = json.dumps({**record, "b64": valid.response_format == "b64_json"})
            outcome = Settlement(
                "succeeded",
                valid.n,
                quote,
                attempt.cost_micros,
                spec.id,
                _fields(principal, valid, attempt.provider, latency, ""),
                replay,
            )
            status = "succeeded"
            served = outcome
            elapsed = time.monotonic() - started

            async def settle(delivered: bool | None) -> None:
                in_flight.dec()
                if delivered is None:  # handed to another process, which settles it
                    return
                if delivered:
                    await self._settle(admission, served, principal, "succeeded", elapsed)
                    self._metrics.overhead.labels(spec.id).observe(max(0.0, elapsed - upstream_s))
                else:
                    gone = Settlement("cancelled", 0, 0, 0, spec.id, _fields(principal, valid, None, elapsed, "gone"))
                    await self._settle(admission, gone, principal, "cancelled", elapsed)

            handed_over = True
            return ImagesResponse(
                body, {**headers, **admission.limits.headers()}, Delivery(settle, served), tuple(kept)
            )
        except asyncio.CancelledError:
            status = "cancelled"
            outcome = Settlement(
                "cancelled", 0, 0, 0, spec.id, _fields(principal, valid, None, time.monotonic() - started, "cancelled")
            )
            raise
        except GatewayError as exc:
            status = "timeout" if isinstance(exc, UpstreamTimeoutError) else "failed"
            outcome = Settlement(
                status, 0, 0, 0, spec.id, _fields(principal, valid, None, time.monotonic() - started, exc.kind)
            )
            raise
        finally:
            if not handed_over:  # a served request is settled by its Delivery, once answered
                in_flight.dec()
                if outcome is None:
                    took = time.monotonic() - started
                    outcome = Settlement("failed", 0, 0, 0, spec.id, _fields(principal, valid, None, took, "internal"))
                if job is None or job.still_ours is None or await job.still_ours():
                    await self._settle(admission, outcome, principal, status, time.monotonic() - started)

    async def _call(
        self,
        valid: ValidRequest,
        request_id: str,
        deadline: float,
        routing: RoutingRequest,
        principal: Principal,
        job: Admitted | None,
        listener: _Parts | None = None,
    ) -> Attempted:
        """The dispatcher's call; for a job taken over from a process that died, first the
        upstream request that process had submitted, where its provider can re-attach to it."""
        if job is not None and job.upstream is not None:
            try:
                found = await self._dispatcher.reattach(valid, request_id, deadline, *job.upstream)
            except ProviderError as exc:  # lost upstream (cancelled, expired): submitted anew
                log.info("re-attaching %s to %s failed (%s); submitting anew", request_id, job.upstream[0], exc.kind)
                found = None
            if found is not None:
                return found
        on_submitted = job.on_submitted if job is not None else None
        return await self._dispatcher.call(
            valid, request_id, deadline, routing, team_id=principal.team_id, on_submitted=on_submitted,
            listener=listener,
        )  # fmt: skip

    async def _settle(
        self, admission: Admission, outcome: Settlement, principal: Principal, status: str, elapsed: float
    ) -> None:
        # Shielded: a caller that went away must not stop its request from being settled.
        task = asyncio.get_running_loop().create_task(self._meter.settle(admission, outcome))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        provider = dict(outcome.fields).get("provider", "") or "none"
        m = self._metrics
        m.requests.labels(principal.team_id, outcome.model, provider, status).inc()
        m.duration.labels(outcome.model, status).observe(elapsed)
        if status == "succeeded":
            m.images.labels(principal.team_id, outcome.model, provider).inc(outcome.images)
            m.spend.labels(principal.team_id, outcome.model, provider).inc(micros_to_usd(outcome.charge_micros))
            m.provider_cost.labels(principal.team_id, outcome.model, provider).inc(
                micros_to_usd(outcome.provider_cost_micros)
            )

    async def _render(
        self, valid: ValidRequest, images: tuple[GeneratedImage, ...], *, keep: bool = False, as_asked: bool = False
    ) -> tuple[list[dict[str, str]], list[str | None]]:
        """The response's data items, and the name of each image kept in the store (None if not):
        every URL answer's, and with `keep` (an idempotent request) a b64_json answer's too.
        `as_asked`: the images are at the asked size and format already."""
        if not as_asked:
            images = tuple([await _as_asked(valid, img) for img in images])
        out: list[dict[str, str]] = []
        kept: list[str | None] = []
        try:
            for img in images:
                item, name = await self._rendered(valid, img, keep)
                out.append(item)
                kept.append(name)
        except BaseException:
            # A request that fails here is charged nothing: it leaves no image behind either.
            await asyncio.shield(self._store.discard([n for n in kept if n is not None]))
            raise
        return out, kept

    async def _rendered(
        self, valid: ValidRequest, img: GeneratedImage, keep: bool
    ) -> tuple[dict[str, str], str | None]:
        name: str | None = None
        item: dict[str, Any] = {"revised_prompt": valid.prompt}
        if valid.response_format == "b64_json":
            assert img.data is not None  # _check_result guarantees bytes for b64_json
            # The upstream's own base64 where it sent one (reused, not encoded again); else encoded
            # while the answer is sent (gateway/images/encoded.py).
            item["b64_json"] = img.b64 if img.b64 is not None else Base64Of(img.data)
            if keep:
                name = (await self._store.put(img.data, img.content_type)).name
        elif img.data is not None:
            name = (await self._store.put(img.data, img.content_type)).name
            item["url"] = await self._store.url(name)
        elif self._copier is not None:
            assert img.url is not None
            name = (await self._copier.copy(img.url)).name
            item["url"] = await self._store.url(name)
        else:
            assert img.url is not None
            item["url"] = img.url
        return item, name

    async def _replayed(self, replay: Replay, idempotency_key: str) -> ImagesResponse:
        stored = json.loads(replay.response)
        body = stored["body"]
        b64 = stored.get("b64", False)
        # A replay is kept a day, a signed URL image_url_ttl_s: every image kept here gets a URL
        # signed now, or its bytes read back for b64_json. One that was swept meanwhile cannot be
        # shown; say so rather than hand back a dead URL. (Records written before names were kept
        # have none: returned as they were.)
        if not await give_back(self._store, body["data"], stored.get("images", ()), b64=b64):
            raise GoneError(
                f"The images of the request made with Idempotency-Key '{idempotency_key}' have been deleted "
                f"(images are kept about {self._store.ttl_s} s after their URL is issued); send the request "
                "again with a new Idempotency-Key to generate new ones.",
                param="Idempotency-Key",
                code="idempotency_images_gone",
            )
        headers = {
            **stored["headers"],
            "x-gateway-charged-usd": f"{0:.6f}",
            "x-gateway-idempotent-replay": "true",
            "x-gateway-original-request-id": stored["request_id"],
        }
        return ImagesResponse(body, headers)


async def _as_asked(valid: ValidRequest, img: GeneratedImage) -> GeneratedImage:
    """The upstream's image at exactly the asked size and in the asked format: as it came where it
    already is, else resized, cropped and encoded by the gateway."""
    mime = MIME[valid.output_format]
    if not valid.converted and img.content_type == mime and valid.output_compression is None:
        return img
    assert img.data is not None  # _check_result guarantees bytes when the gateway may convert
    data = await asyncio.to_thread(
        render, img.data, valid.width, valid.height, valid.output_format, valid.output_compression
    )
    return GeneratedImage(content_type=mime, width=valid.width, height=valid.height, data=data)


def fingerprint(valid: ValidRequest) -> str:
    """What the request asks for, so a reused Idempotency-Key with other parameters is caught."""
    parts = [
        valid.model.id, valid.prompt, valid.n, valid.size, valid.response_format, valid.num_inference_steps,
        valid.guidance_scale, valid.negative_prompt, valid.seed, valid.strength,
        [hashlib.sha256(i.data).hexdigest() for i in valid.images],
        hashlib.sha256(valid.mask.data).hexdigest() if valid.mask else None,
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _fields(
    principal: Principal, valid: ValidRequest, provider: str | None, latency_s: float, error_kind: str
) -> tuple[tuple[str, str], ...]:
    return (
        ("team_id", principal.team_id),
        ("key_id", principal.key_id),
        ("provider", provider or ""),
        ("size", valid.size),
        ("requested_images", str(valid.n)),
        ("kind", "edit" if valid.images else "generation"),
        ("latency_ms", str(round(latency_s * 1000))),
        ("error_kind", error_kind),
    )
