"""Tests for ``dimpledb_sa.aio`` under load: the event loop stays responsive while an
``AsyncDimpleDb`` pulls and merges 100,000 changes.

A plain ``DimpleDb`` device writes 20,000 notes (5 changes each) in one Core
``executemany`` and pushes them to a local folder once per module; an async device then
syncs while a ticker task counts its ticks. The test asserts that the ticker kept ticking
during the sync (a count, never a duration): the decoding, decryption and merge planning
run in a worker thread and only the driver's calls visit the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioworld import aiosqlite_engine, async_device, async_test, postgresql_async_url
from models import Note, SyncBase
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from syncworld import Devices, device_set, sqlite_engine

import dimpledb_sa as dimple

ROWS = 20_000
CHANGES = ROWS * 5  # id, title, body, done, rank


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devices]:
    """A remote folder holding one device's 100,000 changes (pushed once per module)."""
    folder = tmp_path_factory.mktemp("load")
    with device_set(folder, str(folder / "remote")) as devs:
        engine = sqlite_engine(folder / "writer.db").execution_options(dimpledb_sa_capture=True)
        writer = dimple.DimpleDb(engine, SyncBase, remote=devs.remote, identity=devs.identity)
        writer.create_all()
        rows = [{"id": dimple.new_id(), "title": f"note {i}", "body": "x" * 20, "done": False,
                 "rank": i} for i in range(ROWS)]
        with engine.begin() as conn:
            conn.execute(insert(Note.__table__), rows)
        assert writer.sync().pushed == 1
        writer.close()
        engine.dispose()
        yield devs


async def sync_while_ticking(adb: dimple.AsyncDimpleDb) -> tuple[dimple.SyncReport, int]:
    """``await adb.sync()`` while a task ticks every 2 ms; the report and the tick count."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running before the sync starts
    try:
        report = await adb.sync()
    finally:
        done.set()
        await task
    return report, ticks


async def pull_100k(pushed: Devices, engine: AsyncEngine) -> None:
    async with async_device(pushed, engine) as adb:
        report, ticks = await sync_while_ticking(adb)
        assert report.pulled == 1 and report.errors == {}
        assert report.applied >= CHANGES
        assert ticks >= 20, f"the event loop ticked only {ticks} times during the sync"
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(Note)) == ROWS


@async_test
async def test_the_loop_keeps_ticking_while_100000_changes_merge(tmp_path: Path,
                                                                 pushed: Devices) -> None:
    await pull_100k(pushed, aiosqlite_engine(tmp_path / "reader.db"))


@async_test
async def test_the_loop_keeps_ticking_on_postgresql(request: pytest.FixtureRequest,
                                                    pushed: Devices) -> None:
    await pull_100k(pushed, create_async_engine(postgresql_async_url(request)))

