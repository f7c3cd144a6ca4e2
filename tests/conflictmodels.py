"""Models for the conflict tests: constraints that concurrent devices can break.

``User`` has a unique ``email`` (the template's users), ``Item`` a foreign key to its user
with ``ondelete="CASCADE"`` and no ORM relationship (so the database, not the ORM, deletes
a user's items), ``Note`` an ``ON DELETE SET NULL`` key to an item, ``Badge`` a two-column
unique constraint, ``Node`` a self-referencing tree and ``Score`` a ``CHECK`` constraint
the metadata cannot explain to the merge.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    email: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str] = mapped_column(default="")


class Item(Base):
    __tablename__ = "item"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    title: Mapped[str]


class Note(Base):
    __tablename__ = "note"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    item_id: Mapped[str | None] = mapped_column(ForeignKey("item.id", ondelete="SET NULL"))
    text: Mapped[str] = mapped_column(default="")


class Badge(Base):
    __tablename__ = "badge"
    __table_args__ = (UniqueConstraint("team", "number"),)
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    team: Mapped[str]
    number: Mapped[int]


class Node(Base):
    __tablename__ = "node"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("node.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(default="")


class Score(Base):
    __tablename__ = "score"
    __table_args__ = (CheckConstraint("points >= 0", name="points_not_negative"),)
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    points: Mapped[int]
