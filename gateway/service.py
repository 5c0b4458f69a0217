"""The request pipeline, as plain code: admit, decode uploads, route, call with fallbacks, store, settle.

Every admitted request is settled exactly once (success, failure, timeout or a caller that went
away), and a failed request is charged nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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
from gateway.images.parameters import MIME
from gateway.images.store import ImageStorage
from gateway.images.validation import ValidRequest
from gateway.metrics import Metrics
from gateway.quote import dry_run
from gateway.routing.dispatch import Dispatcher, RoutingRequest
from providers.base import (
    GeneratedImage,
)

log = logging.getLogger(__name__)


class Delivery:
    """Settles a served request exactly once, after its answer was handed to the caller's
    connection: delivered, it is charged; the caller gone first, it is settled as cancelled and
    charged nothing. Never called (the process died), the reservation expires uncharged."""

    def __init__(self, settle: Callable[[bool], Awaitable[None]]) -> None:
        self._settle = settle
        self.done = False

    async def __call__(self, delivered: bool) -> None:
        if self.done:
            return
        self.done = True
        await self._settle(delivered)


@dataclass(frozen=True, slots=True)
class ImagesResponse:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delivery: Delivery | None = None  # None: nothing left to settle (a replay)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request admitted and not yet served (ImageService.serve settles it)."""

    principal: Principal
    valid: ValidRequest
    admission: Admission
    routing: RoutingRequest

    def headers(self) -> dict[str, str]:
        """What is known of the answer before it is served (a stream's headers)."""
        headers = {"x-gateway-generated-size": self.valid.generated_size, **self.admission.limits.headers()}
        if self.valid.ignored:
            headers["x-gateway-ignored-params"] = ", ".join(self.valid.ignored)
        return headers


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
    ) -> Admitted | ImagesResponse:
        """`generate` in two steps, for a stream, which answers the caller in between: admit
        (limits, budget, idempotency; or answer from an earlier request with the same
        Idempotency-Key), then `serve`, which must follow and settles the request."""
        routing = routing or RoutingRequest(valid.model.routing)
        admitted = await self._admitted(principal, valid, request_id, routing, idempotency_key)
        if isinstance(admitted, ImagesResponse):
            return admitted
        return Admitted(principal, valid, admitted, routing)

    async def serve(self, admitted: Admitted) -> ImagesResponse:
        """Route, call, store and answer an admitted request; settled here if it fails, else by
        its Delivery once answered."""
        return await self._serve(admitted.principal, admitted.valid, admitted.admission, admitted.routing)

    async def _admitted(
        self,
        principal: Principal,
        valid: ValidRequest,
        request_id: str,
        routing: RoutingRequest,
        idempotency_key: str | None,
    ) -> Admission | ImagesResponse:
        if routing.pinned is not None:
            self._dispatcher.check_pin(valid, routing.pinned)
        if (valid.response_format == "url" or idempotency_key) and not self._store.has_room():
            raise StorageFullError()  # before admission: the upstream is not paid for images we cannot keep
        idem = Idempotency(idempotency_key, fingerprint(valid)) if idempotency_key else None
        admitted = await self._admit(principal, valid, request_id, idem)
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
        self, principal: Principal, valid: ValidRequest, request_id: str, idem: Idempotency | None
    ) -> Admission | Replay:
        """Admit, or find the earlier request with the same Idempotency-Key and wait for it."""
        quote = valid.model.price_micros(valid.size, valid.n)
        give_up = time.monotonic() + self._deadline_s
        while True:
            try:
                got = await self._meter.admit(
                    principal.team_id, request_id, valid.n, quote, hold_s=self._deadline_s + 60, idempotency=idem
                )
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

    async def _serve(
        self, principal: Principal, valid: ValidRequest, admission: Admission, routing: RoutingRequest
    ) -> ImagesResponse:
        spec = valid.model
        quote = admission.quote_micros
        request_id = admission.request_id
        started = time.monotonic()
        upstream_s = 0.0
        in_flight = self._metrics.in_flight.labels(spec.id)
        in_flight.inc()
        outcome = Settlement("failed", 0, 0, 0, spec.id, _fields(principal, valid, None, 0.0, "internal"))
        status = "failed"
        handed_over = False
        try:
            if valid.images:
                # Only now, admitted: an edit refused by its limits or budget decodes nothing, and
                # a truncated or corrupt upload fails here and is settled, charged nothing.
                await self._decoder.check(valid)
            attempt = await self._dispatcher.call(
                valid, request_id, started + self._deadline_s, routing, team_id=principal.team_id
            )
            upstream_s = attempt.upstream_s
            data, kept = await self._render(valid, attempt.result.images, keep=admission.idempotency is not None)
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

            async def settle(delivered: bool) -> None:
                in_flight.dec()
                if delivered:
                    await self._settle(admission, served, principal, "succeeded", elapsed)
                    self._metrics.overhead.labels(spec.id).observe(max(0.0, elapsed - upstream_s))
                else:
                    gone = Settlement("cancelled", 0, 0, 0, spec.id, _fields(principal, valid, None, elapsed, "gone"))
                    await self._settle(admission, gone, principal, "cancelled", elapsed)

            handed_over = True
            return ImagesResponse(body, {**headers, **admission.limits.headers()}, Delivery(settle))
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
                await self._settle(admission, outcome, principal, status, time.monotonic() - started)

    async def _settle(
        self, admission: Admission, outcome: Settlement, principal: Principal, status: str, elapsed: float
    ) -> None:
        # Shielded: a caller that went away must not stop its request from being settled.
        task = asyncio.ensure_future(self._meter.settle(admission, outcome))
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
        self, valid: ValidRequest, images: tuple[GeneratedImage, ...], *, keep: bool = False
    ) -> tuple[list[dict[str, str]], list[str | None]]:
        """The response's data items, and the name of each image kept in the store (None if not):
        every URL answer's, and with `keep` (an idempotent request) a b64_json answer's too."""
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
        item: dict[str, str] = {"revised_prompt": valid.prompt}
        if valid.response_format == "b64_json":
            assert img.data is not None  # _check_result guarantees bytes for b64_json
            item["b64_json"] = img.b64 if img.b64 is not None else base64.b64encode(img.data).decode("ascii")
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
        for item, name in zip(body["data"], stored.get("images", ()), strict=False):
            if name is None:
                continue
            if b64:
                data = await self._store.take_back(name)
                value = None if data is None else base64.b64encode(data).decode("ascii")
            else:
                value = await self._store.reissue(name)
            if value is None:
                raise GoneError(
                    f"The images of the request made with Idempotency-Key '{idempotency_key}' have been deleted "
                    f"(images are kept about {self._store.ttl_s} s after their URL is issued); send the request "
                    "again with a new Idempotency-Key to generate new ones.",
                    param="Idempotency-Key",
                    code="idempotency_images_gone",
                )
            item["b64_json" if b64 else "url"] = value
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
