"""Alembic environment: migrations run as the schema owner over the URL handed in by `db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from db.schema import DEFAULT_EMBEDDING_DIM, metadata_for

url: str = context.config.get_main_option("sqlalchemy.url") or ""
assert url, "db.migrate sets sqlalchemy.url"
# The declared schema, for autogenerate: embeddings as wide as migration 0001 makes them.
target_metadata = metadata_for(int(context.config.attributes.get("embedding_dim", DEFAULT_EMBEDDING_DIM)))


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool,
                           connect_args=dict(context.config.attributes.get("driver_options", {})))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_server_default=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
