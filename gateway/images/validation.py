"""Turns what a caller sent (a JSON body, or multipart form fields where numbers arrive as
strings) into a validated ImageRequest for one model, or an InvalidRequestError naming the
parameter. Values outside the model's ranges are rejected, never clamped."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from gateway.catalog import Catalog, EditSpec, FloatRange, IntRange, ModelRef, ModelSpec, parse_size
from gateway.errors import InvalidRequestError, MissingParameterError, ModelNotFoundError
from gateway.images.buffer_file import image_file
from gateway.images.parameters import OUTPUT_FORMATS, classify
from gateway.images.png import NotChecked, PngError, check_png
from gateway.images.sizing import SizeError, SizePlan, from_size, native_area, plan_size, size_for_aspect
from providers.base import ImageBytes, InputImage, JsonValue, OutputFormat, ResponseFormat, sniff_content_type

MAX_SEED = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """Everything of an ImageRequest but the ids and timing the pipeline adds."""

    model: ModelSpec
    prompt: str
    n: int
    width: int  # what the caller gets...
    height: int
    gen_width: int  # ...and the native size the model makes for it (resized and cropped between)
    gen_height: int
    response_format: ResponseFormat
    num_inference_steps: int
    guidance_scale: float | None
    negative_prompt: str | None
    seed: int | None
    user: str | None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    strength: float | None = None
    output_format: OutputFormat = "png"
    output_compression: int | None = None  # jpeg and webp: 0-100
    ignored: tuple[str, ...] = ()  # OpenAI parameters accepted and not honoured (x-gateway-ignored-params)
    extra: Mapping[str, JsonValue] = field(default_factory=dict)  # passed through to the provider
    pinned: str | None = None  # the route a provider-prefixed model id asked for (fal/hidream-i1-full)
    stream: bool = False  # answer as OpenAI's Server-Sent Events (gateway/api/streaming.py)
    # Previews asked for with `stream` (0 without it); a route that makes none names it ignored.
    partial_images: int = 0
    webhook_url: str | None = None  # an async job's webhook (gateway/jobs/); checked there

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def generated_size(self) -> str:
        return f"{self.gen_width}x{self.gen_height}"

    @property
    def converted(self) -> bool:
        return (self.width, self.height) != (self.gen_width, self.gen_height)

    @property
    def needs_bytes(self) -> bool:
        """The gateway may re-encode the upstream's image, so it needs the bytes, not a CDN URL."""
        return self.converted or self.output_format != "png" or self.output_compression is not None


class Params:
    """Read typed values from a body; `form` bodies carry every scalar as a string."""

    def __init__(self, raw: Mapping[str, object], *, form: bool, text_checked: bool = False) -> None:
        # Every string of the body, read or not, names and values alike: what we do not read today
        # may be passed upstream tomorrow, and an error message that quotes it must still encode.
        # `text_checked`: the caller knows no string in it can be unsendable (json_body.plain_text).
        for name, value in () if text_checked else raw.items():
            if _unsendable(name):
                raise _unsendable_error(name.encode("unicode_escape").decode("ascii"))
            if _unsendable(value):
                raise _unsendable_error(name)
        # JSON null and empty form fields mean "not sent".
        self._raw = {k: v for k, v in raw.items() if v is not None and not (form and v == "")}
        self._form = form

    def has(self, name: str) -> bool:
        return name in self._raw

    @property
    def sent(self) -> Mapping[str, object]:
        """Every parameter sent, nulls and empty form fields left out."""
        return self._raw

    def boolean(self, name: str) -> bool | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        if self._form and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise InvalidRequestError(f"'{name}' must be a boolean.", param=name, code="invalid_type")

    def text(self, name: str, *, max_len: int | None = None) -> str | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidRequestError(f"'{name}' must be a string.", param=name, code="invalid_type")
        if max_len is not None and len(value) > max_len:
            raise InvalidRequestError(
                f"'{name}' is {len(value)} characters long; the maximum is {max_len}.",
                param=name,
                code="string_above_max_length",
            )
        return value

    def integer(self, name: str) -> int | None:
        value = self._raw.get(name)
        if value is None:
            return None
        if self._form and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        elif isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidRequestError(f"'{name}' must be an integer.", param=name, code="invalid_type")

    def number(self, name: str) -> float | None:
        value = self._raw.get(name)
        if value is None:
            return None
        number: float | None = None
        if self._form and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        if number is None or not math.isfinite(number):
            raise InvalidRequestError(f"'{name}' must be a number.", param=name, code="invalid_type")
        return number


def _unsendable(value: object) -> bool:
    """Whether a JSON value holds, at any depth, text that cannot be sent upstream (walked with a
    stack, not recursion: a body may nest as deep as the JSON parser allowed)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _unsendable_text(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
    return False


def _unsendable_text(text: str) -> bool:
    """A lone UTF-16 surrogate (a JSON escape such as \\ud800 without its pair) is not a character:
    no UTF-8 encoder takes it, and an upstream that echoes it answers what nobody can parse. NUL is
    a character, but no prompt needs one, and C-string tokenizers and text stores cut or refuse it."""
    if "\x00" in text:
        return True
    if text.isascii():  # nearly every prompt: no surrogate possible, nothing more to check
        return False
    try:
        text.encode("utf-8")  # ~7x faster than searching for the surrogate range
    except UnicodeEncodeError:
        return True
    return False


def _unsendable_error(param: str) -> InvalidRequestError:
    # The message does not quote the value: it would not encode either.
    return InvalidRequestError(
        f"'{param}' holds a NUL character or an unpaired UTF-16 surrogate (\\ud800-\\udfff), "
        "which is not text that can be sent on.",
        param=param,
        code="invalid_text",
    )


def _int_in(params: Params, name: str, rng: IntRange) -> int:
    value = params.integer(name)
    if value is None:
        return rng.default
    if not rng.min <= value <= rng.max:
        raise InvalidRequestError(
            f"'{name}' must be between {rng.min} and {rng.max} for this model; got {value}.", param=name
        )
    return value


def _float_in(params: Params, name: str, rng: FloatRange) -> float:
    value = params.number(name)
    if value is None:
        return rng.default
    if not rng.min <= value <= rng.max:
        raise InvalidRequestError(
            f"'{name}' must be between {rng.min:g} and {rng.max:g} for this model; got {value:g}.", param=name
        )
    return value


def resolve_model(catalog: Catalog, params: Params) -> ModelRef:
    name = params.text("model")
    if name is None:
        name = catalog.default_model
        if name is None:
            raise MissingParameterError("Missing required parameter: 'model'.", param="model")
    found = catalog.resolve(name.strip())
    if found is None:
        raise ModelNotFoundError(f"The model '{name}' does not exist.", param="model")
    return found


def check_edit_inputs(catalog: Catalog, params: Params, image_count: int, *, has_mask: bool) -> EditSpec:
    """The checks on an edit that need no decoded pixels, so a bad request decodes nothing."""
    spec = resolve_model(catalog, params).spec
    if spec.edits is None:
        raise InvalidRequestError(f"{spec.id} does not support image edits.", param="model")
    if image_count > spec.edits.max_images:
        raise InvalidRequestError(
            f"{spec.id} takes at most {spec.edits.max_images} input image(s); got {image_count}.",
            param="image",
        )
    if has_mask and not spec.edits.mask:
        raise InvalidRequestError(f"{spec.id} does not support a mask.", param="mask")
    return spec.edits


def validate_generation(
    catalog: Catalog,
    params: Params,
    *,
    images: tuple[InputImage, ...] = (),
    mask: InputImage | None = None,
    owned: frozenset[str] = frozenset(),
) -> ValidRequest:
    """`owned`: the fields the configured adapters set themselves, which no caller may pass."""
    ref = resolve_model(catalog, params)
    spec = ref.spec
    ignored, extra = classify(params.sent, owned=owned)
    prompt = params.text("prompt", max_len=spec.prompt_max_chars)
    if prompt is None or not prompt.strip():
        raise MissingParameterError("Missing required parameter: 'prompt'.", param="prompt")
    n = _int_in(params, "n", spec.n)

    size = _size(spec, params.text("size"), images)

    stream, partial_images, stream_ignored = _stream(params)
    asked_format = params.text("response_format")
    response_format = asked_format or ("b64_json" if stream else "url")
    if response_format not in ("url", "b64_json"):
        raise InvalidRequestError(
            f"'{response_format}' is not one of ['url', 'b64_json'] - 'response_format'.",
            param="response_format",
        )
    if stream and response_format == "url":
        # OpenAI's stream events carry the image itself (b64_json); a URL has no place in them.
        raise InvalidRequestError(
            "A streamed answer carries each image as b64_json in its completed event; leave response_format "
            "out, send b64_json, or send stream=false for URLs.",
            param="response_format",
        )

    guidance: float | None = None
    if spec.guidance_scale is not None:
        guidance = _float_in(params, "guidance_scale", spec.guidance_scale)
    elif params.has("guidance_scale"):
        raise InvalidRequestError(
            f"{spec.id} is guidance-distilled and takes no 'guidance_scale'.", param="guidance_scale"
        )

    seed = params.integer("seed")
    if seed == -1:  # the common convention for "random", as no seed
        seed = None
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidRequestError(f"'seed' must be between 0 and {MAX_SEED}, or -1 for random.", param="seed")

    output_format, compression, more_ignored = _output(params)
    ignored = tuple(sorted({*ignored, *more_ignored, *stream_ignored}))

    strength: float | None = None
    if images:
        edits = check_edit_inputs(catalog, params, len(images), has_mask=mask is not None)
        strength = _float_in(params, "strength", edits.strength)
    elif params.has("strength"):
        raise InvalidRequestError("'strength' applies only to image edits.", param="strength")

    return ValidRequest(
        model=spec,
        prompt=prompt,
        n=n,
        width=size.width,
        height=size.height,
        gen_width=size.gen_width,
        gen_height=size.gen_height,
        response_format=response_format,  # type: ignore[arg-type]
        num_inference_steps=_int_in(params, "num_inference_steps", spec.num_inference_steps),
        guidance_scale=guidance,
        negative_prompt=params.text("negative_prompt", max_len=spec.prompt_max_chars),
        seed=seed,
        user=params.text("user", max_len=256),
        images=images,
        mask=mask,
        strength=strength,
        output_format=output_format,
        output_compression=compression,
        ignored=ignored,
        extra=extra,
        pinned=ref.pinned,
        stream=stream,
        partial_images=partial_images,
        webhook_url=params.text("webhook_url", max_len=2048),
    )


def _stream(params: Params) -> tuple[bool, int, tuple[str, ...]]:
    """stream and partial_images, and which of them are accepted without effect: without
    stream=true partial_images means nothing (with it, the route decides: see Dispatcher)."""
    stream = bool(params.boolean("stream"))
    partial = params.integer("partial_images")
    if partial is None:
        return stream, 0, ()
    if not 0 <= partial <= 3:
        raise InvalidRequestError("'partial_images' must be between 0 and 3.", param="partial_images")
    if not stream:
        return stream, 0, ("partial_images",)
    return stream, partial, ()


def _output(params: Params) -> tuple[OutputFormat, int | None, tuple[str, ...]]:
    """output_format and output_compression, and whether output_compression is accepted without
    effect."""
    ignored: list[str] = []
    fmt = (params.text("output_format") or "png").lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise InvalidRequestError(
            f"Invalid output_format '{fmt}'; expected one of {', '.join(OUTPUT_FORMATS)}.",
            param="output_format",
            code="invalid_value",
        )
    compression = params.integer("output_compression")
    if compression is not None:
        if not 0 <= compression <= 100:
            raise InvalidRequestError(
                f"'output_compression' must be between 0 and 100; got {compression}.", param="output_compression"
            )
        if fmt == "png":  # lossless: as OpenAI, compression applies to jpeg and webp only
            ignored.append("output_compression")
            compression = None
    return fmt, compression, tuple(ignored)


def _size(spec: ModelSpec, asked: str | None, images: tuple[InputImage, ...]) -> SizePlan:
    """The caller's size; with none, the model's default, or for an edit the input's own aspect."""
    if asked is None and images:
        first = images[0]
        width, height = size_for_aspect(first.width, first.height, native_area(spec.buckets))
        problem = spec.size_range.problem(width, height)
        if problem is not None:
            raise InvalidRequestError(
                f"The input image's aspect ({first.width}x{first.height}) gives {width}x{height} at the model's "
                f"native area, outside {spec.id}'s range: {problem}. Send a size.",
                param="size",
                code="invalid_size",
            )
        return from_size(width, height, spec.buckets)
    try:
        return plan_size(
            asked or "auto", default=parse_size(spec.default_size), buckets=spec.buckets, allowed=spec.size_range
        )
    except SizeError as exc:
        raise InvalidRequestError(
            f"Invalid size '{asked}' for {spec.id}: {exc}.", param="size", code="invalid_size"
        ) from None


def probe_upload(data: ImageBytes, *, param: str, max_pixels: int) -> InputImage:
    """Sniff an uploaded image and read its header only (format and size, no pixels): cheap
    enough to run before admission, and enough to refuse what is not an image or is too large."""
    content_type = sniff_content_type(data)
    if content_type is None:
        raise InvalidRequestError(
            f"'{param}' must be a PNG, JPEG or WebP image.", param=param, code="invalid_image_format"
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (below Pillow's warning threshold) decides; see just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(image_file(data))
        with opened as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise InvalidRequestError(
            f"'{param}' declares more pixels than the most accepted ({max_pixels}).",
            param=param,
            code="image_too_large",
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _undecodable(param) from exc
    if width * height > max_pixels:
        raise InvalidRequestError(
            f"'{param}' is {width}x{height} pixels; the most accepted is {max_pixels} pixels.",
            param=param,
            code="image_too_large",
        )
    return InputImage(data=data, content_type=content_type, width=width, height=height)


def decode_fully(image: InputImage, param: str) -> None:
    """Check all of an image probe_upload accepted, which catches truncated or corrupt data: a PNG
    by its structure, CRCs and inflated data without its pixels (gateway/images/png.py), anything
    else by decoding every pixel; the pixels are dropped (the upstream gets the bytes as sent)."""
    if image.content_type == "image/png":
        try:
            size = check_png(image.data)
        except PngError as exc:
            raise _undecodable(param) from exc
        except NotChecked:
            pass  # decoded below, as any other image
        else:
            if size != (image.width, image.height):  # cannot differ from the probe's; said if it does
                raise _undecodable(param)
            return
    try:
        with Image.open(image_file(image.data)) as img:
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _undecodable(param) from exc


def _undecodable(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"'{param}' could not be decoded as an image (truncated or corrupt).", param=param, code="invalid_image"
    )
