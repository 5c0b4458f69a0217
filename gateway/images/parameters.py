"""What happens to each parameter a caller sends, in the open (the README's compatibility table).

- read: the gateway's own parameters (model, prompt, n, size, ...), validated against the model;
- ignored: OpenAI parameters HiDream cannot honour, accepted with any of OpenAI's documented values
  and named in `x-gateway-ignored-params` (an undocumented value is still a 400 naming it);
- passed: anything else goes to the provider that serves the request, except fields an adapter
  owns (they would change the protocol); a route that takes no passed parameters names them in
  `x-gateway-ignored-params` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from gateway.errors import InvalidRequestError, UnsupportedParameterError
from providers.base import JsonValue, OutputFormat

OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
MIME: Mapping[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# The gateway's own parameters (multipart edits add image, image[] and mask as file parts).
READ = frozenset(
    {
        "model", "prompt", "n", "size", "response_format", "num_inference_steps", "guidance_scale",
        "negative_prompt", "seed", "strength", "output_format", "output_compression", "stream", "partial_images",
        "webhook_url",  # the gateway's own (async jobs, gateway/jobs/): never sent upstream
    }
)  # fmt: skip

# OpenAI's documented values (openai-python 3.54 types), accepted and ignored.
IGNORED_ENUMS: Mapping[str, frozenset[str]] = {
    "quality": frozenset({"standard", "hd", "low", "medium", "high", "auto", "xhigh", "max"}),
    "style": frozenset({"vivid", "natural"}),
    "background": frozenset({"transparent", "opaque", "auto"}),
    "moderation": frozenset({"low", "auto"}),
    "input_fidelity": frozenset({"low", "high"}),
}
# Free-form OpenAI strings with no effect on an image (abuse-monitoring ids): accepted, ignored.
IGNORED_TEXT = frozenset({"user", "safety_identifier"})

# Parameters no caller may pass through: the gateway's transport to every upstream depends on them.
# Providers add their own (see PassesThrough.owned_params).
OWNED = frozenset({"width", "height", "image", "image[]", "mask"})


def classify(raw: Mapping[str, object], *, owned: frozenset[str]) -> tuple[tuple[str, ...], dict[str, JsonValue]]:
    """The ignored OpenAI parameters (checked against OpenAI's values) and the ones to pass through
    (checked against what adapters own). `raw` holds what was sent, nulls already dropped."""
    ignored: list[str] = []
    passed: dict[str, JsonValue] = {}
    for name, value in raw.items():
        if name in READ:
            continue
        if name in IGNORED_ENUMS:
            allowed = IGNORED_ENUMS[name]
            if not isinstance(value, str) or value not in allowed:
                raise InvalidRequestError(
                    f"Invalid value for '{name}': {value!r}; expected one of {', '.join(sorted(allowed))}.",
                    param=name,
                    code="invalid_value",
                )
            ignored.append(name)
        elif name in IGNORED_TEXT:
            if not isinstance(value, str) or len(value) > 256:
                raise InvalidRequestError(f"'{name}' must be a string of at most 256 characters.", param=name)
            ignored.append(name)
        elif name in OWNED or name in owned:
            raise UnsupportedParameterError(
                f"'{name}' is set by the gateway for the provider and cannot be passed through.", param=name
            )
        else:
            _check_name(name)
            # As the caller sent it: JSON from a JSON body, a string from a form field.
            passed[name] = cast(JsonValue, value)
    return tuple(sorted(ignored)), passed


# A parameter passed through is named in x-gateway-ignored-params where its route takes none, so
# its name must fit in a header's list: printable ASCII, no comma, not longer than any provider's.
MAX_NAME_CHARS = 100


def _check_name(name: str) -> None:
    if not (0 < len(name) <= MAX_NAME_CHARS and name.isascii() and name.isprintable() and "," not in name):
        raise InvalidRequestError(
            f"Unrecognized request argument {name[:MAX_NAME_CHARS]!r}: a parameter's name is 1 to "
            f"{MAX_NAME_CHARS} printable ASCII characters without a comma.",
            param=name[:MAX_NAME_CHARS],
            code="invalid_parameter_name",
        )
