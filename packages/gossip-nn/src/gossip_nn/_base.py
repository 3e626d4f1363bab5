"""What every data-parallel wrapper shares: the lifecycle, the checkpoint layout, the eval.

Each wrapper *has* a strategy (DDP, a gossip step, an AD-PSGD role) and inherits only
this lifecycle: ``forward`` runs the model, ``eval()`` and ``state_dict()`` first finish
in-flight gossip, and the extra state names its algorithm so a checkpoint from another
algorithm is refused.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from gossip_comm import FlatBuffer, GossipPeerError
from gossip_nn._buffers import restored_on_exit
from gossip_nn._outer import OuterStep
from gossip_nn.averaging import ExactAveragingSchedule
from gossip_topology import Topology

if TYPE_CHECKING:
    from gossip_nn.fault_tolerance import FaultTolerance

__all__ = [
    "DataParallelModule",
    "bind_flat",
    "load_outer_state",
    "make_ddp",
    "network_average",
    "save_outer_state",
]


def make_ddp(
    module: nn.Module,
    group: ProcessGroup | None,
    *,
    sync_buffers: bool,
    ddp_options: Mapping[str, Any] | None = None,
) -> DistributedDataParallel:
    """``DistributedDataParallel`` over ``group``; ``sync_buffers``: copy rank 0's buffers
    before every forward; ``ddp_options``: further keywords of DDP, already checked.

    torch 2.14 renamed ``broadcast_buffers`` to ``forward_sync_buffers`` (the old name
    warns); older releases know only the old one, so the keyword is chosen by signature.
    """
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    options: dict[str, Any] = {**(ddp_options or {}), key: sync_buffers}
    return DistributedDataParallel(module, process_group=group, **options)


class DataParallelModule(nn.Module, ABC):
    """The type [`make_data_parallel`][gossip_nn.make_data_parallel] returns.

    Every wrapper (AR-SGD, SGP, OSGP, D-PSGD, AD-PSGD) is one, so a training script can
    call the same methods whatever the algorithm.

    Attributes:
        module: The wrapped model.
    """

    module: nn.Module
    _ft: FaultTolerance | None = None  # fault-tolerant wrappers set their own

    def __init__(self) -> None:
        super().__init__()
        self._hook_handles: list[RemovableHandle] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._updates = 0  # optimizer steps that ran (counted by the post-step hook)

    @property
    @abstractmethod
    def algorithm(self) -> str:
        """``"ar"``, ``"sgp"``, ``"osgp"``, ``"dpsgd"`` or ``"adpsgd"``."""

    @property
    def ps_weight(self) -> float:
        """This rank's push-sum weight (1 for algorithms without one)."""
        return 1.0

    @property
    def synchronous(self) -> bool:
        """Whether every rank takes part in every step (all but AD-PSGD).

        A synchronous algorithm can run a collective at any iteration boundary (agree on
        a preemption, save a checkpoint); an asynchronous one's ranks run at their own
        pace, so a loop should agree on such things less often, through a store.
        """
        return True

    @property
    @abstractmethod
    def bytes_sent(self) -> int:
        """Bytes this process has sent to train so far (see each wrapper for what counts)."""

    def set_topology(
        self, topology: Topology | str | int | None = None, *, peers_per_itr: int | None = None
    ) -> None:
        """Gossip on another graph, or with another number of peers, from the next step on.

        A collective at an iteration boundary; see
        [`GossipDataParallel.set_topology`][gossip_nn.GossipDataParallel.set_topology].

        Raises:
            RuntimeError: If the algorithm has no graph it can change while training.
        """
        raise RuntimeError(self._fixed_topology_reason())

    def _fixed_topology_reason(self) -> str:
        return f"algorithm {self.algorithm!r} cannot change its topology"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped module."""
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Context manager: accumulate gradients without communicating (DDP's ``no_sync``).

        For gradient accumulation: run the forward *and* backward passes of every
        micro-batch but the last inside the block, then the last one and
        ``optimizer.step()`` outside it. Gradients add up in ``.grad`` as usual.

        - ``"ar"``: the held `DistributedDataParallel`'s ``no_sync()``: inside the block
          gradients are not all-reduced; the first backward outside it all-reduces the
          accumulated sum.
        - The gossip algorithms exchange models in the optimizer's step hooks (AD-PSGD's
          passive side also from its responder thread), never in a backward pass, so
          there is nothing to skip and the block does nothing: SGP's, OSGP's and
          D-PSGD's ``bytes_sent`` grows with the optimizer steps, not the backward
          passes. Where a node holds one model (``nprocs_per_node > 1``), gradients are
          all-reduced inside the node during backward, and the block skips that as
          ``"ar"`` does.

        Example:
            ```python
            for i, (x, y) in enumerate(loader):
                if (i + 1) % accumulate:
                    with model.no_sync():
                        (criterion(model(x), y) / accumulate).backward()
                    continue
                (criterion(model(x), y) / accumulate).backward()
                optimizer.step()
                optimizer.zero_grad()
            ```
        """
        ddp = self._modules.get("_ddp")
        if not isinstance(ddp, DistributedDataParallel):
            yield  # no collective in backward to skip
            return
        with ddp.no_sync():
            yield

    @abstractmethod
    def finish_gossip(self) -> None:
        """Fold in every gossip message still in flight; parameters stay usable."""

    @abstractmethod
    def average_for_eval(self) -> AbstractContextManager[None]:
        """Context manager: hold the exact network-average model inside the block.

        A collective: every rank must enter. The local parameters are restored on exit.
        """

    @abstractmethod
    def close(self) -> None:
        """Finish gossip and release hooks and threads (every rank must call it)."""

    def abandon(self) -> None:
        """Stop at once after a failure that ends the job (a peer lost, no fault tolerance).

        Unlike `close` it waits for no peer and no gossip in flight: that gossip is
        dropped, the parameters stay as they are (a checkpoint is no longer
        consistent), the optimizer hooks are removed and the background threads, daemon
        threads, are told to stop but not waited for. Any rank may call it alone, and
        `close` is not needed after it.
        """
        self._unhook()
        self._release_without_waiting()

    def _release_without_waiting(self) -> None:
        """`abandon`'s part beyond the hooks; nothing for wrappers without threads."""

    @torch.no_grad()
    def recover(self, error: BaseException) -> None:
        """Fault tolerance: a collective outside gossip failed (an evaluation's
        all-reduce, a checkpoint's barrier), most likely because a member is gone. Move to
        the next generation with the survivors, so that the caller can run the collective
        again there.

        Every member that was in the same collective must call this too. With fault
        tolerance every collective of a generation's group times out after the gossip
        ``timeout``, so a member blocked on one that already left fails too, within the
        settle timeout (the gossip timeout plus 5 s). A member that never checks in is
        left out after it.

        Without ``fault_tolerance`` (and for AR-SGD, which cannot have it) this raises
        ``error`` again.

        Args:
            error: What the collective raised (named in the generation's end reason).

        Raises:
            MembershipError: If this process is left out of the next generation, or
                fewer than ``min_members`` remain.
        """
        if self._ft is None:
            raise error
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        self._ft.membership.request_end(
            f"member {self._ft.membership.member}: a collective failed: {first}"
        )
        self._recover(None)

    def _recover(self, err: GossipPeerError | None) -> None:
        """Settle this generation and go on in the next one (fault-tolerant wrappers)."""
        raise NotImplementedError(f"{type(self).__name__} cannot change generation")

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Optimizer pre-step hook; wrappers that gossip around the update override it."""

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Optimizer post-step hook; wrappers that gossip around the update override it."""

    def scaler_step(self, scaler: Any, *args: Any, **kwargs: Any) -> Any:
        """``scaler.step(optimizer)`` for mixed precision: gossip runs even if it skips.

        `torch.amp.GradScaler` skips ``optimizer.step()`` on a rank whose gradients hold
        an inf or NaN, and with it the step hooks through which gossip runs; its peers,
        which did not skip, would then wait for it. Call this instead of
        ``scaler.step(optimizer)``: a skipped update gossips as a zero update, so every
        rank takes part in every gossip step.

        Args:
            scaler: A `torch.amp.GradScaler` (anything with its ``step``).
            *args: Passed on to ``scaler.step``.
            **kwargs: Passed on to ``scaler.step``.

        Returns:
            What ``scaler.step`` returns.

        Raises:
            RuntimeError: If the wrapper was built without an optimizer.

        Example:
            ```python
            with torch.autocast("cuda", dtype=torch.float16):
                loss = criterion(model(x), y)
            scaler.scale(loss).backward()
            model.scaler_step(scaler)   # not scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ```
        """
        if self._optimizer is None:
            raise RuntimeError(f"{type(self).__name__} holds no optimizer")
        before = self._updates
        result = scaler.step(self._optimizer, *args, **kwargs)
        if self._updates == before:  # skipped: gossip around a zero update
            self._skipped_update(self._optimizer)
        return result

    def _skipped_update(self, optimizer: torch.optim.Optimizer) -> None:
        """The update was skipped on this rank: run the gossip that it would have run."""
        self._before_step(optimizer, (), {})
        self._after_step(optimizer, (), {})

    def _count_update(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._updates += 1

    def _hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Run ``_before_step`` and ``_after_step`` around every ``optimizer.step()``."""
        self._optimizer = optimizer
        self._hook_handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_step_post_hook(self._count_update),
        ]

    def _unhook(self) -> None:
        """Remove the optimizer hooks (idempotent)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    @abstractmethod
    def _gossip_state(self) -> dict[str, Any]:
        """``{"ps_weight": ..., "gossip": [...]}`` for the checkpoint."""

    @abstractmethod
    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_gossip_state`` saved (the algorithm is already checked)."""

    def train(self, mode: bool = True) -> DataParallelModule:
        """Switch mode; ``eval()`` first finishes in-flight gossip."""
        if not mode:
            self.finish_gossip()
        super().train(mode)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The parameters and the gossip state (push-sum weight, step counters).

        Saving never changes the training run: gossip still in flight is either saved
        with it (OSGP's rounds) or finished first where the algorithm cannot save it.
        """
        self._settle_for_checkpoint()
        return super().state_dict(*args, **kwargs)

    def _settle_for_checkpoint(self) -> None:
        """Make the state saveable; by default, finish in-flight gossip."""
        self.finish_gossip()

    def apply(self, fn: Callable[[nn.Module], None]) -> DataParallelModule:
        """``fn`` on every submodule once, then on the wrapper (as ``nn.Module.apply``).

        The DDP submodule wraps ``module`` again; it is skipped, so that ``fn`` (an
        initialisation, say) reaches each layer of the model once, not twice.
        """
        for name, child in self.named_children():
            if name != "_ddp":
                child.apply(fn)
        fn(self)
        return self

    def _hold_ddp(self, ddp: DistributedDataParallel | None) -> None:
        """Hold ``ddp`` (over ``self.module``, or ``None``) as the submodule ``_ddp``.

        Registered, so ``train()``/``eval()`` and ``to()`` reach it; its keys
        (``_ddp.module.*``, the same tensors as ``module.*``) are left out of
        ``state_dict`` and not expected by ``load_state_dict``, so checkpoints keep the
        plain ``module.*`` layout whatever the algorithm.
        """
        self.register_module("_ddp", ddp)
        if ddp is None:
            return
        ddp.register_state_dict_post_hook(_drop_own_keys)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_ddp_keys_not_missing)  # type: ignore[no-untyped-call]

    def get_extra_state(self) -> dict[str, Any]:
        """The algorithm, the push-sum weight and the gossipers' step counters."""
        return {"algorithm": self.algorithm, **self._gossip_state()}

    def set_extra_state(self, state: Any) -> None:
        """Restore what ``get_extra_state`` saved.

        Raises:
            ValueError: If the checkpoint is from another algorithm or layout.
        """
        if not isinstance(state, dict) or state.get("algorithm") != self.algorithm:
            found = state.get("algorithm") if isinstance(state, dict) else state
            raise ValueError(
                f"checkpoint is from algorithm {found!r}, this wrapper runs {self.algorithm!r}"
            )
        self._load_gossip_state(state)


def _drop_own_keys(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]


def _ddp_keys_not_missing(module: nn.Module, incompatible: Any) -> None:
    """Drop ``_ddp.*`` from the missing keys, also when the wrapper is itself nested."""
    incompatible.missing_keys[:] = [
        k for k in incompatible.missing_keys if not ("." + k).count("._ddp.")
    ]


def save_outer_state(
    state: dict[str, Any], exact: ExactAveragingSchedule, slowmo: OuterStep | None
) -> None:
    """Add the exact-averaging schedule's and SlowMo's counters to a gossip state."""
    state["exact_averaging"] = exact.state_dict()
    if slowmo is not None:
        state["slowmo"] = slowmo.state_dict()


def load_outer_state(
    state: dict[str, Any], exact: ExactAveragingSchedule, slowmo: OuterStep | None
) -> None:
    """Restore what `save_outer_state` saved.

    Raises:
        ValueError: If this wrapper runs SlowMo and the checkpoint has no SlowMo state.
    """
    if "exact_averaging" in state:  # checkpoints from before the schedule had a state
        exact.load_state_dict(state["exact_averaging"])
    if slowmo is not None:
        if "slowmo" not in state:
            raise ValueError("checkpoint has no SlowMo state, but this wrapper runs SlowMo")
        slowmo.load_state_dict(state["slowmo"])


def bind_flat(params: Sequence[torch.Tensor]) -> FlatBuffer:
    """Re-bind ``params`` (parameters, or buffers) as views into one flat buffer per dtype
    and device.

    Gossip then reads and writes the parameters without packing, and the optimizer,
    which holds the same ``Parameter`` objects, updates the buffers in place.
    """
    with torch.no_grad():
        flat = FlatBuffer([p.detach() for p in params])
        for p, view in zip(params, flat.views(), strict=True):
            p.data = view
    return flat


@contextmanager
def network_average(
    buffers: list[torch.Tensor], weight: float, group: ProcessGroup
) -> Iterator[None]:
    r"""Hold $\sum_i w_i z_i / \sum_i w_i$ in ``buffers`` inside the block; restore on exit.

    ``buffers`` hold this rank's de-biased parameters $z_i$ and ``weight`` its push-sum
    weight $w_i$ (1 without push-sum, which gives the plain mean). One all-reduce per
    buffer and one for the weights: every rank must enter.
    """
    with restored_on_exit(buffers):
        with torch.no_grad():
            total = torch.tensor([weight], dtype=torch.float64, device=buffers[0].device)
            dist.all_reduce(total, group=group)
            for buf in buffers:
                buf.mul_(weight)
                dist.all_reduce(buf, group=group)
                buf.div_(float(total.item()))
        yield
