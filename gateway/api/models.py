"""GET /v1/models and /v1/models/{id}, in OpenAI's list shape, from pricing.yaml."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import State, Team
from gateway.api.schemas import ModelList, ModelObject
from gateway.catalog import ModelSpec, micros_to_usd
from gateway.errors import ModelNotFoundError

router = APIRouter()


def _model(spec: ModelSpec, name: str | None = None, pinned: str | None = None) -> dict[str, Any]:
    """A model under its own id, an alias (`alias_of`) or a provider-prefixed id (`provider`)."""
    entry: dict[str, Any] = {
        "id": name or spec.id,
        "object": "model",
        "created": spec.created,
        "owned_by": "image-gateway",
        # Extensions (kept by the SDK in model_extra): what a caller may ask for and pays.
        "display_name": spec.display_name,
        "price_per_image_usd": micros_to_usd(spec.price_per_image_micros),
        "sizes": list(spec.sizes),
        "max_n": spec.n.max,
        "supports_edits": spec.edits is not None,
        "size_range": {
            "min_side": spec.size_range.min_side,
            "max_side": spec.size_range.max_side,
            "max_pixels": spec.size_range.max_pixels,
        },
    }
    if name is not None and pinned is None:
        entry["alias_of"] = spec.id
    if pinned is not None:
        entry["provider"] = pinned
        entry["model"] = spec.id
    return entry


@router.get("/v1/models", response_model=None, responses={200: {"model": ModelList}})
async def list_models(state: State, principal: Team) -> dict[str, Any]:
    catalog = state.catalog
    data = [_model(m) for m in catalog.models.values()]
    data += [_model(catalog.models[target], alias) for alias, target in catalog.aliases.items()]
    if (await state.keys.get_team(principal.team_id)).allow_provider_pinning:
        data += [_model(m, f"{r.provider}/{m.id}", r.provider) for m in catalog.models.values() for r in m.routes]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", response_model=None, responses={200: {"model": ModelObject}})
async def get_model(model_id: str, state: State, _: Team) -> dict[str, Any]:
    ref = state.catalog.resolve(model_id)
    if ref is None:
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    if ref.pinned is not None:
        return _model(ref.spec, model_id, ref.pinned)
    return _model(ref.spec, None if model_id == ref.spec.id else model_id)
