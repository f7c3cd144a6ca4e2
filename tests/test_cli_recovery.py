"""The command line after a crash, with a copied database, and while another push runs.

``status`` and ``history`` read a SQLite file that a killed writer left with a hot rollback
journal (SQLite must write to recover it: a read-only open fails); messages name the file
the user gave, not an internal URI; ``sync`` of a copied database says how to fix it and
``reauthor`` does; ``sync`` while the app pushes says it did not push instead of failing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cliworld import call
from models import Note
from syncworld import (
    Devices,
    device_set,
)

from dimpledb_sa.core import meta
from dimpledb_sa.sync import lease

pytestmark = pytest.mark.usefixtures("no_key_in_env")


@pytest.fixture
def devs(tmp_path: Path) -> Iterator[Devices]:
    with device_set(tmp_path, str(tmp_path / "remote"), encryption=False) as d:
        yield d


CRASH = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA cache_size=1")  # spill: the file is changed before the commit
con.execute("BEGIN")
con.execute("UPDATE note SET body = body || 'half-written'")
os._exit(1)  # a crash in the middle of a write transaction
"""


def crash_mid_write(path: Path, tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    subprocess.run([sys.executable, str(script), str(path)], timeout=60)
    assert Path(f"{path}-journal").exists(), "no hot journal was left"


def test_status_and_history_read_a_database_a_crash_left_behind(
        devs: Devices, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = devs.new("a")
    a.add(*(Note(title=f"n{i}", body="b" * 200) for i in range(2000)))
    first = a.rows(Note)[0][0]
    devs.close(a)
    crash_mid_write(a.path, tmp_path)
    code, out, err = call(capsys, "status", a.path)
    assert (code, err) == (0, "")
    assert "not pushed   1 of 1 local transaction(s)" in out
    code, out, err = call(capsys, "history", a.path, "note", first)
    assert code == 0, err
    assert "(created)" in out
    assert not Path(f"{a.path}-journal").exists()  # SQLite rolled the crashed write back
    again = devs.new("a", file=a.path, create=False)
    assert {r[1] for r in again.rows(Note)} == {"b" * 200}


def test_messages_name_the_file_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = call(capsys, "status", empty)
    assert code == 1
    assert f"error: {empty} is not a dimpledb database" in err
    assert "file:" not in err and "%3A" not in err and "mode=ro" not in err


def test_sync_while_another_push_runs_says_so_and_succeeds(
        devs: Devices, capsys: pytest.CaptureFixture[str]) -> None:
    a = devs.new("a")
    a.add(Note(title="one"))
    with a.db.engine.begin() as conn:
        meta.put(conn, meta.PUSH_LEASE,
                 lease.Lease("other-host:1:the-app", time.time() + 60).encode())
    devs.close(a)
    code, out, err = call(capsys, "sync", a.path, devs.remote, "--no-encryption",
                          "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(out)["push_skipped"] is True
    assert "did not push: another sync of this database" in err


def test_sync_of_a_copy_says_how_to_fix_it_and_reauthor_does(
        devs: Devices, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = devs.new("a")
    a.add(Note(title="one"))
    a.sync()
    copy = tmp_path / "copy.db"
    devs.close(a)
    shutil.copy(a.path, copy)
    a = devs.new("a", file=a.path, create=False)
    a.add(Note(title="original's"))
    a.sync()
    c = devs.new("copy", file=copy, create=False)
    c.add(Note(title="copy's"))
    devs.close(c)
    code, _, err = call(capsys, "sync", copy, devs.remote, "--no-encryption", "--no-progress")
    assert code == 1
    assert f"dimpledb reauthor {copy}" in err
    code, out, err = call(capsys, "reauthor", copy, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["old_author_id"] == a.db.author_id != doc["author_id"]
    assert doc["moved_transactions"] == 1
    code, out, err = call(capsys, "sync", copy, devs.remote, "--no-encryption",
                          "--no-progress", "--json")
    assert code == 0, err
    assert (json.loads(out)["pushed"], json.loads(out)["pulled"]) == (1, 2)
    assert a.sync().pulled == 1
    assert sorted(r[-1] for r in a.rows(Note)) == ["copy's", "one", "original's"]
