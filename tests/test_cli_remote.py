"""Tests for ``dimpledb_sa.cli.remote``: ``dimpledb inspect`` and ``verify``, and the
remote on the command line.

Runs against the shared world (``cliworld``): listing a remote and decrypting one bundle,
wrong keys and bad arguments, verification that finds tampering, a missing remote reported
and not created, a plaintext remote, and an S3 remote reached through ``--storage-option``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
from cliworld import World, call, run

__all__: list[str] = []

pytestmark = pytest.mark.usefixtures("no_key_in_env")


def _bundles(world: World) -> list[str]:
    folder = world.remote / world.a_author
    return sorted(f"{world.a_author}/{p.name}" for p in folder.iterdir()
                  if p.name != "dimple_db.json")


def test_inspect_lists_and_decrypts(world: World) -> None:
    proc = run("inspect", world.remote, cwd=world.dir)
    assert proc.returncode == 0, proc.stderr
    assert "1 author(s)" in proc.stdout and f"author {world.a_author}" in proc.stdout
    assert "1 bundle(s), 3 transaction(s)" in proc.stdout
    (bundle,) = _bundles(world)
    assert bundle.split("/")[1] in proc.stdout
    proc = run("inspect", world.remote, "--bundle", bundle, "-i", world.key, cwd=world.dir)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # the file's JSON as it is: format 3
    assert (doc["format"], doc["version"], doc["author"]) == ("dimpledb-bundle", 3,
                                                             world.a_author)
    assert len(doc["transactions"]) == 3
    edits = [edit for tx in doc["transactions"] for _, _, _, names, olds, news in tx["runs"]
             for edit in zip(names, olds, news, strict=True)]
    assert ("text", "milk", "oat milk") in edits
    assert "3 transaction(s)" in proc.stderr


def test_inspect_wrong_key_and_bad_arguments(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle,) = _bundles(world)
    proc = run("inspect", world.remote, "--bundle", bundle, "-i", world.other_key,
               cwd=world.dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"cannot decrypt {bundle} with the given identity" in proc.stderr
    code, _, err = call(capsys, "inspect", world.remote, "--bundle", bundle)
    assert code == 2 and "is encrypted: give --identity-file" in err
    code, _, err = call(capsys, "inspect", world.remote, "--bundle", "../../etc/passwd")
    assert code == 2 and "AUTHOR_ID/FIRST_LAST.json" in err
    missing = f"{world.a_author}/{world.milk}_{world.milk}.json"
    code, _, err = call(capsys, "inspect", world.remote, "--bundle", missing, "-i", world.key)
    assert code == 1 and "no bundle" in err
    code, out, _ = call(capsys, "inspect", world.remote, "--json")
    assert code == 0 and json.loads(out)["authors"][0]["transactions"] == 3


def test_verify(world: World) -> None:
    proc = run("verify", world.remote, "--identity-file", world.key, cwd=world.dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "verified 1 bundle(s) (3 transaction(s)) of 1 author(s): all good" in proc.stdout
    proc = run("verify", world.remote, "--identity-file", world.other_key, cwd=world.dir)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "cannot decrypt with the given identity" in proc.stdout
    assert "1 problem(s)" in proc.stdout


def test_verify_finds_tampering(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    remote = world.dir / "tampered"
    shutil.copytree(world.remote, remote)
    folder = remote / world.a_author
    (bundle,) = [p for p in folder.iterdir() if p.name != "dimple_db.json"]
    data = bytearray(bundle.read_bytes())
    data[-5] ^= 0xFF
    bundle.write_bytes(bytes(data))
    (remote / "junk").mkdir()
    (folder / "notes.txt").write_text("stray")
    code, out, _ = call(capsys, "verify", remote, "-i", world.key)
    assert code == 1
    assert f"FAIL {world.a_author}/{bundle.name}: cannot decrypt" in out and "corrupt" in out
    assert "FAIL 'junk': not an author folder" in out
    assert f"note {world.a_author}/notes.txt: not in the manifest" in out
    bundle.unlink()
    code, out, _ = call(capsys, "verify", remote, "-i", world.key, "-q")
    assert code == 1 and "listed in the manifest but cannot be read" in out
    assert "verified" not in out
    manifest = json.loads((folder / "dimple_db.json").read_text())
    manifest["bundles"][0]["transaction_count"] = 2
    (folder / "dimple_db.json").write_text(json.dumps(manifest))
    shutil.copy(world.remote / world.a_author / bundle.name, bundle)
    code, out, _ = call(capsys, "verify", remote, "-i", world.key, "-q")
    assert code == 1 and "holds 3 transaction(s), the manifest says 2" in out
    code, _, err = call(capsys, "verify", remote)
    assert code == 2 and "verify needs the key" in err


def test_missing_remote_is_reported_and_not_created(world: World) -> None:
    missing = world.dir / "no-such-remote"
    proc = run("verify", missing, "-i", world.key, cwd=world.dir)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    proc = run("inspect", missing, cwd=world.dir)
    assert proc.returncode == 1 and f"{missing} does not exist" in proc.stderr
    proc = run("status", world.b, "--remote", missing, cwd=world.dir)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    assert not missing.exists()


def test_plaintext_remote(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    remote = world.dir / "plain-remote"
    db = world.dir / "plain-a.db"
    shutil.copy(world.a, db)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM dimple_meta WHERE key = 'pushed_through'")
    code, out, err = call(capsys, "sync", db, remote, "--no-encryption")
    assert code == 0 and "pushed 3" in out, err
    assert "does not exist yet; it is created on the first push" in err
    (folder,) = remote.iterdir()
    (bundle,) = [p.name for p in folder.iterdir() if p.name != "dimple_db.json"]
    code, out, _ = call(capsys, "inspect", remote, "--bundle", f"{folder.name}/{bundle}")
    assert code == 0 and len(json.loads(out)["transactions"]) == 3
    code, out, _ = call(capsys, "verify", remote, "--no-encryption")
    assert code == 0 and "all good" in out
    code, out, _ = call(capsys, "verify", world.remote, "--no-encryption", "-q")
    assert code == 1 and "the file is encrypted" in out


def test_s3_remote_with_storage_options(world: World, s3_server: str, s3_bucket: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import S3_KEY, S3_REGION, S3_SECRET

    options = ["-o", f"endpoint_url={s3_server}", "-o", f"key={S3_KEY}", "-o",
               f"secret={S3_SECRET}", "-o", f"client_kwargs.region_name={S3_REGION}"]
    db = world.dir / "s3.db"
    shutil.copy(world.a, db)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM dimple_meta WHERE key = 'pushed_through'")
    code, out, err = call(capsys, "sync", db, f"s3://{s3_bucket}/app", "-i", world.key,
                          *options)
    assert code == 0 and "pushed 3" in out, err
    code, out, err = call(capsys, "verify", f"s3://{s3_bucket}/app", "-i", world.key,
                          *options)
    assert code == 0 and "all good" in out, err
    code, _, err = call(capsys, "inspect", "s3://no-such-bucket-for-dimpledb/app", *options)
    assert code == 1 and "bucket 'no-such-bucket-for-dimpledb' does not exist" in err
