"""The one way gossip-comm runs work in the background: a serial daemon worker thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["Worker"]

T = TypeVar("T")


class Worker:
    """Runs submitted calls one after another on one daemon thread, started lazily.

    Daemon, because a thread blocked on a receive that never completes must not keep the
    interpreter from exiting; serial, because steps of one gossiper finish in the order
    they were posted. The result or exception of each call goes to its future.

    Args:
        name: The thread's name, shown in stack dumps.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` and return a future of its result."""
        future: Future[T] = Future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
            self._thread.start()
        self._queue.put((fn, future))
        return future

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

    def close(self, timeout: float | None = None) -> None:
        """Let queued calls finish, then stop the thread (waits at most ``timeout``)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
