"""Tests for ``dimpledb_sa.cli``: the ``dimpledb`` command line, driven as a user drives
it, and the examples.

Runs against the shared world (``cliworld``): ``keygen`` (``dimpledb_sa.cli.keys``), ``sync``,
``status`` and ``history`` (``dimpledb_sa.cli.local``, ``dimpledb_sa.cli.database``), usage
errors, help and the installed console script (``dimpledb_sa.cli.app``), then the examples.
``inspect`` and ``verify`` are in ``test_cli_remote``, the progress display in
``test_cli_output``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cliworld import ROOT, World, call, child_env, rows, run
from sqlalchemy import Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dimpledb_sa as dimple

__all__: list[str] = []

pytestmark = pytest.mark.usefixtures("no_key_in_env")


# ----------------------------------------------------------------------------- keygen


def test_keygen_writes_an_age_identity_file(world: World) -> None:
    text = world.key.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1].startswith("# public key: age1")
    assert lines[2].startswith("AGE-SECRET-KEY-1")
    assert stat.S_IMODE(world.key.stat().st_mode) == 0o600
    public = lines[1].removeprefix("# public key: ")
    assert f"Public key: {public}" in world.keygen.stderr
    shown = run("keygen", "-y", world.key, cwd=world.dir)  # age-keygen -y
    assert (shown.returncode, shown.stdout.strip()) == (0, public)


def test_keygen_to_stdout_and_refusing_to_overwrite(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(capsys, "keygen")
    assert code == 0 and out.count("AGE-SECRET-KEY-1") == 1 and "Public key: age1" in err
    before = world.key.read_text()
    code, _, err = call(capsys, "keygen", "-o", world.key)
    assert code == 1 and "exists" in err and "--force" in err
    assert world.key.read_text() == before
    code, out, _ = call(capsys, "keygen", "-y", world.other_key)
    assert code == 0 and out.startswith("age1")
    code, _, err = call(capsys, "keygen", "-y", world.a)
    assert code == 2 and ("not a text file" in err or "no secret key" in err)


# ----------------------------------------------------------------------------- sync


def test_sync_pushes_then_pulls_into_a_reflected_database(world: World) -> None:
    assert world.sync_a.returncode == 0, world.sync_a.stderr
    assert "pushed 3 transaction(s), pulled 0" in world.sync_a.stdout
    assert world.sync_b.returncode == 0, world.sync_b.stderr
    assert "pushed 0 transaction(s), pulled 3" in world.sync_b.stdout
    err = world.sync_b.stderr
    assert "had no dimpledb bookkeeping tables; created them" in err
    assert "not tracking 'counter'" in err and "tracking step, todo" in err
    # plain progress lines (one per phase) when not on a terminal
    assert "pull: 1 of 1 bundle(s) read" in err and "merge: " in err
    assert sorted(rows(world.b, "SELECT text, done FROM todo")) == [("eggs", 1),
                                                                    ("oat milk", 0)]
    assert rows(world.b, "SELECT text FROM step") == [("go to the shop",)]


def test_sync_again_is_a_no_op_and_json_reports(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(capsys, "sync", world.b, world.remote, "-i", world.key, "--json",
                          "--no-progress")
    assert code == 0, err
    report = json.loads(out)
    assert report["pushed"] == report["pulled"] == report["applied"] == 0
    assert report["ok"] is True and report["errors"] == {}
    assert err == ""


def test_sync_with_a_wrong_key_fails_clearly(world: World) -> None:
    fresh = world.dir / "wrong.db"
    shutil.copy(world.b.with_name("b.db"), fresh)
    with sqlite3.connect(fresh) as conn:  # a new device: no cursor, nothing pulled yet
        conn.execute("DELETE FROM dimple_cursors")
        conn.execute("DELETE FROM dimple_meta")
    proc = run("sync", fresh, world.remote, "--identity-file", world.other_key, cwd=world.dir)
    assert proc.returncode == 1
    assert (f"cannot decrypt the bundles of author {world.a_author} with the given identity"
            in proc.stderr)
    assert "Traceback" not in proc.stderr


def test_sync_refuses_bad_input(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(capsys, "sync", world.b, world.remote)
    assert code == 2 and "sync needs a key" in err
    code, _, err = call(capsys, "sync", world.dir / "nope.db", world.remote, "-i", world.key)
    assert code == 1 and "does not exist" in err
    assert not (world.dir / "nope.db").exists()
    code, _, err = call(capsys, "sync", world.key, world.remote, "-i", world.key)
    assert code == 1 and "cannot open database" in err  # a text file is no database
    code, _, err = call(capsys, "sync", "nosuchdialect://x/y", world.remote, "-i", world.key)
    assert code == 1 and "cannot open database" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "--identity", "AGE-SECRET-KEY-1X")
    assert code == 2 and "bad key" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "--identity-file",
                        world.dir / "missing-key.txt")
    assert code == 2 and "cannot read identity file" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "-i", world.key,
                        "--no-encryption")
    assert code == 2 and "only one of" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "-i", world.key,
                        "--storage-option", "novalue")
    assert code == 2 and "key=value" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "-i", world.key,
                        "--recipient", "age1notakey")
    assert code == 2 and "recipients[0]" in err
    code, _, err = call(capsys, "sync", world.b, world.remote, "--passphrase-env", "NO_SUCH_V")
    assert code == 2 and "NO_SUCH_V" in err


def test_sync_with_the_key_from_the_environment_and_models(
        world: World, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIMPLEDB_IDENTITY_FILE", str(world.key))
    code, out, err = call(capsys, "sync", world.b, world.remote, "--models",
                          "cliworld:Base", "--exclude", "counter", "-q")
    assert (code, out, err) == (0, "", "")
    code, _, err = call(capsys, "sync", world.b, world.remote, "--models", "nowhere:Base")
    assert code == 2 and "cannot load --models" in err


def test_sync_adopts_rows_written_before_tracking(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE note (id VARCHAR(36) PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO note VALUES (?, 'written before tracking')",
                     (dimple.new_id(),))
    remote = tmp_path / "remote"
    code, out, err = call(capsys, "sync", old, remote, "--no-encryption")
    assert code == 0 and "pushed 0" in out and "unless you pass --adopt" in err
    code, out, err = call(capsys, "sync", old, remote, "--no-encryption", "--adopt")
    assert code == 0 and "pushed 1" in out and "adopted 1 existing row(s)" in err


class UBase(DeclarativeBase):
    pass


class Item(UBase):  # Uuid columns: CHAR(32) hex on SQLite, canonical strings in the log
    __tablename__ = "item"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    ref: Mapped[uuid.UUID | None] = mapped_column(Uuid)


def test_sync_keeps_uuid_columns_readable_by_the_app(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engines = [create_engine(f"sqlite:///{tmp_path / n}.db") for n in ("a", "b")]
    a = dimple.DimpleDb(engines[0], UBase, remote=str(tmp_path / "remote"), encryption=False)
    a.create_all()
    with a.sessionmaker()() as s:
        item = Item(ref=uuid.uuid4())
        s.add(item)
        s.commit()
        item_id, ref = item.id, item.ref
    a.sync()
    a.close()
    UBase.metadata.create_all(engines[1])
    code, _, err = call(capsys, "sync", tmp_path / "b.db", tmp_path / "remote",
                        "--no-encryption", "-v")
    assert code == 0, err
    assert "reading CHAR(32) column item.id as a UUID" in err
    assert rows(tmp_path / "b.db", "SELECT id, ref FROM item") == [(item_id.hex, ref.hex)]
    b = dimple.DimpleDb(engines[1], UBase)
    with b.sessionmaker()() as s:
        got = s.get(Item, item_id)
        assert got is not None and got.ref == ref
    b.close()
    for engine in engines:
        engine.dispose()


# ----------------------------------------------------------------------------- status, history


def test_status(world: World) -> None:
    proc = run("status", world.b, "--remote", world.remote, cwd=world.dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    b_author = rows(world.b, "SELECT value FROM dimple_meta WHERE key = 'author_id'")[0][0]
    assert f"author       {b_author}" in out
    assert "not pushed   0 of 0 local transaction(s)" in out
    assert "held         0 change(s)" in out
    assert f"{world.a_author}  through " in out
    assert f"{world.a_author}: 0 transaction(s) to pull" in out


def test_status_json_counts_unpushed_and_held(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(capsys, "status", world.a, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["author_id"] == world.a_author and doc["unpushed"] == 0
    assert doc["local_transactions"] == 3 and doc["held"] == [] and doc["cursors"] == []
    db_copy = world.dir / "status-copy.db"
    shutil.copy(world.a, db_copy)
    with sqlite3.connect(db_copy) as conn:
        conn.execute("DELETE FROM dimple_meta WHERE key = 'pushed_through'")
        conn.execute("INSERT INTO dimple_held VALUES ('gone', 'x', 'col', 'unknown table')")
    code, out, _ = call(capsys, "status", db_copy)
    assert code == 0
    assert "not pushed   3 of 3 local transaction(s), oldest from" in out
    assert "held         1 change(s)" in out and "gone.col: 1 (unknown table)" in out
    code, _, err = call(capsys, "status", world.key)
    assert code == 1 and "cannot open database" in err
    plain = world.dir / "plain.db"
    sqlite3.connect(plain).close()
    code, _, err = call(capsys, "status", plain)
    assert code == 1 and "not a dimpledb database" in err


def test_status_counts_pending_transactions(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A commit's transaction is pending until a fold writes its dimple_transactions row:
    the counts see it either way."""
    from models import Base, Todo
    from sqlalchemy.orm import Session

    from dimpledb_sa.core import changelog

    path = tmp_path / "pending.db"
    engine = create_engine(f"sqlite:///{path}")
    db = dimple.DimpleDb(engine, Base)
    db.create_all()
    for text in ("one", "two", "three"):
        with Session(engine) as s:
            s.add(Todo(text=text))
            s.commit()
        if text == "one":
            with engine.begin() as conn:
                changelog.fold(conn)
    db.close()
    engine.dispose()
    code, out, err = call(capsys, "status", path, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["local_transactions"] == 3 and doc["unpushed"] == 3


def test_history(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    proc = run("history", world.b, "todo", world.milk, cwd=world.dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"todo {world.milk}: 4 change(s)" in out
    assert "(created)" in out and 'text  "milk" -> "oat milk"' in out
    assert f"by {world.a_author}" in out
    code, out, _ = call(capsys, "history", world.b, "todo", world.bread, "--json")
    changes = json.loads(out)
    assert code == 0 and changes[-1]["attribute"] == "id" and changes[-1]["new_value"] is None
    assert [c["author"] for c in changes] == [world.a_author] * len(changes)
    code, out, _ = call(capsys, "history", world.a, "todo", world.bread)
    assert "(deleted)" in out and "(this database)" in out
    code, _, err = call(capsys, "history", world.b, "todo", "no-such-id")
    assert code == 1 and "no history for todo no-such-id" in err
    code, _, err = call(capsys, "history", world.b, "nothing", "x")
    assert code == 1 and "no change of any row of table 'nothing'" in err


# ----------------------------------------------------------------------------- usage


def test_bad_arguments_exit_2_with_usage(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    proc = run(cwd=tmp_path)  # the process's exit status; the same code in-process below
    assert proc.returncode == 2 and "usage: dimpledb" in proc.stderr
    code, _, err = call(capsys, "sync", "only-a-db")
    assert code == 2 and "REMOTE" in err
    code, _, err = call(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


@pytest.mark.parametrize("command", ["", "keygen", "sync", "status", "history", "inspect",
                                     "verify"])
def test_help_everywhere(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, *([command] if command else []), "--help")
    assert code == 0 and out.startswith("usage: dimpledb")
    assert "--debug" in out


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("dimpledb")
    if not script.exists():
        pytest.skip("the package is not pip-installed in this interpreter's environment")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          env=child_env(), timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("dimpledb ")


# ----------------------------------------------------------------------------- examples


def _example(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=ROOT,
                          env=child_env(env), capture_output=True, text=True, timeout=120)


def test_demo_runs() -> None:
    proc = _example("demo.py")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[phone, live query] [ ] bread, [ ] eggs, [ ] milk" in out
    assert "[phone, live query] [x] eggs, [ ] oat milk" in out
    assert "[phone, live query] [x] eggs, [x] oat milk, 2 l" in out
    assert "[phone, live query] [ ] coffee, [x] eggs, [x] oat milk, 2 l" in out
    assert "starting 'age-encryption.org/v1'" in out
    assert "demo finished: both devices hold the same 3 todos" in out


def test_live_example_runs() -> None:
    proc = _example("live_example.py")
    assert proc.returncode == 0, proc.stderr
    assert "open todos: ['from the other device', 'ship it']" in proc.stdout
    assert proc.stdout.rstrip().endswith("todos in all: 2")


def test_s3_example_says_what_it_needs() -> None:
    proc = _example("s3_example.py")
    assert proc.returncode == 2 and "DIMPLEDB_S3_BUCKET" in proc.stderr


def test_s3_example_syncs_through_s3(s3_server: str, s3_bucket: str) -> None:
    from conftest import S3_KEY, S3_REGION, S3_SECRET

    proc = _example("s3_example.py", {
        "DIMPLEDB_S3_ENDPOINT": s3_server, "DIMPLEDB_S3_BUCKET": s3_bucket,
        "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION, "NO_PROXY": "127.0.0.1,localhost",
    })
    assert proc.returncode == 0, proc.stderr
    assert "phone has: ['synced through S3']" in proc.stdout
