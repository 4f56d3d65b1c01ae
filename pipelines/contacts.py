"""Contact resolution: one contact per real person, safe under any interleaving of workers.

The unique key contact_identities(tenant_id, kind, value) decides every race. A resolver looks the
identities up; creates a contact and claims its identities with ON CONFLICT DO NOTHING in one statement;
and when another worker claimed one first, deletes the contact it just made (its claimed identities go
with it) and looks again (the conflicting insert waited for that worker's commit, so the next look sees
it). When one message's identities belong to two contacts, they are merged into the oldest,
deterministically.

The functions that create or merge contacts take an optional `feed`, a list they append the change events
of what they did to (`contact.created`, `contact.merged`), for the caller to record with the rest of its
transaction's changes (`pipelines.changes`): the events are built from values at hand, never read again.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from rapidfuzz import fuzz
from sqlalchemy import Connection, func, insert, or_, select, text, update

from db import batch, direct
from db.schema import audit_logs, contact_identities, contact_merges, contacts, conversations, messages
from db.tenancy import TenantId
from pipelines.changes import Change
from pipelines.errors import PermanentError

MAX_ATTEMPTS = 5

# One index probe per wanted identity, whatever the table statistics say: a tenant that is growing fast has
# stale statistics, and a hash join over all its identities is far slower. The LIMIT (the key is unique)
# keeps the planner from turning the LATERAL subquery into such a join, which it otherwise does for
# json_to_recordset's guess of 100 rows.
LOOKUP = text("""
SELECT u.kind, u.value, COALESCE(c.merged_into_id, c.id) AS contact_id
FROM json_to_recordset(CAST(:wanted AS json)) AS u(kind text, value text)
CROSS JOIN LATERAL (SELECT contact_id FROM contact_identities ci
                    WHERE ci.tenant_id = :tenant AND ci.kind = u.kind AND ci.value = u.value LIMIT 1) ci
JOIN contacts c ON c.id = ci.contact_id
""")
# LOOKUP for a batch, and each owner locked (FOR KEY SHARE, in one order: by id) in the same statement, where
# a second statement did it. The lock waits for a merge in progress and then reads the owner as it left it, so
# an owner merged meanwhile comes back with its `merged_into_id` and its senders take the careful path.
LOOKUP_LOCKED = text("""
SELECT u.kind, u.value, o.id AS contact_id, o.merged_into_id
FROM json_to_recordset(CAST(:wanted AS json)) AS u(kind text, value text)
CROSS JOIN LATERAL (SELECT contact_id FROM contact_identities ci
                    WHERE ci.tenant_id = :tenant AND ci.kind = u.kind AND ci.value = u.value LIMIT 1) ci
JOIN contacts c ON c.id = ci.contact_id
JOIN contacts o ON o.id = COALESCE(c.merged_into_id, c.id)
ORDER BY o.id
FOR KEY SHARE OF o
""")
CLAIM = text("""
INSERT INTO contact_identities (tenant_id, contact_id, kind, value)
SELECT :tenant, :contact, kind, value FROM unnest(CAST(:kinds AS text[]), CAST(:values AS text[])) AS t(kind, value)
ON CONFLICT (tenant_id, kind, value) DO NOTHING
RETURNING kind, value
""")


LOCK = text("SELECT merged_into_id, display_name FROM contacts WHERE id = :id FOR KEY SHARE")
# A new contact and its identities in one statement; `claimed` tells whether every identity was free.
CREATE = text("""
WITH c AS (INSERT INTO contacts (tenant_id, display_name) VALUES (:t, :n) RETURNING id),
     i AS (INSERT INTO contact_identities (tenant_id, contact_id, kind, value)
           SELECT :t, c.id, u.kind, u.value
           FROM c, unnest(CAST(:kinds AS text[]), CAST(:values AS text[])) AS u(kind, value)
           ON CONFLICT (tenant_id, kind, value) DO NOTHING
           RETURNING 1)
SELECT (SELECT id FROM c) AS id, (SELECT count(*) FROM i) AS claimed
""")


# New contacts for a batch of unknown senders, ids chosen by the caller; `claimed` per contact tells which
# got every identity (identities arrive sorted, so concurrent batches claim them in one global order).
CREATE_MANY = text("""
WITH c AS (INSERT INTO contacts (id, tenant_id, display_name)
           SELECT id, :t, name FROM json_to_recordset(CAST(:contacts AS json)) AS u(id uuid, name text)),
     i AS (INSERT INTO contact_identities (tenant_id, contact_id, kind, value)
           SELECT :t, contact, kind, value
           FROM json_to_recordset(CAST(:claims AS json)) AS u(contact uuid, kind text, value text)
           ON CONFLICT (tenant_id, kind, value) DO NOTHING
           RETURNING contact_id)
SELECT contact_id, count(*) AS claimed FROM i GROUP BY contact_id
""")
# Namesakes through (tenant_id, display_name_key). Under row-level security a condition that applies lower()
# to a column is not leakproof and never becomes an index condition: the names are lowered in a materialized
# CTE, so the comparison is a plain text equality between two columns.
LOOK_ALIKES = text("""
WITH u AS MATERIALIZED (SELECT id, lower(name) AS name_key
                        FROM unnest(CAST(:ids AS uuid[]), CAST(:names AS text[])) AS n(id, name))
SELECT u.id AS new_id, c.id, array_agg(ci.value) FILTER (WHERE ci.kind = 'email') AS emails
FROM u
CROSS JOIN LATERAL (SELECT c.id FROM contacts c
                    WHERE c.tenant_id = :t AND c.id <> u.id AND c.merged_into_id IS NULL
                      AND c.display_name_key = u.name_key
                    LIMIT 20) c
LEFT JOIN contact_identities ci ON ci.tenant_id = :t AND ci.contact_id = c.id
GROUP BY u.id, c.id
""")
FLAG_LOOK_ALIKES = text("""
INSERT INTO contact_duplicate_candidates (tenant_id, contact_id, candidate_id, score, reason)
SELECT :t, a, b, score, reason
FROM unnest(CAST(:a AS uuid[]), CAST(:b AS uuid[]), CAST(:scores AS real[]), CAST(:reasons AS text[]))
     AS u(a, b, score, reason)
ON CONFLICT DO NOTHING
""")

Identities = Sequence[tuple[str, str]]


def _pairs(identities: Identities) -> str:
    return batch.rows({"kind": k, "value": v} for k, v in identities)


def created(contact: uuid.UUID, name: str | None, identities: Identities) -> Change:
    """`contact.created`: the new contact with the identities it claimed."""
    return Change("contact.created", {"contact": {
        "id": contact, "display_name": name,
        "identities": [{"kind": k, "value": v} for k, v in sorted(identities)]}}, subject_id=contact)


class ResolutionConflict(PermanentError):
    """One message's identities kept changing hands through every attempt. Ingest runs one transaction per
    tenant, so this is not a race another try would win: the event is set aside (replayable), not the job."""


def resolve_contact(
    conn: Connection, tenant: TenantId, identities: Sequence[tuple[str, str]], name: str | None, *,
    known: dict[tuple[str, str], uuid.UUID] | None = None, feed: list[Change] | None = None,
) -> uuid.UUID:
    """The contact these identities belong to, created or merged as needed.

    `known` may carry what a batch look-up already found for these identities, saving the first look-up.
    """
    wanted = sorted(set(identities))
    kinds, values = [k for k, _ in wanted], [v for _, v in wanted]
    for attempt in range(MAX_ATTEMPTS):
        if attempt == 0 and known is not None:
            found = {pair: known[pair] for pair in wanted if pair in known}
        else:
            rows = direct.rows(conn, LOOKUP, {"tenant": tenant, "wanted": _pairs(wanted)})
            found = {(row.kind, row.value): row.contact_id for row in rows}
        owners: list[uuid.UUID] = sorted(set(found.values()))
        missing = [pair for pair in wanted if pair not in found]
        if not owners:
            row = conn.execute(CREATE, {"t": tenant, "n": name, "kinds": kinds, "values": values}).one()
            if row.claimed == len(wanted):
                if name:
                    record_duplicate_candidates(conn, tenant, [(row.id, name, wanted)])
                if feed is not None:
                    feed.append(created(row.id, name, wanted))
                return uuid.UUID(str(row.id))
            # Another worker claimed one of these first: drop ours (its identities go with it) and look again.
            conn.execute(text("DELETE FROM contacts WHERE id = :id"), {"id": row.id})
            continue
        if len(owners) > 1:
            contact = merge_contacts(conn, tenant, owners, reason="shared identity", identities=wanted, feed=feed)
            current_name = None
        else:
            contact = owners[0]
            # Hold the contact until this transaction ends, so a concurrent merge either finishes first
            # (and we follow it) or waits for us (and then moves what we wrote).
            locked = conn.execute(LOCK, {"id": contact}).one()
            if locked.merged_into_id is not None:
                continue
            current_name = locked.display_name
        if missing:
            claimed = conn.execute(CLAIM, {"tenant": tenant, "contact": contact, "kinds": [k for k, _ in missing],
                                           "values": [v for _, v in missing]}).all()
            if len(claimed) < len(missing):
                continue  # someone else owns one of them now: the next round merges
        if name and current_name is None:
            conn.execute(text("UPDATE contacts SET display_name = :name, updated_at = now() "
                              "WHERE id = :id AND display_name IS NULL"), {"id": contact, "name": name})
        return uuid.UUID(str(contact))
    raise ResolutionConflict(f"identities {wanted} kept changing hands")


MERGED = text("SELECT id, merged_into_id FROM contacts "
              "WHERE id = ANY(CAST(:ids AS uuid[])) AND merged_into_id IS NOT NULL")


def resolve_contacts(
    conn: Connection, tenant: TenantId, people: Sequence[tuple[Sequence[tuple[str, str]], str | None]], *,
    feed: list[Change] | None = None,
) -> list[uuid.UUID]:
    """`resolve_contact` for a batch: one statement looks up and locks every sender already known.

    A sender whose identities all belong to one live contact needs nothing else; any other (new, partly
    known, spanning two contacts, or merged meanwhile) takes the careful one-by-one path.
    """
    wanted = sorted({pair for identities, _ in people for pair in identities})
    rows = direct.rows(conn, LOOKUP_LOCKED, {"tenant": tenant, "wanted": _pairs(wanted)})
    owner: dict[tuple[str, str], uuid.UUID] = {(row.kind, row.value): row.contact_id for row in rows}
    live = {row.contact_id for row in rows if row.merged_into_id is None}
    known: dict[int, uuid.UUID] = {}
    for index, (identities, _) in enumerate(people):
        owners = {owner.get(pair) for pair in identities}
        only = owners.pop() if len(owners) == 1 else None
        if only is not None:
            known[index] = only
    resolved = {index: contact for index, contact in known.items() if contact in live}
    # The careful path claims rows through unique indexes; taking them in one global order (sorted by
    # identity) keeps two workers that meet the same new senders from deadlocking on each other.
    slow = sorted((i for i in range(len(people)) if i not in resolved), key=lambda i: sorted(people[i][0]))
    unknown = [i for i in slow if not any(pair in owner for pair in people[i][0])]
    for index, contact in create_contacts(conn, tenant, [people[i] for i in unknown], feed=feed).items():
        for pair in people[unknown[index]][0]:
            owner[pair] = contact
        live.add(contact)
        resolved[unknown[index]] = contact
    slow = [i for i in slow if i not in resolved]
    for index in slow:
        identities, name = people[index]
        if all(owner.get(pair) in live for pair in identities) and len({owner[p] for p in identities}) == 1:
            resolved[index] = owner[identities[0]]  # resolved a moment ago for an earlier sender
            continue
        contact = resolve_contact(conn, tenant, identities, name, known=owner, feed=feed)
        for pair in identities:
            owner[pair] = contact
        live.add(contact)
        resolved[index] = contact
    if slow:
        # A careful resolution may have merged a contact that an earlier sender of this batch resolved to:
        # point those senders at the survivor too.
        chosen = batch.uuids(sorted(set(resolved.values())))
        merged: dict[uuid.UUID, uuid.UUID] = {
            row.id: row.merged_into_id for row in direct.rows(conn, MERGED, {"ids": chosen})}
        for index, contact in resolved.items():
            for _ in range(5):
                if contact not in merged:
                    break
                contact = merged[contact]
            resolved[index] = contact
    return [resolved[i] for i in range(len(people))]


def create_contacts(conn: Connection, tenant: TenantId, senders: Sequence[tuple[Identities, str | None]], *,
                    feed: list[Change] | None = None) -> dict[int, uuid.UUID]:
    """New contacts for senders none of whose identities is known yet, in one statement.

    Senders of the batch that share an identity are one person and get one contact (the first name
    given). Returns sender index -> contact for every contact that claimed all its identities; where
    another worker claimed one first, the contact is dropped and its senders take the careful path.
    """
    if not senders:
        return {}
    group_of: dict[tuple[str, str], int] = {}
    parent = list(range(len(senders)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for index, (identities, _) in enumerate(senders):
        for pair in identities:
            if pair in group_of:
                parent[root(index)] = root(group_of[pair])
            else:
                group_of[pair] = index
    by_group: dict[int, uuid.UUID] = {}
    contacts: dict[int, uuid.UUID] = {}
    names: dict[uuid.UUID, str | None] = {}
    wanted: dict[uuid.UUID, set[tuple[str, str]]] = {}
    for index, (identities, name) in enumerate(senders):
        contact = contacts[index] = by_group.setdefault(root(index), uuid.uuid4())
        names[contact] = names.get(contact) or name
        wanted.setdefault(contact, set()).update(identities)
    claims = sorted((pair, contact) for contact, pairs in wanted.items() for pair in pairs)
    ids = sorted(wanted)
    claimed = {row.contact_id: row.claimed for row in direct.rows(conn, CREATE_MANY, {
        "t": tenant, "contacts": batch.rows({"id": c, "name": names[c]} for c in ids),
        "claims": batch.rows({"contact": c, "kind": k, "value": v} for (k, v), c in claims)})}
    lost = [c for c in ids if claimed.get(c, 0) < len(wanted[c])]
    if lost:  # their identities go with them
        conn.execute(text("DELETE FROM contacts WHERE tenant_id = :t AND id = ANY(:ids)"), {"t": tenant, "ids": lost})
    kept = set(ids) - set(lost)
    record_duplicate_candidates(conn, tenant, [(c, names[c], sorted(wanted[c])) for c in sorted(kept) if names[c]])
    if feed is not None:
        feed.extend(created(c, names[c], sorted(wanted[c])) for c in ids if c in kept)
    return {index: contacts[index] for index in range(len(senders)) if contacts[index] in kept}


def merge_contacts(
    conn: Connection, tenant: TenantId, contact_ids: Sequence[uuid.UUID], *, reason: str,
    identities: Sequence[tuple[str, str]] = (), feed: list[Change] | None = None,
) -> uuid.UUID:
    """Merge contacts into the oldest (then lowest id): identities, conversations and messages move."""
    c = contacts.c
    rows = conn.execute(
        select(c.id, c.created_at).where(c.tenant_id == tenant, c.id.in_(list(contact_ids)))
        .order_by(c.id).with_for_update()
    ).all()
    ordered = sorted(rows, key=lambda r: (r.created_at, r.id))
    survivor: uuid.UUID = ordered[0].id
    for loser in (r.id for r in ordered[1:]):
        name = _absorb(conn, tenant, survivor, loser, reason, identities)
        if feed is not None:
            feed.append(Change("contact.merged", {"contact": {"id": survivor, "display_name": name},
                                                  "merged_id": loser, "reason": reason}, subject_id=survivor))
    return survivor


def _absorb(conn: Connection, tenant: TenantId, survivor: uuid.UUID, loser: uuid.UUID, reason: str,
            identities: Sequence[tuple[str, str]]) -> str | None:
    """Move the loser's rows to the survivor; the survivor's display name afterwards."""
    ids, conv, msg, con = contact_identities.c, conversations.c, messages.c, contacts.c
    moved = conn.execute(
        update(contact_identities).where(ids.tenant_id == tenant, ids.contact_id == loser)
        .values(contact_id=survivor).returning(ids.kind, ids.value)).all()
    # Where both have an open conversation in one inbox, the loser's messages join the survivor's.
    theirs = conversations.alias("s")
    pairs = conn.execute(
        update(conversations)
        .where(conv.tenant_id == tenant, conv.contact_id == loser, conv.status == "open",
               theirs.c.tenant_id == tenant, theirs.c.contact_id == survivor, theirs.c.status == "open",
               theirs.c.inbox_id == conv.inbox_id)
        .values(status="merged", updated_at=func.now())
        .returning(conv.id.label("loser_conv"), theirs.c.id.label("survivor_conv"))).all()
    for pair in pairs:
        conn.execute(update(messages).where(msg.tenant_id == tenant, msg.conversation_id == pair.loser_conv)
                     .values(conversation_id=pair.survivor_conv))
        refresh_conversation_counters(conn, tenant, pair.survivor_conv)
        refresh_conversation_counters(conn, tenant, pair.loser_conv)
    conn.execute(update(conversations).where(conv.tenant_id == tenant, conv.contact_id == loser)
                 .values(contact_id=survivor, updated_at=func.now()))
    conn.execute(update(messages).where(msg.tenant_id == tenant, msg.contact_id == loser).values(contact_id=survivor))
    conn.execute(update(contacts).where(con.tenant_id == tenant, or_(con.id == loser, con.merged_into_id == loser))
                 .values(merged_into_id=survivor, updated_at=func.now()))
    loser_name = select(con.display_name).where(con.id == loser).scalar_subquery()
    name = conn.execute(update(contacts).where(con.id == survivor)
                        .values(display_name=func.coalesce(con.display_name, loser_name), updated_at=func.now())
                        .returning(con.display_name)).scalar()
    details = {
        "moved_identities": [list(r) for r in moved],
        "trigger_identities": [list(i) for i in identities],
        "merged_conversations": [str(p.loser_conv) for p in pairs],
    }
    conn.execute(insert(contact_merges).values(tenant_id=tenant, survivor_id=survivor, merged_id=loser, reason=reason,
                                               details=details))
    conn.execute(insert(audit_logs).values(tenant_id=tenant, actor="intake.ingest", action="contact.merged",
                                           subject_type="contact", subject_id=str(survivor),
                                           details={"merged_id": str(loser), "reason": reason, **details}))
    return None if name is None else str(name)


def refresh_conversation_counters(conn: Connection, tenant: TenantId, conversation_id: uuid.UUID) -> None:
    conn.execute(text("""
        UPDATE conversations c SET
            message_count = s.total, inbound_count = s.inbound, first_message_at = s.first_at,
            last_message_at = s.last_at, last_inbound_at = s.last_inbound_at, updated_at = now()
        FROM (SELECT count(*) AS total, count(*) FILTER (WHERE direction = 'inbound') AS inbound,
                     min(sent_at) AS first_at, max(sent_at) AS last_at,
                     max(sent_at) FILTER (WHERE direction = 'inbound') AS last_inbound_at
              FROM messages WHERE tenant_id = :t AND conversation_id = :id) s
        WHERE c.tenant_id = :t AND c.id = :id"""), {"t": tenant, "id": conversation_id})


def record_duplicate_candidates(
    conn: Connection, tenant: TenantId, new: Sequence[tuple[uuid.UUID, str | None, Identities]]
) -> int:
    """Flag look-alikes of new contacts (same name, similar email) for a person to review; never merge."""
    named = [(contact, name, identities) for contact, name, identities in new if name]
    if not named:
        return 0
    rows = direct.rows(conn, LOOK_ALIKES, {"t": tenant, "ids": [c for c, _, _ in named],
                                           "names": [n for _, n, _ in named]})
    emails = {contact: [v for k, v in identities if k == "email"] for contact, _, identities in named}
    pairs: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, str]] = {}
    for row in rows:
        score, reason = 90.0, "same name"
        mine = emails[row.new_id]
        if mine and row.emails:
            best = max(fuzz.ratio(a, b) for a in mine for b in row.emails)
            if best >= 80:
                score, reason = max(score, best), f"same name, similar email ({best:.0f}%)"
        key = (min(row.new_id, row.id), max(row.new_id, row.id))
        pairs[key] = max(pairs.get(key, (0.0, "")), (score, reason))
    if pairs:
        keys = sorted(pairs)
        direct.run(conn, FLAG_LOOK_ALIKES, {"t": tenant, "a": [a for a, _ in keys], "b": [b for _, b in keys],
                                            "scores": [pairs[k][0] for k in keys],
                                            "reasons": [pairs[k][1] for k in keys]})
    return len(pairs)
