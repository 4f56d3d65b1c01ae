"""The `intake` command line: one entry point for operators, Procfile lines and scripts.

Every command that prints a result takes `--json` and then prints exactly one JSON object on stdout.
Errors go to stderr as one readable line and exit with status 1 (2 for wrong usage).
"""

from __future__ import annotations

import click

from config import SettingsError, configure_logging, get_settings
from workers.cli import ai, bench, changes, control, conversations, fleet, learning, lifecycle, ops, tenants, webhooks
from workers.cli.common import console


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intake")
def main() -> None:
    """Intake: a multi-tenant message-ingestion worker fleet."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise SystemExit(1) from None
    configure_logging(settings.log_format, settings.log_level)


for command in (fleet.services, fleet.migrate, fleet.serve, fleet.worker, fleet.clock, fleet.run,
                tenants.tenant, tenants.inbox, ai.kb, ai.ai, ops.dlq, ops.events, bench.bench, *control.COMMANDS,
                *lifecycle.COMMANDS, *conversations.COMMANDS, *webhooks.COMMANDS, *changes.COMMANDS):
    main.add_command(command)
for command in lifecycle.TENANT_COMMANDS:
    tenants.tenant.add_command(command)
for command in learning.COMMANDS:
    ai.ai.add_command(command)
for command in learning.KB_COMMANDS:
    ai.kb.add_command(command)
