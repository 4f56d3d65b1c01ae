"""What a tenant key cannot do, over real HTTP (the admin API and its console) against real PostgreSQL, and at
the command line: change the operator's settings, act for a disabled tenant, find a cache holding a secret;
and what nobody can do: keep audit rows less than 30 days, revoke a key twice, keep an SLA policy that can
never be met, or name a time zone that is not one."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from config import get_settings
from pipelines.lifecycle.business_hours import SEARCH_DAYS
from pipelines.lifecycle.retention import RetentionPolicy
from tests.admin.test_admin_api import seed_failures
from tests.admin.test_admin_cli import intake
from tests.admin_server import Keyed, client, make_key

A = "/v1/admin"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OPERATORS_AI = {"provider": "local", "model": "small", "monthly_budget_usd": 5.0}
OPERATORS_RETENTION = {"audit_days": 400, "event_body_days": 14}
OPERATORS_LIMITS = {"rate_limit_per_second": 5.0, "rate_limit_burst": 10}


def audit_count(engine: Engine, subject: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM audit_logs WHERE subject_id = :s"),
                                {"s": subject}).scalar_one())


def setup(op: httpx.Client, admin_engine: Engine) -> tuple[dict[str, str], Keyed]:
    """A tenant whose AI, retention and inbox limits the operator set, with an inbox, a persona and a key."""
    tenant = op.post(f"{A}/tenants", json={"name": "Bounded", "settings": {
        "ai": OPERATORS_AI, "retention": OPERATORS_RETENTION}}).json()["id"]
    inbox = op.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api", "settings": OPERATORS_LIMITS})
    persona = op.post(f"{A}/tenants/{tenant}/personas", json={"name": "Voice", "model": "small"})
    assert inbox.status_code == persona.status_code == 201, (inbox.text, persona.text)
    ids = {"tenant": tenant, "inbox": inbox.json()["inbox"]["id"], "persona": persona.json()["id"]}
    return ids, make_key(admin_engine, tenant_id=uuid.UUID(tenant), name="bounded")


def state(op: httpx.Client, ids: dict[str, str]) -> list[Any]:
    return [op.get(f"{A}/tenants/{ids['tenant']}").json(), op.get(f"{A}/inboxes/{ids['inbox']}").json(),
            op.get(f"{A}/personas/{ids['persona']}").json(),
            op.get(f"{A}/tenants/{ids['tenant']}/inboxes").json()["items"],
            op.get(f"{A}/tenants/{ids['tenant']}/personas").json()["items"]]


# (method, path under the ids, body, the field the refusal names)
LIFTS = [
    ("PATCH", "/tenants/{tenant}", {"settings": {"ai": {**OPERATORS_AI, "provider": "openai"}}}, "settings.ai.provider"),
    ("PATCH", "/tenants/{tenant}", {"settings": {"ai": {**OPERATORS_AI, "model": "gpt-4-32k"}}}, "settings.ai.model"),
    ("PATCH", "/tenants/{tenant}", {"settings": {"ai": {**OPERATORS_AI, "monthly_budget_usd": 1e9}}},
     "settings.ai.monthly_budget_usd"),
    ("PATCH", "/tenants/{tenant}", {"settings": {"ai": None}}, "settings.ai.monthly_budget_usd"),
    ("PATCH", "/tenants/{tenant}", {"name": "Also renamed", "settings": {"retention": {
        **OPERATORS_RETENTION, "audit_days": 30}}}, "settings.retention.audit_days"),
    ("PATCH", "/tenants/{tenant}", {"settings": {"retention": {"event_body_days": 14}}},
     "settings.retention.audit_days"),
    ("PATCH", "/tenants/{tenant}", {"settings": {"retention": {**OPERATORS_RETENTION, "ai_usage_days": 32}}},
     "settings.retention.ai_usage_days"),
    ("PATCH", "/inboxes/{inbox}", {"settings": {"rate_limit_per_second": 1_000_000.0}},
     "settings.rate_limit_per_second"),
    ("PATCH", "/inboxes/{inbox}", {"settings": {"rate_limit_burst": None}}, "settings.rate_limit_burst"),
    ("POST", "/tenants/{tenant}/inboxes", {"channel": "api", "settings": {"rate_limit_burst": 10_000_000}},
     "settings.rate_limit_burst"),
    ("PATCH", "/personas/{persona}", {"model": "gpt-4o"}, "model"),
    ("POST", "/tenants/{tenant}/personas", {"name": "Pricey", "model": "gpt-4o"}, "model"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), LIFTS)
def test_a_tenant_key_cannot_change_the_operators_settings(base: str, op: httpx.Client, admin_engine: Engine,
                                                           method: str, path: str, body: dict[str, Any],
                                                           field: str) -> None:
    ids, key = setup(op, admin_engine)
    url = A + path.format(**ids)
    before, audited = state(op, ids), audit_count(admin_engine, ids["tenant"])
    with client(base, key) as tk:
        refused = tk.request(method, url, json=body)
    assert refused.status_code == 403, refused.text
    assert set(refused.json()) == {"error", "detail"} and refused.json()["error"] == "forbidden"
    assert field in refused.json()["detail"] and "operator" in refused.json()["detail"]
    assert state(op, ids) == before and audit_count(admin_engine, ids["tenant"]) == audited
    # The operator's key may: the refusal is about who asks, not about the value.
    assert op.request(method, url, json=body).status_code in (200, 201)


def test_a_tenant_key_keeps_its_own_settings_and_may_send_the_operators_back(base: str, op: httpx.Client,
                                                                            admin_engine: Engine) -> None:
    ids, key = setup(op, admin_engine)
    with client(base, key) as tk:
        tenant = tk.patch(f"{A}/tenants/{ids['tenant']}", json={"settings": {
            "default_language": "fi", "ai": dict(reversed(OPERATORS_AI.items())),
            "retention": {"event_body_days": 14, "audit_days": 400}}})
        assert tenant.status_code == 200, tenant.text
        assert tenant.json()["settings"] == {"default_language": "fi", "ai": OPERATORS_AI,
                                             "retention": OPERATORS_RETENTION}
        inbox = tk.patch(f"{A}/inboxes/{ids['inbox']}", json={"name": "Mine", "settings": {
            "default_region": "fi", "ai_drafts": False, **OPERATORS_LIMITS}})
        assert inbox.status_code == 200, inbox.text
        assert inbox.json()["settings"] == {"default_region": "FI", "ai_drafts": False, **OPERATORS_LIMITS}
        assert tk.patch(f"{A}/personas/{ids['persona']}", json={"tone": "warm", "model": "small"}).status_code == 200
        assert tk.post(f"{A}/tenants/{ids['tenant']}/inboxes", json={"channel": "telegram"}).status_code == 201
        assert tk.post(f"{A}/tenants/{ids['tenant']}/personas", json={"name": "Plain"}).status_code == 201


def test_the_console_shows_a_tenant_key_the_operators_settings_and_refuses_a_forged_form(
        base: str, op: httpx.Client, admin_engine: Engine) -> None:
    ids, key = setup(op, admin_engine)
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as c:
        form = c.get("/login")
        assert c.post("/login", data={"csrf": CSRF.findall(form.text)[0], "key": key.key}).status_code == 303
        page = c.get(f"/tenants/{ids['tenant']}").text
        token = CSRF.findall(page)[0]
        assert re.search(r'name="settings\.ai\.model"[^>]*value="small"[^>]*disabled', page, re.S), page
        # Saved as the browser sends it (disabled fields are not sent): the operator's settings stay.
        saved = c.post(f"/tenants/{ids['tenant']}/settings", data={
            "csrf": token, "name": "Bounded", "settings.default_language": "sv", "settings.default_region": "",
            "settings.reopen_window_hours": ""})
        assert saved.status_code == 303, saved.text
        forged = c.post(f"/tenants/{ids['tenant']}/settings", data={
            "csrf": token, "name": "Bounded", "settings.ai.provider": "openai", "settings.ai.model": "gpt-4-32k"})
        assert forged.status_code == 403 and "settings.ai.model" in forged.text
        inbox_page = c.get(f"/inboxes/{ids['inbox']}").text
        assert re.search(r'name="settings\.rate_limit_burst"[^>]*value="10"[^>]*disabled', inbox_page, re.S)
        forged = c.post(f"/inboxes/{ids['inbox']}/settings", data={
            "csrf": token, "name": "x", "settings.rate_limit_per_second": "", "settings.rate_limit_burst": ""})
        assert forged.status_code == 403 and "settings.rate_limit_per_second" in forged.text
    settings = op.get(f"{A}/tenants/{ids['tenant']}").json()["settings"]
    assert settings == {"default_language": "sv", "ai": OPERATORS_AI, "retention": OPERATORS_RETENTION}
    assert op.get(f"{A}/inboxes/{ids['inbox']}").json()["settings"] == OPERATORS_LIMITS


@pytest.mark.parametrize("days", [1, 29, -1, 0])
def test_audit_rows_are_kept_at_least_30_days_whoever_asks(op: httpx.Client, days: int) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Floor"}).json()["id"]
    refused = op.patch(f"{A}/tenants/{tenant}", json={"settings": {"retention": {"audit_days": days}}})
    assert refused.status_code == 422
    assert "30" in refused.json()["fields"]["settings.retention.audit_days"]
    assert op.post(f"{A}/tenants", json={"name": "Floor", "settings": {"retention": {"audit_days": days}}}
                   ).status_code == 422
    assert op.get(f"{A}/tenants/{tenant}").json()["settings"] == {}
    kept = op.patch(f"{A}/tenants/{tenant}", json={"settings": {"retention": {"audit_days": 30}}})
    assert kept.status_code == 200 and kept.json()["settings"]["retention"] == {"audit_days": 30}


def test_the_clock_keeps_audit_rows_30_days_whatever_was_stored() -> None:
    """A value stored before the floor is ignored: the fleet's default applies."""
    defaults = RetentionPolicy.defaults(get_settings())
    assert defaults.for_tenant({"retention": {"audit_days": 1}}).audit_days == defaults.audit_days
    assert defaults.for_tenant({"retention": {"audit_days": 30}}).audit_days == 30


def test_the_floor_and_the_operators_authority_at_the_command_line(stack: dict[str, str]) -> None:
    created = intake("tenant", "create", "Floor at the prompt", "--json")
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)["id"]
    refused = intake("tenant", "update", tenant, "--set", "retention.audit_days=1")
    assert refused.returncode == 1 and "settings.retention.audit_days" in refused.stderr
    assert "Traceback" not in refused.stderr
    # The person at the prompt holds the owner's rights: an operator's.
    kept = intake("tenant", "update", tenant, "--set", "retention.audit_days=30", "--set", "ai.model=big", "--json")
    assert kept.returncode == 0, kept.stderr
    assert '"audit_days":30' in kept.stdout and '"model":"big"' in kept.stdout


# -- a disabled tenant -------------------------------------------------------------------------------------
def test_a_disabled_tenants_key_is_refused_everything_until_enabled(base: str, op: httpx.Client,
                                                                   admin_engine: Engine) -> None:
    ids, key = setup(op, admin_engine)
    tenant = ids["tenant"]
    seed_failures(admin_engine, tenant, 1)
    assert op.post(f"{A}/tenants/{tenant}/disable").status_code == 200
    before, audited = state(op, ids), audit_count(admin_engine, tenant)
    with client(base, key) as tk:
        for method, path, body in [
            ("POST", f"/tenants/{tenant}/inboxes", {"channel": "api"}),
            ("POST", f"/inboxes/{ids['inbox']}/rotate-secrets", {"overlap_seconds": 0}),
            ("PATCH", f"/inboxes/{ids['inbox']}", {"name": "Still mine"}),
            ("POST", f"/inboxes/{ids['inbox']}/enable", None),
            ("PATCH", f"/tenants/{tenant}", {"settings": {"default_language": "en"}}),
            ("POST", f"/tenants/{tenant}/export", None),
            ("POST", "/failures/replay", {"all": True}),
            ("POST", "/events/reprocess", {"status": "failed"}),
            ("POST", f"/tenants/{tenant}/erase-contact", {"identity": {"kind": "email", "value": "a@b.example"}}),
            ("PUT", f"/tenants/{tenant}/sla-policies/high", {"first_response_minutes": 5}),
            ("POST", f"/tenants/{tenant}/teams", {"name": "Late"}),
            # The conversation API too: a reply, a state change, a correction.
            ("POST", f"/conversations/{uuid.uuid4()}/messages", {"text": "Still here", "send": True}),
            ("POST", f"/conversations/{uuid.uuid4()}/resolve", None),
            ("PUT", f"/messages/{uuid.uuid4()}/classification", {"priority": "low"}),
            ("GET", f"/tenants/{tenant}/conversations", None),
            # Reads too: a disabled tenant's data is the operator's to release.
            ("GET", f"/tenants/{tenant}", None),
            ("GET", "/inboxes", None),
            ("GET", "/audit", None),
        ]:
            refused = tk.request(method, A + path, json=body, headers={"Idempotency-Key": "late"})
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.json() == {"error": "forbidden", "detail": "this key's tenant is disabled: its keys are "
                                                                      "refused until an operator enables it again"}
        assert state(op, ids) == before and audit_count(admin_engine, tenant) == audited
        assert op.post(f"{A}/tenants/{tenant}/enable").status_code == 200
        assert tk.get(f"{A}/tenants/{tenant}").status_code == 200
        assert tk.post(f"{A}/tenants/{tenant}/inboxes", json={"channel": "api"}).status_code == 201


def test_a_disabled_tenants_console_sessions_end(base: str, op: httpx.Client, admin_engine: Engine) -> None:
    ids, key = setup(op, admin_engine)
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as c:
        form = c.get("/login")
        assert c.post("/login", data={"csrf": CSRF.findall(form.text)[0], "key": key.key}).status_code == 303
        token = CSRF.findall(c.get(f"/tenants/{ids['tenant']}").text)[0]
        assert op.post(f"{A}/tenants/{ids['tenant']}/disable").status_code == 200
        assert c.get(f"/tenants/{ids['tenant']}").headers.get("location") == "/login"
        posted = c.post(f"/tenants/{ids['tenant']}/inboxes", data={"csrf": token, "channel": "api"})
        assert posted.status_code == 401 and "Signed out" in posted.text
        form = c.get("/login")
        again = c.post("/login", data={"csrf": CSRF.findall(form.text)[0], "key": key.key})
        assert again.status_code == 403 and "disabled" in again.text and "intake_console=" not in str(again.headers)
        # Enabling the tenant lets the key sign in again; the session that ended stays ended.
        assert op.post(f"{A}/tenants/{ids['tenant']}/enable").status_code == 200
        assert c.get(f"/tenants/{ids['tenant']}").headers.get("location") == "/login"
    assert len(op.get(f"{A}/tenants/{ids['tenant']}/inboxes").json()["items"]) == 1


# -- secrets kept from caches, keys revoked once ---------------------------------------------------------------
def test_answers_carrying_a_secret_are_never_stored_by_a_cache(base: str, op: httpx.Client,
                                                              admin_engine: Engine) -> None:
    ids, key = setup(op, admin_engine)
    answers = {
        "key create": op.post(f"{A}/keys", json={"name": "cached?", "tenant_id": ids["tenant"]}),
        "inbox create": op.post(f"{A}/tenants/{ids['tenant']}/inboxes", json={"channel": "twilio", "secrets": {
            "auth_token": "a" * 32}}),
        "rotate": op.post(f"{A}/inboxes/{ids['inbox']}/rotate-secrets", json={"overlap_seconds": 0}),
    }
    with client(base, key) as tk:
        answers["tenant key rotate"] = tk.post(f"{A}/inboxes/{ids['inbox']}/rotate-secrets", json={})
        answers["refusal"] = tk.post(f"{A}/keys", json={"name": "no"})
    for name, answer in answers.items():
        assert answer.status_code < 300 or name == "refusal", (name, answer.text)
        assert answer.headers["cache-control"] == "no-store", name
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as c:
        form = c.get("/login")
        assert c.post("/login", data={"csrf": CSRF.findall(form.text)[0], "key": key.key}).status_code == 303
        token = CSRF.findall(c.get(f"/inboxes/{ids['inbox']}").text)[0]
        for path, data in ((f"/tenants/{ids['tenant']}/inboxes", {"channel": "api"}),
                           (f"/inboxes/{ids['inbox']}/rotate-secrets", {"overlap_hours": "0"})):
            shown = c.post(path, data={"csrf": token, **data})
            assert shown.status_code == 200 and "they are shown only once" in shown.text, path
            assert shown.headers["cache-control"] == "no-store", path


def test_revoking_a_revoked_key_changes_nothing(stack: dict[str, str], op: httpx.Client, admin_engine: Engine) -> None:
    key = make_key(admin_engine, name="twice")
    first = op.post(f"{A}/keys/{key.key_id}/revoke")
    second = op.post(f"{A}/keys/{key.key_id}/revoke")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["revoked_at"] is not None
    at_the_prompt = intake("key", "revoke", str(key.key_id), "--json")
    assert at_the_prompt.returncode == 0, at_the_prompt.stderr
    assert json.loads(at_the_prompt.stdout) == first.json()
    assert audit_count(admin_engine, str(key.key_id)) == 2  # key.create and one key.revoke
    with admin_engine.connect() as conn:
        actions = conn.execute(text("SELECT action FROM audit_logs WHERE subject_id = :s ORDER BY created_at"),
                               {"s": str(key.key_id)}).scalars().all()
    assert actions == ["key.create", "key.revoke"]
    assert op.post(f"{A}/keys/{uuid.uuid4()}/revoke").status_code == 404


# -- SLA policies that can be kept, in zones that exist -----------------------------------------------------------
ONE_MINUTE_A_WEEK = {"mon": [["09:00", "09:01"]]}
_TODAY = datetime.now(UTC).date()
MONDAYS = [(_TODAY + timedelta(days=n)).isoformat() for n in range(-7, SEARCH_DAYS + 14)
           if (_TODAY + timedelta(days=n)).weekday() == 0]


@pytest.mark.parametrize(("policy", "field"), [
    ({"resolution_minutes": 366 * 24 * 60, "business_hours": ONE_MINUTE_A_WEEK}, "resolution_minutes"),
    ({"first_response_minutes": 200, "business_hours": ONE_MINUTE_A_WEEK}, "first_response_minutes"),
    ({"first_response_minutes": 1, "resolution_minutes": 2000, "business_hours": ONE_MINUTE_A_WEEK},
     "resolution_minutes"),
    # Open one minute on Mondays, and every Monday of the look-ahead a holiday: never open.
    ({"first_response_minutes": 1, "business_hours": ONE_MINUTE_A_WEEK, "holidays": MONDAYS},
     "first_response_minutes"),
])
def test_a_policy_that_can_never_be_met_is_422_on_its_field(op: httpx.Client, policy: dict[str, Any],
                                                            field: str) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Never"}).json()["id"]
    refused = op.put(f"{A}/tenants/{tenant}/sla-policies/normal", json=policy)
    assert refused.status_code == 422, refused.text
    assert set(refused.json()["fields"]) == {field} and "working minutes" in refused.json()["fields"][field]
    assert op.get(f"{A}/tenants/{tenant}/sla-policies").json()["items"] == []


ZONES_THAT_ARE_NOT = ["localtime", "Factory", "posixrules", "/etc/localtime", "../zoneinfo/UTC",
                      "posix/Europe/Helsinki", "right/UTC", "Europe/Helsinki\x00", "utc", "Europe/helsinki",
                      "UTC/../UTC", "zone.tab", "tzdata.zi", "Europe", "\u202eUTC", "x" * 200]


@pytest.mark.parametrize("zone", ZONES_THAT_ARE_NOT)
def test_only_real_iana_zone_names_are_time_zones(op: httpx.Client, zone: str) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Zoned"}).json()["id"]
    refused = op.put(f"{A}/tenants/{tenant}/sla-policies/high", json={"first_response_minutes": 60,
                                                                      "time_zone": zone})
    assert refused.status_code == 422, refused.text
    assert list(refused.json()["fields"]) == ["time_zone"]


@pytest.mark.parametrize("zone", ["Europe/Helsinki", "UTC", "US/Eastern", "Etc/GMT+2", "America/Argentina/Salta"])
def test_real_zones_and_their_links_are_time_zones(op: httpx.Client, zone: str) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Zoned"}).json()["id"]
    saved = op.put(f"{A}/tenants/{tenant}/sla-policies/high", json={"first_response_minutes": 60,
                                                                    "time_zone": zone})
    assert saved.status_code == 200 and saved.json()["time_zone"] == zone


def test_the_sla_command_refuses_a_zone_that_is_not_one_and_a_time_never_met(stack: dict[str, str],
                                                                             op: httpx.Client) -> None:
    tenant = op.post(f"{A}/tenants", json={"name": "Prompt"}).json()["id"]
    for args, words in ((["--first-response", "1h", "--time-zone", "localtime"], "unknown time zone 'localtime'"),
                        (["--first-response", "1h", "--time-zone", "Factory"], "unknown time zone 'Factory'"),
                        (["--resolution", "300d", "--hours", "mon 09:00-09:01"], "working minutes")):
        refused = intake("sla", "set", "--tenant", tenant, "--priority", "high", *args)
        assert refused.returncode == 1 and words in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert op.get(f"{A}/tenants/{tenant}/sla-policies").json()["items"] == []


def test_the_operator_sets_budgets_and_limits_in_the_console(base: str, op: httpx.Client, operator: Keyed,
                                                            admin_engine: Engine) -> None:
    """The console's form sends text; the numeric settings arrive as numbers, or a 422 names the field."""
    ids, _ = setup(op, admin_engine)
    with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as c:
        form = c.get("/login")
        assert c.post("/login", data={"csrf": CSRF.findall(form.text)[0], "key": operator.key}).status_code == 303
        token = CSRF.findall(c.get(f"/tenants/{ids['tenant']}").text)[0]
        fields = {"csrf": token, "name": "Bounded", "settings.default_region": "", "settings.default_language": "",
                  "settings.reopen_window_hours": "2", "settings.ai.provider": "openai",
                  "settings.ai.model": "big", "settings.ai.monthly_budget_usd": "12.5"}
        assert c.post(f"/tenants/{ids['tenant']}/settings", data=fields).status_code == 303
        for bad in ("1e400", "\u00b2", "-1", "5,0", "1" * 400, "0x10", "NaN", "\x00"):
            refused = c.post(f"/tenants/{ids['tenant']}/settings",
                             data={**fields, "settings.ai.monthly_budget_usd": bad})
            assert refused.status_code == 422 and 'id="e-settings.ai.monthly_budget_usd"' in refused.text, bad
        saved = c.post(f"/inboxes/{ids['inbox']}/settings", data={
            "csrf": token, "name": "Limited", "settings.default_region": "", "settings.reopen_window_hours": "",
            "settings.rate_limit_per_second": "2.5", "settings.rate_limit_burst": "5", "settings.ai_drafts": ""})
        assert saved.status_code == 303, saved.text
    assert op.get(f"{A}/tenants/{ids['tenant']}").json()["settings"] == {
        "reopen_window_hours": 2.0, "ai": {"provider": "openai", "model": "big", "monthly_budget_usd": 12.5},
        "retention": OPERATORS_RETENTION}
    assert op.get(f"{A}/inboxes/{ids['inbox']}").json()["settings"] == {"rate_limit_per_second": 2.5,
                                                                         "rate_limit_burst": 5}
