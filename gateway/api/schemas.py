"""The shapes /openapi.json documents for what the handlers read and write by hand. The handlers
parse bodies themselves and answer plain dicts (orjson), so nothing here runs on a request; the
fuzz test (tests/integration/test_fuzz_openapi.py) checks every answer of the live gateway
against these, and tests/api/test_openapi.py the enums against the values the code accepts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from gateway.accounting.usage import LEDGER_COLUMNS
from gateway.images.parameters import IGNORED_ENUMS, OUTPUT_FORMATS
from gateway.images.validation import MAX_SEED


class SentFields(GenerateJsonSchema):
    """Request bodies as OpenAI's SDKs send them: a parameter not sent is absent. (The gateway takes
    a JSON null as not sent too, but a form field cannot be null.)"""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if self.get_default_value(schema) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def _one_of(values: Iterable[str], description: str) -> WithJsonSchema:
    """A string among `values`; the values come from the code that checks them."""
    return WithJsonSchema({"type": "string", "enum": sorted(values), "description": description})


_IGNORED = "accepted and ignored (named in x-gateway-ignored-params)."
Quality = Annotated[str | None, _one_of(IGNORED_ENUMS["quality"], f"OpenAI's quality: {_IGNORED}")]
Style = Annotated[str | None, _one_of(IGNORED_ENUMS["style"], f"OpenAI's style: {_IGNORED}")]
Background = Annotated[str | None, _one_of(IGNORED_ENUMS["background"], f"OpenAI's background: {_IGNORED}")]
Moderation = Annotated[str | None, _one_of(IGNORED_ENUMS["moderation"], f"OpenAI's moderation: {_IGNORED}")]
InputFidelity = Annotated[str | None, _one_of(IGNORED_ENUMS["input_fidelity"], f"OpenAI's input_fidelity: {_IGNORED}")]
OutputFormat = Annotated[str | None, _one_of([*OUTPUT_FORMATS, "jpg"], "The encoding of the images (jpg means jpeg).")]

_EXAMPLE: JsonDict = {"model": "hidream-i1-full", "prompt": "a lighthouse at dusk", "n": 1, "size": "1024x1024"}


class _ImageParams(BaseModel):
    """What generations and edits share. Ranges that differ by model (prompt length, steps,
    guidance, sizes) are the model's, listed by GET /v1/models; outside them is a 400. Documented
    with SentFields: a parameter not sent is absent."""

    model: str | None = Field(
        default=None,
        description="A model id, an alias (dall-e-3) or a provider-prefixed id (fal/hidream-i1-full); "
        "absent: the gateway's default model.",
        examples=["hidream-i1-full", "dall-e-3"],
    )
    prompt: str = Field(pattern=r"\S", description="What to draw; not blank.", examples=["a lighthouse at dusk"])
    n: int | None = Field(default=None, ge=1, le=10, description="Images to make (past a route's max_n: fanned out).")
    size: str | None = Field(
        default=None,
        description="auto, WxH inside the model's size_range, or an aspect ratio W:H; the answer has exactly "
        "that size (x-gateway-generated-size names what the model made).",
        examples=["1024x1024", "1360x768", "16:9", "auto"],
    )
    response_format: Literal["url", "b64_json"] | None = None
    output_format: OutputFormat = None
    output_compression: int | None = Field(default=None, ge=0, le=100, description="jpeg and webp; ignored for png.")
    quality: Quality = None
    background: Background = None
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    safety_identifier: str | None = Field(default=None, max_length=256, description="Accepted and ignored.")
    seed: int | None = Field(default=None, ge=-1, le=MAX_SEED, description="-1: random.")
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0, description="Only models that take one.")
    stream: bool | None = Field(default=None, description="true is refused (400 unsupported_parameter) for now.")
    partial_images: int | None = Field(default=None, ge=0, le=3, description="Accepted and ignored without stream.")
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="With Prefer: respond-async: where the job's result is POSTed, signed (Standard Webhooks).",
    )


class ImageGenerationRequest(_ImageParams):
    """POST /v1/images/generations as OpenAI's SDKs send it. Parameters not listed here pass
    through to the provider that serves the request, except the fields an adapter sets itself."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [_EXAMPLE]})
    style: Style = None
    moderation: Moderation = None


Binary = Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]


class ImageEditRequest(_ImageParams):
    """POST /v1/images/edits as OpenAI's SDKs send it (multipart/form-data; numbers as text).
    Unknown text fields pass through as for generations."""

    model_config = ConfigDict(extra="allow")
    # A list: on the wire one file is a list of one part (OpenAI's anyOf of a file or a list says no more).
    image: list[Binary] = Field(
        min_length=1, description="PNG, JPEG or WebP, one part each; as many as the model takes."
    )
    image_list: list[Binary] | None = Field(
        default=None, alias="image[]", description="The same under the name OpenAI's SDKs give a list of images."
    )
    mask: Binary | None = Field(default=None, description="Only models that take one.")
    strength: float | None = Field(default=None, ge=0, le=1, description="How far to move from the image.")
    input_fidelity: InputFidelity = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape; `param` names the parameter at fault."""

    error: ErrorDetail


class ImageData(BaseModel):
    url: str | None = Field(default=None, description="The gateway's signed URL (response_format=url).")
    b64_json: str | None = None
    revised_prompt: str


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str
    quality: str
    background: str
    seed: int | None = None


class QuoteComponent(BaseModel):
    type: str
    metric: str
    quantity: int
    billable_quantity: int
    unit_price: float
    total_cost: int


class DryRun(BaseModel):
    """?dryRun=true: the quote (Lumenfall's shape), the route the router would pick now and the
    admission verdict; nothing generated or charged."""

    estimated: bool
    model: str
    provider: str | None
    total_cost_micros: int
    currency: str
    components: list[QuoteComponent]
    route: dict[str, Any]
    admission: dict[str, Any]
    size: str
    generated_size: str
    output_format: str
    ignored_params: list[str]


class SizeRange(BaseModel):
    min_side: int
    max_side: int
    max_pixels: int


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    display_name: str
    price_per_image_usd: float
    sizes: list[str]
    max_n: int
    supports_edits: bool
    size_range: SizeRange
    alias_of: str | None = Field(default=None, description="For an alias: the model it names.")
    provider: str | None = Field(default=None, description="For a provider-prefixed id: the route it pins.")
    model: str | None = Field(default=None, description="For a provider-prefixed id: the model.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class UsageDay(BaseModel):
    date: str
    model: str
    requests: int
    images: int
    spent_usd: float


class Usage(BaseModel):
    object: Literal["usage"]
    team_id: str
    month: str
    requests: int
    failed_requests: int
    images: int
    spent_usd: float
    reserved_usd: float
    by_day: list[UsageDay]
    budget_usd: float | None = None


class TeamUsage(Usage):
    team_name: str


LedgerLine = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {"type": "object", "required": list(LEDGER_COLUMNS), "description": "One ledger event (CSV: its columns)."}
    ),
]


class UsageReport(BaseModel):
    object: Literal["usage_report"]
    month: str
    teams: list[TeamUsage]
    lines: list[LedgerLine]


class Limits(BaseModel):
    requests_per_minute: int
    images_per_minute: int
    max_in_flight: int


class TeamObject(BaseModel):
    id: str
    object: Literal["team"]
    name: str
    monthly_budget_usd: float
    limits: Limits
    created: int
    allow_provider_pinning: bool
    disabled: bool = Field(description="Its keys' requests are refused (403 team_disabled) while true.")


class TeamList(BaseModel):
    object: Literal["list"]
    data: list[TeamObject]


class ApiKeyObject(BaseModel):
    id: str
    object: Literal["api_key"]
    team_id: str
    prefix: str
    name: str
    created: int
    last_used: int | None = Field(
        description="Unix seconds of the key's latest request, recorded at most once a minute per gateway "
        "process (so up to about a minute late); null if never used."
    )


class NewApiKey(ApiKeyObject):
    key: str = Field(description="The key itself, shown only here.")


class ApiKeyList(BaseModel):
    object: Literal["list"]
    data: list[ApiKeyObject]


class DeletedApiKey(BaseModel):
    id: str
    object: Literal["api_key"]
    deleted: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """Ready or not to anyone; the detail (redis, routes) only with the metrics token or admin key."""

    ready: bool
    redis: bool | None = None
    pricing_loaded: bool | None = None
    routes: dict[str, Any] | None = None
