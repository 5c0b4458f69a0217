"""The shapes /openapi.json documents for async jobs (gateway/api/jobs.py) and their webhooks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.api.schemas import ErrorDetail, ImagesResponse


class JobLinks(BaseModel):
    self: str = Field(description="GET it for the job's status and result.")
    cancel: str = Field(description="DELETE it to cancel the job.")


class JobError(BaseModel):
    status: int = Field(description="The HTTP status a synchronous call would have answered.")
    error: ErrorDetail


class WebhookAttempt(BaseModel):
    at: float = Field(description="Unix time of the attempt.")
    status_code: int | None = Field(description="What the target answered; null when it did not answer.")
    error: str | None
    duration_ms: int


class JobWebhook(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttempt]


class JobResult(ImagesResponse):
    gateway: dict[str, Any] = Field(description="What a synchronous answer's x-gateway-* headers say.")


class JobObject(BaseModel):
    """An async job (Prefer: respond-async): its status and, once it succeeded, the body a
    synchronous call answers (URLs signed anew at each read)."""

    id: str
    object: Literal["image.job"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    kind: Literal["generation", "edit"]
    model: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    queue_position: int | None = Field(description="Queued jobs ahead of this one (0: next); null unless queued.")
    links: JobLinks
    result: JobResult | None
    error: JobError | None
    webhook: JobWebhook | None


class WebhookSecret(BaseModel):
    object: Literal["webhook_secret"]
    team_id: str
    secret: str = Field(description="whsec_...: shown only here; a new one replaces the old at once.")


class WebhookSettings(BaseModel):
    object: Literal["webhook_settings"]
    team_id: str
    url: str | None = Field(description="The default webhook of the team's jobs that name none.")
    has_secret: bool


class WebhookSettingsIn(BaseModel):
    url: str | None = Field(max_length=2048, description="null: no default webhook.")
