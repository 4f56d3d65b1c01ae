"""Webhook endpoints' requests and answers, as the admin API, its OpenAPI document and the CLI share them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, Field, StrictBool, StringConstraints

from pipelines.changes import TYPES
from pipelines.control.fields import Model, clean_text
from pipelines.control.models import MAX_OVERLAP_SECONDS, Page
from pipelines.webhooks.targets import MAX_URL

EventType = Literal[
    "message.received", "message.classified", "draft.created", "message.sent", "message.status_updated",
    "conversation.opened", "conversation.resolved", "conversation.reopened", "conversation.assigned",
    "contact.created", "contact.merged", "contact.erased", "sla.breached", "budget.alert",
]
assert set(EventType.__args__) == set(TYPES)  # type: ignore[attr-defined]  # one list of types, kept in step


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("must not name a type twice")
    return values


Url = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL, strip_whitespace=True),
                AfterValidator(clean_text)]
Description = Annotated[str, StringConstraints(max_length=1000), AfterValidator(clean_text)]
EventTypes = Annotated[list[EventType], Field(max_length=len(TYPES)), AfterValidator(_unique)]
RateLimit = Annotated[int, Field(strict=True, ge=1, le=10_000)]


class EndpointCreate(Model):
    url: Url = Field(description="http(s) URL on a public address; deliveries are POSTed here")
    event_types: EventTypes = Field(default_factory=list, description="The types to deliver; empty: every type")
    description: Description = ""
    rate_limit_per_second: RateLimit | None = Field(default=None, description="At most this many deliveries a "
                                                                              "second; null: no limit")


class EndpointUpdate(Model):
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    rate_limit_per_second: RateLimit | None = None
    enabled: StrictBool | None = Field(default=None, description="false stops deliveries; true resumes them from where "
                                                           "they stopped (nothing is skipped)")


class RotateEndpointSecret(Model):
    overlap_seconds: int = Field(default=86_400, strict=True, ge=0, le=MAX_OVERLAP_SECONDS,
                                 description="How long deliveries carry the old secret's signature too")


def _time_text(value: object) -> object:
    """A time written in RFC 3339, never a number taken for a timestamp (the API validates parsed JSON)."""
    if not isinstance(value, str | datetime):
        raise ValueError("must be a time written in RFC 3339 with a zone")
    return value


class Recover(Model):
    since: Annotated[AwareDatetime, BeforeValidator(_time_text)] = Field(
        description="Deliver again every event of the endpoint's types recorded since then (RFC 3339 with a zone)")


class AttemptQuery(Page):
    status: Literal["pending", "delivered", "failed"] | None = None


class EndpointView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    event_types: list[str]
    description: str
    rate_limit_per_second: int | None
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="Deliveries have failed since then (null: healthy)")
    previous_secret_until: datetime | None = Field(description="Until then deliveries are signed with the secret "
                                                               "before the last rotation too")
    created_at: datetime
    updated_at: datetime


class EndpointSecret(BaseModel):
    """Shown once, at creation and at rotation."""

    endpoint: EndpointView
    secret: str = Field(description="The whsec_ signing secret, shown this once")


class Recovered(BaseModel):
    endpoint_id: uuid.UUID
    events: int = Field(description="Events queued for delivery again")


class AttemptView(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID = Field(description="Sent as webhook-id")
    event_seq: int
    event_type: str | None = Field(description="null when retention removed the event")
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    response_excerpt: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
