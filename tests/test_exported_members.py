"""Tests for ``dimpledb_sa`` (the package's ``__init__``): its public names are exactly
those docs/API.md lists (plus a few documented extras)."""

from __future__ import annotations

import dimpledb_sa

API = {
    "AsyncDimpleDb", "AsyncSession", "Change", "ConfigurationError", "Conflict",
    "DecryptionError", "DimpleDb", "DimpleError",
    "RemoteFormatError", "Session", "SyncError", "SyncReport", "new_id", "signals",
}
EXTRAS = {"generate_identity", "LiveQuery", "HistoryError", "RevertError", "generate_device_key",
          "SignatureError"}


def test_all_is_the_public_api() -> None:
    exported = set(dimpledb_sa.__all__)
    assert exported >= API
    assert exported - API <= EXTRAS


def test_every_exported_name_exists() -> None:
    for name in dimpledb_sa.__all__:
        assert hasattr(dimpledb_sa, name), name


def test_error_tree() -> None:
    d = dimpledb_sa
    assert issubclass(d.ConfigurationError, d.DimpleError)
    assert issubclass(d.SyncError, d.DimpleError)
    assert issubclass(d.DecryptionError, d.SyncError)
    assert issubclass(d.RemoteFormatError, d.SyncError)
    err = d.SyncError("x", d.SyncReport(pushed=1))
    assert err.report is not None and err.report.pushed == 1
