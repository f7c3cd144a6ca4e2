"""The world the async tests share (``test_aio``, ``test_aio_load``, ``test_sqlmodel``,
``test_example_app``): async engines, async devices and the way to run a coroutine test.

Async tests are plain pytest functions wrapped by :func:`async_test`, which runs the
coroutine with ``asyncio.run`` (bounded by a timeout), so the suite needs no asyncio plugin.
An *async device* is an ``AsyncDimpleDb`` on an aiosqlite file (or any async URL) with the
identity of a :class:`~syncworld.Devices` set, so it syncs with that set's plain devices.
:func:`postgresql_async_url` turns the suite's ``postgresql_url`` fixture (when the suite
has one) into an async psycopg URL, or skips the test.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from models import SyncBase
from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from syncworld import Devices

import dimpledb_sa as dimple

_T = TypeVar("_T")
TIMEOUT = 120.0  # seconds for one async test (pytest-timeout's limit is above it)


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A pytest test (fixtures and all) that runs the coroutine function ``fn``."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TIMEOUT))

    return run


def aiosqlite_engine(path: Path | None, **kw: Any) -> AsyncEngine:
    """An aiosqlite engine on the file ``path`` (``None``: an in-memory database on one
    shared connection) with ``PRAGMA foreign_keys=ON`` and ``synchronous=OFF``; ``kw`` go to
    ``create_async_engine``."""
    if path is None:
        from sqlalchemy.pool import StaticPool

        engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool, **kw)
    else:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}", **kw)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


@asynccontextmanager
async def async_device(devs: Devices, engine: AsyncEngine, *, models: Any = SyncBase,
                       create: bool = True, **kw: Any) -> AsyncIterator[dimple.AsyncDimpleDb]:
    """An ``AsyncDimpleDb`` on ``engine`` syncing with ``devs``' remote and identity; closed
    (and the engine disposed) afterwards."""
    args: dict[str, Any] = {"remote": devs.remote}
    if devs.storage_options:
        args["storage_options"] = devs.storage_options
    if devs.encryption:
        args["identity"] = devs.identity
    else:
        args["encryption"] = False
    args.update(kw)
    adb = dimple.AsyncDimpleDb(engine, models, **args)
    try:
        if create:
            await adb.create_all()
        yield adb
    finally:
        await adb.close()
        await engine.dispose()


async def next_rows(rows: AsyncIterator[list[Any]], until: Callable[[list[Any]], bool],
                    timeout: float = 20.0) -> list[Any]:
    """The first result of ``rows`` (an ``async for`` iterator) for which ``until`` holds."""

    async def wait() -> list[Any]:
        while True:
            got = await anext(rows)
            if until(got):
                return got

    return await asyncio.wait_for(wait(), timeout)


def postgresql_async_url(request: pytest.FixtureRequest) -> str:
    """The suite's PostgreSQL database (fixture ``postgresql_url``: a URL of an empty
    database for this test) as an async psycopg 3 URL; skips when the suite has none."""
    try:
        url = request.getfixturevalue("postgresql_url")
    except pytest.FixtureLookupError:
        pytest.skip("needs the suite's `postgresql_url` fixture (a PostgreSQL server for "
                    "the tests), which this checkout does not have yet")
    parsed = make_url(str(url))
    if parsed.get_backend_name() != "postgresql":
        pytest.skip(f"postgresql_url is not a PostgreSQL URL: {parsed!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
