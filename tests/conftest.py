"""Shared test fixtures.

A tracked database: ``engine`` is a SQLite file (``app.db`` in the test's temporary folder)
and ``db`` a ``DimpleDb`` on it tracking ``models`` (tables created, closed afterwards, which
also closes its live queries and watchers). ``models`` is ``models.Base``, the capture tests'
schema; a test module that needs another set overrides the ``models`` fixture (the live-query
and watcher tests return ``models.LiveBase``).

Remote storage: ``remote`` runs a test once per backend (``memory``, ``local`` folder and
``s3``), each time on a fresh, empty location; ``s3_server`` is the loopback S3 endpoint
(moto's ``ThreadedMotoServer``), started once per session and only when an S3 test runs;
``devs`` makes sync devices on ``remote``.

The command line: ``world`` (module-scoped) and ``no_key_in_env``, see ``cliworld``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import DeclarativeBase

if importlib.util.find_spec("dimpledb_sa") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cliworld import World, make_world  # after the path set-up above: they import dimpledb_sa
from models import Base, make_engine
from syncworld import Devices, device_set

import dimpledb_sa as dimple

# --------------------------------------------------------------------------- a tracked database


@pytest.fixture
def models() -> type[DeclarativeBase]:
    """What ``db`` tracks: ``models.Base``, unless the test module overrides this fixture."""
    return Base


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(tmp_path / "app.db")
    yield eng
    eng.dispose()


@pytest.fixture
def db(engine: Engine, models: type[DeclarativeBase]) -> Iterator[dimple.DimpleDb]:
    d = dimple.DimpleDb(engine, models)
    d.create_all()
    yield d
    d.close()


# --------------------------------------------------------------------------- remote storage

S3_KEY = "dimpledb-test-key"
S3_SECRET = "dimpledb-test-secret"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Remote:
    """A fresh, empty remote location: pass ``url`` and ``storage_options`` to the library."""

    backend: str  # "memory" | "local" | "s3"
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def filesystem(self, **extra: Any) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem and root path, to look at or tamper with the remote
        (local folders are created as files are written)."""
        if self.backend == "local":
            extra = {"auto_mkdir": True, **extra}
        fs, root = fsspec.core.url_to_fs(self.url, **{**self.storage_options, **extra})
        return fs, root


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of an S3 server on 127.0.0.1 (a free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


def s3_options(endpoint: str) -> dict[str, Any]:
    """storage_options for the test server: explicit credentials, nothing from the env."""
    return {
        "endpoint_url": endpoint,
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"region_name": S3_REGION},
    }


def reset_s3(endpoint: str) -> None:
    """Forget every bucket and object on the test server."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with opener.open(request, timeout=30) as response:
        response.read()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on a freshly reset test server; returns its name."""
    reset_s3(s3_server)
    bucket = f"dimpledb-{uuid.uuid4().hex[:20]}"
    fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}", **s3_options(s3_server))
    fs.call_s3("create_bucket", Bucket=bucket)  # no LocationConstraint: us-east-1
    fs.invalidate_cache()
    return bucket


@pytest.fixture(params=["memory", "local", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Remote]:
    """A fresh, empty remote location on each backend in turn."""
    backend: str = request.param
    if backend == "memory":
        top = f"/dimpledb-test-{uuid.uuid4().hex}"  # the memory filesystem is process-global
        yield Remote(backend, f"memory:/{top}/remote", {})
        mem = fsspec.filesystem("memory")
        if mem.exists(top):
            mem.rm(top, recursive=True)
    elif backend == "local":
        yield Remote(backend, str(tmp_path / "remote"), {})  # not created yet, on purpose
    else:
        endpoint: str = request.getfixturevalue("s3_server")
        bucket: str = request.getfixturevalue("s3_bucket")
        yield Remote(backend, f"s3://{bucket}/remote", s3_options(endpoint))


@pytest.fixture
def devs(tmp_path: Path, remote: Remote) -> Iterator[Devices]:
    """Devices (``syncworld``) on ``remote``, closed afterwards; ``test_merge`` has its own."""
    with device_set(tmp_path, remote.url, remote.storage_options) as d:
        yield d


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The command-line tests' world (``cliworld.make_world``), built once per test module."""
    return make_world(tmp_path_factory.mktemp("cli"))


@pytest.fixture
def no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``$DIMPLEDB_IDENTITY*`` from the caller's environment."""
    for name in ("DIMPLEDB_IDENTITY", "DIMPLEDB_IDENTITY_FILE"):
        monkeypatch.delenv(name, raising=False)
