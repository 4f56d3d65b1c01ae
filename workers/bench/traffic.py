"""Benchmark traffic: signed deliveries mixed across channels and tenants, with repeat senders and retries."""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from pipelines.channels.signing import sign
from pipelines.inboxes import CreatedInbox

CHANNELS = ("api", "telegram", "twilio", "whatsapp", "postmark")
TEXTS = [
    "Hi, my order has not arrived yet, can you check?", "I was charged twice for my subscription",
    "Hei, tilaukseni on myöhässä", "Meine Rechnung ist falsch, bitte korrigieren",
    "¿Dónde está mi pedido?", "The app crashes when I log in", "Can I change my delivery address?",
    "Jag vill avsluta mitt konto", "Thanks, that solved it!", "Le colis est arrivé endommagé",
]


@dataclass(frozen=True)
class Delivery:
    channel: str
    inbox: CreatedInbox
    body: bytes
    content_type: str
    webhook_id: str | None
    message_key: str  # (inbox, provider id): what must be stored once


def delivery_body(channel: str, person: int, rng: random.Random, now: datetime) -> tuple[bytes, str, str | None, str]:
    """One delivery's body, content type, webhook id and the provider's id of its message. Every id is drawn at
    random, so deliveries generated apart (another seed, another point of `--scale`) never share one: a shared
    id would be a provider's retry of a message stored earlier, missing from the later books."""
    body: dict[str, Any]
    text = rng.choice(TEXTS)
    phone = f"+1415{person:07d}"
    sent = now - timedelta(seconds=rng.randint(0, 600))
    uid = uuid.UUID(int=rng.getrandbits(128)).hex
    if channel == "api":
        msg_id = f"bench-{uid}"
        body = {"id": msg_id, "type": "message", "sent_at": sent.isoformat(), "text": text,
                "contact": {"email": f"customer{person}@example.com", "name": f"Customer {person}"}}
        return orjson.dumps(body), "application/json", f"wh_{uid}", msg_id
    if channel == "telegram":  # a message id is unique within its chat; at random, across runs as well
        message_id = rng.getrandbits(40)
        body = {"update_id": rng.getrandbits(40), "message": {
            "message_id": message_id, "date": int(sent.timestamp()), "chat": {"id": 10_000 + person, "type": "private"},
            "from": {"id": 10_000 + person, "first_name": f"Customer {person}"}, "text": text}}
        return orjson.dumps(body), "application/json", None, f"{10_000 + person}:{message_id}"
    if channel == "twilio":
        sid = f"SM{uid}"
        form = {"MessageSid": sid, "From": phone, "To": "+15557654321", "Body": text, "NumMedia": "0",
                "SmsStatus": "received"}
        return urlencode(form).encode(), "application/x-www-form-urlencoded", None, sid
    if channel == "whatsapp":
        wamid = f"wamid.{uid}"
        value = {"metadata": {"phone_number_id": "1"}, "contacts": [{"profile": {"name": f"Customer {person}"},
                                                                       "wa_id": phone[1:]}],
                 "messages": [{"from": phone[1:], "id": wamid, "timestamp": str(int(sent.timestamp())),
                               "type": "text", "text": {"body": text}}]}
        body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": value}]}]}
        return orjson.dumps(body), "application/json", None, wamid
    postmark_id = str(uuid.UUID(int=rng.getrandbits(128)))  # Postmark's own id keys the message
    body = {"FromFull": {"Email": f"customer{person}@example.com", "Name": f"Customer {person}"},
            "MessageID": postmark_id, "Subject": "Help", "TextBody": text,
            "Date": sent.strftime("%a, %d %b %Y %H:%M:%S +0000"), "ToFull": [],
            "Headers": [{"Name": "Message-ID", "Value": f"<{uid}@mail.example.com>"}]}
    return orjson.dumps(body), "application/json", None, postmark_id


def zipf_weights(count: int, exponent: float = 1.0) -> list[float]:
    """Tenant sizes as fleets have them: a few large tenants, a long tail of small ones (rank ** -exponent)."""
    return [1 / (rank ** exponent) for rank in range(1, count + 1)]


def generate(inboxes: list[dict[str, CreatedInbox]], count: int, *, seed: int, duplicate_rate: float = 0.1,
             people_per_tenant: int = 200, weights: list[float] | None = None) -> list[Delivery]:
    """`count` deliveries; about `duplicate_rate` of them repeat an earlier one, as provider retries do.

    Tenants are drawn uniformly, or by `weights` (see `zipf_weights`)."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(weights)) if weights else None
    now = datetime.now(UTC)
    result: list[Delivery] = []
    while len(result) < count:
        if result and rng.random() < duplicate_rate:
            result.append(result[rng.randrange(max(0, len(result) - 200), len(result))])
            continue
        tenant = rng.choices(inboxes, cum_weights=cumulative)[0] if cumulative else rng.choice(inboxes)
        channel = rng.choice(CHANNELS)
        person = rng.randrange(people_per_tenant)
        body, ctype, webhook_id, key = delivery_body(channel, person, rng, now)
        result.append(Delivery(channel, tenant[channel], body, ctype, webhook_id, f"{tenant[channel].id}:{key}"))
    return result


def signed(deliveries: list[Delivery], base_url: str) -> list[tuple[str, dict[str, str], bytes]]:
    out = []
    for d in deliveries:
        path = f"/v1/webhooks/{d.channel}/{d.inbox.id}"
        headers, body = sign(d.channel, d.inbox.secrets, base_url + path, d.body, d.content_type,
                             webhook_id=d.webhook_id)
        out.append((path, headers, body))
    return out
