"""The worker's error family: each error carries its HTTP status, OpenAI type/code, the parameter
it names and a metrics label, and renders as OpenAI's `{"error": {...}}` body."""

from __future__ import annotations

import math
from typing import ClassVar


class WorkerError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    status_label: ClassVar[str] = "error"  # hidream_requests_total{status}

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequestError(WorkerError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    status_label = "invalid"


class _RetryLaterError(WorkerError):
    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds (RFC 9110); never 0, which would invite a hot retry loop.
        return {"retry-after": str(max(1, math.ceil(self.retry_after_s)))}


class QueueFullError(_RetryLaterError):
    status_code = 429
    error_type = "overloaded"
    default_code = "queue_full"
    status_label = "rejected"


class NotReadyError(_RetryLaterError):
    status_code = 503
    error_type = "server_error"
    default_code = "model_not_ready"
    status_label = "not_ready"


class InferenceError(WorkerError):
    """The pipeline failed on this job; the worker itself is still usable."""

    default_code = "inference_failed"


class FatalDeviceError(WorkerError):
    """The device is in a state no later job can recover from (a CUDA context error); the worker
    stops serving and reports unhealthy so that its supervisor restarts it."""

    status_code = 503
    default_code = "device_failed"


class JobCancelledError(Exception):
    """The job's client went away (or the worker is shutting down) before it finished."""
