"""Focused cases of the ingest pipeline against the real database: identities, merges, threads, statuses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from sqlalchemy import Engine, text

from db.tenancy import bind_tenant
from pipelines.inboxes import CreatedInbox, create_inbox
from tests.factories import deliver, new_inbox
from tests.webhooks import fixture


def query(engine: Engine, inbox: CreatedInbox, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return list(conn.execute(text(sql), params).all())


def sibling_inbox(engine: Engine, inbox: CreatedInbox, channel: str, **settings: Any) -> CreatedInbox:
    import os

    from pipelines.crypto import SecretBox

    issued = {"twilio": {"auth_token": "t"}, "whatsapp": {"app_secret": "s"}, "mailgun": {"signing_key": "k"}}
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return create_inbox(conn, SecretBox(os.environ["INTAKE_SECRET_KEY"]), inbox.tenant_id, channel,
                            given_secrets=issued.get(channel), settings=settings)


def twilio_sms(sender: str, sid: str, body: str = "hi") -> tuple[bytes, str]:
    return urlencode({"MessageSid": sid, "From": sender, "To": "+15557654321", "Body": body,
                      "NumMedia": "0", "SmsStatus": "received"}).encode(), "application/x-www-form-urlencoded"


def meta_text(wa_id: str, wamid: str, body: str, ts: int = 1_750_000_000, name: str = "Jane") -> tuple[bytes, str]:
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": "1"}, "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": body}}]}}]}]}
    return orjson.dumps(payload), "application/json"


def api_message(msg_id: str, sent_at: datetime, text_: str, **contact: str) -> tuple[bytes, str, dict[str, str]]:
    body = orjson.dumps({"id": msg_id, "type": "message", "sent_at": sent_at.isoformat(), "text": text_,
                         "contact": contact})
    return body, "application/json", {"webhook-id": f"wh_{msg_id}"}


def postmark_email(sender: str, message_id: str, subject: str, body: str, in_reply_to: str | None = None,
                   references: str | None = None, cc: tuple[str, ...] = ()) -> tuple[bytes, str]:
    headers = [{"Name": "Message-ID", "Value": f"<{message_id}>"}]
    if in_reply_to:
        headers.append({"Name": "In-Reply-To", "Value": f"<{in_reply_to}>"})
    if references:
        headers.append({"Name": "References", "Value": references})
    payload = {"FromFull": {"Email": sender, "Name": "Jane Doe"}, "MessageID": str(uuid.uuid4()), "Subject": subject,
               "Date": "Mon, 16 Nov 2026 08:00:00 +0000", "TextBody": body, "Headers": headers, "ToFull": [],
               "CcFull": [{"Email": address, "Name": ""} for address in cc]}
    return orjson.dumps(payload), "application/json"


def test_one_phone_in_every_format_is_one_contact(app_engine: Engine) -> None:
    twilio = new_inbox(app_engine, "twilio")
    whatsapp = sibling_inbox(app_engine, twilio, "whatsapp")
    deliver(app_engine, twilio, *twilio_sms("+14155550101", "SM1"))
    deliver(app_engine, twilio, *twilio_sms("whatsapp:+14155550101", "SM2"))
    deliver(app_engine, twilio, *twilio_sms("(415) 555-0101", "SM3"))
    deliver(app_engine, whatsapp, *meta_text("14155550101", "wamid.1", "hello"))
    identities = query(app_engine, twilio, "SELECT kind, value FROM contact_identities")
    assert identities == [("phone", "+14155550101")]
    assert query(app_engine, twilio, "SELECT count(*) FROM contacts")[0][0] == 1
    # SMS and Twilio WhatsApp share the Twilio inbox, so one conversation; Meta's inbox has its own.
    conversations = query(app_engine, twilio, "SELECT inbox_id, message_count FROM conversations ORDER BY 2")
    assert sorted(c[1] for c in conversations) == [1, 3]


def test_national_numbers_use_the_inbox_region(app_engine: Engine) -> None:
    twilio = new_inbox(app_engine, "twilio", settings={"default_region": "FI"})
    deliver(app_engine, twilio, *twilio_sms("040 123 4567", "SMfi"))
    assert query(app_engine, twilio, "SELECT value FROM contact_identities") == [("+358401234567",)]


def test_a_message_linking_two_known_contacts_merges_them(app_engine: Engine) -> None:
    api = new_inbox(app_engine, "api")
    postmark = sibling_inbox(app_engine, api, "postmark")
    twilio = sibling_inbox(app_engine, api, "twilio")
    deliver(app_engine, postmark, *postmark_email("Jane.Doe@Example.com", "e1@mail", "Refund", "Where is it?"))
    deliver(app_engine, twilio, *twilio_sms("+14155550199", "SMm1"))
    (email_owner,) = query(app_engine, api, "SELECT contact_id FROM contact_identities WHERE kind = 'email'")
    (phone_owner,) = query(app_engine, api, "SELECT contact_id FROM contact_identities WHERE kind = 'phone'")
    assert email_owner != phone_owner
    body, ctype, headers = api_message("w1", datetime.now(UTC), "Both of me", email="jane.doe@example.com",
                                       phone="+1 415 555 0199", name="Jane Doe")
    deliver(app_engine, api, body, ctype, headers=headers)

    live = query(app_engine, api, "SELECT id FROM contacts WHERE merged_into_id IS NULL")
    assert live == [email_owner]  # the older contact survives
    assert {r[0] for r in query(app_engine, api, "SELECT contact_id FROM contact_identities")} == {email_owner[0]}
    assert {r[0] for r in query(app_engine, api, "SELECT contact_id FROM messages")} == {email_owner[0]}
    assert {r[0] for r in query(app_engine, api, "SELECT contact_id FROM conversations")} == {email_owner[0]}
    merges = query(app_engine, api, "SELECT survivor_id, merged_id, reason FROM contact_merges")
    assert merges == [(email_owner[0], phone_owner[0], "shared identity")]
    audits = query(app_engine, api, "SELECT action, subject_id FROM audit_logs")
    assert audits == [("contact.merged", str(email_owner[0]))]
    assert query(app_engine, api, "SELECT merged_into_id FROM contacts WHERE id = :id", id=phone_owner[0]) == [
        (email_owner[0],)]


def test_look_alikes_are_flagged_for_review_not_merged(app_engine: Engine) -> None:
    postmark = new_inbox(app_engine, "postmark")
    deliver(app_engine, postmark, *postmark_email("john.smith@gmail.com", "l1@m", "Hi", "One"))
    deliver(app_engine, postmark, *postmark_email("johnsmith@gmail.com", "l2@m", "Hi", "Two"))
    assert query(app_engine, postmark, "SELECT count(*) FROM contacts WHERE merged_into_id IS NULL") == [(2,)]
    (candidate,) = query(app_engine, postmark, "SELECT score, reason, status FROM contact_duplicate_candidates")
    assert candidate[0] >= 90 and "similar email" in candidate[1] and candidate[2] == "open"


def test_reopen_window(app_engine: Engine) -> None:
    api = new_inbox(app_engine, "api", settings={"reopen_window_hours": 24})
    now = datetime.now(UTC)
    body, ctype, headers = api_message("r1", now - timedelta(days=3), "first", external_id="cust-1")
    deliver(app_engine, api, body, ctype, headers=headers)
    (first_conv,) = query(app_engine, api, "SELECT id FROM conversations")
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = :at"),
                     {"at": now - timedelta(hours=2)})
    body, ctype, headers = api_message("r2", now, "within the window", external_id="cust-1")
    deliver(app_engine, api, body, ctype, headers=headers)
    assert query(app_engine, api, "SELECT id, status, message_count FROM conversations") == [
        (first_conv[0], "open", 2)]
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = :at"),
                     {"at": now - timedelta(hours=30)})
    body, ctype, headers = api_message("r3", now, "after the window", external_id="cust-1")
    deliver(app_engine, api, body, ctype, headers=headers)
    rows = query(app_engine, api, "SELECT status, message_count FROM conversations ORDER BY created_at")
    assert rows == [("resolved", 2), ("open", 1)]


def test_email_threads_follow_references_within_the_tenant_only(app_engine: Engine) -> None:
    postmark = new_inbox(app_engine, "postmark")
    deliver(app_engine, postmark, *postmark_email("a@customer.example", "root@mail", "Order 1", "Question",
                                                  cc=("B@Customer.example",)))
    (root_conv,) = query(app_engine, postmark, "SELECT id FROM conversations")
    with app_engine.begin() as conn:  # an agent resolved it; then a colleague replies on the thread
        bind_tenant(conn, postmark.tenant_id)
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = now()"))
    deliver(app_engine, postmark, *postmark_email("b@customer.example", "reply@mail", "Re: Order 1", "Me too",
                                                  references="<root@mail>"))
    conv_of_reply = query(app_engine, postmark,
                          "SELECT conversation_id FROM messages WHERE rfc_message_id = 'reply@mail'")
    assert conv_of_reply == [root_conv]

    other_tenant = new_inbox(app_engine, "postmark")
    deliver(app_engine, other_tenant, *postmark_email("a@customer.example", "x@mail", "Re: Order 1", "Hi",
                                                      in_reply_to="root@mail"))
    other_conv = query(app_engine, other_tenant, "SELECT conversation_id FROM messages")
    assert other_conv != [root_conv] and len(other_conv) == 1


def test_quoted_history_is_separated_from_the_reply(app_engine: Engine) -> None:
    postmark = new_inbox(app_engine, "postmark")
    body = "Yes, please refund it.\n\nOn Mon, 16 Nov 2026 at 09:00, Support <s@x.com> wrote:\n> Shall we refund?"
    deliver(app_engine, postmark, *postmark_email("q@customer.example", "q1@mail", "Re: refund", body))
    ((content, quoted),) = query(app_engine, postmark, "SELECT content, quoted_text FROM messages")
    assert content == "Yes, please refund it."
    assert quoted.startswith("On Mon, 16 Nov 2026")


def test_messages_are_ordered_by_provider_time_whatever_the_arrival_order(app_engine: Engine) -> None:
    whatsapp = new_inbox(app_engine, "whatsapp")
    deliver(app_engine, whatsapp, *meta_text("358401112222", "wamid.late", "second", ts=1_750_000_100))
    deliver(app_engine, whatsapp, *meta_text("358401112222", "wamid.early", "first", ts=1_750_000_000))
    deliver(app_engine, whatsapp, *meta_text("358401112222", "wamid.early", "first", ts=1_750_000_000))  # retry
    ordered = query(app_engine, whatsapp, "SELECT content FROM messages ORDER BY sent_at")
    assert ordered == [("first",), ("second",)]
    ((count, first_at, last_at),) = query(
        app_engine, whatsapp, "SELECT message_count, first_message_at, last_message_at FROM conversations")
    assert count == 2
    assert (first_at.timestamp(), last_at.timestamp()) == (1_750_000_000, 1_750_000_100)


def test_delivery_statuses_only_move_forward(app_engine: Engine) -> None:
    twilio = new_inbox(app_engine, "twilio")
    with app_engine.begin() as conn:  # an agent's reply, written by the inbox application
        bind_tenant(conn, twilio.tenant_id)
        conn.execute(text("INSERT INTO messages (tenant_id, inbox_id, direction, external_id, content, status, "
                          "sent_at) VALUES (:t, :i, 'outbound', 'SMout', 'On its way', 'queued', now())"),
                     {"t": twilio.tenant_id, "i": twilio.id})

    def status(value: str, **extra: str) -> None:
        body = urlencode({"MessageSid": "SMout", "MessageStatus": value, **extra}).encode()
        deliver(app_engine, twilio, body, "application/x-www-form-urlencoded")

    def current() -> tuple[str, str | None]:
        ((value, error),) = query(app_engine, twilio, "SELECT status, status_error FROM messages")
        return value, error

    status("delivered")
    status("sent")  # arrives late: ignored
    assert current() == ("delivered", None)
    status("read")
    status("failed", ErrorCode="30008", ErrorMessage="Unknown error")
    assert current() == ("read", None)


def test_failed_status_records_the_error(app_engine: Engine) -> None:
    twilio = new_inbox(app_engine, "twilio")
    with app_engine.begin() as conn:
        bind_tenant(conn, twilio.tenant_id)
        conn.execute(text("INSERT INTO messages (tenant_id, inbox_id, direction, external_id, status, sent_at) "
                          "VALUES (:t, :i, 'outbound', 'SMfail', 'sent', now())"),
                     {"t": twilio.tenant_id, "i": twilio.id})
    body = urlencode({"MessageSid": "SMfail", "MessageStatus": "undelivered", "ErrorCode": "30003",
                      "ErrorMessage": "Unreachable destination handset"}).encode()
    deliver(app_engine, twilio, body, "application/x-www-form-urlencoded")
    assert query(app_engine, twilio, "SELECT status, status_error FROM messages") == [
        ("failed", "30003: Unreachable destination handset")]


def test_telegram_edits_update_the_stored_message(app_engine: Engine) -> None:
    telegram = new_inbox(app_engine, "telegram")
    deliver(app_engine, telegram, *fixture("telegram/message.json"))
    deliver(app_engine, telegram, *fixture("telegram/edited_message.json"))
    ((content, metadata),) = query(app_engine, telegram, "SELECT content, metadata FROM messages")
    assert content == "Edited text" and metadata["edited"] is True


def test_an_edit_in_the_same_batch_as_its_message_is_applied(app_engine: Engine) -> None:
    from pipelines.ingest import IngestPolicy, ingest_events

    telegram = new_inbox(app_engine, "telegram")
    ids = store_events(app_engine, telegram, [fixture("telegram/message.json")[0],
                                              fixture("telegram/edited_message.json")[0]])
    with app_engine.begin() as conn:
        bind_tenant(conn, telegram.tenant_id)
        result = ingest_events(conn, telegram.tenant_id, ids, IngestPolicy())
    assert (len(result.messages_created), result.duplicates) == (1, 1)
    ((content, metadata),) = query(app_engine, telegram, "SELECT content, metadata FROM messages")
    assert content == "Edited text" and metadata["edited"] is True


def test_a_corrupt_event_is_marked_failed_and_reported(app_engine: Engine) -> None:
    from pipelines.ingest import IngestPolicy, ingest_events

    api = new_inbox(app_engine, "api")
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        event_id = conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, body) "
            "VALUES (:t, :i, 'api', 'corrupt', 'application/json', '\\x7b') RETURNING id"),
            {"t": api.tenant_id, "i": api.id}).scalar_one()
        result = ingest_events(conn, api.tenant_id, [event_id], IngestPolicy())
    assert list(result.failed) == [event_id]
    ((status, error),) = query(app_engine, api, "SELECT status, error FROM inbound_events")
    assert status == "failed" and "JSON" in error


def store_events(engine: Engine, inbox: CreatedInbox, bodies: list[bytes]) -> list[uuid.UUID]:
    """JSON events as the ingress leaves them (stored, `received`), one after another."""
    with engine.begin() as conn:
        bind_tenant(conn, inbox.tenant_id)
        return [conn.execute(text(
            "INSERT INTO inbound_events (tenant_id, inbox_id, channel, dedupe_key, content_type, headers, body, "
            "received_at) VALUES (:t, :i, :c, :k, 'application/json', CAST(:h AS jsonb), :b, "
            "now() + :n * interval '1 ms') RETURNING id"),
            {"t": inbox.tenant_id, "i": inbox.id, "c": inbox.channel, "k": key, "b": body, "n": n,
             "h": orjson.dumps({"content-type": "application/json", "webhook-id": key}).decode()}).scalar_one()
            for n, (body, key) in enumerate((body, f"wh_{uuid.uuid4()}") for body in bodies)]


def test_a_job_tops_its_batch_up_with_its_tenants_waiting_events(app_engine: Engine) -> None:
    from pipelines.ingest import IngestPolicy, TenantBusy, ingest_events

    api, other = new_inbox(app_engine, "api"), new_inbox(app_engine, "api")
    sent = datetime(2026, 11, 20, 10, tzinfo=UTC)
    bodies = [api_message(f"m{n}", sent, f"hello {n}", external_id="cust")[0] for n in range(6)]
    bodies.insert(2, b'{"id": "x", "truncat')  # a waiting event that no longer parses
    own, first_waiting, corrupt, second_waiting, *later = store_events(app_engine, api, bodies)
    store_events(app_engine, other, bodies[:2])

    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        result = ingest_events(conn, api.tenant_id, [own], IngestPolicy(), batch_max=4)
    # Its own event plus the three oldest waiting: the corrupt one is set aside by the batch that took it.
    assert (result.events, result.waiting_taken, len(result.messages_created)) == (4, 3, 3)
    assert list(result.failed) == [corrupt]
    statuses = dict(query(app_engine, api, "SELECT id, status FROM inbound_events"))
    assert {k for k, v in statuses.items() if v == "processed"} == {own, first_waiting, second_waiting}
    assert statuses[corrupt] == "failed" and {statuses[e] for e in later} == {"received"}
    assert {s for (s,) in query(app_engine, other, "SELECT status FROM inbound_events")} == {"received"}

    # While one transaction ingests the tenant, another job waits a moment, then hands its events back.
    holder = app_engine.connect()
    transaction = holder.begin()
    bind_tenant(holder, api.tenant_id)
    taken = ingest_events(holder, api.tenant_id, [], IngestPolicy(), batch_max=1)
    # The oldest waiting event is the next good one: a failed event is never taken up again.
    assert (taken.waiting_taken, taken.events, taken.processed, taken.failed) == (1, 1, [later[0]], {})
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        with pytest.raises(TenantBusy) as busy:
            ingest_events(conn, api.tenant_id, [later[0], later[1]], IngestPolicy())
    assert set(busy.value.waiting) == {later[0], later[1]}
    transaction.commit()
    holder.close()
    with app_engine.begin() as conn:  # sent again later: the first is stored by now, the second is not
        bind_tenant(conn, api.tenant_id)
        again = ingest_events(conn, api.tenant_id, busy.value.waiting, IngestPolicy())
    assert (again.events, len(again.messages_created)) == (1, 1)
    assert query(app_engine, api, "SELECT count(*), count(DISTINCT external_id) FROM messages") == [(5, 5)]


def test_new_senders_in_one_batch_are_created_together_and_correctly(app_engine: Engine) -> None:
    from pipelines.ingest import IngestPolicy, ingest_events

    api = new_inbox(app_engine, "api", settings={"reopen_window_hours": 24})
    now = datetime.now(UTC)
    body, _, _ = api_message("old", now - timedelta(days=1), "earlier", external_id="returning")
    (earlier,) = store_events(app_engine, api, [body])
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        ingest_events(conn, api.tenant_id, [earlier], IngestPolicy())
        conn.execute(text("UPDATE conversations SET status = 'resolved', resolved_at = :at"),
                     {"at": now - timedelta(hours=1)})
    batch = [
        api_message("b1", now, "one", phone="+14155550101", name="Ann Lee"),
        api_message("b2", now, "two", phone="+14155550101", email="ann@example.com"),  # the same person
        api_message("b3", now, "three", email="ann@example.com", external_id="ann-crm"),  # linked through b2
        api_message("b4", now, "four", phone="+14155550199", name="Ann Lee"),  # a look-alike, not the same
        api_message("b5", now, "five", external_id="returning"),  # reopens within the window
    ]
    ids = store_events(app_engine, api, [body for body, _, _ in batch])
    with app_engine.begin() as conn:
        bind_tenant(conn, api.tenant_id)
        result = ingest_events(conn, api.tenant_id, ids, IngestPolicy())
    assert len(result.messages_created) == 5
    contacts = query(app_engine, api, """
        SELECT c.display_name, array_agg(ci.kind || ':' || ci.value ORDER BY ci.kind, ci.value)
        FROM contacts c JOIN contact_identities ci ON ci.contact_id = c.id
        WHERE c.merged_into_id IS NULL GROUP BY c.id, c.display_name ORDER BY 2""")
    assert sorted(contacts, key=str) == sorted([
        ("Ann Lee", ["email:ann@example.com", "external:ann-crm", "phone:+14155550101"]),
        ("Ann Lee", ["phone:+14155550199"]),
        (None, ["external:returning"]),
    ], key=str)
    (candidate,) = query(app_engine, api, "SELECT reason FROM contact_duplicate_candidates")
    assert candidate == ("same name",)
    conversations = query(app_engine, api, """
        SELECT array_agg(m.external_id ORDER BY m.external_id), v.status, v.message_count
        FROM conversations v JOIN messages m ON m.conversation_id = v.id GROUP BY v.id ORDER BY 1""")
    assert conversations == [(["b1", "b2", "b3"], "open", 3), (["b4"], "open", 1), (["b5", "old"], "open", 2)]
