"""The `outbound` queue's actor: one stored reply sent through its channel.

A reply is stored by `pipelines.desk.replies` (status `queued`) and this job is enqueued after that commit,
with ids only. The body is one call: `pipelines.outbound.send` claims the message, calls the provider's send
API with the inbox's credentials and moves the status on; its errors decide retries (transient) and the
failure ledger (permanent), through the fleet's middleware.
"""

from __future__ import annotations

import importlib
import uuid

import dramatiq

from config import get_settings
from workers.broker import current
from workers.middleware.jobs import job_tenant
from workers.queues import OUTBOUND_QUEUE, SEND_ACTOR
from workers.resources import engine

broker = current()  # actors bind to the broker installed when they are declared


@dramatiq.actor(queue_name=OUTBOUND_QUEUE, actor_name=SEND_ACTOR)
def send_message(tenant_id: str, message_id: str) -> None:
    """Send one queued outbound message through its inbox's channel."""
    outbound = importlib.import_module("pipelines.outbound")  # the sending side, in a package of its own
    outbound.send(engine(), get_settings(), job_tenant(), uuid.UUID(message_id))
