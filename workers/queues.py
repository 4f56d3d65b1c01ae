"""The fleet's queues and the names jobs are sent under, shared by the broker, the actors and the web.

Queues: `ingest` (provider events), `ai` (classification and drafts), `outbound` (replies sent through their
channel) and `deliver` (webhook deliveries: wake-ups naming an endpoint), so AI, sending and slow receivers
never starve ingestion (housekeeping is the clock's, in its own process, with no queue). Each worker process
picks its queues. The web enqueues ingest jobs itself (`enqueue_async`), so it needs these names but neither
a broker nor the actors; the admin process enqueues replies to send the same way (`enqueue`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq

QUEUES = ("ingest", "ai", "outbound", "deliver")
NAMESPACE = "dramatiq"  # RedisBroker's key prefix, the same for every process of the fleet
INGEST_QUEUE, INGEST_ACTOR = "ingest", "ingest_events"
AI_QUEUE, AI_ACTOR = "ai", "assist_messages"
OUTBOUND_QUEUE, SEND_ACTOR = "outbound", "send_message"
DELIVER_QUEUE, DELIVER_ACTOR = "deliver", "deliver_webhooks"


def wake_key(endpoint_id: str) -> str:
    """Set while a wake-up for the endpoint waits in the `deliver` queue (the dispatcher sets it, the job clears
    it), so a burst of changes sends one job, not many."""
    return f"intake:webhooks:wake:{endpoint_id}"


# dramatiq's Redis layout (RedisBroker, 2.x), spelled out here only: a queue's job ids are a list under
# `<namespace>:<queue>`, their bodies a hash under the same name with `.msgs`; `<queue>.DQ` is its delay queue
# (retries and delayed jobs, moved back at their eta) and `<queue>.XQ` its dead letters (a sorted set).
def queue_key(queue: str) -> str:
    """The list of a queue's waiting job ids."""
    return f"{NAMESPACE}:{queue}"


def bodies_key(queue: str) -> str:
    """The hash of a queue's job bodies, by id."""
    return f"{queue_key(queue)}.msgs"


def delayed(queue: str) -> str:
    """The name of a queue's delay queue (a queue in its own right: `queue_key(delayed(q))`)."""
    return f"{queue}.DQ"


def dead(queue: str) -> str:
    """The name of a queue's dead letters."""
    return f"{queue}.XQ"


# For each job, HSET of the encoded message, then RPUSH of its id: what `RedisBroker.enqueue` writes, for any
# number of jobs in one atomic command (a script runs whole) and one round trip.
ENQUEUE_SCRIPT = """
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
return #ARGV / 2
"""


def _messages(queue_name: str, actor_name: str, jobs: Sequence[tuple[Any, ...]]) -> list[dramatiq.Message[Any]]:
    return [dramatiq.Message(queue_name=queue_name, actor_name=actor_name, args=args, kwargs={},
                             options={"redis_message_id": str(uuid.uuid4())}) for args in jobs]


def enqueue(client: Any, queue_name: str, actor_name: str,
            jobs: Sequence[tuple[Any, ...]]) -> list[dramatiq.Message[Any]]:
    """`enqueue_async` for a thread (the admin process, a command): a synchronous `redis.Redis` client."""
    messages = _messages(queue_name, actor_name, jobs)
    if messages:
        client.register_script(ENQUEUE_SCRIPT)(
            keys=[bodies_key(queue_name), queue_key(queue_name)],
            args=[part for m in messages for part in (m.options["redis_message_id"], m.encode())])
    return messages


async def enqueue_async(client: Any, queue_name: str, actor_name: str,
                        jobs: Sequence[tuple[Any, ...]]) -> list[dramatiq.Message[Any]]:
    """Enqueue jobs for `actor_name` (each its args) from an asyncio process without a thread, as
    `RedisBroker.enqueue` would, all in one command.

    `client` is a `redis.asyncio` client on the broker's Redis. No broker is needed (the web has none): none of
    the fleet's middleware acts on enqueue.
    """
    messages = _messages(queue_name, actor_name, jobs)
    if not messages:
        return messages
    script = client.register_script(ENQUEUE_SCRIPT)  # sent by EVALSHA; by EVAL when Redis lacks it
    await script(keys=[bodies_key(queue_name), queue_key(queue_name)],
                  args=[part for m in messages for part in (m.options["redis_message_id"], m.encode())])
    return messages
