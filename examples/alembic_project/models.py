"""The example app's models: a to-do list with tags (tracked by dimpledb_sa)."""

from __future__ import annotations

from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)
    # added by migration 0002: nullable, so that inserts from devices that have not
    # migrated yet (which know nothing of it) can still be written here
    priority: Mapped[int | None]


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    todo_id: Mapped[str] = mapped_column(ForeignKey("todo.id"))
    word: Mapped[str]
