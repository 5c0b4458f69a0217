"""fal error answers -> the ProviderError family, decided by HTTP status and fal's structured fields
(error_type, X-Fal-Error-Type, detail[].type and .loc), never by message text. Pure; protocol
notes: /work/shared/reference/fal-api.md §5."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping

from providers.base import (
    ProviderAuthError,
    ProviderBadResponseError,
    ProviderCancelledError,
    ProviderContentPolicyError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedInputError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)

PROVIDER = "fal"
DEFAULT_RETRY_AFTER_S = 1.0

# fal input field -> the OpenAI/gateway parameter the caller sent, for naming it in a 400.
PARAMS: Mapping[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "image_size": "size",
    "num_images": "n",
    "image_url": "image",
    "guidance_scale": "guidance_scale",
    "num_inference_steps": "num_inference_steps",
    "seed": "seed",
    "strength": "strength",
}

# error_type values (§5.3): request errors from fal's infrastructure and model errors from the app.
TIMEOUT_TYPES = frozenset({"request_timeout", "generation_timeout"})
POLICY_TYPES = frozenset({"content_policy_violation"})
INPUT_IMAGE_TYPES = frozenset({"image_too_small", "image_too_large", "image_load_error", "file_download_error"})
CANCELLED_TYPES = frozenset({"client_cancelled"})
UNAVAILABLE_TYPES = frozenset(
    {
        "startup_timeout",
        "runner_scheduling_failure",
        "runner_connection_timeout",
        "runner_disconnected",
        "runner_connection_refused",
        "runner_connection_error",
        "runner_incomplete_response",
        "runner_server_error",
        "internal_error",
        "internal_server_error",
        "client_disconnected",
        "no_media_generated",
        "downstream_service_error",
    }
)


def error_from_response(status_code: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx fal answer -> the ProviderError it means."""
    lowered = lower_keys(headers)
    data = try_json(body)
    detail = data.get("detail") if isinstance(data, dict) else None
    items = [d for d in detail if isinstance(d, dict)] if isinstance(detail, list) else []
    error_type = data.get("error_type") if isinstance(data, dict) else None
    types = {t for t in (error_type, lowered.get("x-fal-error-type")) if isinstance(t, str) and t}
    types |= {d["type"] for d in items if isinstance(d.get("type"), str)}
    # Messages name the status, the types and fal's own msg; never `input`, which echoes the prompt.
    summary = f"fal answered {status_code}" + (f" ({', '.join(sorted(types))})" if types else "")
    if isinstance(detail, str):
        summary += f": {detail[:200]}"
    elif items and isinstance(items[0].get("msg"), str):
        summary += f": {items[0]['msg'][:200]}"

    def make(cls: type[ProviderError], *, param: str | None = None, retry_s: float | None = None) -> ProviderError:
        return cls(summary, provider=PROVIDER, upstream_status=status_code, param=param, retry_after_s=retry_s)

    if status_code in (401, 403):
        # fal's 403 "Exhausted balance" differs from a refused key only in its text, so it is auth
        # too: there is no structured quota signal to build ProviderQuotaError on.
        return make(ProviderAuthError)
    if status_code == 429:
        return make(ProviderRateLimitedError, retry_s=retry_after(lowered.get("retry-after")))
    if types & POLICY_TYPES:
        return make(ProviderContentPolicyError, param=_param(items, POLICY_TYPES))
    if types & CANCELLED_TYPES:
        return make(ProviderCancelledError)
    if types & TIMEOUT_TYPES or (status_code == 504 and "x-fal-request-timeout-type" in lowered):
        return make(ProviderTimeoutError)
    if types & INPUT_IMAGE_TYPES:
        return make(ProviderRejectedInputError, param="image")
    if types & UNAVAILABLE_TYPES or status_code >= 500 or status_code in (408, 409):
        return make(ProviderUnavailableError)
    if status_code == 422 and (items or isinstance(detail, str)):
        return make(ProviderRejectedInputError, param=_param(items))
    # A 400/404/other 4xx we did not expect, or a 422 we cannot read: the exchange itself broke.
    return make(ProviderBadResponseError)


def error_from_status(error_type: str | None) -> ProviderError:
    """A COMPLETED status that carried an error while its result fetch did not repeat it."""
    message = f"fal request failed ({error_type or 'no error_type'})"
    if error_type in POLICY_TYPES:
        return ProviderContentPolicyError(message, provider=PROVIDER)
    if error_type in TIMEOUT_TYPES:
        return ProviderTimeoutError(message, provider=PROVIDER)
    if error_type in CANCELLED_TYPES:
        return ProviderCancelledError(message, provider=PROVIDER)
    return ProviderUnavailableError(message, provider=PROVIDER)


def retry_after(value: str | None, *, now: float | None = None) -> float:
    """Retry-After as seconds (delta-seconds or an HTTP date); the default when absent or unusable."""
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
    return seconds if 0 < seconds < float("inf") else DEFAULT_RETRY_AFTER_S


def _param(items: list[dict[str, object]], only: frozenset[str] | None = None) -> str | None:
    """The gateway parameter named by the first detail whose loc names a field we map."""
    for item in items:
        if only is not None and item.get("type") not in only:
            continue
        loc = item.get("loc")
        if not isinstance(loc, list):
            continue
        fields = loc[1:] if loc[:1] == ["body"] else loc
        if fields and isinstance(fields[0], str):
            # A field we map names the caller's parameter; any other is one the caller passed
            # through under fal's own name (the adapter sets its protocol fields to values fal takes).
            return PARAMS.get(fields[0], fields[0])
    return None


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def try_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # malformed or undecodable, or nested past the recursion limit
        return None
