"""What the role behind a database URL may do: whether it bypasses row-level security, reads across tenants
(`intake_maintenance`, migration-made) or owns the tables. The process start-up (`workers.startup`) decides
from these facts which of the fleet's processes the role fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# pg_has_role() refuses a role name that does not exist, so the role is looked up by oid first: before
# `intake migrate` there is no intake_maintenance, and no rights in it.
ROLE_FACTS = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       coalesce((SELECT pg_has_role(current_user, m.oid, 'MEMBER') FROM pg_roles m
                 WHERE m.rolname = 'intake_maintenance'), false) AS maintenance_member,
       coalesce((SELECT pg_has_role(current_user, m.oid, 'USAGE') FROM pg_roles m
                 WHERE m.rolname = 'intake_maintenance'), false) AS maintenance_usage,
       coalesce((SELECT pg_has_role(current_user, c.relowner, 'MEMBER') FROM pg_class c
                 WHERE c.oid = to_regclass('inbound_events')), false) AS owns_tables
FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass(frozen=True)
class RoleFacts:
    """The connected role and the rights that decide which of the fleet's jobs it fits."""

    name: str
    superuser: bool
    bypass_rls: bool
    maintenance_member: bool
    maintenance_usage: bool
    owns_tables: bool


def role_facts(url: str) -> RoleFacts | None:
    """The facts of the role `url` connects as; None when pg_roles does not show it (a pooler that hides it)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(ROLE_FACTS).fetchone()
    return None if row is None else RoleFacts(*row)
