"""What the ``dimpledb`` command says besides its results: errors and progress.

This module owns :class:`CliError` (a message for the user and its exit code: 1 the operation
failed, 2 the command line is wrong, see :func:`usage_error`), the program name used in
messages, :class:`Progress` (progress on stderr: one redrawn line on a terminal, plain phase
lines otherwise) and the small formatters every command shares: the time in a transaction
id for people, and JSON on stdout.
"""

from __future__ import annotations

import json
import shutil
from typing import IO, Any

from ..core.clock import id_datetime

__all__ = ["PROG", "CliError", "Progress", "print_json", "usage_error", "when"]

PROG = "dimpledb"


class CliError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def usage_error(message: str) -> CliError:
    return CliError(message, 2)


class Progress:
    """Progress on stderr: one redrawn line on a terminal, plain phase lines otherwise."""

    def __init__(self, stream: IO[str], *, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self._drawn = False

    def line(self, text: str) -> None:
        """A phase: redrawn in place on a terminal, a plain line otherwise."""
        if not self.enabled:
            return
        if self.tty:
            self._draw(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def bar(self, done: int, total: int, text: str) -> None:
        """``done`` of ``total`` steps: a bar redrawn in place (terminals only)."""
        if not self.tty:
            return
        width = 24
        filled = width * done // total if total else width
        self._draw(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {text}")

    def _draw(self, text: str) -> None:
        columns = shutil.get_terminal_size((80, 24)).columns - 1  # no wrap: \r must work
        self.stream.write(f"\r\x1b[K{text[:columns]}")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def finish(self) -> None:
        if self.enabled:
            self._clear()
            self.stream.flush()


def when(tx_id: str | None) -> str:
    """The time in a UUIDv7 id, for people."""
    if not tx_id:
        return "never"
    try:
        return id_datetime(tx_id).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return "?"


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))
