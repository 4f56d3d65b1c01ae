"""Classification and reply drafting for stored inbound messages, with usage, cost and budgets.

The work is split so that the caller decides which transactions a provider call runs in: `load` reads
what a message needs, `think` calls the provider and reads through the function it is given, `store`
writes the results with ON CONFLICT on (message, prompt version), so a retried or replayed job changes
nothing. A hosted provider runs with no transaction open; the in-process one inside the message's own.

`store` and `spend.check_budget` append the change events of what they wrote (`message.classified`,
`draft.created`, `budget.alert`) to the caller's `feed`, which the caller records as its transaction's last
statement (`pipelines.changes`). The message's part of an event is the row `store` already locks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Executable, bindparam, func, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from db import direct
from db.schema import ai_classifications, ai_drafts, conversations
from db.tenancy import TenantId
from pipelines import knowledge
from pipelines.ai import language, semantic, taxonomy, training
from pipelines.ai.base import (
    PROMPT_VERSION,
    Classification,
    ClassifyRequest,
    DraftReply,
    DraftRequest,
    Passage,
    Persona,
    Provider,
    Usage,
)
from pipelines.ai.spend import record_usage
from pipelines.changes import MESSAGE_COLUMNS, Change, columns, message
from pipelines.lifecycle import erasure, sla

AUTO_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
NO_DRAFT_CATEGORIES = {"spam", "auto_reply"}
PERSONA_FIELDS = ("name", "tone", "system_prompt", "language", "model", "temperature", "max_tokens")

LOAD = text("""
SELECT m.id, m.conversation_id, m.inbox_id, m.content, m.subject, m.metadata, m.sent_at, m.direction,
       m.contact_id, i.channel, c.last_inbound_at, ct.display_name, i.settings AS inbox_settings,
       t.settings AS tenant_settings, p.persona,
       -- The stored classification of this prompt version, if any: a draft decided later follows it.
       (SELECT jsonb_build_object('category', a.category, 'language', a.language) FROM ai_classifications a
        WHERE a.tenant_id = m.tenant_id AND a.message_id = m.id AND a.prompt_version = :v LIMIT 1) AS classified,
       EXISTS (SELECT 1 FROM ai_drafts d WHERE d.message_id = m.id AND d.prompt_version = :v) AS drafted
FROM messages m
JOIN conversations c ON c.id = m.conversation_id
JOIN inboxes i ON i.id = m.inbox_id
JOIN tenants t ON t.id = m.tenant_id
LEFT JOIN contacts ct ON ct.id = m.contact_id
-- The inbox's own persona, else the tenant's default (ai_personas, migration 0011), skipping inactive ones (0021).
LEFT JOIN LATERAL (
    SELECT jsonb_build_object('name', p.name, 'tone', p.tone, 'system_prompt', p.system_prompt,
                              'language', p.language, 'model', p.model, 'temperature', p.temperature,
                              'max_tokens', p.max_tokens) AS persona
    FROM ai_personas p WHERE p.tenant_id = m.tenant_id AND p.active AND (p.id = i.persona_id OR p.is_default)
    ORDER BY p.id IS NOT DISTINCT FROM i.persona_id DESC LIMIT 1) p ON true
WHERE m.tenant_id = :t AND m.id = ANY(:ids) AND m.direction = 'inbound'
""")


@dataclass
class Context:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    text: str
    subject: str | None
    contact_name: str | None
    is_latest: bool
    auto_reply: bool
    want_classification: bool
    want_draft: bool
    categories: tuple[taxonomy.Category, ...]
    teams: dict[str, uuid.UUID]  # lower-cased team name or keyword -> team id
    persona: Persona
    passages: tuple[Passage, ...] = ()
    contact_id: uuid.UUID | None = None
    sent_at: datetime | None = None
    channel: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    default_language: str | None = None  # tenants.settings["default_language"]
    ai: dict[str, Any] = field(default_factory=dict)  # tenants.settings["ai"]: provider, model, budget
    # The message's stored classification (`category`, `language`): a job that finds it and drafts alone drafts
    # from it, and never pays the provider to classify the message again.
    stored: dict[str, Any] | None = None


@dataclass
class Results:
    classification: Classification | None = None
    draft: DraftReply | None = None
    usage: list[tuple[str, Usage]] = field(default_factory=list)


def headers_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """A message's stored headers; the `api` channel keeps its sender's metadata, whose "headers" may be anything."""
    headers = metadata.get("headers")
    return headers if isinstance(headers, dict) else {}


def is_auto_reply(headers: dict[str, Any]) -> bool:
    """RFC 3834 Auto-Submitted, Precedence and the common vendor headers."""
    auto = str(headers.get("auto-submitted", "no")).strip().lower()
    precedence = str(headers.get("precedence", "")).strip().lower()
    return (auto not in ("", "no") or precedence in AUTO_PRECEDENCE or "x-autoreply" in headers
            or "x-autorespond" in headers)


def ai_settings(tenant_settings: dict[str, Any] | None) -> dict[str, Any]:
    value = (tenant_settings or {}).get("ai")
    return value if isinstance(value, dict) else {}


def load(conn: Connection, tenant: TenantId, message_ids: list[uuid.UUID], *, force: bool = False) -> list[Context]:
    teams = {}
    for row in conn.execute(text("SELECT id, name, keywords FROM teams WHERE tenant_id = :t"), {"t": tenant}):
        teams[row.name.lower()] = row.id
        for keyword in row.keywords or []:
            teams.setdefault(str(keyword).lower(), row.id)
    contexts = []
    for row in conn.execute(LOAD, {"t": tenant, "ids": message_ids, "v": PROMPT_VERSION}).all():
        metadata = row.metadata or {}
        auto = is_auto_reply(headers_of(metadata))
        inbox_settings = row.inbox_settings or {}
        persona_raw = row.persona or {}  # fields left empty keep the built-in persona's
        persona = Persona(**{k: v for k, v in persona_raw.items() if k in PERSONA_FIELDS and v not in (None, "")})
        latest = row.last_inbound_at is None or row.sent_at >= row.last_inbound_at
        contexts.append(Context(
            message_id=row.id, conversation_id=row.conversation_id, text=row.content or "", subject=row.subject,
            contact_name=row.display_name, is_latest=latest, auto_reply=auto,
            want_classification=force or row.classified is None, stored=row.classified,
            want_draft=(not row.drafted and not auto and latest and bool(inbox_settings.get("ai_drafts", True))),
            categories=taxonomy.from_settings((row.tenant_settings or {}).get("taxonomy")),
            teams=teams, persona=persona, contact_id=row.contact_id, sent_at=row.sent_at, channel=row.channel,
            metadata=metadata, default_language=(row.tenant_settings or {}).get("default_language"),
            ai=ai_settings(row.tenant_settings),
        ))
    return contexts


def think(conn_for_retrieval: Any, tenant: TenantId, ctx: Context, provider: Provider) -> Results:
    """Call the provider; `conn_for_retrieval(fn)` runs a read `fn(conn)` (evidence, earlier messages,
    knowledge) in the transaction the caller chooses."""
    results = Results()
    if not (ctx.want_classification or ctx.want_draft):
        return results
    full_text = "\n".join(t for t in (ctx.subject, ctx.text) if t)
    decision = language.decide(full_text)
    earlier: list[language.Earlier] | None = None
    if decision.source != "text":  # short or unsure: read the evidence around it
        earlier, evidence = conn_for_retrieval(lambda conn: gather_evidence(conn, tenant, ctx))
        decision = language.decide(full_text, evidence)
    if ctx.want_classification or ctx.stored is None:
        classification, usage = classify(conn_for_retrieval, tenant, ctx, provider, decision)
        results.classification = classification
        results.usage.append(("classify", usage))
        category, draft_language = classification.category, classification.language
    else:  # classified by an earlier job that did not draft (a repeat after a fault, or drafts turned on since)
        category, draft_language = ctx.stored["category"], ctx.stored["language"] or decision.language
    if ctx.want_draft and category not in NO_DRAFT_CATEGORIES:
        if earlier is None:
            earlier = conn_for_retrieval(lambda conn: earlier_in_conversation(conn, tenant, ctx))
        question = retrieval_query(ctx, earlier)
        vectors, embed_usage = provider.embed([question])
        if embed_usage.tokens_in:
            results.usage.append(("embed", embed_usage))
        meaning = semantic.encode([question])[0] if semantic.available() else None  # offline, ~6 ms
        ctx.passages = tuple(conn_for_retrieval(lambda conn: knowledge.retrieve(
            conn, tenant, question, vectors[0], language=decision.language, meaning=meaning)))
        draft, usage = provider.draft(DraftRequest(ctx.text, ctx.contact_name, draft_language, category,
                                                   ctx.passages, ctx.persona))
        results.draft = draft
        results.usage.append(("draft", usage))
    return results


def classify(conn_for_retrieval: Any, tenant: TenantId, ctx: Context, provider: Provider,
             decision: language.LanguageDecision) -> tuple[Classification, Usage]:
    """The provider's classification of `ctx`'s message in the decided language, and what it cost."""
    # The local provider classifies with the tenant's trained model when it has one (read only when new).
    learned = conn_for_retrieval(lambda conn: training.latest(conn, tenant)) if provider.name == "local" else None
    classification, usage = provider.classify(ClassifyRequest(ctx.text, ctx.subject, ctx.categories,
                                                              tuple(sorted(ctx.teams)), language=decision,
                                                              learned=learned))
    classification = with_language(classification, decision)
    if ctx.auto_reply:
        classification = classification.model_copy(update={
            "category": "auto_reply", "priority": "low",
            "reasoning": ("Marked as an automatic reply by its Auto-Submitted/Precedence headers. "
                          + classification.reasoning)[:1000]})
    return classification, usage


def with_language(classification: Classification, decision: language.LanguageDecision) -> Classification:
    """The decided language, whichever provider classified; the reasoning names the evidence that decided. When
    nothing decided (no detector in this process and no evidence around the message), the provider's own stands."""
    reasoning = classification.reasoning
    if decision.source == "none":
        reasoning = f"{reasoning} Language {classification.language} from the provider; {decision.reason}."[:1000]
        return classification.model_copy(update={"reasoning": reasoning})
    if decision.reason not in reasoning:
        reasoning = f"{reasoning} Language {decision.language} from {decision.reason}."[:1000]
    return classification.model_copy(update={"language": decision.language, "reasoning": reasoning})


HINT_SOURCES = {"telegram": "the Telegram language_code", "api": "the contact's locale",
                "postmark": "the Content-Language header", "mailgun": "the Content-Language header",
                "sendgrid": "the Content-Language header"}
# Only the head of an earlier message is read (language.CONTEXT_CHARS, of which a retrieval query takes less).
EARLIER_IN_CONVERSATION = text("""
SELECT left(content, :chars) AS content, metadata FROM messages
WHERE tenant_id = :t AND conversation_id = :c AND direction = 'inbound' AND id <> :m AND sent_at <= :at
ORDER BY sent_at DESC LIMIT :n
""")
IN_OTHER_CONVERSATIONS = text("""
SELECT left(content, :chars) AS content, metadata FROM messages
WHERE tenant_id = :t AND contact_id = :ct AND conversation_id <> :c AND direction = 'inbound'
ORDER BY sent_at DESC LIMIT :n
""")
EARLIER_LIMIT = 5


def hint_of(metadata: dict[str, Any]) -> str | None:
    """The channel's language hint stored with a message: Telegram's and the api's, or Content-Language."""
    hint = metadata.get("language_hint") or headers_of(metadata).get("content-language")
    return hint if isinstance(hint, str) else None


def earlier_in_conversation(conn: Connection, tenant: TenantId, ctx: Context) -> list[language.Earlier]:
    """The customer's earlier messages in this conversation, newest first."""
    rows = direct.rows(conn, EARLIER_IN_CONVERSATION, {"t": tenant, "c": ctx.conversation_id, "m": ctx.message_id,
                                                       "at": ctx.sent_at, "n": EARLIER_LIMIT,
                                                       "chars": language.CONTEXT_CHARS})
    return [language.Earlier(r.content or "", hint_of(r.metadata or {})) for r in rows]


def gather_evidence(conn: Connection, tenant: TenantId, ctx: Context
                    ) -> tuple[list[language.Earlier], language.Evidence]:
    earlier = earlier_in_conversation(conn, tenant, ctx)
    elsewhere = []
    if ctx.contact_id is not None:
        rows = direct.rows(conn, IN_OTHER_CONVERSATIONS, {"t": tenant, "ct": ctx.contact_id, "c": ctx.conversation_id,
                                                          "n": EARLIER_LIMIT, "chars": language.CONTEXT_CHARS})
        elsewhere = [language.Earlier(r.content or "", hint_of(r.metadata or {})) for r in rows]
    return earlier, language.Evidence(
        hint=hint_of(ctx.metadata), hint_source=HINT_SOURCES.get(ctx.channel, "the channel's language hint"),
        conversation=earlier, contact=elsewhere, tenant_default=ctx.default_language)


QUERY_MESSAGES = 2  # earlier customer messages that join the current one in a retrieval query
QUERY_PART_CHARS = 500


def retrieval_query(ctx: Context, earlier: list[language.Earlier]) -> str:
    """What the knowledge search looks for: the subject, the customer's last messages and this one.

    A follow-up ("and how long does that take?") names its topic only in what came before it.
    """
    parts = [ctx.subject or "", *(m.text for m in reversed(earlier[:QUERY_MESSAGES])), ctx.text]
    return "\n".join(p[:QUERY_PART_CHARS] for p in parts if p.strip())


def team_for(ctx: Context, classification: Classification) -> uuid.UUID | None:
    for key in (classification.team, classification.category):
        if key and key.lower() in ctx.teams:
            return ctx.teams[key.lower()]
    return None


# What a forced run (`intake ai reclassify`) replaces in an existing classification of the same prompt version.
RECLASSIFIED = ("category", "priority", "sentiment", "sentiment_score", "language", "confidence", "reasoning",
                "suggested_team_id", "is_auto_reply", "provider", "model")


# The message as `store` writes about it, still holding what `load` read. FOR SHARE waits for an erasure in
# progress (it updates the row) and holds a later one back until these results are in, where it finds them.
# Text that changed since (another person erased from it, or an edit) is not judged by results about the old
# one: nothing is stored, and the AI sweep sends the message again. The row comes back for the feed's events.
NOT_ERASED = text(f"""
SELECT {columns(MESSAGE_COLUMNS, "messages")} FROM messages
WHERE tenant_id = :t AND id = :id AND (content <> '' OR metadata <> CAST(:erased AS jsonb))
AND content = :content AND subject IS NOT DISTINCT FROM CAST(:subject AS text)
FOR SHARE
""")


def _classification_upsert(*, force: bool) -> Executable:
    """INSERT of one classification; on a second one for the same message and prompt version, nothing, or with
    `force` the new one's values."""
    statement = pg_insert(ai_classifications)
    keys = [ai_classifications.c.tenant_id, ai_classifications.c.message_id, ai_classifications.c.prompt_version]
    if force:
        replaced = {name: statement.excluded[name] for name in RECLASSIFIED}
        upsert = statement.on_conflict_do_update(index_elements=keys, set_={**replaced, "created_at": func.now()})
    else:
        upsert = statement.on_conflict_do_nothing(index_elements=keys)
    return upsert.returning(ai_classifications.c.id)


# Built once, with the values bound at execution: a statement built per message costs more than it runs.
CLASSIFICATION_UPSERT = {force: _classification_upsert(force=force) for force in (False, True)}
DRAFT_INSERT = pg_insert(ai_drafts).on_conflict_do_nothing(
    index_elements=[ai_drafts.c.tenant_id, ai_drafts.c.message_id, ai_drafts.c.prompt_version]
).returning(ai_drafts.c.id)
CONVERSATION_ROUTED = update(conversations).where(
    conversations.c.tenant_id == bindparam("t"), conversations.c.id == bindparam("c")
).values(category=bindparam("category"), priority=bindparam("priority"), suggested_team_id=bindparam("team"),
         updated_at=func.now())


def store(conn: Connection, tenant: TenantId, ctx: Context, results: Results, prices: dict[str, tuple[float, float]],
          *, force: bool = False, feed: list[Change] | None = None) -> dict[str, bool]:
    stored = {"classification": False, "draft": False}
    row = direct.first(conn, NOT_ERASED, {"t": tenant, "id": ctx.message_id, "erased": erasure.ERASED_METADATA,
                                          "content": ctx.text, "subject": ctx.subject})
    if row is None:
        return stored  # erased or redacted while the provider thought: its reasoning and draft would quote the person
    events: list[Change] = []
    the_message = message(row)
    classification = results.classification
    if classification is not None and ctx.want_classification:
        usage = next(u for f, u in results.usage if f == "classify")
        team = team_for(ctx, classification)
        row = conn.execute(CLASSIFICATION_UPSERT[force], {
            "tenant_id": tenant, "message_id": ctx.message_id, "prompt_version": PROMPT_VERSION,
            "category": classification.category, "priority": classification.priority,
            "sentiment": classification.sentiment, "sentiment_score": classification.sentiment_score,
            "language": classification.language, "confidence": classification.confidence,
            "reasoning": classification.reasoning, "suggested_team_id": team,
            "is_auto_reply": ctx.auto_reply or classification.category == "auto_reply",
            "provider": usage.provider, "model": usage.model}).first()
        stored["classification"] = row is not None
        if row is not None:
            events.append(Change("message.classified", {"message": the_message, "classification": {
                "id": row.id, **classification.model_dump(include={
                    "category", "priority", "sentiment", "sentiment_score", "language", "confidence", "reasoning"}),
                "suggested_team_id": team, "provider": usage.provider, "model": usage.model}},
                conversation_id=ctx.conversation_id, subject_id=ctx.message_id))
        if row is not None and ctx.is_latest:
            conn.execute(CONVERSATION_ROUTED, {"t": tenant, "c": ctx.conversation_id, "team": team,
                                               "category": classification.category,
                                               "priority": classification.priority})
            sla.reprioritize(conn, tenant, ctx.conversation_id, classification.priority)
    if results.draft is not None:
        usage = next(u for f, u in results.usage if f == "draft")
        row = conn.execute(DRAFT_INSERT, {
            "tenant_id": tenant, "message_id": ctx.message_id, "conversation_id": ctx.conversation_id,
            "prompt_version": PROMPT_VERSION, "content": results.draft.text,
            "cited_chunk_ids": results.draft.cited_chunk_ids, "confidence": results.draft.confidence,
            "language": results.draft.language, "provider": usage.provider, "model": usage.model}).first()
        stored["draft"] = row is not None
        if row is not None:
            events.append(Change("draft.created", {"message": the_message, "draft": {
                "id": row.id, "message_id": ctx.message_id, "conversation_id": ctx.conversation_id,
                "status": "pending", "content": results.draft.text, "confidence": results.draft.confidence,
                "language": results.draft.language, "cited_chunk_ids": results.draft.cited_chunk_ids}},
                conversation_id=ctx.conversation_id, subject_id=ctx.message_id))
    if feed is not None:
        feed.extend(events)
    if stored["classification"] or stored["draft"]:
        # Usage is recorded once, with the results it paid for (a replayed job that stores nothing, costs nothing).
        record_usage(conn, tenant, ctx.message_id, results.usage, prices)
    return stored
