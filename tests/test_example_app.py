"""Tests for ``examples/fastapi_app/app.py``: the FastAPI app on ``AsyncDimpleDb`` syncing with a
command-line device, run in-process.

The app runs with its lifespan on this test's event loop; REST calls go through httpx's
ASGI transport, and the server-sent events of ``/todos/events`` are read as they are sent
by :class:`EventStream`, which calls the ASGI app directly (httpx's transport buffers a
whole response). The command-line device is a SQLite file made by the example
(``make_device``) that ``python -m dimpledb_sa.cli sync`` syncs in a subprocess; its row is
written with plain ``sqlite3`` and adopted by ``sync --adopt``, as a script would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from aioworld import async_test

import dimpledb_sa as dimple

ROOT = Path(__file__).resolve().parents[1]


def load_example() -> ModuleType:
    """``examples/fastapi_app/app.py``, imported once per process."""
    name = "dimpledb_example_fastapi_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples/fastapi_app/app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class EventStream:
    """A ``GET`` of a server-sent-events endpoint, called on the ASGI app directly: each
    ``data:`` line's JSON is queued as the app sends it; :meth:`close` disconnects."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.status: int | None = None
        self._disconnect = asyncio.Event()
        self._requested = False
        self._buffer = b""
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": self.path,
                 "raw_path": self.path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"app"), (b"accept", b"text/event-stream")],
                 "client": ("127.0.0.1", 1), "server": ("app", 80)}
        self._task = asyncio.create_task(self.app(scope, self._receive, self._send))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._disconnect.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 20)

    async def next(self, timeout: float = 20.0) -> Any:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def _receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self._buffer += message.get("body", b"")
            while b"\n\n" in self._buffer:
                event, self._buffer = self._buffer.split(b"\n\n", 1)
                for line in event.decode().splitlines():
                    if line.startswith("data: "):
                        self.events.put_nowait(json.loads(line[len("data: "):]))


def cli_sync(device: Path, remote: Path, key: Path) -> dict[str, Any]:
    """``dimpledb sync DEVICE REMOTE -i KEY --adopt --json`` in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "dimpledb_sa.cli", "sync", str(device), str(remote),
         "-i", str(key), "--adopt", "--json", "-q"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def device_texts(device: Path) -> list[str]:
    with sqlite3.connect(device) as conn:
        return sorted(t for (t,) in conn.execute("SELECT text FROM todo"))


@async_test
async def test_the_app_and_a_command_line_device_share_a_live_list(tmp_path: Path) -> None:
    example = load_example()
    secret, _ = dimple.generate_identity()
    key = tmp_path / "key.txt"
    key.write_text(secret + "\n")
    remote = tmp_path / "sync-folder"
    settings = example.Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
                                remote=str(remote), identity=secret, sync_interval=0)
    app = example.create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app") as client, \
            EventStream(app, "/todos/events") as stream:
        assert await stream.next() == []
        assert stream.status == 200
        created = await client.post("/todos", json={"text": "from the app"})
        assert created.status_code == 201
        assert [t["text"] for t in await stream.next()] == ["from the app"]
        assert (await client.post("/sync")).json()["pushed"] == 1

        laptop = tmp_path / "laptop.db"  # the command-line device
        example.make_device(laptop)
        with sqlite3.connect(laptop) as conn:
            conn.execute("INSERT INTO todo (id, text, done) VALUES (?, 'from the laptop', 0)",
                         (dimple.new_id(),))
        report = await asyncio.to_thread(cli_sync, laptop, remote, key)
        assert report["pushed"] == 1 and report["pulled"] == 1
        assert device_texts(laptop) == ["from the app", "from the laptop"]

        synced = (await client.post("/sync")).json()
        assert synced["pulled"] == 1 and synced["errors"] == {}
        assert [t["text"] for t in await stream.next()] == ["from the app", "from the laptop"]

        todo_id = created.json()["id"]
        done = await client.patch(f"/todos/{todo_id}", json={"done": True})
        assert done.json()["done"] is True
        assert [t["done"] for t in await stream.next()] == [True, False]
        listed = await client.get("/todos")
        assert [t["text"] for t in listed.json()] == ["from the app", "from the laptop"]
        assert (await client.delete(f"/todos/{todo_id}")).status_code == 204
        assert (await client.delete(f"/todos/{todo_id}")).status_code == 404
        assert [t["text"] for t in await stream.next()] == ["from the laptop"]
        await client.post("/sync")
    await asyncio.to_thread(cli_sync, laptop, remote, key)
    assert device_texts(laptop) == ["from the laptop"]


def test_the_device_command_makes_a_syncable_file(tmp_path: Path) -> None:
    example = load_example()
    assert example.main(["device", str(tmp_path / "phone.db")]) == 0
    with sqlite3.connect(tmp_path / "phone.db") as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert names == ["todo"]
