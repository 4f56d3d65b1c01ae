"""A realistic corpus: the same people writing from SMS, WhatsApp, email and a web widget, in different
number and address formats, with provider retries, in shuffled order."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import orjson

CHANNELS = ("twilio", "whatsapp", "postmark", "api")


@dataclass(frozen=True)
class Person:
    name: str
    national: str  # as typed in the tenant's country
    e164: str
    email: str


@dataclass
class Delivery:
    channel: str
    body: bytes
    content_type: str
    webhook_id: str | None = None


@dataclass
class Corpus:
    people: list[Person]
    deliveries: list[Delivery] = field(default_factory=list)
    messages: int = 0  # distinct messages, i.e. what must be stored


FIRST = ["Aino", "Erik", "Maria", "Jürgen", "Sofia", "Liam", "Noah", "Emma", "Olivia", "Lucas", "Elsa", "Mateo"]
LAST = ["Virtanen", "Svensson", "García", "Müller", "Korhonen", "Smith", "Dubois", "Nieminen", "Berg", "López"]


def people(count: int, region: str, rng: random.Random) -> list[Person]:
    result = []
    for index in range(count):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if region == "FI":
            local = f"40{index:07d}"
            national, e164 = f"0{local[:2]} {local[2:5]} {local[5:]}", f"+358{local}"
        else:
            local = f"{index:04d}"
            national, e164 = f"(415) 555-{local}", f"+1415555{local}"
        email = f"{name.split()[0].lower()}.{index}@Customer-{region}.example".replace("ü", "u")
        result.append(Person(name, national, e164, email))
    return result


def build(region: str, count: int, seed: int, retry_rate: float = 0.2) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus(people(count, region, rng))
    base = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    for n, person in enumerate(corpus.people):
        wa_id = person.e164.lstrip("+")
        messages: list[Delivery] = []
        for i, sender in enumerate([person.e164, person.national, f"whatsapp:{person.e164}"]):
            sid = f"SM{uuid.UUID(int=rng.getrandbits(128)).hex}"
            messages.append(Delivery("twilio", urlencode({
                "MessageSid": sid, "From": sender, "To": "+15557654321", "Body": f"sms {i} from {n}",
                "NumMedia": "0", "SmsStatus": "received"}).encode(), "application/x-www-form-urlencoded"))
        for i in range(3):
            ts = int((base + timedelta(minutes=n, seconds=i)).timestamp())
            messages.append(Delivery("whatsapp", orjson.dumps({
                "object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "metadata": {"phone_number_id": "1"}, "contacts": [{"profile": {"name": person.name}, "wa_id": wa_id}],
                    "messages": [{"from": wa_id, "id": f"wamid.{seed}.{n}.{i}", "timestamp": str(ts), "type": "text",
                                  "text": {"body": f"whatsapp {i}"}}]}}]}]}), "application/json"))
        for i in range(3):
            address = person.email if i % 2 else person.email.lower()
            messages.append(Delivery("postmark", orjson.dumps({
                "FromFull": {"Email": address, "Name": person.name}, "MessageID": str(uuid.UUID(int=rng.getrandbits(128))),
                "Subject": f"Question {i}", "Date": "Fri, 20 Nov 2026 10:00:00 +0000", "TextBody": f"email {i}",
                "Headers": [{"Name": "Message-ID", "Value": f"<{seed}.{n}.{i}@mail.example>"}], "ToFull": []}),
                "application/json"))
        # The web widget knows both handles: this is what links the phone and the email person.
        messages.append(Delivery("api", orjson.dumps({
            "id": f"chat-{seed}-{n}", "type": "message", "sent_at": (base + timedelta(minutes=n)).isoformat(),
            "text": "chat", "contact": {"name": person.name, "email": person.email.upper(),
                                        "phone": person.national if region == "US" else person.e164}}),
            "application/json", webhook_id=f"wh-{seed}-{n}"))
        corpus.messages += len(messages)
        corpus.deliveries.extend(messages)
        for message in messages:  # provider retries: the same delivery again
            if rng.random() < retry_rate:
                corpus.deliveries.append(message)
    rng.shuffle(corpus.deliveries)
    return corpus
