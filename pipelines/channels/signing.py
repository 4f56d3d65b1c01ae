"""Sign a delivery exactly as its provider would: for the benchmark's load and for tests and tools."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import parse_qsl, urlencode

from pipelines.channels import api, mailgun, twilio, whatsapp


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sign(channel: str, secrets: dict[str, str], url: str, body: bytes, content_type: str,
         *, webhook_id: str | None = None, now: float | None = None) -> tuple[dict[str, str], bytes]:
    """Headers (and, for Mailgun, whose signature travels in the form, the body) for one delivery."""
    headers = {"content-type": content_type}
    now = time.time() if now is None else now
    if channel == "twilio":
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(body.decode(errors="replace"), keep_blank_values=True):
            params.setdefault(k, []).append(v)
        headers["x-twilio-signature"] = twilio.signature(secrets["auth_token"], url, params)
    elif channel == "whatsapp":
        headers["x-hub-signature-256"] = whatsapp.signature(secrets["app_secret"], body)
    elif channel in ("postmark", "sendgrid"):
        headers["authorization"] = basic(secrets["basic_user"], secrets["basic_password"])
    elif channel == "mailgun":
        token = uuid.uuid4().hex + uuid.uuid4().hex[:18]
        timestamp = str(int(now))
        fields = parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
        fields += [("timestamp", timestamp), ("token", token),
                   ("signature", mailgun.signature(secrets["signing_key"], timestamp, token))]
        body = urlencode(fields).encode()
    elif channel == "telegram":
        headers["x-telegram-bot-api-secret-token"] = secrets["secret_token"]
    elif channel == "api":
        msg_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        timestamp = str(int(now))
        headers.update({"webhook-id": msg_id, "webhook-timestamp": timestamp,
                        "webhook-signature": api.signature(secrets["signing_secret"], msg_id, timestamp, body)})
    return headers, body
