"""The handle returned by asynchronous gossip: poll it, or wait for the mixed result."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["GossipHandle"]

T = TypeVar("T")


class GossipHandle(Generic[T]):
    """An exchange in flight.

    On CPU (gloo) a single background thread blocks in the backend's own ``Work.wait``
    and then mixes, so ``is_completed`` turns true without the caller waiting; on CUDA
    (NCCL) the works are polled directly and the mixing runs on the caller's stream.
    Either way ``wait`` returns the mixed result and re-raises any
    [`GossipError`][gossip_comm.GossipError].
    """

    def __init__(
        self,
        *,
        future: Future[T] | None = None,
        poll: Callable[[], bool] | None = None,
        finish: Callable[[], T] | None = None,
    ) -> None:
        for name, value in (("poll", poll), ("finish", finish)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a callable or None; got {value!r:.80}")
        if future is not None and not isinstance(future, Future):
            raise TypeError(
                f"future must be a concurrent.futures.Future or None; got {future!r:.80}"
            )
        if (future is None) == (finish is None):
            raise ValueError("GossipHandle needs exactly one of future or finish")
        self._future, self._poll, self._finish = future, poll, finish
        self._result: tuple[T] | None = None

    def is_completed(self) -> bool:
        """Whether ``wait`` would return without blocking on the network."""
        if self._result is not None:
            return True
        if self._future is not None:
            return self._future.done()
        return self._poll() if self._poll is not None else False

    def wait(self) -> T:
        """Block until the exchange is done and return the mixed result (idempotent).

        Raises:
            GossipError: If a peer timed out, died or sent non-finite values.
        """
        if self._result is None:
            if self._future is not None:
                self._result = (self._future.result(),)
            else:
                assert self._finish is not None
                self._result = (self._finish(),)
        return self._result[0]
