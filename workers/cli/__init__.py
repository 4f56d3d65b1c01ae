"""The `intake` command line (`workers.cli.main:main`); each module holds one family of commands."""
