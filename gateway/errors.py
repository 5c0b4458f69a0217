"""The GatewayError family: each error carries its HTTP status, OpenAI type/code, the parameter
it names, and a closed `kind` used as a metrics label. Handlers render them in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from providers.base import ErrorKind, ProviderError


class ClientGone(Exception):
    """The caller went away before its answer was ready: there is nobody to answer."""


class GatewayError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    kind: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


# --- the caller's fault (4xx) ---------------------------------------------------------------


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    kind = "invalid_request"


class MissingParameterError(InvalidRequestError):
    default_code = "missing_required_parameter"


class UnsupportedParameterError(InvalidRequestError):
    """A parameter the gateway understands but will not take (a field an adapter owns, a feature
    not offered): refused, never faked."""

    default_code = "unsupported_parameter"


class UnsupportedMediaError(GatewayError):
    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"
    kind = "invalid_request"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"
    kind = "invalid_request"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"
    kind = "auth"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"
    kind = "auth"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"
    kind = "not_found"


class MethodNotAllowedError(GatewayError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"
    kind = "invalid_request"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"
    kind = "rate_limited"


class QuotaExceededError(GatewayError):
    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"
    kind = "budget_exceeded"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        # The OpenAI SDK retries every 429 unless told not to; a spent budget will not recover.
        self.headers.setdefault("x-should-retry", "false")


class RequestTimeoutError(GatewayError):
    """The caller did not send its request line and headers, or its body, in time."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"
    kind = "invalid_request"


class HeaderFieldsTooLargeError(GatewayError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "request_header_fields_too_large"
    kind = "invalid_request"


class ConflictError(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"
    kind = "conflict"


class GoneError(GatewayError):
    """What the caller refers to existed once and no longer does; a retry will not bring it back."""

    status_code = 410
    error_type = "invalid_request_error"
    default_code = "gone"
    kind = "gone"


# --- ours or an upstream's fault (5xx) ------------------------------------------------------


class UpstreamError(GatewayError):
    """Every candidate route failed; the last failure decides the status."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"
    kind = "upstream"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"


class OverloadedError(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "server_is_overloaded"
    kind = "overloaded"


class ServiceUnavailableError(GatewayError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    kind = "unavailable"


class StorageFullError(ServiceUnavailableError):
    """The image store has no room left for answers by URL (b64_json answers need none)."""

    default_code = "storage_full"

    def __init__(self, message: str = "The gateway's image store is full; retry later or ask for b64_json.") -> None:
        super().__init__(message, param="response_format", headers={"retry-after": "30"})


class StorageUnavailableError(ServiceUnavailableError):
    """The image store could not be reached, or refused a write or a read (an object store's outage)."""

    default_code = "storage_unavailable"

    def __init__(self, message: str = "The gateway's image store is unavailable; please retry shortly.") -> None:
        super().__init__(message, headers={"retry-after": "5"})


class ContentPolicyError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "content_policy_violation"
    kind = "content_policy"


def from_provider_error(err: ProviderError) -> GatewayError:
    """Translate the last provider failure into what the caller sees.

    A provider's auth or quota failure is the organisation's problem, never the caller's: 502.
    """
    retry = {"retry-after": str(max(1, round(err.retry_after_s)))} if err.retry_after_s else None
    match err.kind:
        case ErrorKind.REJECTED_INPUT:
            return InvalidRequestError(f"The provider rejected the request: {err.message}", param=err.param)
        case ErrorKind.CONTENT_POLICY:
            return ContentPolicyError("Your request was rejected by the provider's safety system.", param=err.param)
        case ErrorKind.TIMEOUT:
            return UpstreamTimeoutError("The image provider did not answer in time.")
        case ErrorKind.RATE_LIMITED | ErrorKind.NOT_READY:
            return OverloadedError(
                "Every image provider for this model is busy; please retry shortly.",
                headers=retry or {"retry-after": "1"},
            )
        case _:
            return UpstreamError("The image provider failed to produce the image; please retry.")
