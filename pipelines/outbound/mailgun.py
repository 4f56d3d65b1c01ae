"""Mailgun: `POST /v3/{domain}/messages`, Basic auth `api:<api key>`, a form with `from`, `to`, `subject`,
`text` (and `html`), the threading headers as `h:In-Reply-To`, `h:References` and `h:Reply-To`. The answer
is 200 with `{"id": "<...>", "message": "Queued. Thank you."}`; an error is `{"message"}` (400 a request
Mailgun refuses, 401 a bad key, 403 a domain not allowed to send); 429 and 5xx are for later."""

from __future__ import annotations

from collections.abc import Mapping

from config import Settings
from pipelines.outbound.base import Outcome, ProviderRequest, Refused, Reply, Sent, by_status, clip, json_of, obj
from pipelines.outbound.email import envelope


def request(reply: Reply, settings: Settings) -> ProviderRequest:
    key, domain = reply.secret("api_key"), reply.setting("domain")
    mail = envelope(reply)
    form = [("from", mail.sender), ("to", mail.to), ("subject", mail.subject), ("text", reply.text),
            ("h:Reply-To", mail.sender)]
    if reply.html:
        form.append(("html", reply.html))
    form += [(f"h:{name}", value) for name, value in mail.headers.items()]
    return ProviderRequest(url=f"{settings.mailgun_api_base.rstrip('/')}/v3/{domain}/messages", form=tuple(form),
                           auth=("api", key))


def answer(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    data = obj(json_of(body))
    if status == 200:
        if data.get("id"):
            return Sent(str(data["id"]))
        return Refused("bad_answer", "HTTP 200 without an id")
    text = clip(data.get("message")) or clip(body.decode("utf-8", "replace"), 300)
    return by_status(status, headers, str(status), text)
