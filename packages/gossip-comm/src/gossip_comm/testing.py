"""A spawn harness for multi-process tests, shared by gossip-comm, gossip-nn and sgp-imagenet.

``run_distributed(fn, world_size, ...)`` starts ``world_size`` fresh processes, joins them
into a gloo (or NCCL) group through a file rendezvous in a temporary directory, runs
``fn(rank, world_size, *args)`` in each and returns the results in rank order. A failure
in any child is re-raised in the parent with the child's rank and traceback. ``fn`` may be
defined in a test file: the child loads it from its source file, so pytest's
``--import-mode=importlib`` is no obstacle.

Children come from a ``forkserver`` that has already imported torch, so a child starts in
milliseconds instead of the two CPU-seconds a fresh interpreter spends importing torch.
The server never runs torch code (no threads, no CUDA), so forking it is safe; each child
gets the parent's current working directory, ``sys.path`` and environment (the
environment is sent explicitly, since a forkserver child would otherwise see the
server's), as a ``spawn`` child would.
"""

from __future__ import annotations

import importlib.util
import inspect
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["RankFailedError", "run_distributed", "run_torchrun", "store_server"]

_SERVE_STORE = (
    "import time, torch.distributed as d; from datetime import timedelta;"
    "s = d.TCPStore('127.0.0.1', 0, is_master=True, wait_for_workers=False,"
    " timeout=timedelta(seconds=60)); print(s.port, flush=True); time.sleep(3600)"
)
"""A store server process: it prints its port and serves until killed."""

GLOO_EXIT_ABORT = "terminate called without an active exception"
"""What torch 2.14's gloo prints when it aborts a finished process at exit."""


class RankFailedError(RuntimeError):
    """A child process raised, exited abnormally or overran the deadline.

    Attributes:
        rank: The child's rank.
    """

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


def _load(module_file: str, module_name: str, qualname: str) -> Callable[..., Any]:
    # As ``python file.py`` would: the file's folder is importable, so helper modules
    # next to a test file resolve in the child too.
    folder = os.path.dirname(module_file)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != module_file:
        spec = importlib.util.spec_from_file_location(
            f"_gossip_spawned_{abs(hash(module_file))}", module_file
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _child(
    rank: int,
    world_size: int,
    target: tuple[str, str, str],
    args: tuple[Any, ...],
    backend: str,
    init_file: str,
    out_dir: str,
    init_timeout: float | None,
    environ: dict[str, str],
) -> None:
    os.environ.clear()
    os.environ.update(environ)
    import torch.distributed as dist

    out = Path(out_dir) / f"rank{rank}.pkl"
    stage = "init"  # a rank that fails in init is often a victim of a peer failing in fn
    try:
        fn = _load(*target)
        if backend == "nccl":
            import torch

            torch.cuda.set_device(rank % torch.cuda.device_count())
        if init_timeout is None:  # the function forms its own groups
            stage = "run"
            result = fn(rank, world_size, *args)
        else:
            dist.init_process_group(
                backend,
                init_method=f"file://{init_file}",
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=init_timeout),
            )
            stage = "run"
            try:
                result = fn(rank, world_size, *args)
            finally:
                dist.destroy_process_group()
        payload: tuple[str, Any] = ("ok", result)
    except BaseException as exc:  # report everything, KeyboardInterrupt included
        payload = ("error", (repr(exc), traceback.format_exc(), exc, stage))
    try:
        data = pickle.dumps(payload)
    except Exception:
        data = pickle.dumps(
            ("error", (repr(payload[1]), "unpicklable result or error", None, stage))
        )
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


_PRELOAD = ["torch", "torch.distributed", "gossip_comm"]


def _context() -> Any:
    """The forkserver context, with torch imported once in the server."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    *,
    backend: str = "gloo",
    timeout: float = 120.0,
    init_timeout: float | None = 60.0,
    allowed_exits: Sequence[int] = (),
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes.

    Args:
        fn: A module-level function; its return value must be picklable.
        world_size: Number of processes, at least 1.
        args: Extra positional arguments (picklable).
        backend: ``"gloo"`` or ``"nccl"``.
        timeout: Seconds for the whole run before the children are killed.
        init_timeout: Timeout given to ``init_process_group``; ``None``: no group is
            formed, ``fn`` forms its own (``rank`` and ``world_size`` are then only the
            child's index and the number of children).
        allowed_exits: Ranks allowed to die without reporting (to test dead peers);
            their result is ``None``.

    Returns:
        The return values, in rank order.

    Raises:
        RankFailedError: For the lowest rank that raised in ``fn`` (or, if none did, the
            lowest that failed to join the group), with the child's traceback.
        ValueError: If ``world_size < 1`` or ``fn`` is not a module-level function.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    module_file = inspect.getsourcefile(fn)
    if module_file is None or "<locals>" in fn.__qualname__:
        raise ValueError("fn must be a module-level function defined in a source file")
    target = (os.path.abspath(module_file), fn.__module__, fn.__qualname__)
    ctx = _context()
    with tempfile.TemporaryDirectory(prefix="gossip-spawn-") as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(
                target=_child,
                args=(
                    r,
                    world_size,
                    target,
                    tuple(args),
                    backend,
                    init_file,
                    tmp,
                    init_timeout,
                    dict(os.environ),
                ),
                name=f"gossip-rank{r}",
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        try:
            for p in procs:
                p.join(max(deadline - time.monotonic(), 0.0))
        finally:
            overran = [r for r, p in enumerate(procs) if p.is_alive()]
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        # (priority, rank, message): a rank that raised in fn is the likely cause; one
        # whose init failed (a peer that raised early closes its connections), hung or
        # died without a result is reported only if no rank raised in fn.
        failures: list[tuple[int, int, str]] = []
        results: list[Any] = []
        for r, p in enumerate(procs):
            path = Path(tmp) / f"rank{r}.pkl"
            if r in overran:
                failures.append((2, r, f"rank {r} did not finish within {timeout:g}s"))
            elif not path.exists():
                if r not in allowed_exits:
                    message = f"rank {r} exited with code {p.exitcode} without a result"
                    failures.append((2, r, message))
                results.append(None)
                continue
            else:
                status, value = pickle.loads(path.read_bytes())
                if status == "error":
                    text, tb, _, stage = value
                    message = f"rank {r} raised {text}\n--- child traceback ---\n{tb}"
                    failures.append((0 if stage == "run" else 1, r, message))
                results.append(value)
        if failures:
            _, r, message = min(failures)
            raise RankFailedError(message, r)
        return results


def run_torchrun(
    args: Sequence[str], cwd: str | Path, *, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun ARGS`` (as ``python -m torch.distributed.run``) in ``cwd``.

    torch 2.14's gloo has been seen to abort a process *after* it finished, at interpreter
    exit, printing ``GLOO_EXIT_ABORT``. It was seen while the project was built, but the
    later measurements (``benchmarks/exit_probe.py``, ``benchmarks/bench_exit.py``; results
    in ``benchmarks/results/exit_*.md``) found no abort in 530 runs, so this is a guard
    against a rare event, not a known rate. A run that fails that way is run once more; any
    other failure, or the same one twice, is returned as it is for the caller to assert on.
    """
    command = [sys.executable, "-m", "torch.distributed.run", *args]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0 and GLOO_EXIT_ABORT in result.stderr:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    return result


@contextmanager
def store_server(timeout: float = 60.0, *, lost_after: float | None = None) -> Iterator[int]:
    """Serve a ``TCPStore`` on a free loopback port; yield the port.

    For tests of fault-tolerant gossip, whose store must outlive the workers: the
    workers connect to ``127.0.0.1:port`` as clients. The server stops on exit.

    Args:
        timeout: The server's store timeout, in seconds.
        lost_after: Serve from a separate process and ``SIGKILL`` it this many seconds
            after the block starts (to test a lost coordinator); ``None`` serves from
            this process.
    """
    if lost_after is not None:
        process = subprocess.Popen([sys.executable, "-c", _SERVE_STORE], stdout=subprocess.PIPE)
        killer = threading.Timer(lost_after, process.kill)
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            killer.start()
            yield port
        finally:
            killer.cancel()
            process.kill()
            process.wait()
        return
    import torch.distributed as dist

    server = dist.TCPStore(  # type: ignore[attr-defined]  # re-exported from torch._C
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout)
    )
    try:
        yield server.port
    finally:
        del server
