"""todo.priority and the tag table

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-01 00:00:00

Devices that have not run this migration yet hold the changes other devices make to
``todo.priority`` and ``tag`` (their sync reports count them in ``held``); env.py replays
them right after this upgrade.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("todo", sa.Column("priority", sa.Integer(), nullable=True))
    op.create_table(
        "tag",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("todo_id", sa.String(), nullable=False),
        sa.Column("word", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(["todo_id"], ["todo.id"]),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("tag")
    with op.batch_alter_table("todo") as batch:
        batch.drop_column("priority")
