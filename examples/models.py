"""The models the examples share: a to-do list, as in the README's quick start."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple

__all__ = ["Base", "Todo"]


class Base(DeclarativeBase):
    pass


class Todo(Base):
    __tablename__ = "todo"

    id: Mapped[str] = mapped_column(primary_key=True, default=dimple.new_id)
    text: Mapped[str]
    done: Mapped[bool] = mapped_column(default=False)

    def __repr__(self) -> str:
        return f"[{'x' if self.done else ' '}] {self.text}"
