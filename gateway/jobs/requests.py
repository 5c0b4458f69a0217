"""A validated request as a job keeps it in Redis, for whichever process runs it: plain JSON for
the parameters and the routing, the uploads of an edit as bytes beside it. Loaded back against the
catalog it is the same request, with no second validation to drift from the first."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from gateway.catalog import Catalog, RoutingPolicy
from gateway.errors import ServiceUnavailableError
from gateway.images.validation import ValidRequest
from gateway.routing.dispatch import RoutingRequest
from providers.base import InputImage

_OWN = ("model", "images", "mask")


def dump(valid: ValidRequest, routing: RoutingRequest) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The JSON to keep, and the uploads (field name -> bytes)."""
    params = {f.name: getattr(valid, f.name) for f in fields(valid) if f.name not in _OWN}
    params["ignored"] = list(valid.ignored)
    params["extra"] = dict(valid.extra)
    uploads: dict[str, bytes] = {}
    shapes: list[dict[str, Any]] = []
    for i, image in enumerate((*valid.images, *((valid.mask,) if valid.mask else ()))):
        uploads[f"u{i}"] = image.data
        shapes.append({"content_type": image.content_type, "width": image.width, "height": image.height})
    data = {
        "model": valid.model.id,
        "params": params,
        "images": shapes[: len(valid.images)],
        "mask": shapes[len(valid.images)] if valid.mask else None,
        "routing": {"policy": asdict(routing.policy), "pinned": routing.pinned},
    }
    return data, uploads


def load(catalog: Catalog, data: dict[str, Any], uploads: dict[str, bytes]) -> tuple[ValidRequest, RoutingRequest]:
    spec = catalog.get(data["model"])
    if spec is None:
        raise ServiceUnavailableError(f"The model {data['model']} is no longer served.")
    try:
        images = tuple(InputImage(uploads[f"u{i}"], **shape) for i, shape in enumerate(data["images"]))
        mask = InputImage(uploads[f"u{len(images)}"], **data["mask"]) if data["mask"] else None
    except KeyError:
        raise ServiceUnavailableError("The job's uploaded images are no longer kept.") from None
    params = dict(data["params"])
    params["ignored"] = tuple(params["ignored"])
    valid = ValidRequest(model=spec, images=images, mask=mask, **params)
    routing = data["routing"]
    return valid, RoutingRequest(RoutingPolicy(**routing["policy"]), routing["pinned"])
