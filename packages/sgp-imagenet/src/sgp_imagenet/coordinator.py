"""``sgp-imagenet coordinator``: the store a fault-tolerant job agrees through.

A small long-lived process that is not a worker: it serves the ``TCPStore`` on which the
workers register and agree on each generation
([`Membership`][gossip_comm.Membership]), and prints every generation as the workers
decide it. It holds no model state; if it is lost, every worker stops with
[`StoreLostError`][gossip_comm.StoreLostError].
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

import torch.distributed as dist

from gossip_topology import Generation

__all__ = ["describe", "serve"]


def describe(previous: Generation | None, current: Generation) -> str:
    """One log line for a new generation, with who left and who joined since ``previous``."""
    line = f"generation {current.number}: {current.world_size} member(s) {list(current.members)}"
    if previous is not None:
        lost = sorted(set(previous.members) - set(current.members))
        joined = sorted(set(current.members) - set(previous.members))
        changes = ([f"lost {lost}"] if lost else []) + ([f"joined {joined}"] if joined else [])
        if changes:
            line += f" ({', '.join(changes)})"
    return line


def _decided(store: Any, prefix: str, after: Generation | None) -> list[Generation]:
    """The generations the workers decided after ``after`` (all of them since the job
    formed when ``None``), oldest first."""
    if not store.check([prefix + "current"]):
        return []
    first = 0 if after is None else after.number + 1
    return [
        Generation(number, tuple(json.loads(store.get(f"{prefix}g{number}/members"))))
        for number in range(first, int(store.get(prefix + "current")) + 1)
    ]


def serve(
    host: str,
    port: int,
    *,
    prefix: str = "gossip/",
    poll: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    out: TextIO = sys.stdout,
) -> int:
    """Serve the membership store until ``should_stop()`` (or SIGTERM / SIGINT).

    Args:
        host: Address to listen on (``0.0.0.0``: every interface).
        port: TCP port; 0 picks a free one (printed on the first line).
        prefix: The workers' key prefix (``FaultTolerance(prefix=...)``).
        poll: Seconds between looks at the current generation.
        should_stop: Checked every ``poll`` seconds.
        out: Where the log lines go.

    Returns:
        The exit status, 0.
    """
    store = dist.TCPStore(  # type: ignore[attr-defined]  # re-exported from torch._C
        host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    print(
        f"coordinator: serving the membership store on {host}:{store.port} "
        f"(key prefix {prefix!r}); stop it with Ctrl-C or SIGTERM",
        file=out,
        flush=True,
    )
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    seen: Generation | None = None
    while True:
        for generation in _decided(store, prefix, seen):
            print(f"coordinator: {describe(seen, generation)}", file=out, flush=True)
            seen = generation
        if stopping or should_stop():  # after a last look, so no decision goes unlogged
            break
        time.sleep(poll)
    print("coordinator: stopped", file=out, flush=True)
    return 0
