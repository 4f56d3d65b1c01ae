"""The control plane's domain: tenants, inboxes, teams, personas, API keys and their validation, shared by
the admin API (`workers.admin`) and the `intake` commands. Functions take a connection whose transaction the
caller opened (and bound to the tenant acted on) and never commit it; every change writes its audit row."""
