"""The fleet's queues and the names jobs are sent under, shared by the broker, the actors and the web.

Queues: `ingest` (provider events), `ai` (classification and drafts) and `maintenance` (sweeps, replays), so
housekeeping and AI never starve ingestion. Each worker process picks its queues. The web enqueues ingest jobs
itself (`enqueue_async`), so it needs these names but neither a broker nor the actors.
"""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq

QUEUES = ("ingest", "ai", "maintenance")
NAMESPACE = "dramatiq"  # RedisBroker's key prefix, the same for every process of the fleet
INGEST_QUEUE, INGEST_ACTOR = "ingest", "ingest_events"
AI_QUEUE, AI_ACTOR = "ai", "assist_messages"


# HSET of the encoded message, then RPUSH of its id: what `RedisBroker.enqueue` writes, in one atomic
# command (a script runs whole) and one round trip.
ENQUEUE_SCRIPT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('RPUSH', KEYS[2], ARGV[1])
"""


async def enqueue_async(client: Any, queue_name: str, actor_name: str, *args: Any) -> dramatiq.Message[Any]:
    """Enqueue a job for `actor_name` from an asyncio process without a thread, as `RedisBroker.enqueue` would.

    `client` is a `redis.asyncio` client on the broker's Redis. No broker is needed (the web has none): none of
    the fleet's middleware acts on enqueue.
    """
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={},
        options={"redis_message_id": str(uuid.uuid4())})
    queue = f"{NAMESPACE}:{queue_name}"
    script = client.register_script(ENQUEUE_SCRIPT)  # sent by EVALSHA; by EVAL when Redis lacks it
    await script(keys=[f"{queue}.msgs", queue], args=[message.options["redis_message_id"], message.encode()])
    return message
