"""The desk's requests and answers: the admin API validates and answers with these, its OpenAPI document is
generated from them, and `intake conversation ...` builds the same requests from its options."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StringConstraints

from pipelines.control.fields import Model, Short, Slug, clean_text

# A reply's text is capped at 64 KiB of characters, its HTML at four times that (markup is verbose).
MAX_TEXT = 65_536
MAX_HTML = 4 * MAX_TEXT
MAX_SUBJECT = 998  # RFC 5322's line limit
MAX_REASON = 2_000
MAX_PAGE = 200
# An Idempotency-Key: 1-200 printable ASCII characters, no space at either end.
IDEMPOTENCY_KEY = re.compile(r"[!-~](?:[ -~]{0,198}[!-~])?")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


ReplyText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT), AfterValidator(clean_text),
                      AfterValidator(_not_blank)]
ReplyHtml = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HTML), AfterValidator(clean_text)]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SUBJECT, strip_whitespace=True),
                    AfterValidator(clean_text)]
Reason = Annotated[str, StringConstraints(max_length=MAX_REASON), AfterValidator(clean_text)]
Priority = Literal["low", "normal", "high", "urgent"]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")]


# -- requests --------------------------------------------------------------------------------------------
class ReplyCreate(Model):
    """A reply to the conversation's contact; `send: false` records one sent elsewhere."""

    text: ReplyText = Field(description=f"The reply's text, 1-{MAX_TEXT} characters")
    html: ReplyHtml | None = Field(default=None, description="An HTML version (email channels)")
    subject: Subject | None = Field(default=None, description="The subject (email channels)")
    send: StrictBool = Field(description="true: queue it for the channel; false: record a reply sent elsewhere")
    draft_id: uuid.UUID | None = Field(default=None, description="The AI draft this reply is (accepted with it)")


class DraftAccept(Model):
    text: ReplyText | None = Field(default=None, description="The edited text; absent: the draft as written")
    send: StrictBool = Field(default=True, description="false: record it as sent elsewhere")


class DraftReject(Model):
    reason: Reason | None = None


class Assign(Model):
    """Fields given are set (null clears one); fields left out are kept."""

    team_id: uuid.UUID | None = Field(default=None, description="One of the tenant's teams; null: none")
    assignee: Short | None = Field(default=None, description="An agent's id as the application knows it; null: none")


class Correction(Model):
    """At least one of the two."""

    category: Slug | None = Field(default=None, description="One of the tenant's categories")
    priority: Priority | None = None


class ConversationQuery(Model):
    status: Literal["open", "resolved", "merged"] | None = None
    inbox_id: uuid.UUID | None = None
    assignee: Short | None = None
    updated_since: datetime | None = Field(default=None, description="Only conversations changed since (RFC 3339)")
    cursor: Cursor | None = Field(default=None, description="`next_cursor` of the page before")
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class MessageQuery(Model):
    cursor: Cursor | None = Field(default=None, description="`next_cursor` of the page before")
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


# -- answers ---------------------------------------------------------------------------------------------
class SlaView(BaseModel):
    started_at: datetime | None = Field(description="When this open period's clock started")
    first_response_due_at: datetime | None
    resolution_due_at: datetime | None
    responded_at: datetime | None = Field(description="The first reply of this period")
    breached_at: datetime | None = Field(description="When the clock marked this period breached")
    first_response_breached: bool = Field(description="No reply by the first-response due time")
    resolution_breached: bool = Field(description="Not resolved by the resolution due time")


class ClassificationView(BaseModel):
    message_id: uuid.UUID
    category: str
    priority: str
    sentiment: str
    language: str
    confidence: float
    provider: str
    model: str
    created_at: datetime


class CorrectionView(BaseModel):
    message_id: uuid.UUID
    category: str | None
    priority: str | None
    actor: str
    actor_key_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ConversationView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    inbox_id: uuid.UUID
    contact_id: uuid.UUID
    status: str
    subject: str | None
    awaiting_reply: bool
    assignee: str | None
    team_id: uuid.UUID | None
    category: str | None = Field(description="A person's correction where there is one, else the AI's")
    priority: str | None
    message_count: int
    inbound_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    first_response_at: datetime | None = Field(description="The first reply ever sent")
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sla: SlaView


class ConversationDetail(ConversationView):
    classification: ClassificationView | None = Field(description="The AI's latest classification")
    correction: CorrectionView | None = Field(description="The latest correction of one of its messages")


class MessageView(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID | None
    contact_id: uuid.UUID | None
    inbox_id: uuid.UUID
    direction: str
    kind: str
    external_id: str
    subject: str | None
    content: str
    content_html: str | None
    status: str | None
    status_error: str | None
    sent_at: datetime
    received_at: datetime
    author: str | None = Field(description="Who wrote an outbound reply: the key's or user's name")
    draft_id: uuid.UUID | None = Field(description="The AI draft an outbound reply came from")


class DraftView(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    status: str
    content: str
    confidence: float
    language: str | None
    provider: str
    model: str
    reply_id: uuid.UUID | None = Field(description="The reply it became, once accepted")
    edited: bool | None = Field(description="Whether it was edited before it was sent")
    decided_at: datetime | None
    decided_by: str | None
    reject_reason: str | None
    created_at: datetime
    updated_at: datetime


class AcceptedDraft(BaseModel):
    draft: DraftView
    message: MessageView


class CursorPage(BaseModel):
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class ConversationPage(CursorPage):
    items: list[ConversationView]


class MessagePage(CursorPage):
    items: list[MessageView]


# The shapes the change feed carries (a subset of the API's, ids as strings, times in RFC 3339).
MESSAGE_FEED = ("id", "conversation_id", "contact_id", "inbox_id", "direction", "kind", "external_id", "subject",
                "content", "status", "sent_at", "received_at")
CONVERSATION_FEED = ("id", "inbox_id", "contact_id", "status", "subject", "awaiting_reply", "assignee", "team_id",
                     "category", "priority", "last_message_at", "first_response_at")


def feed_message(view: MessageView) -> dict[str, Any]:
    return view.model_dump(mode="json", include=set(MESSAGE_FEED))


def feed_conversation(view: ConversationView) -> dict[str, Any]:
    return view.model_dump(mode="json", include=set(CONVERSATION_FEED))
