"""Tenant and inbox settings, validated field by field before they are stored in `settings` JSONB.

A tenant's settings (`tenants.settings`) are one `TenantSettings`; an update names the top-level keys it
replaces (null removes one) and the merged result is validated again. Add a setting by adding a field here:
the admin API's document, its 422 answers and the commands' one-line errors follow from these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from pipelines.control.errors import Invalid
from pipelines.control.fields import Language, Model, Region, Short, Slug, Text, field_errors


class Category(Model):
    """A classification category; `team` names the team a message of this category is suggested to."""

    id: Slug = Field(description="Short identifier, e.g. billing")
    description: Text = ""
    team: Short | None = None
    keywords: list[Short] = Field(default_factory=list, max_length=200)
    examples: list[Text] = Field(default_factory=list, max_length=50)


class AiSettings(Model):
    provider: Literal["local", "openai"] | None = None
    model: Short | None = None
    monthly_budget_usd: float | None = Field(default=None, strict=True, ge=0, le=1_000_000_000)


class RetentionSettings(Model):
    """Days each kind of record is kept; an unset one follows INTAKE_RETENTION_* (see pipelines.lifecycle)."""

    event_body_days: int | None = Field(default=None, ge=1, le=36_500, description="Raw event bodies, after processing")
    failure_days: int | None = Field(default=None, ge=1, le=36_500, description="Settled failure-ledger rows")
    audit_days: int | None = Field(default=None, ge=1, le=36_500, description="Audit rows")
    ai_usage_days: int | None = Field(default=None, ge=32, le=36_500,
                                      description="AI usage rows (rolled up into monthly totals first)")
    change_days: int | None = Field(default=None, ge=1, le=36_500, description="Change feed events")


class TenantSettings(Model):
    taxonomy: list[Category] | None = Field(default=None, max_length=200)
    ai: AiSettings | None = None
    default_region: Region | None = Field(default=None, description="ISO 3166 region for national numbers")
    reopen_window_hours: float | None = Field(default=None, strict=True, ge=0, le=8760)
    default_language: Language | None = Field(default=None, description="ISO 639-1 code, e.g. en")
    retention: RetentionSettings | None = None


class InboxSettings(Model):
    default_region: Region | None = None
    reopen_window_hours: float | None = Field(default=None, strict=True, ge=0, le=8760)
    rate_limit_per_second: float | None = Field(default=None, strict=True, gt=0, le=1_000_000)
    rate_limit_burst: int | None = Field(default=None, ge=1, le=10_000_000)
    ai_drafts: bool | None = None


def _validated(model: type[Model], document: dict[str, Any], prefix: str) -> dict[str, Any]:
    try:
        return model.model_validate(document).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise Invalid(field_errors(exc, prefix=prefix)) from None


def merged(stored: dict[str, Any], changes: Model, model: type[Model], prefix: str = "settings") -> dict[str, Any]:
    """`stored` with the top-level keys `changes` sets replaced (removed when set to null), validated."""
    result = dict(stored)
    for key, value in changes.model_dump(mode="json", exclude_unset=True).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return _validated(model, result, prefix)


def initial(document: Model | None) -> dict[str, Any]:
    """Settings given at creation, as stored."""
    return {} if document is None else document.model_dump(mode="json", exclude_none=True)
