"""The desk: what the applications that read the tables (an agent inbox, a CRM) write back.

    views        conversations, their messages and drafts as the admin API and the change feed show them
    replies      an outbound reply, stored once per Idempotency-Key, handed to the `outbound` queue after commit
    state        resolve, reopen, assign; a draft rejected
    corrections  a person's category and priority for a message, kept as an example to learn from

Every function takes a connection bound to the tenant (the fleet's role: row-level security holds whoever
calls), never commits, writes its audit row and, as the transaction's last statement, its change events.
The admin API, the CLI and the console call these same functions (one action, one implementation).
"""
