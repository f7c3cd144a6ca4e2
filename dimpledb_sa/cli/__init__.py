"""The ``dimpledb`` command line: keygen, sync, status, history, log, revert, show, inspect
and verify.

It knows no application models: ``sync`` reflects the database's tables and tracks every one
the library can, unless ``--models module:Base`` names the real ones; ``status``,
``history``, ``log`` and ``show`` read the bookkeeping tables without writing; ``revert``
records an undo; ``inspect`` and ``verify`` read a remote without changing it. The parts:
``app`` (parser, dispatch, exit codes), ``keys`` (key options and ``keygen``),
``database`` (opening the database, reflection), ``local`` (``sync``, ``status``,
``history``), ``timeline`` (``log``, ``revert``, ``show``), ``remote`` (opening the remote,
``inspect``, ``verify``) and ``output`` (errors, progress, formatting). This package only
re-exports.
"""

from __future__ import annotations

from .app import build_parser, main
from .output import Progress

__all__ = ["Progress", "build_parser", "main"]
