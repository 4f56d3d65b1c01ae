"""Run the Alembic migrations programmatically (no alembic.ini needed at the repository root)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from db.engine import driver_options, sqlalchemy_url
from db.schema import DEFAULT_EMBEDDING_DIM

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str, embedding_dim: int = DEFAULT_EMBEDDING_DIM, *,
                   prepared_statements: bool = True) -> Config:
    """Alembic's configuration for `url`; `embedding_dim` (INTAKE_EMBEDDING_DIM) is how wide migration 0001
    makes the embedding column, and `prepared_statements` (INTAKE_DB_PREPARED_STATEMENTS) whether psycopg may
    prepare, both handed to the migrations as config attributes."""
    config = Config()
    config.attributes["embedding_dim"] = embedding_dim
    config.attributes["driver_options"] = driver_options(prepared_statements=prepared_statements)
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%': escape it so passwords with '%' survive.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head", *, embedding_dim: int = DEFAULT_EMBEDDING_DIM,
            prepared_statements: bool = True) -> None:
    command.upgrade(alembic_config(url, embedding_dim, prepared_statements=prepared_statements), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
