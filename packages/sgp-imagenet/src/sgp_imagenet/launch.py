"""Where this process sits in the job, read from the environment of torchrun or SLURM.

[`detect`][sgp_imagenet.launch.detect] looks, in order, for the variables ``torchrun``
sets (``RANK``, ``WORLD_SIZE``, ...), then for those of a SLURM ``srun`` step
(``SLURM_PROCID``, ``SLURM_NTASKS``, ...), and otherwise assumes one process. It only
reads a mapping of strings, so it is tested with plain dictionaries and never opens a
process group. [`choose_backend`][sgp_imagenet.launch.choose_backend] turns
``--backend`` into ``nccl`` or ``gloo``, and [`describe`][sgp_imagenet.launch.describe]
writes the report of ``sgp-imagenet env``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BACKENDS",
    "LaunchEnv",
    "Launcher",
    "choose_backend",
    "describe",
    "detect",
    "expand_nodelist",
    "parse_tasks_per_node",
]

Launcher = Literal["torchrun", "slurm", "single"]
"""Which launcher started the process; ``"single"`` when none did."""

BACKENDS: tuple[str, ...] = ("auto", "nccl", "gloo")
"""The values ``--backend`` accepts."""

_DEFAULT_ADDR = "127.0.0.1"
_DEFAULT_PORT = 29500
_TORCHRUN_VARIABLES = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_NAME",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
    }
)
_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_TASKS = re.compile(r"([0-9]+)(?:\(x([0-9]+)\))?")


@dataclass(frozen=True, kw_only=True)
class LaunchEnv:
    """This process's place in the job.

    Attributes:
        rank: Global rank, in ``[0, world_size)``.
        world_size: Number of processes in the job, ``>= 1``.
        local_rank: Rank among the processes on this node, in ``[0, local_world_size)``;
            it picks the GPU.
        local_world_size: Processes per node, in ``[1, world_size]``.
        master_addr: Host of the rendezvous (rank 0).
        master_port: TCP port of the rendezvous, in ``[1, 65535]``.
        launcher: What started the process.

    Raises:
        ValueError: If the numbers are inconsistent, for example ``rank >= world_size``.

    Examples:
        >>> env = LaunchEnv(rank=5, world_size=8, local_rank=1, local_world_size=4,
        ...                 master_addr="node01", master_port=29500, launcher="slurm")
        >>> env.node_rank
        1
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: Launcher

    def __post_init__(self) -> None:
        _check_layout(
            rank=(self.rank, "rank"),
            world=(self.world_size, "world_size"),
            local_rank=(self.local_rank, "local_rank"),
            local_world=(self.local_world_size, "local_world_size"),
        )
        if not self.master_addr:
            raise ValueError("master_addr must not be empty")
        _check_port(self.master_port, "master_port")
        if self.launcher not in ("torchrun", "slurm", "single"):
            raise ValueError(
                f"launcher must be 'torchrun', 'slurm' or 'single'; got {self.launcher!r}"
            )

    @property
    def node_rank(self) -> int:
        """``rank // local_world_size``: the index of this node, assuming equal nodes."""
        return self.rank // self.local_world_size

    @property
    def master(self) -> str:
        """``master_addr:master_port``, with an IPv6 address in brackets."""
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"{host}:{self.master_port}"

    def torch_environ(self) -> dict[str, str]:
        """The variables ``init_process_group(init_method="env://")`` reads.

        Under SLURM nothing sets them; export these before initialising.

        Returns:
            ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
            and ``LOCAL_WORLD_SIZE`` as strings.

        Examples:
            >>> detect({}).torch_environ()["MASTER_PORT"]
            '29500'
        """
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
        }


def _check_layout(
    *,
    rank: tuple[int, str],
    world: tuple[int, str],
    local_rank: tuple[int, str],
    local_world: tuple[int, str],
) -> None:
    """Check the four counts; each comes with the name to use in messages."""
    for (value, name), minimum in ((rank, 0), (world, 1), (local_rank, 0), (local_world, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if rank[0] >= world[0]:
        raise ValueError(f"{rank[1]}={rank[0]} must be < {world[1]}={world[0]}")
    if local_rank[0] >= local_world[0]:
        raise ValueError(
            f"{local_rank[1]}={local_rank[0]} must be < {local_world[1]}={local_world[0]}"
        )
    if local_world[0] > world[0]:
        raise ValueError(f"{local_world[1]}={local_world[0]} must be <= {world[1]}={world[0]}")


def _check_port(port: int, name: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int; got {type(port).__name__} {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"{name} must be in [1, 65535]; got {port}")
    return port


def _bad_nodelist(text: str, reason: str) -> ValueError:
    return ValueError(f"malformed SLURM node list {text!r}: {reason}")


def _split_hosts(text: str) -> list[str]:
    """Split at the commas that are outside brackets."""
    items: list[str] = []
    start = 0
    depth = 0
    for i, char in enumerate(text):
        if char == "[":
            if depth:
                raise _bad_nodelist(text, f"nested '[' at position {i}")
            depth = 1
        elif char == "]":
            if not depth:
                raise _bad_nodelist(text, f"']' without '[' at position {i}")
            depth = 0
        elif char == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise _bad_nodelist(text, "'[' is never closed")
    items.append(text[start:])
    if any(not item for item in items):
        raise _bad_nodelist(text, "empty host name")
    return items


def _expand_ranges(body: str, text: str) -> list[str]:
    """Expand the inside of one bracket group, such as ``01-03,07``."""
    numbers: list[str] = []
    for part in body.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise _bad_nodelist(text, f"{part!r} inside brackets is not N or N-M")
        low, high = match.group(1), match.group(2)
        if high is None:
            numbers.append(low)
            continue
        if int(high) < int(low):
            raise _bad_nodelist(text, f"range {part!r} runs backwards")
        width = len(low)
        numbers.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return numbers


def _expand_host(item: str, text: str) -> list[str]:
    """Expand one host pattern; several bracket groups give their Cartesian product."""
    if "[]" in item:
        raise _bad_nodelist(text, "empty brackets")
    pieces: list[list[str]] = []
    for literal, body in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
        if literal:
            pieces.append([literal])
        if body:
            pieces.append(_expand_ranges(body, text))
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand_nodelist(text: str) -> list[str]:
    """Expand a SLURM host list such as ``SLURM_JOB_NODELIST``.

    Supports comma-separated hosts, bracket groups of numbers and ranges
    (``node[01-03,07]``), text after a group (``a[1-2]b``), several groups in one host
    (their Cartesian product, first group outermost), and keeps zero padding: a range
    is padded to the width of its lower bound.

    Args:
        text: The compressed list.

    Returns:
        The host names, in order.

    Raises:
        ValueError: If ``text`` is empty, contains whitespace, has unbalanced or nested
            brackets, an empty host or group, or a group entry that is not ``N`` or
            ``N-M`` with ``N <= M``; the message quotes ``text``.

    Examples:
        >>> expand_nodelist("node[01-03,07],gpu5")
        ['node01', 'node02', 'node03', 'node07', 'gpu5']
    """
    if not isinstance(text, str):
        raise TypeError(f"SLURM node list must be a str; got {type(text).__name__}")
    if not text:
        raise _bad_nodelist(text, "it is empty")
    if any(char.isspace() for char in text):
        raise _bad_nodelist(text, "it contains whitespace")
    return [host for item in _split_hosts(text) for host in _expand_host(item, text)]


def parse_tasks_per_node(text: str) -> list[int]:
    """Expand ``SLURM_TASKS_PER_NODE``, for example ``"4(x2),2"`` to ``[4, 4, 2]``.

    Args:
        text: Comma-separated counts, each optionally followed by ``(xR)`` to repeat it
            ``R`` times.

    Returns:
        The number of tasks on each node, in node order.

    Raises:
        ValueError: If an entry is malformed or a count or repeat is below 1; the
            message names ``SLURM_TASKS_PER_NODE``.

    Examples:
        >>> parse_tasks_per_node("4(x2),2")
        [4, 4, 2]
    """
    counts: list[int] = []
    for part in text.split(","):
        match = _TASKS.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"SLURM_TASKS_PER_NODE: {part!r} in {text!r} is not N or N(xR)")
        tasks, repeat = int(match.group(1)), int(match.group(2) or 1)
        if tasks < 1 or repeat < 1:
            raise ValueError(
                f"SLURM_TASKS_PER_NODE: {part!r} in {text!r} needs a count and repeat >= 1"
            )
        counts.extend([tasks] * repeat)
    return counts


def _int_var(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        if default is None:
            raise ValueError(f"{name} is not set")
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {raw!r}") from None


def _port(environ: Mapping[str, str], default: int) -> int:
    port = _int_var(environ, "MASTER_PORT", default)
    if not 1 <= port <= 65535:
        raise ValueError(f"MASTER_PORT must be in [1, 65535]; got {environ['MASTER_PORT']!r}")
    return port


def _detect_torchrun(environ: Mapping[str, str]) -> LaunchEnv:
    rank = _int_var(environ, "RANK")
    world = _int_var(environ, "WORLD_SIZE")
    # Without LOCAL_* (a hand-written launcher) assume every process is on one node.
    local_rank = _int_var(environ, "LOCAL_RANK", rank)
    local_world = _int_var(environ, "LOCAL_WORLD_SIZE", world)
    _check_layout(
        rank=(rank, "RANK"),
        world=(world, "WORLD_SIZE"),
        local_rank=(local_rank, "LOCAL_RANK"),
        local_world=(local_world, "LOCAL_WORLD_SIZE"),
    )
    return LaunchEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=local_world,
        master_addr=environ.get("MASTER_ADDR") or _DEFAULT_ADDR,
        master_port=_port(environ, _DEFAULT_PORT),
        launcher="torchrun",
    )


def _detect_slurm(environ: Mapping[str, str]) -> LaunchEnv:
    rank = _int_var(environ, "SLURM_PROCID")
    world = _int_var(environ, "SLURM_NTASKS")
    local_rank = _int_var(environ, "SLURM_LOCALID", 0)
    if environ.get("SLURM_NTASKS_PER_NODE"):
        local_world, local_name = (
            _int_var(environ, "SLURM_NTASKS_PER_NODE"),
            "SLURM_NTASKS_PER_NODE",
        )
    elif environ.get("SLURM_TASKS_PER_NODE"):
        local_world = parse_tasks_per_node(environ["SLURM_TASKS_PER_NODE"])[0]
        local_name = "SLURM_TASKS_PER_NODE"
    else:
        local_world, local_name = 1, "tasks per node (default)"
    _check_layout(
        rank=(rank, "SLURM_PROCID"),
        world=(world, "SLURM_NTASKS"),
        local_rank=(local_rank, "SLURM_LOCALID"),
        local_world=(local_world, local_name),
    )
    addr = environ.get("MASTER_ADDR")
    if not addr:
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError(
                "under SLURM, MASTER_ADDR or SLURM_JOB_NODELIST (or SLURM_NODELIST) must "
                "be set to find the rendezvous host"
            )
        addr = expand_nodelist(nodelist)[0]
    job_id = environ.get("SLURM_JOB_ID")
    default_port = _DEFAULT_PORT
    if job_id:
        default_port = 10000 + _int_var(environ, "SLURM_JOB_ID") % 50000
    return LaunchEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=local_world,
        master_addr=addr,
        master_port=_port(environ, default_port),
        launcher="slurm",
    )


def detect(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read this process's place in the job from its environment.

    * **torchrun** (``RANK`` and ``WORLD_SIZE`` set) wins. ``LOCAL_RANK`` and
      ``LOCAL_WORLD_SIZE`` default to ``RANK`` and ``WORLD_SIZE`` (one node);
      ``MASTER_ADDR`` and ``MASTER_PORT`` to ``127.0.0.1`` and 29500.
    * **SLURM** (``SLURM_PROCID`` and ``SLURM_NTASKS`` set): the rank is
      ``SLURM_PROCID``, the world ``SLURM_NTASKS``, the local rank ``SLURM_LOCALID``;
      processes per node come from ``SLURM_NTASKS_PER_NODE``, else the first entry of
      ``SLURM_TASKS_PER_NODE``, else 1. The rendezvous host is ``MASTER_ADDR`` or the
      first host of ``SLURM_JOB_NODELIST`` (or ``SLURM_NODELIST``); the port is
      ``MASTER_PORT`` or ``10000 + SLURM_JOB_ID % 50000``, so that jobs sharing a
      node do not collide, or 29500 without a job id.
    * Otherwise one process: rank 0 of 1 at ``127.0.0.1:29500``.

    Args:
        environ: The variables to read; ``os.environ`` by default.

    Returns:
        The process's place.

    Raises:
        ValueError: If a variable is not an integer, or the values are inconsistent
            (a rank not below the world size, a local rank not below the processes per
            node, more processes per node than in the job, a port outside
            ``[1, 65535]``), or SLURM gives no host for the rendezvous; the message
            names the variable.

    Examples:
        >>> detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
        ...         "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]",
        ...         "SLURM_JOB_ID": "123456"}).master
        'gpu07:33456'
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return _detect_torchrun(env)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _detect_slurm(env)
    return LaunchEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        local_world_size=1,
        master_addr=_DEFAULT_ADDR,
        master_port=_DEFAULT_PORT,
        launcher="single",
    )


def choose_backend(requested: str, cuda_available: bool) -> str:
    """Resolve ``--backend``: NCCL for CUDA, gloo for CPU.

    Args:
        requested: ``"auto"``, ``"nccl"`` or ``"gloo"``.
        cuda_available: Whether CUDA can be used, from ``torch.cuda.is_available()``.

    Returns:
        ``"nccl"`` or ``"gloo"``.

    Raises:
        ValueError: If ``requested`` is not one of the three, or is ``"nccl"`` without
            CUDA.

    Examples:
        >>> choose_backend("auto", cuda_available=False)
        'gloo'
    """
    if requested not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "auto":
        return "nccl" if cuda_available else "gloo"
    if requested == "nccl" and not cuda_available:
        raise ValueError(
            "--backend nccl needs CUDA, but no CUDA device is available; "
            "use --backend gloo (or auto) to train on CPU"
        )
    return requested


def _launcher_variable(name: str) -> bool:
    return (
        name.startswith(("SLURM_", "TORCHELASTIC_", "TORCH_NCCL_", "NCCL_"))
        or name in _TORCHRUN_VARIABLES
    )


def describe(
    env: LaunchEnv, *, backend: str, devices: Sequence[str], environ: Mapping[str, str]
) -> str:
    """A human-readable report of the launch, for ``sgp-imagenet env``.

    Args:
        env: The detected place in the job.
        backend: The resolved backend.
        devices: The devices this process will use, for example ``["cuda:1"]``.
        environ: The environment; its ``SLURM_*``, ``NCCL_*``, ``TORCH_NCCL_*``,
            ``TORCHELASTIC_*`` and torchrun variables are listed, sorted by name.

    Returns:
        Several lines, without a trailing newline.

    Examples:
        >>> print(describe(detect({}), backend="gloo", devices=["cpu"], environ={}))
        launcher:   single
        rank:       0 of 1 (local rank 0 of 1, node 0)
        master:     127.0.0.1:29500
        backend:    gloo
        devices:    cpu
        variables:  (none)
    """
    lines = [
        f"launcher:   {env.launcher}",
        f"rank:       {env.rank} of {env.world_size} (local rank {env.local_rank} of "
        f"{env.local_world_size}, node {env.node_rank})",
        f"master:     {env.master}",
        f"backend:    {backend}",
        f"devices:    {', '.join(devices) if devices else '(none)'}",
    ]
    found = sorted(name for name in environ if _launcher_variable(name))
    if found:
        lines.append("variables:")
        lines.extend(f"  {name}={environ[name]}" for name in found)
    else:
        lines.append("variables:  (none)")
    return "\n".join(lines)
