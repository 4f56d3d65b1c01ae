"""Tenant and inbox settings, validated field by field before they are stored in `settings` JSONB.

A tenant's settings (`tenants.settings`) are one `TenantSettings`; an update names the top-level keys it
replaces (null removes one) and the merged result is validated again. Add a setting by adding a field here:
the admin API's document, its 422 answers and the commands' one-line errors follow from these models.

Some settings are the operator's, not the tenant's: what spends the operator's money (`ai`: provider, model,
monthly budget), what removes records (`retention`) and what protects the fleet (an inbox's rate limit).
`guard` refuses a change of any of them by an actor without an operator's authority (a tenant key) with
Forbidden naming the field. Tenant and inbox creation and updates call it, and every door (the admin API,
the console, the commands) calls those, so all refuse alike. A value sent unchanged is not a change: a form
that shows the operator's settings may send them back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from pipelines import audit
from pipelines.control.errors import Forbidden, Invalid
from pipelines.control.fields import (
    Domain,
    EmailAddress,
    Language,
    Model,
    PhoneNumberId,
    Region,
    ReplyUrl,
    Short,
    Slug,
    Text,
    field_errors,
)

# Audit rows record operators' actions too: no setting keeps them for less than this.
AUDIT_FLOOR_DAYS = 30
# Top-level settings only an operator may change (every field inside them, at any depth).
OPERATOR_TENANT_SETTINGS = ("ai", "retention")
OPERATOR_INBOX_SETTINGS = ("rate_limit_per_second", "rate_limit_burst")


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
    audit_days: int | None = Field(default=None, ge=AUDIT_FLOOR_DAYS, le=36_500,
                                   description=f"Audit rows (at least {AUDIT_FLOOR_DAYS} days)")
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
    """An inbox's settings; the last four are what sending a reply through its channel needs besides secrets."""

    default_region: Region | None = None
    reopen_window_hours: float | None = Field(default=None, strict=True, ge=0, le=8760)
    rate_limit_per_second: float | None = Field(default=None, strict=True, gt=0, le=1_000_000)
    rate_limit_burst: int | None = Field(default=None, ge=1, le=10_000_000)
    ai_drafts: bool | None = None
    phone_number_id: PhoneNumberId | None = Field(default=None, description="WhatsApp: the business number's id")
    domain: Domain | None = Field(default=None, description="Mailgun: the sending domain")
    from_address: EmailAddress | None = Field(default=None, description="Email: the address replies come from")
    reply_url: ReplyUrl | None = Field(default=None, description="api channel: where replies are POSTed")


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


def _leaves(value: Any, path: str) -> dict[str, Any]:
    """`{"ai": {"model": "m"}}` as `{"settings.ai.model": "m"}`; a value that is not an object is a leaf."""
    if not isinstance(value, dict):
        return {path: value}
    leaves: dict[str, Any] = {}
    for key, inner in value.items():
        leaves.update(_leaves(inner, f"{path}.{key}"))
    return leaves


def guard(stored: dict[str, Any], result: dict[str, Any], operator_only: tuple[str, ...], actor: audit.Actor,
          prefix: str = "settings") -> None:
    """Refuse (Forbidden, naming the fields) a change from `stored` to `result` of any setting under
    `operator_only` by an actor without an operator's authority."""
    if actor.operator:
        return
    changed: list[str] = []
    for key in operator_only:
        before = _leaves(stored.get(key), f"{prefix}.{key}") if key in stored else {}
        after = _leaves(result.get(key), f"{prefix}.{key}") if key in result else {}
        changed += sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        raise Forbidden(f"{', '.join(changed)}: only an operator key can change "
                        f"{'this setting' if len(changed) == 1 else 'these settings'}")
