"""A person's correction of the AI: a message's category and priority as someone who read it says.

The correction is stored beside the AI's rows (`ai_corrections`, one per message, replaced by the next one,
with who and when), becomes the conversation's category and priority (the SLA's due times follow a new
priority), and its text and category are kept in `ai_examples` (source `correction`, one per message) for
the tenant's AI to learn from. The change feed records `message.classified` with `"corrected": true`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines import audit, changes
from pipelines.ai import taxonomy
from pipelines.control.errors import Conflict, Invalid, NotFound
from pipelines.desk.models import Correction, CorrectionView, feed_message
from pipelines.desk.views import get_message
from pipelines.lifecycle import sla

# The AI's own category for automatic replies, which no taxonomy lists.
AUTO_REPLY = "auto_reply"
MAX_LISTED = 20

MESSAGE = text("""
SELECT m.direction, m.conversation_id, m.content, c.status AS conversation_status,
       (SELECT CAST(settings -> 'taxonomy' AS text) FROM tenants WHERE id = m.tenant_id) AS taxonomy
FROM messages m LEFT JOIN conversations c ON c.tenant_id = m.tenant_id AND c.id = m.conversation_id
WHERE m.tenant_id = :t AND m.id = :id
FOR UPDATE OF m
""")
UPSERT = text("""
INSERT INTO ai_corrections AS k (tenant_id, message_id, category, priority, actor, actor_key_id)
VALUES (:t, :message, :category, :priority, :actor, :key)
ON CONFLICT (tenant_id, message_id) DO UPDATE SET
    category = COALESCE(EXCLUDED.category, k.category), priority = COALESCE(EXCLUDED.priority, k.priority),
    actor = EXCLUDED.actor, actor_key_id = EXCLUDED.actor_key_id, updated_at = now()
RETURNING message_id, category, priority, actor, actor_key_id, created_at, updated_at
""")
# The AI's category where the person gave only a priority: the latest classification of the message.
AI_CATEGORY = text("""
SELECT category FROM ai_classifications WHERE tenant_id = :t AND message_id = :message
ORDER BY created_at DESC, id DESC LIMIT 1
""")
EXAMPLE = text("""
INSERT INTO ai_examples (tenant_id, text, category, source, message_id)
VALUES (:t, :text, :category, 'correction', :message)
ON CONFLICT (tenant_id, message_id) DO UPDATE SET text = EXCLUDED.text, category = EXCLUDED.category,
    source = 'correction', created_at = now()
""")
SHOWN = text("""
UPDATE conversations SET category = COALESCE(:category, category), priority = COALESCE(:priority, priority),
       updated_at = now()
WHERE tenant_id = :t AND id = :id
""")


def correct(conn: Connection, tenant: TenantId, message_id: uuid.UUID, request: Correction, *,
            actor: audit.Actor) -> CorrectionView:
    if request.category is None and request.priority is None:
        raise Invalid({"body": "give category, priority or both"})
    row = conn.execute(MESSAGE, {"t": tenant, "id": message_id}).first()
    if row is None:
        raise NotFound(f"no message {message_id}")
    if row.direction != "inbound":
        raise Conflict("only inbound messages are classified")
    if request.category is not None:
        _known(request.category, row.taxonomy)
    stored = conn.execute(UPSERT, {"t": tenant, "message": message_id, "category": request.category,
                                   "priority": request.priority, "actor": actor.name, "key": actor.key_id}).one()
    correction = CorrectionView.model_validate(stored._mapping)
    category = correction.category or conn.execute(AI_CATEGORY, {"t": tenant, "message": message_id}).scalar()
    if category is not None and row.content.strip():
        conn.execute(EXAMPLE, {"t": tenant, "text": row.content, "category": category, "message": message_id})
    if row.conversation_id is not None:
        conn.execute(SHOWN, {"t": tenant, "id": row.conversation_id, "category": request.category,
                             "priority": request.priority})
        if request.priority is not None and row.conversation_status == "open":
            sla.reprioritize(conn, tenant, row.conversation_id, request.priority)
    audit.record(conn, actor=actor, action="message.correct", tenant_id=tenant, subject_type="message",
                 subject_id=message_id, after=request.model_dump(mode="json", exclude_none=True))
    data: dict[str, Any] = {
        "message": feed_message(get_message(conn, tenant, message_id)),
        "classification": {**correction.model_dump(mode="json", include={"category", "priority", "actor",
                                                                         "updated_at"}), "corrected": True},
        "corrected": True,
    }
    changes.record(conn, tenant, [changes.Change("message.classified", data, conversation_id=row.conversation_id,
                                                 subject_id=message_id)])
    return correction


def _known(category: str, raw_taxonomy: str | None) -> None:
    ids = [c.id for c in taxonomy.from_settings(orjson.loads(raw_taxonomy) if raw_taxonomy else None)]
    if category not in ids and category != AUTO_REPLY:
        listed = ", ".join(ids[:MAX_LISTED]) + (", ..." if len(ids) > MAX_LISTED else "")
        raise Invalid({"category": f"not one of this tenant's categories: {listed}"})
