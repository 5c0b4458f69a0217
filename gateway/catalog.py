"""pricing.yaml: the catalog of public models, what teams are billed, provider routes and what
each costs the organisation, and parameter ranges. Validated at start-up; a bad file stops the
boot with a message naming the file, the line and the field. While the gateway runs, a changed
file is validated the same way and swapped in whole (gateway/live_catalog.py).

Money is kept in integer micro-dollars (1 USD = 1_000_000) so that sums agree to the cent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from providers.base import RouteTarget

MICROS = 1_000_000


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS


class CatalogError(Exception):
    """pricing.yaml is missing, malformed or inconsistent."""


# --- the file's schema (pydantic, strict about unknown keys) --------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _IntRange(_Strict):
    min: int
    max: int
    default: int

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"need min <= default <= max, got {self.min} <= {self.default} <= {self.max}")
        return self


class _FloatRange(_Strict):
    min: float
    max: float
    default: float

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min <= self.default <= self.max:
            raise ValueError(f"need min <= default <= max, got {self.min} <= {self.default} <= {self.max}")
        return self


class _SizeRange(_Strict):
    min_side: int = Field(default=64, ge=1)
    max_side: int = Field(default=2048, ge=1)
    max_pixels: int = Field(default=2048 * 2048, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min_side > self.max_side:
            raise ValueError(f"need min_side <= max_side, got {self.min_side} > {self.max_side}")
        return self


class _Edits(_Strict):
    max_images: int = Field(ge=1)
    strength: _FloatRange
    mask: bool = False


class _Route(_Strict):
    provider: str
    upstream_model: str
    edit_model: str | None = None
    cost_per_image_usd: float | None = Field(default=None, ge=0)
    cost_per_megapixel_usd: float | None = Field(default=None, ge=0)
    max_n: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_cost(self) -> Self:
        if (self.cost_per_image_usd is None) == (self.cost_per_megapixel_usd is None):
            raise ValueError("a route needs exactly one of cost_per_image_usd, cost_per_megapixel_usd")
        return self


class _Routing(_Strict):
    policy: Literal["balanced", "cheapest", "fastest", "priority", "round_robin", "least_busy"] = "balanced"
    latency_target_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    usd_per_late_second: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    default_latency_s: float = Field(default=15.0, gt=0, allow_inf_nan=False)


class _Model(_Strict):
    display_name: str
    created: int
    price_per_image_usd: float = Field(ge=0)
    price_by_size_usd: dict[str, float] = Field(default_factory=dict)
    prompt_max_chars: int = Field(ge=1)
    quality: Literal["low", "medium", "high"] = "high"
    n: _IntRange
    sizes: list[str] = Field(min_length=1)
    size_range: _SizeRange = Field(default_factory=_SizeRange)
    default_size: str
    num_inference_steps: _IntRange
    guidance_scale: _FloatRange | None = None
    edits: _Edits | None = None
    routes: list[_Route] = Field(min_length=1)
    routing: _Routing = Field(default_factory=_Routing)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        r = self.size_range
        rng = SizeRange(r.min_side, r.max_side, r.max_pixels)
        for size in [*self.sizes, self.default_size]:
            problem = rng.problem(*parse_size(size))
            if problem is not None:
                raise ValueError(f"size {size!r} is outside size_range: {problem}")
        for size in self.price_by_size_usd:
            problem = rng.problem(*parse_size(size))
            if problem is not None:
                raise ValueError(f"price_by_size_usd: size {size!r} is outside size_range: {problem}")
        if self.edits is not None and not any(r.edit_model for r in self.routes):
            raise ValueError("edits are declared but no route has an edit_model")
        return self


class _File(_Strict):
    version: int
    models: dict[str, _Model] = Field(min_length=1)
    # The model of a request that names none (unset: such a request is refused, naming model).
    default_model: str | None = None
    # Other names a caller's code may use (dall-e-3, gpt-image-1...) -> the model they mean here.
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names(self) -> Self:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models")
        for alias, target in self.aliases.items():
            if alias in self.models or "/" in alias:
                raise ValueError(f"alias {alias!r} is a model id or has a '/' (kept for provider/model ids)")
            if target not in self.models:
                raise ValueError(f"alias {alias!r} points to {target!r}, which is not one of models")
        return self


# --- what the rest of the gateway uses (frozen dataclasses) ---------------------------------


Policy = Literal["balanced", "cheapest", "fastest", "priority", "round_robin", "least_busy"]
POLICIES: tuple[Policy, ...] = ("balanced", "cheapest", "fastest", "priority", "round_robin", "least_busy")
# The last three are what peer gateways offer; they are here to be measured against (bench/).
BASELINE_POLICIES = frozenset({"priority", "round_robin", "least_busy"})


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    kind: Policy = "balanced"
    latency_target_s: float = 30.0
    # Dollars a second of expected time past the target is worth (balanced policy).
    usd_per_late_second: float = 0.01
    # Expected time to result, in seconds, of a route with no observations yet (pricing.yaml).
    default_latency_s: float = 15.0


@dataclass(frozen=True, slots=True)
class IntRange:
    min: int
    max: int
    default: int


@dataclass(frozen=True, slots=True)
class FloatRange:
    min: float
    max: float
    default: float


@dataclass(frozen=True, slots=True)
class SizeRange:
    """The sizes a model answers: each side, and the area (pricing.yaml `size_range`)."""

    min_side: int
    max_side: int
    max_pixels: int

    def problem(self, width: int, height: int) -> str | None:
        """Why width x height is outside the range, for the caller; None when it is inside."""
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return f"each side must be between {self.min_side} and {self.max_side} pixels"
        if width * height > self.max_pixels:
            return f"at most {self.max_pixels} pixels in all ({width * height} asked)"
        return None


@dataclass(frozen=True, slots=True)
class EditSpec:
    max_images: int
    strength: FloatRange
    mask: bool


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str
    upstream_model: str
    edit_model: str | None
    cost_per_image_micros: int | None
    cost_per_megapixel_micros: int | None
    max_n: int

    @property
    def target(self) -> RouteTarget:
        return RouteTarget(
            provider=self.provider,
            model=self.model,
            upstream_model=self.upstream_model,
            edit_model=self.edit_model,
            max_n=self.max_n,
        )

    def cost_micros(self, width: int, height: int, n: int) -> int:
        """What this route costs the organisation for n images of width x height."""
        if self.cost_per_image_micros is not None:
            return self.cost_per_image_micros * n
        assert self.cost_per_megapixel_micros is not None
        return round(self.cost_per_megapixel_micros * width * height / 1_000_000) * n


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    display_name: str
    created: int
    price_per_image_micros: int
    price_by_size_micros: Mapping[str, int]
    prompt_max_chars: int
    quality: str  # echoed in answers as newer OpenAI responses do (OpenAI's low/medium/high)
    n: IntRange
    sizes: tuple[str, ...]  # the native buckets the model generates at
    buckets: tuple[tuple[int, int], ...]  # the same as (width, height)
    size_range: SizeRange  # what a caller may ask for (converted from the nearest bucket)
    default_size: str
    num_inference_steps: IntRange
    guidance_scale: FloatRange | None
    edits: EditSpec | None
    routes: tuple[Route, ...]
    routing: RoutingPolicy

    def price_micros(self, size: str, n: int) -> int:
        """What a team is billed for n images of this size, whichever route serves them."""
        return self.price_by_size_micros.get(size, self.price_per_image_micros) * n


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a caller's `model` names: a model, possibly through an alias, possibly pinned to one
    of its routes (`fal/hidream-i1-full`)."""

    spec: ModelSpec
    pinned: str | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    models: Mapping[str, ModelSpec]
    default_model: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)

    def resolve(self, name: str) -> ModelRef | None:
        """A model id, an alias, or `<provider>/<model or alias>` for one of the model's routes."""
        spec = self.models.get(name) or self.models.get(self.aliases.get(name, ""))
        if spec is not None:
            return ModelRef(spec)
        provider, slash, rest = name.partition("/")
        inner = self.resolve(rest) if slash and "/" not in rest else None
        if inner is None or provider not in {r.provider for r in inner.spec.routes}:
            return None
        return ModelRef(inner.spec, provider)

    def providers(self) -> set[str]:
        return {r.provider for m in self.models.values() for r in m.routes}


def parse_size(size: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768); ValueError for anything else."""
    w, sep, h = size.partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) <= 0 or int(h) <= 0:
        raise ValueError(f"size {size!r} is not of the form WIDTHxHEIGHT")
    return int(w), int(h)


def load_catalog(path: Path, known_providers: Iterable[str] | None = None) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the pricing file: {exc.strerror or exc}") from exc
    return parse_catalog(text, path, known_providers)


def parse_catalog(text: str, path: Path, known_providers: Iterable[str] | None = None) -> Catalog:
    """The catalog in `text` (read from `path`, which error messages name)."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise CatalogError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        # A misspelt key shows up twice (unknown key, missing field); name the misspelling.
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        loc = tuple(first["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise CatalogError(f"{path}:{_line_of(root, loc)}: {field}: {first['msg']}") from exc
    catalog = _build(parsed)
    if known_providers is not None:
        known = set(known_providers)
        for model in catalog.models.values():
            for i, route in enumerate(model.routes):
                if route.provider not in known:
                    line = _line_of(root, ("models", model.id, "routes", i, "provider"))
                    raise CatalogError(
                        f"{path}:{line}: models.{model.id}.routes.{i}.provider: unknown provider "
                        f"{route.provider!r} (known: {', '.join(sorted(known))})"
                    )
    return catalog


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest node along loc that exists in the YAML tree."""
    node = root
    line = 1 if root is None else root.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _build(parsed: _File) -> Catalog:
    models: dict[str, ModelSpec] = {}
    for model_id, m in parsed.models.items():
        routes = tuple(
            Route(
                provider=r.provider,
                model=model_id,
                upstream_model=r.upstream_model,
                edit_model=r.edit_model,
                cost_per_image_micros=None if r.cost_per_image_usd is None else usd_to_micros(r.cost_per_image_usd),
                cost_per_megapixel_micros=(
                    None if r.cost_per_megapixel_usd is None else usd_to_micros(r.cost_per_megapixel_usd)
                ),
                max_n=r.max_n,
            )
            for r in m.routes
        )
        models[model_id] = ModelSpec(
            id=model_id,
            display_name=m.display_name,
            created=m.created,
            price_per_image_micros=usd_to_micros(m.price_per_image_usd),
            price_by_size_micros={s: usd_to_micros(p) for s, p in m.price_by_size_usd.items()},
            prompt_max_chars=m.prompt_max_chars,
            quality=m.quality,
            n=IntRange(m.n.min, m.n.max, m.n.default),
            sizes=tuple(m.sizes),
            buckets=tuple(parse_size(s) for s in m.sizes),
            size_range=SizeRange(m.size_range.min_side, m.size_range.max_side, m.size_range.max_pixels),
            default_size=m.default_size,
            num_inference_steps=IntRange(
                m.num_inference_steps.min, m.num_inference_steps.max, m.num_inference_steps.default
            ),
            guidance_scale=(
                None
                if m.guidance_scale is None
                else FloatRange(m.guidance_scale.min, m.guidance_scale.max, m.guidance_scale.default)
            ),
            edits=(
                None
                if m.edits is None
                else EditSpec(
                    m.edits.max_images,
                    FloatRange(m.edits.strength.min, m.edits.strength.max, m.edits.strength.default),
                    m.edits.mask,
                )
            ),
            routes=routes,
            routing=RoutingPolicy(
                kind=m.routing.policy,
                latency_target_s=m.routing.latency_target_s,
                usd_per_late_second=m.routing.usd_per_late_second,
                default_latency_s=m.routing.default_latency_s,
            ),
        )
    return Catalog(models=models, default_model=parsed.default_model, aliases=dict(parsed.aliases))
