"""The endpoints of webhook endpoints: create (its secret shown once), list, show, update, delete, rotate the
secret, recover (send events again since a time) and the deliveries' attempts.

They call `pipelines.webhooks.endpoints` as `intake webhook ...` does, in a transaction bound to the
endpoint's tenant, each change with its audit row. Answers that carry a secret are never cached.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import JSONResponse, Response

from db.tenancy import TenantId
from pipelines.control.models import Deleted, Listing, Page
from pipelines.webhooks.models import (
    AttemptQuery,
    AttemptView,
    EndpointCreate,
    EndpointSecret,
    EndpointUpdate,
    EndpointView,
    Recover,
    Recovered,
    RotateEndpointSecret,
)
from workers.admin.http import Call, Endpoint

PREFIX = "/v1/admin"
NO_STORE = {"Cache-Control": "no-store"}


def _tenant(call: Call) -> TenantId:
    assert call.tenant is not None  # every route here names its tenant or an endpoint of one
    return TenantId(call.tenant)


def _secret(shown: EndpointSecret, status: int) -> Response:
    return JSONResponse(shown.model_dump(mode="json"), status_code=status, headers=NO_STORE)


def list_endpoints(call: Call) -> Listing[EndpointView]:
    with call.transaction() as conn:
        return call.admin.webhooks.list_endpoints(conn, _tenant(call), call.query)


def create_endpoint(call: Call) -> Response:
    with call.transaction() as conn:
        return _secret(call.admin.webhooks.create(conn, _tenant(call), call.body, call.actor), 201)


def show_endpoint(call: Call) -> EndpointView:
    with call.transaction() as conn:
        return call.admin.webhooks.get(conn, call.ids["endpoint_id"])


def update_endpoint(call: Call) -> EndpointView:
    with call.transaction() as conn:
        return call.admin.webhooks.change(conn, call.ids["endpoint_id"], call.body, call.actor, datetime.now(UTC))


def delete_endpoint(call: Call) -> Deleted:
    with call.transaction() as conn:
        return call.admin.webhooks.remove(conn, call.ids["endpoint_id"], call.actor)


def rotate_secret(call: Call) -> Response:
    with call.transaction() as conn:
        rotated = call.admin.webhooks.rotate(conn, call.ids["endpoint_id"], call.body, call.actor, datetime.now(UTC))
    return _secret(rotated, 200)


def recover(call: Call) -> Recovered:
    with call.transaction() as conn:
        return call.admin.webhooks.recover(conn, call.ids["endpoint_id"], call.body, call.actor)


def list_attempts(call: Call) -> Listing[AttemptView]:
    with call.transaction() as conn:
        return call.admin.webhooks.attempts(conn, call.ids["endpoint_id"], call.query)


def endpoints() -> list[Endpoint]:
    t, e = f"{PREFIX}/tenants/{{tenant_id}}/webhook-endpoints", f"{PREFIX}/webhook-endpoints/{{endpoint_id}}"
    own_tenant, own_endpoint = ("tenant", "tenant_id"), ("webhook_endpoint", "endpoint_id")
    return [
        Endpoint("GET", t, "List a tenant's webhook endpoints", list_endpoints, Listing[EndpointView], query=Page,
                 owner=own_tenant),
        Endpoint("POST", t, "Create a webhook endpoint; its whsec_ secret is shown once", create_endpoint,
                 EndpointSecret, body=EndpointCreate, status=201, owner=own_tenant),
        Endpoint("GET", e, "Show a webhook endpoint", show_endpoint, EndpointView, owner=own_endpoint),
        Endpoint("PATCH", e, "Change a webhook endpoint's URL, types, description, rate or enabled state",
                 update_endpoint, EndpointView, body=EndpointUpdate, owner=own_endpoint),
        Endpoint("DELETE", e, "Delete a webhook endpoint and its deliveries", delete_endpoint, Deleted,
                 owner=own_endpoint),
        Endpoint("POST", e + "/rotate-secret", "A new secret; deliveries carry both signatures during the overlap",
                 rotate_secret, EndpointSecret, body=RotateEndpointSecret, owner=own_endpoint),
        Endpoint("POST", e + "/recover", "Deliver again every event of the endpoint's types since a time",
                 recover, Recovered, body=Recover, owner=own_endpoint),
        Endpoint("GET", e + "/attempts", "The endpoint's deliveries, newest event first", list_attempts,
                 Listing[AttemptView], query=AttemptQuery, owner=own_endpoint),
    ]
