"""`python -m workers` is the `intake` command."""

from workers.cli import main

main()
