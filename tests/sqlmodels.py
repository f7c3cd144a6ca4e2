"""SQLModel models for ``test_sqlmodel``: the users and items of FastAPI's full-stack template
(``uuid.UUID`` keys, a unique email, items owned by a user with ``ondelete="CASCADE"`` and
an ORM cascade), in ``SQLModel.metadata`` as an application would have them.

``SQLModel.metadata`` is process-wide: every table defined here (and by the example app,
which ``test_example_app`` imports) is in it, so tests check that these tables are among
those tracked, not that they are the only ones. ``bad_metadata`` holds a table with an
integer key, kept out of ``SQLModel.metadata`` on purpose. (No ``from __future__ import
annotations``: SQLModel reads the relationship annotations at class creation.)
"""

import uuid

from sqlalchemy import MetaData
from sqlmodel import Field, Relationship, SQLModel


class UserBase(SQLModel):
    email: str = Field(unique=True, index=True, max_length=255)
    is_active: bool = True
    is_superuser: bool = False
    full_name: str | None = Field(default=None, max_length=255)


class User(UserBase, table=True):
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    hashed_password: str
    items: list["Item"] = Relationship(back_populates="owner", cascade_delete=True)


class ItemBase(SQLModel):
    title: str = Field(min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=255)


class Item(ItemBase, table=True):
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="user.id", nullable=False, ondelete="CASCADE")
    owner: User | None = Relationship(back_populates="items")


class BadBase(SQLModel):
    metadata = MetaData()


class Counter(BadBase, table=True):
    """The SQLModel tutorial's key: an autoincrement integer, which tracking refuses."""

    id: int | None = Field(default=None, primary_key=True)
    name: str
