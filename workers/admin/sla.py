"""The endpoints of SLA policies: one per tenant and priority, as `intake sla set|list` keeps them.

A policy is validated field by field before anything is stored (durations in working minutes, an IANA time
zone, business hours as `{"mon": [["09:00", "17:00"]], ...}`, holidays as dates), so a refusal names its
field. Policies are read and written as the fleet's role bound to the tenant; every change is audited.
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, Strict, StringConstraints, field_validator
from sqlalchemy import Connection, delete

from db.schema import sla_policies
from db.tenancy import TenantId
from pipelines import audit
from pipelines.control.errors import Invalid, NotFound
from pipelines.control.fields import Model, Short
from pipelines.control.models import Deleted, Listing, Page
from pipelines.lifecycle import sla
from pipelines.lifecycle.business_hours import Calendar, CalendarError, parse_calendar
from workers.admin.data import as_fleet
from workers.admin.http import Call, Endpoint

PREFIX = "/v1/admin"
MAX_HOLIDAYS = 1000

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Clock = Annotated[str, StringConstraints(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")]
Minutes = Annotated[int, Strict(), Field(ge=1, le=sla.MAX_MINUTES)]


def _date_text(value: object) -> object:
    """A holiday is a date written YYYY-MM-DD, never a number taken for a timestamp."""
    if not isinstance(value, str | date):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


class SlaPolicySet(Model):
    """One priority's policy; at least one of the two times."""

    first_response_minutes: Minutes | None = Field(default=None, description="Working minutes to a first response")
    resolution_minutes: Minutes | None = Field(default=None, description="Working minutes to resolution")
    time_zone: Short = Field(default="UTC", description="An IANA time zone, e.g. Europe/Helsinki")
    business_hours: dict[Day, Annotated[list[tuple[Clock, Clock]], Field(max_length=24)]] | None = Field(
        default=None, description='Open intervals per weekday, e.g. {"mon": [["09:00", "17:00"]]}; '
                                  "null: around the clock")
    holidays: list[Annotated[date, BeforeValidator(_date_text)]] = Field(default_factory=list, max_length=MAX_HOLIDAYS,
                                                      description="Closed days, YYYY-MM-DD")

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _calendar(value, None).zone.key

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: dict[str, list[tuple[str, str]]] | None) -> dict[str, list[tuple[str, str]]] | None:
        if value is not None:
            _calendar("UTC", value)
        return value


def _calendar(zone: str, hours: object) -> Calendar:
    try:
        return parse_calendar(zone, hours)
    except CalendarError as exc:
        raise ValueError(str(exc)) from None


class SlaPolicyView(BaseModel):
    priority: Literal["low", "normal", "high", "urgent"]
    first_response_minutes: int | None
    resolution_minutes: int | None
    time_zone: str
    business_hours: dict[str, list[list[str]]] | None
    holidays: list[date]


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route here names its tenant
    return TenantId(call.tenant)


def _policies(conn: Connection, tenant: TenantId) -> dict[str, SlaPolicyView]:
    return {p["priority"]: SlaPolicyView.model_validate(p) for p in sla.list_policies(conn, tenant)}


def list_sla_policies(call: Call) -> Listing[SlaPolicyView]:
    page: Page = call.query
    tenant = _tenant(call)
    with as_fleet(call, tenant).begin() as conn:
        policies = list(_policies(conn, tenant).values())
    more = len(policies) > page.offset + page.limit
    return Listing[SlaPolicyView](items=policies[page.offset:page.offset + page.limit],
                                  next_offset=page.offset + page.limit if more else None)


def set_sla_policy(call: Call) -> SlaPolicyView:
    body: SlaPolicySet = call.body
    if body.first_response_minutes is None and body.resolution_minutes is None:
        raise Invalid({"first_response_minutes": "give first_response_minutes, resolution_minutes or both"})
    tenant, priority = _tenant(call), call.params["priority"]
    hours = None if body.business_hours is None else {d: [list(i) for i in v] for d, v in body.business_hours.items()}
    with as_fleet(call, tenant).begin() as conn:
        before = _policies(conn, tenant).get(priority)
        try:
            policy_id = sla.set_policy(conn, tenant, priority, first_response_minutes=body.first_response_minutes,
                                       resolution_minutes=body.resolution_minutes, time_zone=body.time_zone,
                                       business_hours=hours, holidays=[d.isoformat() for d in body.holidays])
        except sla.PolicyError as exc:  # one the fields alone cannot show: a time the hours never reach
            raise Invalid({exc.field: str(exc)}) from None
        after = _policies(conn, tenant)[priority]
        audit.record(conn, actor=call.actor, action="sla.set", tenant_id=tenant, subject_type="sla_policy",
                     subject_id=policy_id, before=None if before is None else before.model_dump(mode="json"),
                     after=after.model_dump(mode="json"))
    return after


def delete_sla_policy(call: Call) -> Deleted:
    tenant, priority = _tenant(call), call.params["priority"]
    with as_fleet(call, tenant).begin() as conn:
        before = _policies(conn, tenant).get(priority)
        if before is None:
            raise NotFound(f"this tenant has no SLA policy for {priority}")
        gone = conn.execute(delete(sla_policies).where(sla_policies.c.tenant_id == tenant,
                                                       sla_policies.c.priority == priority)
                            .returning(sla_policies.c.id)).scalar_one()
        audit.record(conn, actor=call.actor, action="sla.delete", tenant_id=tenant, subject_type="sla_policy",
                     subject_id=gone, before=before.model_dump(mode="json"))
    return Deleted(id=uuid.UUID(str(gone)))


def endpoints() -> list[Endpoint]:
    path, own_tenant = f"{PREFIX}/tenants/{{tenant_id}}/sla-policies", ("tenant", "tenant_id")
    priority = {"priority": sla.PRIORITIES}
    return [
        Endpoint("GET", path, "A tenant's SLA policies, by priority", list_sla_policies, Listing[SlaPolicyView],
                 query=Page, owner=own_tenant),
        Endpoint("PUT", path + "/{priority}", "Create or replace the SLA policy of one priority", set_sla_policy,
                 SlaPolicyView, body=SlaPolicySet, owner=own_tenant, path_choices=priority),
        Endpoint("DELETE", path + "/{priority}", "Delete the SLA policy of one priority", delete_sla_policy, Deleted,
                 owner=own_tenant, path_choices=priority),
    ]
