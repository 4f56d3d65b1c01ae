"""Training a tenant's classifier and finding its latest model, wherever the AI runs.

`train_tenant` reads what the tenant taught (its `ai_examples`: imports and people's corrections, and its
taxonomy's own examples), trains (`pipelines.ai.learned`) and stores the model as the next version in
`ai_models`, keeping the last `KEEP` versions. A tenant with no examples of its own gets no model and keeps
the local provider's keyword and similarity rules; so does one whose examples name a single category.

`latest` is what an AI process calls per message: one indexed read of the latest version number, and the
model's bytes only when the version differs from the one this process holds (a process caches one model per
tenant, so every process moves to a new version on its next message for that tenant).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
import structlog
from pydantic import BaseModel
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import audit
from pipelines.ai import examples, libraries, taxonomy

if TYPE_CHECKING:  # numpy and scikit-learn (the local-ai extra): imported by training and reading a model
    from pipelines.ai import learned

log = structlog.get_logger("intake.ai.training")

KEEP = 3  # versions kept per tenant: the latest, and two to look back at
# What one process holds of tenants' models, least recently used dropped first: BANKING77's (77 categories,
# 60,000 features) takes about 25 MB in memory, so an AI process stays well under 500 MB.
CACHE_BYTES = 200 * 1024 * 1024

SETTINGS = text("SELECT settings FROM tenants WHERE id = :t")
# One training of a tenant at a time (the background job and `intake ai train` may meet): versions stay dense.
LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('intake.ai_models:' || :t, 0))")
STORE = text("""
INSERT INTO ai_models (tenant_id, version, format, examples, categories, accuracy, train_seconds, model)
SELECT :t, COALESCE(max(version), 0) + 1, :format, :examples, :categories, :accuracy, :seconds, :model
FROM ai_models WHERE tenant_id = :t
RETURNING version, created_at
""")
PRUNE = text("""
DELETE FROM ai_models
WHERE tenant_id = :t AND version <= (SELECT max(version) FROM ai_models WHERE tenant_id = :t) - :keep
""")
# A version and when it was made: an erasure drops a tenant's models (their words may be the person's), and the
# next training numbers from 1 again, so a process tells a new model from the one it holds by both.
LATEST_VERSION = text("SELECT version, created_at FROM ai_models WHERE tenant_id = :t ORDER BY version DESC LIMIT 1")
MODEL = text("SELECT model FROM ai_models WHERE tenant_id = :t AND version = :v")
DESCRIBE = text("""
SELECT version, format, examples, categories, accuracy, train_seconds, created_at FROM ai_models
WHERE tenant_id = :t ORDER BY version DESC LIMIT 1
""")


class ModelView(BaseModel):
    """A tenant's model as `intake ai train` and `POST .../ai/train` report it; `version` null: none trained."""

    version: int | None
    examples: int
    categories: int
    accuracy: float | None
    train_seconds: float
    model: str  # what `ai_classifications.model` names for classifications made with it


def model_name(kind: str, version: int) -> str:
    """`lexical-svm-1-v3`: the model's format (lexical, or lexical and semantic) and the tenant's version."""
    return f"{kind}-v{version}"


def training_rows(conn: Connection, tenant: TenantId) -> tuple[list[tuple[str, str]], int]:
    """(text, category) rows to learn from, newest first, and how many of them the tenant gave itself."""
    own = examples.training_rows(conn, tenant)
    raw = conn.execute(SETTINGS, {"t": tenant}).scalar() or {}
    categories = taxonomy.from_settings(raw.get("taxonomy"))
    given = [(t, c.id) for c in categories for t in c.examples]
    return own + given, len(own)


def train_tenant(conn: Connection, tenant: TenantId, *, actor: audit.Actor | None = None) -> ModelView:
    """Train and store the tenant's next model version in the caller's transaction; a tenant with no
    examples of its own (or only one category) gets none, and its older models are removed."""
    conn.execute(LOCK, {"t": str(tenant)})
    rows, own = training_rows(conn, tenant)
    trained = None
    if own:
        libraries.require("training", libraries.TRAIN)
        from pipelines.ai import learned

        trained = learned.train(rows)
    if trained is None:
        conn.execute(text("DELETE FROM ai_models WHERE tenant_id = :t"), {"t": tenant})
        log.info("ai.model.none", tenant_id=str(tenant), examples=own)
        return ModelView(version=None, examples=own, categories=len({c for _, c in rows}) if own else 0,
                         accuracy=None, train_seconds=0.0, model="local-lexical-v1")
    accuracy = None if trained.accuracy is None else round(trained.accuracy, 4)
    stored = conn.execute(STORE, {"t": tenant, "format": trained.model.format, "examples": trained.examples,
                                  "categories": trained.categories, "accuracy": accuracy,
                                  "seconds": round(trained.seconds, 3), "model": trained.model.to_bytes()}).one()
    conn.execute(PRUNE, {"t": tenant, "keep": KEEP})
    view = ModelView(version=stored.version, examples=trained.examples, categories=trained.categories,
                     accuracy=accuracy, train_seconds=round(trained.seconds, 3),
                     model=model_name(trained.model.format, stored.version))
    if actor is not None:
        audit.record(conn, actor=actor, action="ai.train", tenant_id=tenant, subject_type="tenant",
                     subject_id=tenant, after=orjson.loads(view.model_dump_json()))
    log.info("ai.model.trained", tenant_id=str(tenant), version=view.version, examples=view.examples,
             categories=view.categories, accuracy=view.accuracy, seconds=view.train_seconds)
    return view


def describe(conn: Connection, tenant: TenantId) -> ModelView | None:
    row = conn.execute(DESCRIBE, {"t": tenant}).first()
    if row is None:
        return None
    return ModelView(version=row.version, examples=row.examples, categories=row.categories, accuracy=row.accuracy,
                     train_seconds=row.train_seconds, model=model_name(row.format, row.version))


@dataclass(frozen=True)
class Loaded:
    version: int
    model: learned.TenantModel
    created_at: datetime | None = None

    @property
    def name(self) -> str:
        return model_name(self.model.format, self.version)

    def predict(self, text: str, language: str | None = None) -> tuple[str, float]:
        return self.model.predict(text, language=language)


_cache: OrderedDict[str, Loaded] = OrderedDict()
# The version of each tenant's latest model this process found it cannot read (a format a newer release
# wrote), so it is read and logged once per version, not once per message; a newer version is tried again.
_unreadable: OrderedDict[str, tuple[int, datetime]] = OrderedDict()
UNREADABLE_HELD = 10_000
_cache_lock = threading.Lock()


def latest(conn: Connection, tenant: TenantId) -> Loaded | None:
    """The tenant's latest model, read from the database only when its version (and creation: an erasure can
    drop every version, and numbering starts again) is new to this process; the local provider asks, so a
    process without its libraries refuses here (`LocalAIMissing`)."""
    libraries.require("classification", libraries.CLASSIFY)
    from pipelines.ai import learned

    row = conn.execute(LATEST_VERSION, {"t": tenant}).first()
    key = str(tenant)
    with _cache_lock:
        if row is None:
            _cache.pop(key, None)
            return None
        held = _cache.get(key)
        if held is not None and (held.version, held.created_at) == (row.version, row.created_at):
            _cache.move_to_end(key)
            return held
        if _unreadable.get(key) == (row.version, row.created_at):
            return None
    version = row.version
    data = conn.execute(MODEL, {"t": tenant, "v": version}).scalar()
    if data is None:  # pruned between the two reads: the next message reads the newer one
        return held
    try:
        loaded = Loaded(version, learned.TenantModel.from_bytes(bytes(data)), row.created_at)
    except (ValueError, KeyError, OSError) as exc:  # a format this process does not read: keep the rules
        log.warning("ai.model.unreadable", tenant_id=key, version=version, error=str(exc))
        with _cache_lock:
            _unreadable[key] = (row.version, row.created_at)
            while len(_unreadable) > UNREADABLE_HELD:
                _unreadable.popitem(last=False)
        return None
    with _cache_lock:
        _unreadable.pop(key, None)
        _cache[key] = loaded
        _cache.move_to_end(key)
        while len(_cache) > 1 and sum(m.model.nbytes for m in _cache.values()) > CACHE_BYTES:
            _cache.popitem(last=False)
    log.info("ai.model.loaded", tenant_id=key, version=version)
    return loaded
