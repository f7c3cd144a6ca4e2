"""``dimpledb conflicts DB``: the changes merges keep out, as text and as JSON; ``status``
and ``sync`` count them. Two devices on a local folder, written by the library with a
unique-email collision, synced once by the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cliworld import call
from conflictmodels import Base, User
from syncworld import device_set

pytestmark = pytest.mark.usefixtures("no_key_in_env")


def test_conflicts_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    remote = tmp_path / "remote"
    with device_set(tmp_path, str(remote), encryption=False) as devs:
        a = devs.new("a", models=Base)
        b = devs.new("b", models=Base)
        code, out, _ = call(capsys, "conflicts", a.path)
        assert code == 0 and "no conflicts" in out
        early, late = User(email="same@x"), User(email="same@x")
        a.add(early)
        b.add(late)
        a.sync()
        b_author = b.db.author_id
    code, out, err = call(capsys, "sync", b.path, remote, "--no-encryption", "--json",
                          "--models", "conflictmodels:Base")
    assert code == 0, err
    assert json.loads(out)["conflicts"] == 1

    code, out, err = call(capsys, "conflicts", b.path)
    assert code == 0, err
    assert "1 conflict(s)" in out and f"user {late.id} .email" in out
    assert f"belongs to user {early.id}" in out and '-> "same@x"' in out
    assert f"by {b_author} (this database)" in out

    code, out, _ = call(capsys, "conflicts", b.path, "--json")
    [doc] = json.loads(out)
    assert (doc["kind"], doc["entity_id"], doc["attribute"], doc["other_entity_id"]) == (
        "unique", late.id, "email", early.id)
    assert doc["change"]["new_value"] == "same@x" and doc["change"]["author"] == b_author
    code, out, _ = call(capsys, "conflicts", b.path, "--json", "--table", "item")
    assert json.loads(out) == []

    code, out, _ = call(capsys, "status", b.path)
    assert "conflicts    1 change(s) kept out" in out
    code, out, _ = call(capsys, "status", b.path, "--json")
    assert json.loads(out)["conflicts"] == 1
    code, _, err = call(capsys, "conflicts", tmp_path / "missing.db")
    assert code == 1 and "does not exist" in err
