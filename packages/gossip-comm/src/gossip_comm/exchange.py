"""The engine shared by PushSum and PushPull: validate once, then exchange every step.

Senders post their buffer unscaled and receivers apply ``W[rank, q]``: rank ``q``'s
column of ``W`` is plain data that every rank can compute, so nobody makes scaled copies
and the local update is one pass (``lerp`` for one in-peer on a doubly-stochastic row).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from gossip_comm.backend import comm_device_for, group_rank, group_size, resolve_group
from gossip_comm.errors import NonFiniteError
from gossip_comm.handle import GossipHandle
from gossip_comm.schedule import RankSchedule, RankStep
from gossip_comm.transport import Message, PendingExchange, post
from gossip_comm.wire import check_wire_dtype
from gossip_topology import Mixing, Topology, UniformMixing

__all__ = ["ExchangeEngine", "GossipConfig"]

_DTYPE_CODES = {
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float32: 3,
    torch.float64: 4,
}


@dataclass(frozen=True)
class GossipConfig:
    """Options shared by every gossiper.

    Attributes:
        mixing: Mixing rule; ``UniformMixing()`` when ``None``.
        process_group: Group to gossip in; WORLD when ``None``.
        comm_device: Device of the communication buffers. Default: CUDA for NCCL, CPU for
            gloo. A CUDA tensor gossiped over gloo is staged through host memory.
        wire_dtype: ``None`` (send the buffer's dtype), ``torch.bfloat16`` or
            ``torch.float16``. Accumulation stays in the buffer's dtype and push-sum
            weights always travel in float64.
        timeout: Seconds to wait for one step's messages before raising
            [`GossipTimeoutError`][gossip_comm.GossipTimeoutError].
        check_finite: Check every received message for NaN/Inf and raise
            [`NonFiniteError`][gossip_comm.NonFiniteError] naming the sender.
    """

    mixing: Mixing | None = None
    process_group: ProcessGroup | None = None
    comm_device: torch.device | str | None = None
    wire_dtype: torch.dtype | None = None
    timeout: float = 300.0
    check_finite: bool = False


@dataclass
class _InFlight:
    pending: PendingExchange
    info: RankStep
    step: int
    buf: torch.Tensor
    target: torch.Tensor
    weight: float
    recvs: list[torch.Tensor]
    weight_recvs: list[torch.Tensor]
    weight_send: torch.Tensor | None


class ExchangeEngine:
    """Validated state and buffers for gossiping one tensor shape over one process group.

    Construction runs one small ``all_gather`` so that every rank learns whether all
    ranks agree on the buffer size, dtype and topology; afterwards only point-to-point
    messages are sent.

    Raises:
        TypeError: If ``like`` is not a floating-point tensor.
        ValueError: On any inconsistency, on every rank at once.
        RuntimeError: If ``torch.distributed`` is not initialised.
    """

    def __init__(
        self,
        topology: Topology,
        like: torch.Tensor,
        config: GossipConfig,
        *,
        carries_weight: bool,
        owner: str,
    ) -> None:
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a gossip_topology.Topology; got {type(topology)}")
        if not isinstance(like, torch.Tensor) or not like.is_floating_point():
            raise TypeError(f"like must be a floating-point torch.Tensor; got {like!r:.80}")
        if like.dtype not in _DTYPE_CODES:
            raise TypeError(f"like has unsupported dtype {like.dtype}")
        if not (config.timeout > 0 and math.isfinite(config.timeout)):
            raise ValueError(f"timeout must be a positive number of seconds; got {config.timeout}")
        self.owner = owner
        self.group = resolve_group(config.process_group)
        self.rank, self.size = group_rank(self.group), group_size(self.group)
        self.device = comm_device_for(self.group, config.comm_device)
        self.wire_dtype = check_wire_dtype(config.wire_dtype, like.dtype)
        self.mixing = UniformMixing() if config.mixing is None else config.mixing
        self.topology = topology
        self.timeout = float(config.timeout)
        self.check_finite = bool(config.check_finite)
        self.shape, self.dtype, self.numel = like.shape, like.dtype, like.numel()
        self._agree(topology)
        self.schedule = RankSchedule(topology, self.mixing, self.rank)
        self.carries_weight = carries_weight and not self.schedule.weight_is_constant
        self.step = 0
        self._pool: list[list[torch.Tensor]] = []
        self._staging: torch.Tensor | None = None
        self._wire_send: torch.Tensor | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ set-up
    def _agree(self, topology: Topology) -> None:
        mine = [
            self.numel,
            _DTYPE_CODES[self.dtype],
            topology.world_size,
            topology.peers_per_itr,
            topology.period,
            self.size,
        ]
        local = torch.tensor(mine, dtype=torch.int64, device=self.device)
        gathered = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(gathered, local, group=self.group)
        table = [g.tolist() for g in gathered]
        if topology.world_size != self.size:
            raise ValueError(
                f"topology has world_size={topology.world_size} but the process group has "
                f"{self.size} ranks; build the topology for the group's size"
            )
        names = ["buffer numel", "dtype", "topology world_size", "peers_per_itr", "period"]
        for field, name in enumerate(names):
            values = {r: row[field] for r, row in enumerate(table)}
            if len(set(values.values())) > 1:
                raise ValueError(
                    f"{self.owner}: ranks disagree on the {name}: {values} (rank: value); "
                    "every rank must gossip the same buffer over the same topology"
                )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, int]:
        """The step counter, so a restored run continues the same schedule."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the step counter."""
        step = state["step"]
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"state['step'] must be an int >= 0; got {step!r}")
        self.step = step

    # ------------------------------------------------------------------ steps
    def _check_tensor(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
        if tensor.shape != self.shape or tensor.dtype != self.dtype:
            raise ValueError(
                f"tensor must have shape {tuple(self.shape)} and dtype {self.dtype} as given at "
                f"construction; got {tuple(tensor.shape)} {tensor.dtype}"
            )
        if not tensor.is_contiguous():
            raise ValueError("tensor must be contiguous; call .contiguous() first")
        if tensor.device != self.device and not (
            tensor.device.type == "cuda" and self.device.type == "cpu"
        ):
            raise ValueError(
                f"tensor is on {tensor.device} but this {self.owner} gossips on {self.device}; "
                f"move it there or pass comm_device"
            )

    def _recv_set(self, count: int) -> list[torch.Tensor]:
        bufs = self._pool.pop() if self._pool else []
        while len(bufs) < count:
            bufs.append(torch.empty(self.numel, dtype=self.wire_dtype, device=self.device))
        return bufs

    def post(self, tensor: torch.Tensor, weight: float) -> _InFlight:
        """Post one step's sends and receives; ``tensor`` must not change until finished."""
        self._check_tensor(tensor)
        info, step = self.schedule[self.step], self.step
        self.step += 1
        if tensor.device != self.device:  # CUDA tensor over gloo: stage through host memory
            if self._staging is None:
                pin = torch.cuda.is_available()
                self._staging = torch.empty(self.numel, dtype=self.dtype, pin_memory=pin)
            self._staging.copy_(tensor.reshape(-1))
            buf = self._staging
        else:
            buf = tensor.view(-1)
        send = buf
        if self.wire_dtype != self.dtype and info.out_peers:
            if self._wire_send is None:
                self._wire_send = torch.empty(self.numel, dtype=self.wire_dtype, device=self.device)
            self._wire_send.copy_(buf)
            send = self._wire_send
        recvs = self._recv_set(len(info.in_peers))
        messages = [Message(p, send, True) for p in info.out_peers]
        messages += [Message(q, recvs[i], False) for i, q in enumerate(info.in_peers)]
        weight_send: torch.Tensor | None = None
        weight_recvs: list[torch.Tensor] = []
        if self.carries_weight:
            weight_send = torch.tensor([weight], dtype=torch.float64, device=self.device)
            weight_recvs = [
                torch.empty(1, dtype=torch.float64, device=self.device) for _ in info.in_peers
            ]
            messages += [Message(p, weight_send, True) for p in info.out_peers]
            messages += [Message(q, weight_recvs[i], False) for i, q in enumerate(info.in_peers)]
        pending = post(messages, self.group, self.rank, step)
        return _InFlight(pending, info, step, buf, tensor, weight, recvs, weight_recvs, weight_send)

    def finish(self, flight: _InFlight) -> tuple[torch.Tensor, float]:
        """Wait for ``flight`` and mix in place; returns ``(tensor, weight)``."""
        try:
            flight.pending.wait(self.timeout)
            info, buf = flight.info, flight.buf
            recvs = flight.recvs[: len(info.in_peers)]
            if self.check_finite:
                self._check_finite(flight, recvs)
            weight = flight.weight
            if self.carries_weight:
                weight = info.self_weight * weight + math.fsum(
                    a * float(r.item())
                    for a, r in zip(info.in_weights, flight.weight_recvs, strict=True)
                )
            _mix_into(buf, recvs, info)
            if flight.target.device != buf.device:
                flight.target.copy_(buf.view(flight.target.shape))
            return flight.target, weight
        finally:
            self._pool.append(flight.recvs)

    def accumulate(self, flight: _InFlight, into: torch.Tensor) -> float:
        """Wait for ``flight`` and add ``sum_q W[r, q] x_q`` into ``into`` (overlap mode).

        Unlike [`finish`][gossip_comm.exchange.ExchangeEngine.finish], the local share is
        left alone: the caller scaled its own numerator by ``W[r, r]`` when it sent.

        Returns:
            ``sum_q W[r, q] w_q``, the weight received; ``(1 - W[r, r]) * weight`` when the
            weight does not travel.
        """
        try:
            flight.pending.wait(self.timeout)
            info = flight.info
            recvs = flight.recvs[: len(info.in_peers)]
            if self.check_finite:
                self._check_finite(flight, recvs)
            flat = into.view(-1)
            for r, a in zip(recvs, info.in_weights, strict=True):
                # a CUDA numerator gossiped over gloo receives into host buffers
                flat.add_(r.to(flat.device, non_blocking=True), alpha=a)
            if self.carries_weight:
                return math.fsum(
                    a * float(r.item())
                    for a, r in zip(info.in_weights, flight.weight_recvs, strict=True)
                )
            return (1.0 - info.self_weight) * flight.weight
        finally:
            self._pool.append(flight.recvs)

    def _check_finite(self, flight: _InFlight, recvs: list[torch.Tensor]) -> None:
        for q, r in zip(flight.info.in_peers, recvs, strict=True):
            if not bool(torch.isfinite(r).all()):
                raise NonFiniteError(
                    f"rank {self.rank} received NaN or Inf from rank {q} at gossip step "
                    f"{flight.step}",
                    rank=self.rank,
                    peer=q,
                    step=flight.step,
                )
        weights = flight.weight_recvs if self.carries_weight else []
        for q, w in zip(flight.info.in_peers[: len(weights)], weights, strict=True):
            if not math.isfinite(float(w.item())):
                raise NonFiniteError(
                    f"rank {self.rank} received a non-finite push-sum weight from rank {q} at "
                    f"gossip step {flight.step}",
                    rank=self.rank,
                    peer=q,
                    step=flight.step,
                )

    def start(
        self, tensor: torch.Tensor, weight: float
    ) -> GossipHandle[tuple[torch.Tensor, float]]:
        """Post a step and return a handle; mixing happens when the messages are in."""
        flight = self.post(tensor, weight)
        if self.device.type == "cpu":
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"gossip-rank{self.rank}"
                )
            return GossipHandle(future=self._executor.submit(self.finish, flight))
        return GossipHandle(poll=flight.pending.is_completed, finish=lambda: self.finish(flight))

    def mix(self, tensor: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        """Post a step and finish it in the calling thread."""
        return self.finish(self.post(tensor, weight))

    def close(self) -> None:
        """Stop the background thread, if one was started."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _mix_into(buf: torch.Tensor, recvs: list[torch.Tensor], info: RankStep) -> None:
    """``buf <- W[r, r] buf + sum_q W[r, q] recv_q``, in one pass where possible."""
    if not recvs:
        if info.self_weight != 1.0:
            buf.mul_(info.self_weight)
        return
    if (
        len(recvs) == 1
        and recvs[0].dtype == buf.dtype
        and abs(info.self_weight + info.in_weights[0] - 1.0) < 1e-15
    ):
        buf.lerp_(recvs[0], info.in_weights[0])
        return
    buf.mul_(info.self_weight)
    for r, a in zip(recvs, info.in_weights, strict=True):
        buf.add_(r, alpha=a)
