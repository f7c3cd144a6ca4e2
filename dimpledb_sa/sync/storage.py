"""The remote: author folders of manifest and bundle files on any fsspec filesystem.

This module owns every call made to the storage backend. ``Storage`` maps the remote
layout (``root/{author}/dimple_db.json`` and ``root/{author}/{first}_{last}.json``) onto an
``fsspec.AbstractFileSystem`` built from a URL or plain path (``memory://``, ``file://``,
``s3://`` with ``storage_options``) or handed in by the caller; it builds no backend registry
of its own. Every author and file name is validated before the backend is touched, so no
path can leave the root (:class:`~dimpledb_sa.core.errors.RemoteFormatError` otherwise); listings
are always fresh (fsspec's directory cache is dropped first); and ``requests`` counts the
calls made, by kind. On folder backends a write goes through a hidden temporary file
named with the time it began (:func:`temporary_name`), and
:meth:`Storage.remove_stale_temporaries` removes those of writes that died. Backend
failures propagate as the built-in exceptions fsspec raises
(``FileNotFoundError``, ``PermissionError``, other ``OSError``). Contents are opaque bytes:
encoding and encryption happen elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from ..core._compat import strip_protocol
from ..core.errors import ConfigurationError, RemoteFormatError
from .wire import MANIFEST_NAME, is_bundle_name, is_uuid

__all__ = ["STALE_TEMPORARY_SECONDS", "Storage", "temporary_name"]


def _check_author(author: str) -> str:
    if not is_uuid(author):
        raise RemoteFormatError(f"unsafe or malformed author folder name: {author!r:.80}")
    return author


def _check_bundle(name: str) -> str:
    if not is_bundle_name(name):
        raise RemoteFormatError(f"unsafe or malformed bundle file name: {name!r:.120}")
    return name


_TEMPORARY = re.compile(r"\.(.+)\.(\d{13})\.[0-9a-f]{16}\.tmp")
_OLD_TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{32}\.tmp")  # before the time was in the name

STALE_TEMPORARY_SECONDS = 3600.0
"""A temporary file older than this (by the time in its name) belongs to a write that
died: a push removes it from its own folder."""


def temporary_name(name: str, now: float | None = None) -> str:
    """The hidden temporary file a write of ``name`` goes through on folder backends:
    ``.{name}.{unix time in ms, 13 digits}.{16 random hex digits}.tmp``."""
    ms = int((time.time() if now is None else now) * 1000)
    return f".{name}.{ms:013d}.{uuid.uuid4().hex[:16]}.tmp"


def _temporary_age(entry: Mapping[str, Any], name: str, now: float) -> float | None:
    """How old a temporary file is, or ``None`` when ``name`` is not one of ours."""
    m = _TEMPORARY.fullmatch(name)
    if m is not None:
        return now - int(m.group(2)) / 1000
    if _OLD_TEMPORARY.fullmatch(name) is None:
        return None
    stamp = entry.get("mtime", entry.get("created"))
    if isinstance(stamp, datetime):
        stamp = stamp.timestamp()
    return now - float(stamp) if isinstance(stamp, int | float) else None


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class Storage:
    """One remote location: a filesystem and the root folder holding the author folders."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        if not isinstance(fs, AbstractFileSystem):
            raise ConfigurationError(f"not an fsspec filesystem: {fs!r}")
        root = strip_protocol(fs, root) if isinstance(root, str) and root else ""
        root = root.rstrip("/") or ("/" if root.startswith("/") else "")
        if not root:
            raise ConfigurationError("the remote needs a path (a folder, or bucket/prefix)")
        self.fs = fs
        self.root: str = root
        self.requests: Counter[str] = Counter()
        """Calls made to the backend, by kind: ``"ls"``, ``"get"``, ``"put"``."""

    @classmethod
    def from_remote(
        cls,
        remote: str | os.PathLike[str] | AbstractFileSystem,
        storage_options: Mapping[str, Any] | None = None,
        *,
        path: str | None = None,
    ) -> Storage:
        """A ``Storage`` for a URL or local path (with fsspec ``storage_options``), or for a
        filesystem object plus ``path=``. ``ConfigurationError`` for what fsspec cannot open.
        """
        if isinstance(remote, AbstractFileSystem):
            if path is None:
                raise ConfigurationError("a filesystem object as remote needs path= (its root)")
            if storage_options:
                raise ConfigurationError(
                    "storage_options= applies to a remote URL, not to a filesystem object"
                )
            return cls(remote, path)
        if path is not None:
            raise ConfigurationError("path= applies only to a filesystem object as remote")
        if not isinstance(remote, str | os.PathLike):
            raise ConfigurationError(
                f"remote= must be a URL, a path or an fsspec filesystem, not {remote!r:.80}"
            )
        url = os.fspath(remote)
        if not url:
            raise ConfigurationError("remote= is empty")
        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError as e:
            raise ConfigurationError(f"cannot open remote {url!r}: {e}") from e
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"cannot open remote {url!r}: {e}") from e
        return cls(fs, root)

    def __repr__(self) -> str:
        return f"Storage({type(self.fs).__name__}, {self.root!r})"

    # ----------------------------------------------------------------------- paths

    def _join(self, *parts: str) -> str:
        return "/".join((self.root.rstrip("/"), *parts))

    def _missing_bucket(self) -> str | None:
        """The root's bucket when the backend has buckets and that one does not exist."""
        split = getattr(self.fs, "split_path", None)
        if split is None:
            return None
        bucket = split(self.root)[0]
        self.requests["ls"] += 1
        return None if self.fs.exists(bucket) else str(bucket)

    def _no_bucket_error(self, bucket: str, e: FileNotFoundError) -> FileNotFoundError:
        return FileNotFoundError(
            f"the remote's bucket {bucket!r} does not exist (buckets are not created "
            f"automatically; create it first): {e}"
        )

    # ----------------------------------------------------------------------- listing

    def _ls(self, path: str) -> list[dict[str, Any]]:
        self.fs.invalidate_cache(path)  # always fresh: s3fs caches listings
        self.requests["ls"] += 1
        return list(self.fs.ls(path, detail=True))

    def list_authors(self) -> tuple[list[str], list[str]]:
        """One fresh listing of the root: (author folders, sorted; every other name found).

        A root that does not exist yet has no authors. A missing bucket raises
        ``FileNotFoundError``.
        """
        try:
            entries = self._ls(self.root)
        except FileNotFoundError as e:
            bucket = self._missing_bucket()
            if bucket is not None:
                raise self._no_bucket_error(bucket, e) from e
            return [], []
        authors: set[str] = set()
        bad: set[str] = set()
        for entry in entries:
            full = str(entry["name"]).rstrip("/")
            if full == self.root.rstrip("/"):
                continue  # the folder itself (a directory marker object on S3)
            name = _basename(full)
            if entry.get("type") == "directory" and is_uuid(name):
                authors.add(name)
            else:
                bad.add(name)
        return sorted(authors), sorted(bad)

    def list_files(self, author: str) -> list[str]:
        """The names of the files in ``author``'s folder, sorted (for verify/inspect tools)."""
        try:
            entries = self._ls(self._join(_check_author(author)))
        except FileNotFoundError:
            return []
        folder = self._join(author).rstrip("/")
        return sorted(
            _basename(str(e["name"]))
            for e in entries
            if e.get("type") != "directory" and str(e["name"]).rstrip("/") != folder
        )

    # ----------------------------------------------------------------------- reading

    def read_manifest(self, author: str) -> bytes | None:
        """``author``'s manifest, or ``None`` when it has none."""
        path = self._join(_check_author(author), MANIFEST_NAME)
        self.requests["get"] += 1
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def read_bundle(self, author: str, name: str) -> bytes:
        """One bundle file; ``FileNotFoundError`` when it is missing."""
        path = self._join(_check_author(author), _check_bundle(name))
        self.requests["get"] += 1
        return bytes(self.fs.cat_file(path))

    def read_bundles(self, author: str, names: Sequence[str]) -> dict[str, bytes | Exception]:
        """Several bundles of one author in one backend call (concurrent on S3).

        Returns name -> contents, or the exception that reading that file raised
        (``FileNotFoundError`` for a missing one).
        """
        folder = _check_author(author)
        unique = list(dict.fromkeys(_check_bundle(n) for n in names))
        if not unique:
            return {}
        paths = [self._join(folder, n) for n in unique]
        self.requests["get"] += len(paths)
        got = self.fs.cat(paths, on_error="return")
        by_name = {_basename(str(p)): v for p, v in got.items()}
        out: dict[str, bytes | Exception] = {}
        for name in unique:
            value = by_name.get(name)
            if isinstance(value, Exception):
                out[name] = value
            elif value is None:
                out[name] = FileNotFoundError(self._join(folder, name))
            else:
                out[name] = bytes(value)
        return out

    # ----------------------------------------------------------------------- writing

    def _put(self, folder: str, name: str, data: bytes) -> None:
        path = self._join(folder, name)
        self.requests["put"] += 1
        if not self.uses_temporaries:
            # An object store: a PUT replaces the object atomically; buckets are not created.
            try:
                self.fs.pipe_file(path, bytes(data))
            except FileNotFoundError as e:
                bucket = self._missing_bucket()
                if bucket is not None:
                    raise self._no_bucket_error(bucket, e) from e
                raise
            return
        # A folder (local, memory, ...): write a hidden temporary file next to the target,
        # creating the folders on first use, then rename it, so that readers never see a
        # partly written manifest or bundle.
        parent = self._join(folder)
        tmp = self._join(folder, temporary_name(name))
        try:
            self.fs.pipe_file(tmp, bytes(data))
        except FileNotFoundError:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, bytes(data))
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm_file(tmp)
            raise

    @property
    def uses_temporaries(self) -> bool:
        """True on folder-like backends (local, memory), where writes go through a
        temporary file; object stores (with buckets) replace objects atomically."""
        return getattr(self.fs, "split_path", None) is None

    def remove_stale_temporaries(self, author: str,
                                 older_than: float = STALE_TEMPORARY_SECONDS) -> list[str]:
        """Remove the temporary files of writes that died (older than ``older_than``
        seconds) from ``author``'s folder; returns their names. One listing; nothing on
        object stores (they have none)."""
        if not self.uses_temporaries:
            return []
        try:
            entries = self._ls(self._join(_check_author(author)))
        except FileNotFoundError:
            return []
        now = time.time()
        removed = []
        for entry in entries:
            name = _basename(str(entry["name"]))
            age = _temporary_age(entry, name, now)
            if entry.get("type") == "directory" or age is None or age < older_than:
                continue
            with contextlib.suppress(FileNotFoundError):  # another push removed it first
                self.fs.rm_file(self._join(author, name))
                removed.append(name)
        return removed

    def write_bundle(self, author: str, name: str, data: bytes) -> None:
        """Write (or overwrite) a bundle file in ``author``'s folder."""
        self._put(_check_author(author), _check_bundle(name), data)

    def write_manifest(self, author: str, data: bytes) -> None:
        """Write (or overwrite) ``author``'s manifest."""
        self._put(_check_author(author), MANIFEST_NAME, data)
