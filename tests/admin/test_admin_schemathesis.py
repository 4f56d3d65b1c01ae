"""Property-based tests of the whole admin API from its own OpenAPI document (schemathesis): generated
requests for every operation, over real HTTP; no answer is a 5xx, and every answer (status, content type,
body) matches the document. Bounded: a few examples per operation, so the run stays well under a minute.

Operator keys call everything but the ledger's replay and discard, the events' reprocessing and the storage
figures of every tenant, which a key of a fresh tenant calls, so that generated filters never touch another
test's rows (and the figures cover one tenant, not every tenant of the shared database). The operations that
erase, export, delete or set SLA policies of a tenant run with an operator key on a throwaway tenant of their
own, whatever id was generated: they can never erase or delete another test's data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from sqlalchemy import Engine

from config import get_settings
from tests.admin_server import Keyed, admin_server, make_key, make_tenant
from workers.admin.app import OPENAPI_PATH, create_app

# The document the admin process serves at OPENAPI_PATH, from an app that never connects (engines connect on
# first use): the operations are known when the tests are collected, before the database starts.
UNUSED = "postgresql://unused@/unused"
app = create_app(get_settings(), database_url=UNUSED, admin_database_url=UNUSED, secret_key="unused-secret-key")
assert app.openapi_url == OPENAPI_PATH
schema = schemathesis.openapi.from_dict(app.openapi())
BULK = r"(/(replay|discard|reprocess)|^/v1/admin/stats)$"
THROWAWAY = r"^/v1/admin/tenants/\{tenant_id\}/(erase-contact|export|delete|sla-policies.*)$"
# Two checks judge the answer's code by the request alone, and the API knows more than its schema says: a body
# over the size limit is 413 before it is read, valid or not; a schema-valid request is 422 when its values
# do not fit together (a Twilio inbox without its auth token, a name of only whitespace). Both codes are in
# the document; every other check (no 5xx, documented status, content type and body schema) runs.
EXCLUDED = [negative_data_rejection, positive_data_acceptance]
EXAMPLES = settings(max_examples=8, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(stack: dict[str, str], admin_engine: Engine) -> Iterator[tuple[str, Keyed, Keyed]]:
    with admin_server(stack) as base:
        operator = make_key(admin_engine, name="schemathesis")
        tenant = make_key(admin_engine, tenant_id=make_tenant(admin_engine, "Schemathesis"), name="schemathesis")
        yield base, operator, tenant


@pytest.fixture(scope="module")
def throwaway(admin_engine: Engine) -> uuid.UUID:
    return make_tenant(admin_engine, "Schemathesis throwaway")


@schema.exclude(path_regex=f"{BULK}|{THROWAWAY}").parametrize()
@EXAMPLES
def test_every_operation_answers_as_documented(case: schemathesis.Case, served: tuple[str, Keyed, Keyed]) -> None:
    base, operator, _ = served
    case.call_and_validate(base_url=base, headers={**operator.headers, "x-request-id": uuid.uuid4().hex},
                           excluded_checks=EXCLUDED)


@schema.include(path_regex=BULK).parametrize()
@EXAMPLES
def test_bulk_operations_answer_as_documented(case: schemathesis.Case, served: tuple[str, Keyed, Keyed]) -> None:
    base, _, tenant = served
    case.call_and_validate(base_url=base, headers=tenant.headers, excluded_checks=EXCLUDED)


@schema.include(path_regex=THROWAWAY).parametrize()
@EXAMPLES
def test_destructive_operations_answer_as_documented(case: schemathesis.Case, served: tuple[str, Keyed, Keyed],
                                                     throwaway: uuid.UUID) -> None:
    base, operator, _ = served
    case.path_parameters = {**(case.path_parameters or {}), "tenant_id": str(throwaway)}
    case.call_and_validate(base_url=base, headers=operator.headers, excluded_checks=EXCLUDED)
