"""A tenant's labelled examples: imported from CSV and JSON Lines at the command line, added, listed and deleted
over the admin API, refused whole (nothing stored) for hostile files and bodies, within the tenant's limits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.ai import examples
from pipelines.control.errors import Invalid
from tests.admin_server import Keyed, client, make_key, make_tenant
from tests.processes import intake_ok as ok
from tests.processes import intake_refused as refused

CSV = 'text,category\r\n"I was charged twice, please refund",billing\r\nWhere is my parcel?,shipping\r\n'








def stored(engine: Engine, tenant: uuid.UUID) -> list[tuple[str, str, str]]:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        return [tuple(r) for r in conn.execute(text(
            "SELECT text, category, source FROM ai_examples ORDER BY text"))]


def taxonomy_ids(engine: Engine, tenant: uuid.UUID) -> list[str] | None:
    with engine.begin() as conn:
        bind_tenant(conn, tenant)
        raw = conn.execute(text("SELECT settings -> 'taxonomy' FROM tenants WHERE id = :t"), {"t": tenant}).scalar()
    return None if raw is None else [c["id"] for c in raw]


# -- reading files ------------------------------------------------------------------------------------
def test_csv_with_bom_crlf_and_quotes_and_json_lines_are_read() -> None:
    read = examples.parse(b"\xef\xbb\xbf" + CSV.encode())
    assert [(e.text, e.category) for e in read] == [("I was charged twice, please refund", "billing"),
                                                   ("Where is my parcel?", "shipping")]
    swapped = examples.parse(b'category,text\nbilling,"He said ""refund"" twice"\n\n')
    assert [(e.text, e.category) for e in swapped] == [('He said "refund" twice', "billing")]
    lines = examples.parse('{"text": "Päivää, lasku on väärin", "category": "billing"}\n\n'.encode(), "x.jsonl")
    assert [(e.text, e.category, e.line) for e in lines] == [("Päivää, lasku on väärin", "billing", 1)]


@pytest.mark.parametrize(("data", "name", "says"), [
    (b"", "x.csv", "is empty"),
    (b"text,category\n", "x.csv", "no examples"),
    (b"text,label\nhello,billing\n", "x.csv", "header `text,category`"),
    (b"text,category,extra\nhello,billing,1\n", "x.csv", "header `text,category`"),
    (b"text,category\nhello,billing,oops\n", "x.csv", "line 2: 3 columns"),
    (b"text,category\nhel\x00lo,billing\n", "x.csv", "line 2 contains a NUL byte"),
    (b"text,category\nna\xefve caf\xe9,billing\n", "x.csv", "line 2 is not UTF-8"),
    (b'text,category\n"never closed,billing\n', "x.csv", "not valid CSV"),
    (b'{"text": "a", "category": "billing"}\n{"text": 1, "category": "billing"}\n', "x.jsonl", "line 2: text and"),
    (b'{"text": "a", "category": "billing", "x": 1}\n', "x.jsonl", "line 1: expected"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "x.jsonl", "line 1: not a JSON object"),
    (b'{"text": "a", "category": "billing"}\nnot json\n', "x.jsonl", "line 2: not a JSON object"),
])
def test_hostile_files_are_refused_with_the_place(data: bytes, name: str, says: str) -> None:
    with pytest.raises(Invalid) as refusal:
        examples.parse(data, name)
    assert says in str(refusal.value)


def test_oversized_files_and_rows_are_refused() -> None:
    with pytest.raises(Invalid, match="at most"):
        examples.parse(b"text,category\n" + b"x" * examples.MAX_FILE_BYTES, "big.csv")
    with pytest.raises(Invalid, match="line 3: the text has 2,001 characters"):
        examples.checked([examples.Example("fine", "billing", 2), examples.Example("y" * 2001, "billing", 3)])
    with pytest.raises(Invalid, match="is not a category id"):
        examples.checked([examples.Example("fine", "reverted_card_payment?", 2)])
    with pytest.raises(Invalid, match="the text is empty"):
        examples.checked([examples.Example("   ", "billing", 2)])
    many = [examples.Example("", "billing", i) for i in range(20)]
    with pytest.raises(Invalid, match=r"and 15 more"):
        examples.checked(many)


# -- the command line ---------------------------------------------------------------------------------
def test_import_at_the_command_line(tmp_path: Path, app_engine: Engine, admin_engine: Engine) -> None:
    tenant = make_tenant(admin_engine, "Examples CLI")
    path = tmp_path / "labels.csv"
    path.write_bytes(CSV.encode())
    first = ok("ai", "examples", "import", str(path), "--tenant", str(tenant))
    assert first == {"read": 2, "added": 2, "duplicates": 0, "examples": 2, "categories_created": []}
    again = ok("ai", "examples", "import", str(path), "--tenant", str(tenant))
    assert (again["added"], again["duplicates"], again["examples"]) == (0, 2, 2)

    # An unknown category refuses the whole file; --create-categories adds it to the taxonomy.
    path.write_text("text,category\nCan I pay by card?,billing\nWhat are your opening hours?,opening_hours\n")
    assert "opening_hours" in refused("ai", "examples", "import", str(path), "--tenant", str(tenant))
    assert len(stored(app_engine, tenant)) == 2 and taxonomy_ids(app_engine, tenant) is None
    created = ok("ai", "examples", "import", str(path), "--tenant", str(tenant), "--create-categories")
    assert created["categories_created"] == ["opening_hours"] and created["examples"] == 4
    ids = taxonomy_ids(app_engine, tenant)
    assert ids is not None and ids[-1] == "opening_hours" and "billing" in ids  # the default ones kept

    listed = ok("ai", "examples", "list", "--tenant", str(tenant), "--category", "billing")
    assert sorted(e["text"] for e in listed["items"]) == ["Can I pay by card?", "I was charged twice, please refund"]
    assert ok("ai", "examples", "delete", listed["items"][0]["id"], "--tenant", str(tenant))["deleted"] == 1
    assert ok("ai", "examples", "delete", "--tenant", str(tenant), "--category", "shipping") == {
        "deleted": 1, "examples": 2}
    assert "name ids, a category or a source" in refused("ai", "examples", "delete", "--tenant", str(tenant))

    path.write_bytes(b"text,category\nok,billing\nbad\x00,billing\n")
    assert "NUL" in refused("ai", "examples", "import", str(path), "--tenant", str(tenant))
    assert "--tenant must be a UUID" in refused("ai", "examples", "import", str(path), "--tenant", "nope")
    with admin_engine.begin() as conn:
        actions = [r[0] for r in conn.execute(text(
            "SELECT action FROM audit_logs WHERE tenant_id = :t AND action LIKE 'ai.%' ORDER BY created_at"),
            {"t": tenant})]
    assert actions == ["ai.examples.import", "ai.examples.import", "ai.examples.import", "ai.examples.delete",
                       "ai.examples.delete"]


def test_the_limits_of_a_tenant(app_engine: Engine, admin_engine: Engine) -> None:
    from pipelines import audit

    tenant = make_tenant(admin_engine, "Examples limits")
    actor = audit.Actor("tests")
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        many = [examples.Example(f"text {i}", f"c{i}", i) for i in range(examples.MAX_CATEGORIES)]
        with pytest.raises(Invalid, match="at most 200"):
            examples.import_examples(conn, tenant, many, create_categories=True, actor=actor)  # type: ignore[arg-type]
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        conn.execute(text("INSERT INTO ai_examples (tenant_id, text, category, source) "
                          "SELECT :t, 'filler ' || i, 'billing', 'import' FROM generate_series(1, :n) i"),
                     {"t": tenant, "n": examples.MAX_EXAMPLES - 1})
    with app_engine.begin() as conn:
        bind_tenant(conn, tenant)
        two = [examples.Example("one more", "billing", 1), examples.Example("and another", "billing", 2)]
        with pytest.raises(Invalid, match="at most 100,000 a tenant"):
            examples.import_examples(conn, tenant, two, create_categories=False, actor=actor)  # type: ignore[arg-type]
        result = examples.import_examples(conn, tenant, two[:1], create_categories=False, actor=actor)  # type: ignore[arg-type]
    assert result.examples == examples.MAX_EXAMPLES


# -- the admin API ------------------------------------------------------------------------------------
@pytest.fixture
def tenant_key(base: str, admin_engine: Engine) -> Iterator[tuple[uuid.UUID, httpx.Client]]:
    tenant = make_tenant(admin_engine, "Examples API")
    key: Keyed = make_key(admin_engine, tenant_id=tenant, name="trainer")
    with client(base, key) as http:
        yield tenant, http


def test_examples_over_the_api(tenant_key: tuple[uuid.UUID, httpx.Client], app_engine: Engine,
                               admin_engine: Engine) -> None:
    tenant, http = tenant_key
    path = f"/v1/admin/tenants/{tenant}/ai/examples"
    batch = {"examples": [{"text": "My card was charged twice", "category": "billing"},
                          {"text": "Wo ist mein Paket?", "category": "shipping"}]}
    added = http.post(path, json=batch)
    assert added.status_code == 201, added.text
    assert added.json()["added"] == 2
    unknown = http.post(path, json={"examples": [{"text": "hi", "category": "greetings"}]})
    assert unknown.status_code == 422 and "greetings" in unknown.json()["fields"]["category"]

    page = http.get(path, params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_offset"] == 1
    assert {e["source"] for e in http.get(path).json()["items"]} == {"import"}

    gone = http.request("DELETE", path, json={"ids": [page["items"][0]["id"]]})
    assert gone.json() == {"deleted": 1, "examples": 1}
    assert http.request("DELETE", path, json={}).status_code == 422

    # Another tenant's examples are out of reach.
    other = make_tenant(admin_engine, "Examples other")
    assert http.get(f"/v1/admin/tenants/{other}/ai/examples").status_code == 404  # another tenant: as an id of nothing
    assert http.post(f"/v1/admin/tenants/{other}/ai/examples", json=batch).status_code == 404  # another tenant: as an id of nothing
    assert stored(app_engine, other) == []


@pytest.mark.parametrize("body", [
    {"examples": []},
    {"examples": [{"text": "a\u0000b", "category": "billing"}]},
    {"examples": [{"text": "x" * 2001, "category": "billing"}]},
    {"examples": [{"text": "ok", "category": "billing", "extra": 1}]},
    {"examples": [{"text": ["nested"], "category": "billing"}]},
    {"examples": [{"text": "ok", "category": "Not A Slug!"}]},
    b'{"examples": [{"text": "\\ud800 lone surrogate", "category": "billing"}]}',
    {"examples": "all of them"},
])
def test_hostile_batches_change_nothing(tenant_key: tuple[uuid.UUID, httpx.Client], app_engine: Engine,
                                        body: dict[str, Any] | bytes) -> None:
    tenant, http = tenant_key
    path = f"/v1/admin/tenants/{tenant}/ai/examples"
    if isinstance(body, bytes):
        answer = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        answer = http.post(path, json=body)
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["error"] in ("invalid", "malformed_json")
    assert stored(app_engine, tenant) == []


def test_malformed_and_oversized_bodies(tenant_key: tuple[uuid.UUID, httpx.Client]) -> None:
    tenant, http = tenant_key
    path = f"/v1/admin/tenants/{tenant}/ai/examples"
    assert http.post(path, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    deep = b'{"examples": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert http.post(path, content=deep, headers={"content-type": "application/json"}).status_code in (400, 422)
    huge = b'{"examples": [{"text": "' + b"x" * (25 * 1024 * 1024) + b'", "category": "billing"}]}'
    assert http.post(path, content=huge, headers={"content-type": "application/json"}).status_code == 413
