"""A conversation's thread in the console, read-only: its state, SLA and classification, then its messages
oldest first and its drafts. The tenant page lists the latest conversations and links here. The page calls
the admin API's handlers, so a tenant key sees only its own tenant's conversations."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from pipelines.control.models import Page
from pipelines.desk.models import MessageQuery
from workers.admin import conversations as api
from workers.admin.console.web import Console, Visit, page, parse_uuid

THREAD_LIMIT = 200


def thread_page(visit: Visit) -> Response:
    conversation_id = parse_uuid(visit.request.path_params["conversation_id"], "conversation")
    call = visit.call(ids={"conversation_id": conversation_id}, owner=("conversation", conversation_id))
    conversation = api.show_conversation(call)
    call.query = MessageQuery(limit=THREAD_LIMIT)
    thread = api.list_messages(call)
    call.query = Page(limit=50)
    drafts = api.list_drafts(call)
    return visit.render("conversation.html", title=conversation.subject or "Conversation",
                        conversation=conversation, thread=thread, drafts=drafts, limit=THREAD_LIMIT)


def routes(console: Console) -> list[Route]:
    return [Route("/conversations/{conversation_id}", page(console, thread_page), methods=["GET"])]
