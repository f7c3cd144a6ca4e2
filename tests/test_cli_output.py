"""Tests for ``dimpledb_sa.cli.output``: what the ``dimpledb`` command shows besides its
results: progress."""

from __future__ import annotations

from dimpledb_sa import cli

__all__: list[str] = []


def test_progress_bar_on_a_terminal() -> None:
    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    tty = Tty()
    progress = cli.Progress(tty)  # type: ignore[arg-type]
    progress.line("pull: listing the remote")
    progress.bar(1, 4, "author x")
    progress.finish()
    assert "\r\x1b[K[######..................] 1/4 author x" in tty.text
    assert tty.text.endswith("\r\x1b[K") and "\n" not in tty.text
