"""Operator operations shared by the CLI and the admin API: the failure ledger's replays and the stored
events' reprocessing, across tenants, as the schema owner."""
