"""The ``dimpledb log``, ``revert`` and ``show`` commands (``cli.timeline``), run in-process.

Each test writes its own SQLite file with the library (``cliworld``'s todo/step models),
then drives the commands as a user would: the log newest first with its filters and limit,
a revert (and a second one with nothing left to undo) that the next sync shares, a revert
refused with nothing written, a row shown as of times before, between and after its edits,
and the usage errors. ``log`` and ``show`` leave the file untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cliworld import Base, Counter, Step, Todo, call
from sqlalchemy import create_engine, select

import dimpledb_sa as dimple

pytestmark = pytest.mark.usefixtures("no_key_in_env")

__all__: list[str] = []


@dataclass
class App:
    path: Path
    db: dimple.DimpleDb
    milk: str
    step: str
    txs: list[str]  # oldest first: create milk, add a step + rename, delete bread


@pytest.fixture(name="app")
def app_fixture(tmp_path: Path) -> Iterator[App]:
    path = tmp_path / "app.db"
    db = dimple.DimpleDb(create_engine(f"sqlite:///{path}"), Base, exclude=[Counter])
    db.create_all()
    with db.sessionmaker()() as s:
        milk, bread = Todo(text="milk"), Todo(text="bread")
        s.add_all([milk, bread])
        s.commit()
        step = Step(todo_id=milk.id, text="go to the shop")
        s.add(step)
        milk.text = "oat milk"
        s.commit()
        s.delete(bread)
        s.commit()
        ids = milk.id, step.id
    txs = sorted({c.transaction_id for c in db.history(Todo, ids[0])}
                 | {c.transaction_id for c in db.history(Step, ids[1])}
                 | {c.transaction_id for c in db.history(Todo, bread.id)})
    db.close()
    db.engine.dispose()
    reopened = dimple.DimpleDb(create_engine(f"sqlite:///{path}"), Base, exclude=[Counter])
    yield App(path, reopened, ids[0], ids[1], txs)
    reopened.close()
    reopened.engine.dispose()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------- log


def test_log_lists_transactions_newest_first(app: App, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    before = digest(app.path)
    code, out, err = call(capsys, "log", app.path)
    assert (code, err) == (0, "")
    heads = [ln for ln in out.splitlines() if "  transaction " in ln]
    assert [h.split("transaction ")[1].split()[0] for h in heads] == app.txs[::-1]
    assert all(h.endswith("(this database)") for h in heads)
    assert f"todo {app.milk}: text \"milk\" -> \"oat milk\"" in out
    assert f"step {app.step}: created" in out and 'text="go to the shop"' in out
    assert out.count(": deleted") == 1
    assert digest(app.path) == before  # read-only


def test_log_filters_and_limit(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "log", app.path, "--table", "step", "--json")
    assert code == 0
    [tx] = json.loads(out)
    assert tx["id"] == app.txs[1] and tx["author"] == app.db.author_id
    assert {(c["entity_type"], c["attribute"]) for c in tx["changes"]} >= {
        ("step", "id"), ("todo", "text")}  # the whole transaction, not only its step rows
    code, out, _ = call(capsys, "log", app.path, "--author", "me", "-n", "1")
    assert code == 0 and app.txs[-1] in out and app.txs[0] not in out
    assert "older transactions not shown" in out
    code, out, _ = call(capsys, "log", app.path, "--author", dimple.new_id())
    assert (code, out.strip()) == (0, "no transactions match")
    code, out, _ = call(capsys, "log", app.path, "--limit", "0", "--json")
    assert [t["id"] for t in json.loads(out)] == app.txs[::-1]
    code, _, err = call(capsys, "log", app.path, "--limit", "-1")
    assert code == 2 and "--limit" in err


# ----------------------------------------------------------------------------- revert


def test_revert_undoes_and_syncs(app: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                 ) -> None:
    code, out, err = call(capsys, "revert", app.path, app.txs[1])
    assert (code, err) == (0, "")
    assert out.startswith(f"reverted transaction {app.txs[1]} as transaction ")
    with app.db.sessionmaker()() as s:
        assert s.scalars(select(Todo.text).where(Todo.id == app.milk)).one() == "milk"
        assert s.get(Step, app.step) is None
    code, out, _ = call(capsys, "revert", app.path, app.txs[1])
    assert code == 0 and out.startswith("nothing to undo")
    code, out, _ = call(capsys, "revert", app.path, app.txs[-1], "--json")  # bread back
    doc = json.loads(out)
    assert code == 0 and doc["reverted"] == app.txs[-1]
    assert [c["attribute"] for c in doc["changes"]] == ["id", "text", "done"]
    # the revert is a local transaction like any other: a second device pulls it
    key, _ = dimple.generate_identity()
    remote = tmp_path / "remote"
    first = dimple.DimpleDb(app.db.engine, Base, exclude=[Counter], remote=remote,
                            identity=key)
    other = dimple.DimpleDb(create_engine(f"sqlite:///{tmp_path / 'other.db'}"), Base,
                            exclude=[Counter], remote=remote, identity=key)
    try:
        other.create_all()
        first.sync()
        other.sync()
        with other.sessionmaker()() as s:
            assert sorted(s.scalars(select(Todo.text))) == ["bread", "milk"]
            assert s.scalars(select(Step)).all() == []
    finally:
        first.close()
        other.close()
        other.engine.dispose()


def test_revert_errors_write_nothing(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(app.path)
    code, _, err = call(capsys, "revert", app.path, "not-an-id")
    assert code == 2 and "not a transaction id" in err
    code, _, err = call(capsys, "revert", app.path, dimple.new_id())
    assert code == 1 and "not in this database's change log" in err
    assert digest(app.path) == before
    # creating milk cannot be undone while its step refers to it
    code, _, err = call(capsys, "revert", app.path, app.txs[0])
    assert code == 1 and "refers to" in err and "nothing was written" in err
    with app.db.engine.connect() as conn:
        assert conn.execute(select(Todo.text).where(Todo.id == app.milk)).scalar() == "oat milk"
    code, _, err = call(capsys, "revert", app.path / "missing.db", app.txs[0])
    assert code == 1 and "does not exist" in err


# ----------------------------------------------------------------------------- show


def test_show_a_row_as_of_a_time(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(app.path)
    created, renamed = sorted({c.timestamp for c in app.db.history(Todo, app.milk)})
    ms = dt.timedelta(milliseconds=1)
    code, out, _ = call(capsys, "show", app.path, "todo", app.milk, "--as-of",
                        iso(created - ms))
    assert code == 0 and "did not exist yet" in out
    code, out, _ = call(capsys, "show", app.path, "todo", app.milk, "--as-of", iso(created),
                        "--json")
    doc = json.loads(out)
    assert code == 0 and doc["exists"] is True
    assert doc["values"] == {"id": app.milk, "text": "milk", "done": False}
    naive = (renamed.astimezone(dt.UTC)).replace(tzinfo=None).isoformat()  # taken as UTC
    code, out, _ = call(capsys, "show", app.path, "todo", app.milk, "--as-of", naive)
    assert code == 0 and '"oat milk"' in out and out.splitlines()[1].split() == [
        "id", f'"{app.milk}"']  # the key first
    paris = renamed.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat()
    code, out2, _ = call(capsys, "show", app.path, "todo", app.milk, "--as-of", paris)
    assert out2 == out
    code, out, _ = call(capsys, "show", app.path, "todo", app.milk)  # now
    assert code == 0 and '"oat milk"' in out
    assert digest(app.path) == before


def test_show_a_deleted_row_and_errors(app: App, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "log", app.path, "--json", "-n", "1")
    [doc] = json.loads(out)  # the newest transaction: bread deleted
    assert doc["id"] == app.txs[-1]
    bread = doc["changes"][0]["entity_id"]
    code, out, _ = call(capsys, "show", app.path, "todo", bread)
    assert code == 0 and "did not exist at" in out and "deleted" in out
    code, out, _ = call(capsys, "show", app.path, "todo", bread, "--json")
    assert json.loads(out)["values"] is None
    code, _, err = call(capsys, "show", app.path, "todo", dimple.new_id())
    assert code == 1 and "no history" in err
    code, _, err = call(capsys, "show", app.path, "todo", app.milk, "--as-of", "yesterday")
    assert code == 2 and "ISO-8601" in err
