"""The control plane's requests and answers, as pydantic models: the admin API validates with them, its
OpenAPI document is generated from them, and the commands build the same requests from their options."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from pipelines.control.fields import Language, Model, Name, Secret, Short, Text
from pipelines.control.settings import InboxSettings, TenantSettings

T = TypeVar("T")
CHANNEL_NAMES = ("twilio", "whatsapp", "postmark", "mailgun", "sendgrid", "telegram", "api")
Channel = Literal["twilio", "whatsapp", "postmark", "mailgun", "sendgrid", "telegram", "api"]
SecretName = Short
SecretValue = Secret
MAX_OVERLAP_SECONDS = 30 * 86_400


class Page(Model):
    """Limit and offset: the next page starts at `next_offset` (null on the last page)."""

    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class Listing(BaseModel, Generic[T]):
    items: list[T]
    next_offset: int | None = Field(description="The offset of the next page; null on the last page")


# -- tenants ------------------------------------------------------------------------------------------
class TenantCreate(Model):
    name: Name
    settings: TenantSettings | None = None


class TenantUpdate(Model):
    name: Name | None = None
    settings: TenantSettings | None = Field(
        default=None, description="Top-level keys given replace the stored ones; a key set to null is removed")


class TenantView(BaseModel):
    id: uuid.UUID
    name: str
    settings: dict[str, Any]
    disabled: bool
    disabled_at: datetime | None
    created_at: datetime


# -- inboxes ------------------------------------------------------------------------------------------
class InboxCreate(Model):
    channel: Channel
    name: Name | None = None
    secrets: dict[SecretName, SecretValue] = Field(
        default_factory=dict, max_length=10,
        description="Secrets the provider issues (e.g. Twilio's auth_token); the others are generated")
    settings: InboxSettings | None = None
    persona_id: uuid.UUID | None = None


class InboxUpdate(Model):
    name: Name | None = None
    settings: InboxSettings | None = Field(
        default=None, description="Top-level keys given replace the stored ones; a key set to null is removed")
    persona_id: uuid.UUID | None = Field(default=None, description="The persona drafting this inbox's replies")


class RotateSecrets(Model):
    overlap_seconds: int = Field(default=86_400, ge=0, le=MAX_OVERLAP_SECONDS,
                                 description="How long the old secrets keep verifying")
    secrets: dict[SecretName, SecretValue] = Field(
        default_factory=dict, max_length=10,
        description="New values of provider-issued secrets (kept when not given); the secrets Intake "
                    "generates are generated anew unless a value is given here")


class InboxView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    channel: str
    name: str
    enabled: bool
    settings: dict[str, Any]
    persona_id: uuid.UUID | None
    webhook_url: str = Field(description="Basic-auth channels: the password masked")
    secrets: dict[str, str] = Field(description="Masked: only the last characters show")
    previous_secrets_until: datetime | None = Field(description="Until then the secrets before the last rotation "
                                                                "verify too")
    created_at: datetime


class InboxSecrets(BaseModel):
    """Shown once, at creation and at rotation."""

    inbox: InboxView
    webhook_url: str
    secrets: dict[str, str]


# -- teams and personas -------------------------------------------------------------------------------
class TeamCreate(Model):
    name: Name
    description: Text = ""
    keywords: list[Short] = Field(default_factory=list, max_length=200)


class TeamUpdate(Model):
    name: Name | None = None
    description: Text | None = None
    keywords: list[Short] | None = Field(default=None, max_length=200)


class TeamView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    description: str
    keywords: list[str]
    created_at: datetime


MAX_REPLY_TOKENS = 32_768  # ai_personas.max_tokens (migration 0021)


class PersonaCreate(Model):
    name: Name
    tone: Text = ""
    system_prompt: Text = ""
    language: Language | None = Field(default=None, description="ISO 639-1; null: the customer's language")
    model: Short | None = None
    temperature: float | None = Field(default=None, strict=True, ge=0, le=2)
    max_tokens: int | None = Field(default=None, strict=True, ge=1, le=MAX_REPLY_TOKENS,
                                   description="The longest draft, in tokens; null: the provider's own limit")
    active: bool = Field(default=True, strict=True,
                         description="An inactive persona drafts nothing: its inboxes use the tenant's default")
    is_default: bool = False


class PersonaUpdate(Model):
    name: Name | None = None
    tone: Text | None = None
    system_prompt: Text | None = None
    language: Language | None = None
    model: Short | None = None
    temperature: float | None = Field(default=None, strict=True, ge=0, le=2)
    max_tokens: int | None = Field(default=None, strict=True, ge=1, le=MAX_REPLY_TOKENS)
    active: bool | None = Field(default=None, strict=True)
    is_default: bool | None = None


class PersonaView(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    tone: str
    system_prompt: str
    language: str | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    active: bool
    is_default: bool
    created_at: datetime
    updated_at: datetime


# -- keys and the audit trail --------------------------------------------------------------------------
class KeyCreate(Model):
    name: Name
    tenant_id: uuid.UUID | None = Field(default=None, description="null: an operator key")


class KeyView(BaseModel):
    id: uuid.UUID
    name: str
    scope: Literal["operator", "tenant"]
    tenant_id: uuid.UUID | None
    prefix: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class AuditEntry(BaseModel):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    actor: str
    actor_key_id: uuid.UUID | None
    action: str
    subject_type: str
    subject_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    created_at: datetime


class Deleted(BaseModel):
    id: uuid.UUID
    deleted: bool = True
