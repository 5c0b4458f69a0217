"""What GET /openapi.json adds to what FastAPI derives from its routes: the hot path's operation
(served beside FastAPI, it has no route), the bodies the image handlers read by hand, who may call
each operation (read from the auth dependency its route declares), and errors as the gateway sends
them: OpenAI's shape, where FastAPI would document a 422 the gateway never answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from gateway.api.job_schemas import JobObject
from gateway.api.schemas import (
    DryRun,
    ErrorResponse,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    SentFields,
)
from gateway.catalog import POLICIES

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"

REQUESTS = (ImageGenerationRequest, ImageEditRequest)
RESPONSES = (ImagesResponse, DryRun, ErrorResponse, JobObject)
ERROR_REF = "#/components/responses/Error"

# Every dict below is made anew for each schema: no module-level state to mutate.


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _image_parameters() -> list[dict[str, Any]]:
    """What both image operations read beside their body (gateway/api/images.py: _serve, _routing)."""
    return [
        {
            "name": "dryRun",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean"},
            "description": "true: the quote, the route and the admission verdict; nothing generated or charged.",
        },
        _header(
            "Idempotency-Key",
            {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
            "A retry with the same key is charged once and answers the same images.",
        ),
        _header("x-gateway-routing-policy", {"enum": list(POLICIES)}, "Another routing policy for this request."),
        _header(
            "x-gateway-latency-target-s",
            {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "Another latency target (seconds) for this request.",
        ),
        _header("x-gateway-provider", {"type": "string"}, "Pin a provider (teams allowed to pin)."),
        {
            **_header(
                "Prefer",
                {"type": "string"},
                "respond-async: answer 202 with a job at once (GET /v1/images/jobs/{job_id} for its result; "
                "webhook_url for a signed webhook when it is done).",
            ),
            "example": "respond-async",
        },
    ]


SERVED_HEADERS = (
    ("x-gateway-provider", "The route that served the request."),
    ("x-gateway-route-reason", "Why the router chose it."),
    ("x-gateway-charged-usd", "What the team was charged for this request."),
    ("x-gateway-generated-size", "The size the model made (resized and cropped to `size`)."),
    ("x-gateway-ignored-params", "Parameters accepted and not honoured."),
)


def _images_answer() -> dict[str, Any]:
    return {
        "description": "The images, or with ?dryRun=true the quote; with stream=true, OpenAI's Server-Sent "
        "Events (`image_generation.completed` or `image_edit.completed` per image, `error` after a late failure).",
        "headers": {name: {"description": text, "schema": {"type": "string"}} for name, text in SERVED_HEADERS},
        "content": {
            "application/json": {"schema": {"anyOf": [_ref(ImagesResponse), _ref(DryRun)]}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }


def _job_answer() -> dict[str, Any]:
    return {
        "description": "With Prefer: respond-async: the job, admitted and queued (Preference-Applied: respond-async).",
        "headers": {
            "Preference-Applied": {"description": "respond-async", "schema": {"type": "string"}},
            "Location": {"description": "The job's URL.", "schema": {"type": "string"}},
        },
        "content": {"application/json": {"schema": _ref(JobObject)}},
    }


def _generations() -> dict[str, Any]:
    return {
        "summary": "Create images",
        "description": "Served by the gateway's hot path (gateway/api/hot.py) beside FastAPI, with the same "
        "authentication and errors as every other route.",
        "operationId": "create_image",
        "parameters": _image_parameters(),
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(ImageGenerationRequest)}}},
        "responses": {"200": _images_answer(), "202": _job_answer()},
        "security": [{"teamKey": []}],
    }


def is_complete(schema: dict[str, Any]) -> bool:
    return GENERATIONS in schema.get("paths", {})


def complete(schema: dict[str, Any]) -> None:
    """Complete FastAPI's schema in place."""
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for documented, generator in ((REQUESTS, SentFields), (RESPONSES, GenerateJsonSchema)):
        _, defs = models_json_schema(
            [(m, "validation") for m in documented],
            ref_template="#/components/schemas/{model}",
            schema_generator=generator,
        )
        models.update(defs.get("$defs", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    components["responses"] = {
        "Error": {
            "description": "An error in OpenAI's shape; `param` names the parameter at fault.",
            "content": {"application/json": {"schema": _ref(ErrorResponse)}},
        }
    }
    paths = schema.setdefault("paths", {})
    paths[GENERATIONS] = {"post": _generations()}
    edit = paths[EDITS]["post"]
    edit["parameters"] = _image_parameters()
    images = {"contentType": "image/png, image/jpeg, image/webp"}
    form = {"schema": _ref(ImageEditRequest), "encoding": {"image": images, "image[]": images, "mask": images}}
    edit["requestBody"] = {"required": True, "content": {"multipart/form-data": form}}
    edit["responses"]["200"] = _images_answer()
    edit["responses"]["202"] = _job_answer()
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            responses.pop("422", None)
            responses["4XX"] = {"$ref": ERROR_REF}
            responses["5XX"] = {"$ref": ERROR_REF}
