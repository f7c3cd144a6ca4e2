"""Alembic environment of the example project: the stock env.py plus three lines.

The lines marked ``dimpledb (n/3)`` are all a tracked database needs; see README.md.
"""

from __future__ import annotations

from logging.config import fileConfig

import models
from alembic import context
from sqlalchemy import engine_from_config, pool

import alembic_ext  # dimpledb (1/3): registers op.create_dimpledb_tables() / drop twin

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = models.Base.metadata


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: emit SQL, touch no database (nothing to replay)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # dimpledb (2/3): keep the dimple_* tables out of autogenerate
            include_object=alembic_ext.include_object, include_name=alembic_ext.include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
            alembic_ext.replay_held(connection, target_metadata)  # dimpledb (3/3)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
