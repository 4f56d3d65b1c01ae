"""Data lifecycle: retention, erasure of one person, export and deletion of a tenant, storage figures, SLA clocks.

Every function takes its connection (and, where Redis is involved, a client) as an argument and never
commits; the callers (the clock, the CLI) decide the transactions, which for bulk work are many small ones.
"""
