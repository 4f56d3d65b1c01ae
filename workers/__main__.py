"""`python -m workers` is the `intake` command."""

from workers.cli.main import main

main()
