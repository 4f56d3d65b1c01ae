"""A tenant's labelled examples: the texts its classifier learns from (`ai_examples`).

Three kinds of rows share the table: `import` (a file or an API batch of `text,category` pairs),
`correction` (a person's correction of a message, written by `pipelines.desk.corrections`) and `taxonomy`
(reserved for the taxonomy's own examples; those are read from the settings at training time instead).

An import is all or nothing: the file is read whole and every row checked (UTF-8, no NUL, the right
columns, a text of at most `MAX_TEXT` characters, a known category) before anything is written, and the
rows go in with one statement in the caller's transaction, beside the audit row. The limits are per tenant:
`MAX_CATEGORIES` categories and `MAX_EXAMPLES` examples. An example already stored (same text and category)
is not stored twice.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import audit
from pipelines.ai import taxonomy
from pipelines.control.errors import Invalid
from pipelines.control.fields import Model, clean_text
from pipelines.control.settings import TenantSettings

MAX_CATEGORIES = 200
MAX_EXAMPLES = 100_000
MAX_TEXT = 2_000  # characters of one example: a customer's message, not a document
MAX_FILE_BYTES = 32 * 1024 * 1024  # 100,000 examples of 300 characters fit with room to spare
MAX_CATEGORY = 64
MAX_ERRORS = 5  # shown in one refusal; the count says how many more
CATEGORY = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,63}$")  # a taxonomy id (pipelines.control.fields.Slug)
Source = Literal["correction", "import", "taxonomy"]

COUNT = text("SELECT count(*) FROM ai_examples WHERE tenant_id = :t")
SETTINGS = text("SELECT settings FROM tenants WHERE id = :t FOR UPDATE")  # one import of a tenant at a time
NEW_SETTINGS = text("UPDATE tenants SET settings = CAST(:settings AS jsonb) WHERE id = :t")
# Only pairs not stored already; the anti-join is a hash join, linear in both sides.
INSERT = text("""
INSERT INTO ai_examples (tenant_id, text, category, source)
SELECT :t, x.text, x.category, 'import'
FROM unnest(CAST(:texts AS text[]), CAST(:categories AS text[])) AS x(text, category)
LEFT JOIN ai_examples e ON e.tenant_id = :t AND e.text = x.text AND e.category = x.category
WHERE e.id IS NULL
""")
LIST = text("""
SELECT id, text, category, source, message_id, created_at FROM ai_examples
WHERE tenant_id = :t AND (CAST(:category AS text) IS NULL OR category = :category)
  AND (CAST(:source AS text) IS NULL OR source = :source)
ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset
""")
DELETE = text("""
DELETE FROM ai_examples
WHERE tenant_id = :t AND (CAST(:ids AS uuid[]) IS NULL OR id = ANY(CAST(:ids AS uuid[])))
  AND (CAST(:category AS text) IS NULL OR category = :category)
  AND (CAST(:source AS text) IS NULL OR source = :source)
""")
# What training reads: every example, newest first, so a correction outweighs an older import of the same text.
TRAINING = text("SELECT text, category FROM ai_examples WHERE tenant_id = :t ORDER BY created_at DESC, id DESC")


@dataclass(frozen=True)
class Example:
    text: str
    category: str
    line: int = 0  # where it was read (a file's line, a batch's position), for error messages


class ExampleIn(Model):
    text: Annotated[str, AfterValidator(clean_text)] = Field(min_length=1, max_length=MAX_TEXT)
    category: Annotated[str, AfterValidator(clean_text)] = Field(min_length=1, max_length=MAX_CATEGORY)


class ExampleBatch(Model):
    """Examples to add, all or none; unknown categories are refused unless `create_categories`."""

    examples: list[ExampleIn] = Field(min_length=1, max_length=10_000)
    create_categories: bool = False


class ExampleView(BaseModel):
    id: uuid.UUID
    text: str
    category: str
    source: Source
    message_id: uuid.UUID | None
    created_at: datetime


class ExampleQuery(Model):
    category: str | None = Field(default=None, max_length=MAX_CATEGORY)
    source: Source | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class ExampleFilter(Model):
    """Which examples to delete: ids, a category, a source, or several (all must match); at least one."""

    ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=10_000)
    category: str | None = Field(default=None, min_length=1, max_length=MAX_CATEGORY)
    source: Source | None = None


class ImportResult(BaseModel):
    read: int
    added: int
    duplicates: int
    examples: int  # the tenant's examples after the import
    categories_created: list[str]


class Deleted(BaseModel):
    deleted: int
    examples: int


# -- reading a file -----------------------------------------------------------------------------------
def parse(data: bytes, name: str = "") -> list[Example]:
    """A file's examples: CSV with a `text,category` header, or JSON Lines (`.jsonl`, `.ndjson`, or a first
    line that is an object). Anything else is refused with the lines at fault, before anything is stored."""
    if len(data) > MAX_FILE_BYTES:
        raise Invalid({"file": f"is {len(data):,} bytes; at most {MAX_FILE_BYTES:,} are read in one import"})
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise Invalid({"file": f"line {line} contains a NUL byte: a text file (UTF-8) is expected"})
    try:
        content = data.decode("utf-8-sig")  # a byte order mark is dropped
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise Invalid({"file": f"line {line} is not UTF-8 (byte {exc.start}); save the file as UTF-8"}) from None
    if not content.strip():
        raise Invalid({"file": "is empty: expected a `text,category` header and rows, or JSON Lines"})
    jsonl = name.lower().endswith((".jsonl", ".ndjson")) or content.lstrip().startswith("{")
    examples = _jsonl(content) if jsonl else _csv(content)
    if not examples:
        raise Invalid({"file": "has no examples after its header"})
    return examples


def _csv(content: str) -> list[Example]:
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    errors: list[str] = []
    examples = []
    try:
        header = [h.strip().lower() for h in next(reader)]
        if sorted(header) != ["category", "text"]:
            shown = ",".join(header)[:100]
            raise Invalid({"file": f"the first line must be the header `text,category` (found `{shown}`); "
                                   "JSON Lines files end in .jsonl"})
        text_at, category_at = header.index("text"), header.index("category")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                errors.append(f"line {line}: {len(row)} columns where 2 (text,category) were expected; "
                              "quote a text that holds a comma")
                continue
            examples.append(Example(row[text_at], row[category_at], line))
    except csv.Error as exc:
        raise Invalid({"file": f"line {reader.line_num}: not valid CSV ({exc})"}) from None
    _refuse(errors)
    return examples


def _jsonl(content: str) -> list[Example]:
    errors: list[str] = []
    examples = []
    for line, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append(f"line {line}: not a JSON object")
            continue
        if not isinstance(item, dict) or set(item) != {"text", "category"}:
            errors.append(f'line {line}: expected {{"text": "...", "category": "..."}} and nothing else')
        elif not isinstance(item["text"], str) or not isinstance(item["category"], str):
            errors.append(f"line {line}: text and category must be strings")
        else:
            examples.append(Example(item["text"], item["category"], line))
    _refuse(errors)
    return examples


def _refuse(errors: list[str]) -> None:
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise Invalid({"file": "; ".join(errors[:MAX_ERRORS]) + more})


def checked(examples: Iterable[Example], what: str = "line") -> list[Example]:
    """Each example's text trimmed and within `MAX_TEXT`, its category a taxonomy id; refused with the places."""
    errors, kept = [], []
    for e in examples:
        body, category = e.text.strip(), e.category.strip()
        where = f"{what} {e.line}"
        if "\x00" in body or "\x00" in category:
            errors.append(f"{where}: contains NUL")
        elif not body:
            errors.append(f"{where}: the text is empty")
        elif len(body) > MAX_TEXT:
            errors.append(f"{where}: the text has {len(body):,} characters; at most {MAX_TEXT:,}")
        elif not CATEGORY.match(category):
            errors.append(f"{where}: category {category[:MAX_CATEGORY]!r} is not a category id (lowercase letters, "
                          "digits, _ and -, at most 64)")
        else:
            try:
                body.encode("utf-8")
            except UnicodeEncodeError:
                errors.append(f"{where}: the text is not valid Unicode")
                continue
            kept.append(Example(body, category, e.line))
    _refuse(errors)
    return kept


# -- storing ------------------------------------------------------------------------------------------
def import_examples(conn: Connection, tenant: TenantId, examples: list[Example], *, create_categories: bool,
                    actor: audit.Actor, on_rows: Callable[[int], None] | None = None,
                    what: str = "line") -> ImportResult:
    """Add checked examples in one statement: unknown categories refused (or added to the taxonomy with
    `create_categories`), the tenant's limits kept, the import audited, all in the caller's transaction."""
    examples = checked(examples, what)
    raw_settings = conn.execute(SETTINGS, {"t": tenant}).scalar() or {}
    categories = taxonomy.from_settings(raw_settings.get("taxonomy"))
    known = {c.id for c in categories}
    unknown = sorted({e.category for e in examples} - known)
    if unknown and not create_categories:
        listed = ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise Invalid({"category": f"{len(unknown)} categories are not in this tenant's taxonomy: {listed}; "
                                   "add them to the taxonomy or import with create_categories"})
    if len(known) + len(unknown) > MAX_CATEGORIES:
        raise Invalid({"category": f"the taxonomy would have {len(known) + len(unknown)} categories; "
                                   f"at most {MAX_CATEGORIES}"})
    unique = list({(e.text, e.category): e for e in examples}.values())
    stored = int(conn.execute(COUNT, {"t": tenant}).scalar_one())
    if stored + len(unique) > MAX_EXAMPLES:
        raise Invalid({"examples": f"the tenant has {stored:,} examples and this adds up to {len(unique):,}; "
                                   f"at most {MAX_EXAMPLES:,} a tenant (delete some first)"})
    if unknown:
        added_categories = [{"id": c, "description": "", "keywords": [], "examples": []} for c in unknown]
        document = {**raw_settings, "taxonomy": [_as_setting(c) for c in categories] + added_categories}
        valid = TenantSettings.model_validate(document).model_dump(mode="json", exclude_none=True)
        conn.execute(NEW_SETTINGS, {"t": tenant, "settings": orjson.dumps(valid).decode()})
    added = 0
    for start in range(0, len(unique), 5_000):
        part = unique[start:start + 5_000]
        added += conn.execute(INSERT, {"t": tenant, "texts": [e.text for e in part],
                                       "categories": [e.category for e in part]}).rowcount
        if on_rows is not None:
            on_rows(len(part))
    result = ImportResult(read=len(examples), added=added, duplicates=len(examples) - added,
                          examples=stored + added, categories_created=unknown)
    audit.record(conn, actor=actor, action="ai.examples.import", tenant_id=tenant, subject_type="tenant",
                 subject_id=tenant, after=result.model_dump(mode="json"))
    return result


def _as_setting(category: taxonomy.Category) -> dict[str, Any]:
    return {"id": category.id, "description": category.description, "team": category.team,
            "keywords": list(category.keywords), "examples": list(category.examples)}


def list_examples(conn: Connection, tenant: TenantId, query: ExampleQuery) -> tuple[list[ExampleView], bool]:
    """A page of the tenant's examples, newest first, and whether there are more."""
    rows = conn.execute(LIST, {"t": tenant, "category": query.category, "source": query.source,
                               "limit": query.limit + 1, "offset": query.offset}).mappings().all()
    return [ExampleView.model_validate(dict(r)) for r in rows[:query.limit]], len(rows) > query.limit


def delete_examples(conn: Connection, tenant: TenantId, which: ExampleFilter, *, actor: audit.Actor) -> Deleted:
    if which.ids is None and which.category is None and which.source is None:
        raise Invalid({"body": "name ids, a category or a source: deleting every example takes `source` too"})
    deleted = conn.execute(DELETE, {"t": tenant, "ids": [str(i) for i in which.ids] if which.ids else None,
                                    "category": which.category, "source": which.source}).rowcount
    audit.record(conn, actor=actor, action="ai.examples.delete", tenant_id=tenant, subject_type="tenant",
                 subject_id=tenant, after={**which.model_dump(mode="json", exclude_none=True), "deleted": deleted})
    return Deleted(deleted=deleted, examples=int(conn.execute(COUNT, {"t": tenant}).scalar_one()))


def training_rows(conn: Connection, tenant: TenantId) -> list[tuple[str, str]]:
    return [(r.text, r.category) for r in conn.execute(TRAINING, {"t": tenant})]
