"""A to-do list web app on ``dimple.AsyncDimpleDb``: FastAPI, SQLModel and a live endpoint.

The app keeps its to-dos in an async database (a SQLite file by default, PostgreSQL with
``DATABASE_URL``), syncs them through a remote folder (or ``s3://...``) with every other
device that has the key, and streams the list to browsers as server-sent events, fed by
``async for rows in live``. A command-line device (``dimpledb sync``) on a laptop edits
the same list. See ``README.md`` beside this file; copy the file and change the models.

Settings (environment variables, read when the app starts):

- ``DATABASE_URL``: an async SQLAlchemy URL (``sqlite+aiosqlite:///todo.db``, the default;
  ``postgresql+psycopg://user@host/db``; ``postgresql+asyncpg://...``);
- ``DIMPLEDB_REMOTE``: where to sync (default ``./sync-folder``);
- ``DIMPLEDB_IDENTITY_FILE`` or ``DIMPLEDB_IDENTITY``: the age key (``dimpledb keygen``);
- ``DIMPLEDB_SYNC_INTERVAL``: seconds between background syncs (default 30; 0: only
  ``POST /sync``).

Run it with ``uvicorn app:app`` (``pip install uvicorn``); ``python app.py device FILE``
makes the SQLite file of a command-line device with this app's tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import Field, SQLModel, select

import dimpledb_sa as dimple
from dimpledb_sa.sqlmodel import AsyncSession

__all__ = ["Settings", "Todo", "app", "create_app", "make_device"]


# -- the models --------------------------------------------------------------------------------
class TodoCreate(SQLModel):
    text: str = Field(min_length=1, max_length=200)


class TodoUpdate(SQLModel):
    text: str | None = Field(default=None, min_length=1, max_length=200)
    done: bool | None = None


class Todo(TodoCreate, table=True):
    id: str = Field(default_factory=dimple.new_id, primary_key=True)  # a UUIDv7: syncs
    done: bool = False


# -- settings ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite+aiosqlite:///todo.db"
    remote: str = "./sync-folder"
    identity: str | None = None
    sync_interval: float = 30.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        identity = env.get("DIMPLEDB_IDENTITY")
        if env.get("DIMPLEDB_IDENTITY_FILE"):
            identity = Path(env["DIMPLEDB_IDENTITY_FILE"]).expanduser().read_text()
        return cls(database_url=env.get("DATABASE_URL", cls.database_url),
                   remote=env.get("DIMPLEDB_REMOTE", cls.remote), identity=identity,
                   sync_interval=float(env.get("DIMPLEDB_SYNC_INTERVAL", cls.sync_interval)))


# -- the app -----------------------------------------------------------------------------------
def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment's, read at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or Settings.from_env()
        if s.identity is None:
            raise RuntimeError("set DIMPLEDB_IDENTITY_FILE (make one: dimpledb keygen -o key.txt)")
        engine = create_async_engine(s.database_url)
        adb = dimple.AsyncDimpleDb(engine, [Todo], remote=s.remote, identity=s.identity)
        await adb.create_all()
        if s.sync_interval > 0:
            adb.start_sync(interval=s.sync_interval, sync_on_commit=True)
        app.state.adb = adb
        app.state.Session = adb.sessionmaker(expire_on_commit=False)
        try:
            yield
        finally:
            await adb.close()
            await engine.dispose()

    app = FastAPI(title="dimpledb to-dos", lifespan=lifespan)
    app.get("/todos")(list_todos)
    app.post("/todos", status_code=201)(add_todo)
    app.patch("/todos/{todo_id}")(update_todo)
    app.delete("/todos/{todo_id}", status_code=204)(delete_todo)
    app.post("/sync")(sync_now)
    app.get("/todos/events")(todo_events)
    return app


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.Session() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(session)]


async def list_todos(s: SessionDep) -> Sequence[Todo]:
    return (await s.exec(select(Todo).order_by(Todo.id))).all()


async def add_todo(todo: TodoCreate, s: SessionDep) -> Todo:
    row = Todo.model_validate(todo)
    s.add(row)
    await s.commit()
    return row


async def update_todo(todo_id: str, change: TodoUpdate, s: SessionDep) -> Todo:
    row = await s.get(Todo, todo_id)
    if row is None:
        raise HTTPException(404, "no such to-do")
    row.sqlmodel_update(change.model_dump(exclude_unset=True))
    await s.commit()
    return row


async def delete_todo(todo_id: str, s: SessionDep) -> None:
    row = await s.get(Todo, todo_id)
    if row is None:
        raise HTTPException(404, "no such to-do")
    await s.delete(row)
    await s.commit()


async def sync_now(request: Request) -> dict[str, Any]:
    """Sync now; a partial sync answers 502 with the report."""
    adb: dimple.AsyncDimpleDb = request.app.state.adb
    try:
        report = await adb.sync()
    except dimple.SyncError as e:
        detail = {"error": str(e), "errors": e.report.errors if e.report else {}}
        raise HTTPException(502, detail) from e
    return {"pushed": report.pushed, "pulled": report.pulled, "applied": report.applied,
            "held": report.held, "errors": report.errors}


async def todo_events(request: Request) -> StreamingResponse:
    """Server-sent events: the list now, then after every change (local or synced)."""
    adb: dimple.AsyncDimpleDb = request.app.state.adb

    async def events() -> AsyncIterator[str]:
        with adb.live(select(Todo).order_by(Todo.id)) as live:
            async for rows in live:
                data = json.dumps([t.model_dump() for t in rows])
                yield f"event: todos\ndata: {data}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = create_app()


# -- a command-line device ---------------------------------------------------------------------
def make_device(path: Path) -> None:
    """Create the SQLite file of a command-line device with this app's tables (then
    ``dimpledb sync FILE REMOTE -i key.txt`` syncs it, reflecting them)."""
    engine = create_engine(f"sqlite:///{path}")
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables["todo"]])
    engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    device = sub.add_parser("device", help="make a command-line device's SQLite file")
    device.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    make_device(args.file)
    print(f"made {args.file}: now `dimpledb sync {args.file} REMOTE -i key.txt`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
