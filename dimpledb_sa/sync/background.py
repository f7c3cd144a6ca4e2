"""Background sync: :class:`BackgroundSync`, the thread behind ``db.start_sync()``.

This module owns the loop that calls a sync function (``db.sync``) every ``interval``
seconds in one daemon thread, so that an application stays in sync without calling it
itself. A failed sync is never raised into the application, but it is told: the handle's
``failures`` counts it, ``last_error`` keeps it (and ``last_report`` the partial report of
a ``SyncError``), ``signals.sync_failed`` is sent (sender: the ``DimpleDb``, keyword
``error``), ``on_error`` is called, and it is logged (logger ``dimpledb_sa.sync.background``).

Two kinds of failure are retried differently. A *partial* sync (a ``SyncError`` whose
report names only remote authors: the push and the pull went through and everything
readable was merged; a retry soon would not read the rest) waits the normal interval. Any
other failure (network, storage, a failed push, anything unexpected) is retried after an
exponential backoff with jitter, capped at ``max_backoff``, counted over the consecutive
failures of that kind. The thread never dies of a failure: anything a sync, a callback or a
signal receiver raises is caught, ``BaseException``s from native code (such as pyrage's
``PanicException``) included; only ``KeyboardInterrupt`` and ``SystemExit`` end it.

``stop()`` wakes the thread at once (the sleep is an ``Event`` wait), lets a sync in
progress finish, and joins the thread; ``trigger()`` asks for a sync now;
``sync_on_commit`` pushes soon after each local commit. ``synced`` is an ``Event`` set after
each successful sync.

:class:`AsyncBackgroundSync` is the same loop as a task of a running event loop, for
async applications (``adb.start_sync()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigurationError, SyncError
from ..core.signals import changes_committed, send_sync_failed

if TYPE_CHECKING:
    from ..core.report import SyncReport

__all__ = ["AsyncBackgroundSync", "BackgroundSync", "is_partial"]

logger = logging.getLogger(__name__)


class BackgroundSync:
    """Call ``run`` (a sync) in a daemon thread every ``interval`` seconds until :meth:`stop`.

    - ``sender``: the object local commits are signalled as (the ``DimpleDb``), for
      ``sync_on_commit``.

    - ``interval``: seconds between the end of one successful sync and the next.
    - ``retry_delay``: the first backoff after a failure (default ``min(interval, 1.0)``);
      it doubles after each consecutive failure, up to ``max_backoff``, each delay drawn
      uniformly from ``[delay * (1 - jitter), delay]`` so that devices do not retry in step.
    - ``sync_on_start``: sync as soon as the thread starts (default) instead of after one
      interval. ``sync_on_stop``: one last sync when stopped (pushes the final edits).
    - ``sync_on_commit``: also sync shortly after every local commit (``changes_committed``
      with ``origin="local"``), so edits leave the device without waiting for the interval.
    - ``on_sync(report)`` / ``on_error(exc)``: called in the sync thread after each sync
      (``on_error`` after each failed one, partial ones included, right after
      ``signals.sync_failed`` is sent); an exception they raise is logged and ignored.
    """

    def __init__(
        self,
        run: Callable[[], SyncReport],
        *,
        sender: object | None = None,
        interval: float = 30.0,
        retry_delay: float | None = None,
        max_backoff: float = 300.0,
        jitter: float = 0.5,
        sync_on_start: bool = True,
        sync_on_stop: bool = False,
        sync_on_commit: bool = False,
        on_sync: Callable[[SyncReport], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        name: str = "dimpledb-sync",
    ) -> None:
        if not interval > 0:
            raise ConfigurationError(f"interval= must be a positive number of seconds: "
                                     f"{interval!r}")
        if retry_delay is None:
            retry_delay = min(interval, 1.0)
        if not retry_delay > 0 or not max_backoff >= retry_delay:
            raise ConfigurationError(
                f"need 0 < retry_delay <= max_backoff, got {retry_delay!r} and {max_backoff!r}"
            )
        if not 0 <= jitter <= 1:
            raise ConfigurationError(f"jitter= must be between 0 and 1: {jitter!r}")
        self.run = run
        self.sender = sender
        self.interval = float(interval)
        self.retry_delay = float(retry_delay)
        self.max_backoff = float(max_backoff)
        self.jitter = float(jitter)
        self.sync_on_start = sync_on_start
        self.sync_on_stop = sync_on_stop
        self.sync_on_commit = sync_on_commit
        self.on_sync = on_sync
        self.on_error = on_error
        self.name = name

        self.last_report: SyncReport | None = None
        """The report of the last sync that made one: a successful sync's, or the partial
        report a ``SyncError`` carries (a failure without a report leaves it as it was)."""
        self.last_error: BaseException | None = None
        """The error of the last sync, or ``None`` when it succeeded."""
        self.failures = 0
        """Consecutive failed syncs, partial ones included (0 after a success)."""
        self.total_failures = 0
        """Failed syncs since the thread started."""
        self.syncs = 0
        """Syncs attempted so far."""
        self.synced = threading.Event()
        """Set after each successful sync; clear it to wait for the next one."""

        self._retries = 0  # consecutive failures that back off (not partial ones)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<BackgroundSync {state} interval={self.interval} failures={self.failures}>"

    # -- control ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; a stopped ``BackgroundSync`` cannot be restarted)."""
        if self._thread is not None:
            raise RuntimeError("this BackgroundSync has already been started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        if self.sync_on_commit:
            changes_committed.connect(self._on_commit, sender=self.sender)
        self._thread.start()

    def trigger(self) -> None:
        """Ask for a sync now (the thread wakes up; a sync in progress is not repeated)."""
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop the thread: wake it, let a sync in progress finish, join it.

        Returns ``True`` when the thread has ended, ``False`` when ``timeout`` passed first
        (it then ends by itself after its current sync). Safe to call twice, and from
        ``on_sync``/``on_error`` (it then does not wait for itself).
        """
        if self.sync_on_commit:
            changes_committed.disconnect(self._on_commit, sender=self.sender)
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> BackgroundSync:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop --------------------------------------------------------------------------
    def _on_commit(self, sender: Any, *, origin: str = "", **kw: Any) -> None:
        if origin == "local":
            self._wake.set()

    def _run(self) -> None:
        delay = 0.0 if self.sync_on_start else self.interval
        while not self._stop.is_set():
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            delay = self._sync_once()
        if self.sync_on_stop:
            self._sync_once()
        logger.debug("background sync stopped after %d syncs", self.syncs)

    def _sync_once(self) -> float:
        """One sync, never raising (but ``KeyboardInterrupt``/``SystemExit``); returns how
        long to wait before the next one."""
        self.syncs += 1
        try:
            report = self.run()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # native panics (pyrage) are BaseExceptions
            return self._failed(exc)
        self.last_report = report
        self.last_error = None
        self.failures = 0
        self._retries = 0
        self.synced.set()
        self._call(self.on_sync, report)
        return self.interval

    def _failed(self, exc: BaseException) -> float:
        """Record a failed sync, tell the app, and return the delay before the next try."""
        self.last_error = exc
        self.failures += 1
        self.total_failures += 1
        report = exc.report if isinstance(exc, SyncError) else None
        if report is not None:
            self.last_report = report
        if is_partial(exc):
            # The sync went through for every readable author; retrying sooner fixes nothing.
            self._retries = 0
            delay = self.interval
            logger.warning("background sync finished with errors (%d in a row): %s; next "
                           "try in %.3gs", self.failures, exc, delay)
        else:
            self._retries += 1
            delay = self._backoff(self._retries)
            logger.warning("background sync failed (%d in a row): %s: %s; retrying in %.3gs",
                           self.failures, type(exc).__name__, exc, delay)
        self._call(self._send_failed, exc)
        self._call(self.on_error, exc)
        return delay

    def _send_failed(self, exc: BaseException) -> None:
        send_sync_failed(self.sender, exc)

    def _backoff(self, failures: int) -> float:
        delay = min(self.max_backoff, self.retry_delay * 2.0 ** min(failures - 1, 64))
        return delay * (1.0 - self.jitter * self._random.random())

    @staticmethod
    def _call(callback: Callable[[Any], Any] | None, arg: Any) -> None:
        if callback is None:
            return
        try:
            callback(arg)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # the sync thread must not die of a callback
            logger.exception("a background sync callback raised; ignored")


class AsyncBackgroundSync:
    """``adb.start_sync()``: background sync as a task of the running event loop.

    The same loop, options and handle attributes as :class:`BackgroundSync` (it keeps one,
    never started, for the policy: backoff, jitter, callbacks, ``last_report``,
    ``last_error``, ``failures``, ``syncs``, ``synced``), but the waits are the task's and
    each sync is ``offload(policy_step)``: the caller's way of running a blocking function
    off the event loop (``AsyncDimpleDb`` runs it in a worker thread whose database calls
    go to the loop), so the loop is never blocked. ``on_sync``/``on_error`` are called in
    that worker. :meth:`stop` is a coroutine: it wakes the task, lets a sync in progress
    finish, and waits for the task to end.
    """

    def __init__(self, run: Callable[[], SyncReport],
                 offload: Callable[[Callable[[], float]], Awaitable[float]], *,
                 sender: object | None = None, **options: Any) -> None:
        self.policy = BackgroundSync(run, sender=sender, **options)
        self._offload = offload
        self._stop = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<AsyncBackgroundSync {state} interval={self.policy.interval} "
                f"failures={self.failures}>")

    # -- the handle, as BackgroundSync's -----------------------------------------------------
    @property
    def last_report(self) -> SyncReport | None:
        return self.policy.last_report

    @property
    def last_error(self) -> BaseException | None:
        return self.policy.last_error

    @property
    def failures(self) -> int:
        return self.policy.failures

    @property
    def syncs(self) -> int:
        return self.policy.syncs

    @property
    def synced(self) -> threading.Event:
        """Set after each successful sync (a ``threading.Event``, as in the thread version:
        poll it, or await ``asyncio.to_thread(handle.synced.wait)``)."""
        return self.policy.synced

    @property
    def interval(self) -> float:
        return self.policy.interval

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the task in the running event loop (once)."""
        if self._task is not None:
            raise RuntimeError("this AsyncBackgroundSync has already been started")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.policy.sync_on_commit:
            changes_committed.connect(self._on_commit, sender=self.policy.sender)
        self._task = self._loop.create_task(self._run(), name=self.policy.name)

    def trigger(self) -> None:
        """Ask for a sync now (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def stop(self, timeout: float | None = 10.0) -> bool:
        """Wake the task, let a sync in progress finish and wait for the task to end;
        ``False`` when ``timeout`` passed first (the task is then cancelled; a sync in
        progress still finishes in its worker). Safe to call twice."""
        if self.policy.sync_on_commit:
            changes_committed.disconnect(self._on_commit, sender=self.policy.sender)
        self._stop = True
        task = self._task
        if task is None or task.done():
            return True
        if task is asyncio.current_task():
            return False
        self.trigger()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            return False
        return True

    async def __aenter__(self) -> AsyncBackgroundSync:
        if self._task is None:
            self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop --------------------------------------------------------------------------
    def _on_commit(self, sender: Any, *, origin: str = "", **kw: Any) -> None:
        if origin == "local":
            self.trigger()

    async def _run(self) -> None:
        policy, wake = self.policy, self._wake
        assert wake is not None
        delay = 0.0 if policy.sync_on_start else policy.interval
        try:
            while not self._stop:
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                wake.clear()
                if self._stop:
                    break
                delay = await self._offload(policy._sync_once)
            if policy.sync_on_stop:
                await self._offload(policy._sync_once)
        except asyncio.CancelledError:
            logger.debug("background sync task cancelled after %d syncs", policy.syncs)
            raise
        logger.debug("background sync task stopped after %d syncs", policy.syncs)


def is_partial(exc: BaseException) -> bool:
    """Whether a failed sync went through for every readable author: a ``SyncError`` whose
    report names only remote authors (no ``"push"`` failure, and not raised before the pull
    with an empty report, as a remote that cannot be listed is)."""
    if not isinstance(exc, SyncError) or exc.report is None:
        return False
    errors = exc.report.errors
    return bool(errors) and "push" not in errors
