"""GET /v1/models and /v1/models/{id}, in OpenAI's list shape, from pricing.yaml."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import State, Team
from gateway.catalog import ModelSpec, micros_to_usd
from gateway.errors import ModelNotFoundError

router = APIRouter()


def _model(spec: ModelSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "object": "model",
        "created": spec.created,
        "owned_by": "image-gateway",
        # Extensions (kept by the SDK in model_extra): what a caller may ask for and pays.
        "display_name": spec.display_name,
        "price_per_image_usd": micros_to_usd(spec.price_per_image_micros),
        "sizes": list(spec.sizes),
        "max_n": spec.n.max,
        "supports_edits": spec.edits is not None,
    }


@router.get("/v1/models")
async def list_models(state: State, _: Team) -> dict[str, Any]:
    return {"object": "list", "data": [_model(m) for m in state.catalog.models.values()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: State, _: Team) -> dict[str, Any]:
    spec = state.catalog.get(model_id)
    if spec is None:
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return _model(spec)
