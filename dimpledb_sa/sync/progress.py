"""The ``progress=`` callback of a sync: ``progress(phase, done, total)``.

Phases: ``"push"`` (transactions uploaded of those to push), ``"pull"`` (bundles read of
those listed after the cursors) and ``"merge"`` (changes merged of those read). Within a
phase ``done`` never decreases, never passes ``total``, and the phase's last call has
``done == total`` (a phase with nothing to do reports ``(0, 0)`` once). :class:`Phase` keeps
those promises whatever its caller does; an exception raised by the callback propagates (it
ends the sync as any error there would).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Phase", "Progress"]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``."""


class Phase:
    """One phase's reports to a ``progress`` callback (none when it is ``None``)."""

    def __init__(self, progress: Progress | None, name: str, total: int = 0) -> None:
        self._cb = progress
        self.name = name
        self.total = max(total, 0)
        self.done = 0
        self._last: tuple[int, int] | None = None

    def grow(self, more: int) -> None:
        """Raise the total by ``more`` (work found on the way)."""
        self.total += max(more, 0)

    def advance(self, by: int = 1) -> None:
        """``by`` more units done; reported."""
        self.done = min(self.done + max(by, 0), self.total)
        self._emit()

    def finish(self) -> None:
        """The phase is over: reports ``done == total`` (the rest is counted done)."""
        self.done = self.total
        self._emit()

    def _emit(self) -> None:
        if self._cb is None:
            return
        now = (self.done, self.total)
        if now != self._last:
            self._last = now
            self._cb(self.name, self.done, self.total)
