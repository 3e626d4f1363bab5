"""AllReduceDataParallel: AR-SGD through torch DDP, with the gossip wrappers' API."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from gossip_nn._base import DataParallelModule, make_ddp
from gossip_nn._buffers import BufferSync
from gossip_nn._steps import GOSSIP_ALGORITHMS
from gossip_nn.options import GossipOptions
from gossip_nn.validate import check_same_setup, check_wrapper_arguments, checked_parameters

__all__ = ["AllReduceDataParallel"]


_DDP_FLAGS = ("find_unused_parameters", "gradient_as_bucket_view", "static_graph")
# DDP keywords the wrapper sets itself, and what to pass instead
_MANAGED = {
    "process_group": "pass process_group= (a GossipOptions field)",
    "broadcast_buffers": 'pass buffers="broadcast" (a GossipOptions field)',
    "forward_sync_buffers": 'pass buffers="broadcast" (a GossipOptions field)',
    "module": "the wrapper passes its module",
}


def _checked_ddp_options(ddp_options: object) -> dict[str, Any]:
    """``ddp_options`` as a dict, checked against `AllReduceDataParallel.DDP_OPTIONS`.

    Raises:
        TypeError: If it is not a mapping or ``None``, or a flag is not a bool, or
            ``bucket_cap_mb`` not a number.
        ValueError: For a key outside ``DDP_OPTIONS`` (naming it, and what to pass
            instead where the wrapper sets that keyword itself) or a ``bucket_cap_mb``
            that is not positive and finite.
    """
    if ddp_options is None:
        return {}
    if not isinstance(ddp_options, Mapping):
        raise TypeError(
            "ddp_options must be a mapping of DistributedDataParallel keyword names to "
            f"values, or None; got {type(ddp_options).__name__}"
        )
    allowed = AllReduceDataParallel.DDP_OPTIONS
    for key, value in ddp_options.items():
        if key not in allowed:
            hint = _MANAGED.get(key) if isinstance(key, str) else None
            raise ValueError(
                f"ddp_options: {key!r} is not passed on to DistributedDataParallel"
                + (f" ({hint})" if hint else "")
                + f"; the keywords accepted are {', '.join(allowed)}"
            )
        _check_ddp_value(key, value)
    return dict(ddp_options)


def _check_ddp_value(key: str, value: object) -> None:
    if key in _DDP_FLAGS and not isinstance(value, bool):
        raise TypeError(f"ddp_options[{key!r}] must be a bool; got {type(value).__name__}")
    if key == "bucket_cap_mb":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(
                f"ddp_options['bucket_cap_mb'] must be a number; got {type(value).__name__}"
            )
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"ddp_options['bucket_cap_mb'] must be positive; got {value}")


def _ring_bytes(tensors: Sequence[torch.Tensor], n: int) -> int:
    """What each rank sends in a ring all-reduce of ``tensors`` over ``n`` ranks."""
    return 2 * (n - 1) * sum(t.numel() * t.element_size() for t in tensors) // n


class AllReduceDataParallel(DataParallelModule):
    """AR-SGD: gradients are all-reduced by `DistributedDataParallel` during backward.

    A thin layer so that AR-SGD shares the gossip wrappers' constructor, options,
    ``average_for_eval`` and checkpoint format (``module.*`` keys plus an extra state
    with ``ps_weight = 1``).

    Args:
        module: The model, identical on every rank.
        optimizer: The optimizer over exactly ``module``'s trainable parameters.
        options: Only ``process_group`` and ``buffers`` are used: ``"broadcast"`` is
            DDP's ``broadcast_buffers``, ``"average"`` all-reduces floating buffers
            after each optimizer step, ``"local"`` leaves them alone. Other options
            set away from their defaults raise a ``UserWarning``.
        ddp_options: Keywords passed on to `DistributedDataParallel`, for a model or
            a job that needs DDP's own settings; only the names in `DDP_OPTIONS`
            (``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``
            and ``bucket_cap_mb``), with DDP's meaning. The wrapper sets
            ``process_group`` and ``broadcast_buffers`` itself, from ``options``.
            Every rank must pass the same ones. ``None``: DDP's defaults.

    Attributes:
        options: The options in force (``GossipOptions()`` when none were given).

    Raises:
        TypeError: If ``ddp_options`` is not a mapping, or a value has the wrong type.
        ValueError: If the model differs across ranks, the optimizer does not own it,
            ``ddp_options`` names a keyword outside `DDP_OPTIONS` or the ranks pass
            different ``ddp_options``.

    Example:
        ```python
        model = AllReduceDataParallel(
            net, optimizer, ddp_options={"find_unused_parameters": True}
        )
        ```
    """

    algorithm = "ar"
    """``"ar"``."""

    DDP_OPTIONS: tuple[str, ...] = ("bucket_cap_mb", *_DDP_FLAGS)
    """The `DistributedDataParallel` keywords ``ddp_options`` may hold."""

    _ddp: DistributedDataParallel

    def __init__(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        *,
        options: GossipOptions | None = None,
        ddp_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_wrapper_arguments(module, optimizer, options)
        ddp_kwargs = _checked_ddp_options(ddp_options)
        self.options = GossipOptions() if options is None else options
        self.options.check_fault_tolerance("ar")
        group, params = checked_parameters(module, optimizer, "ar", self.options)
        # different DDP settings on two ranks would hang in backward: refuse them here
        check_same_setup(group, {"ddp_options": repr(sorted(ddp_kwargs.items()))})
        self.module = module
        self.options.warn_ignored("ar")
        self._buffer_sync = BufferSync(module, self.options.buffers, group)
        self._hold_ddp(
            make_ddp(
                module,
                self.options.process_group,
                sync_buffers=self.options.buffers == "broadcast",
                ddp_options=ddp_kwargs,
            )
        )
        n = dist.get_world_size(group)
        averaged = self._buffer_sync.gossiped if self.options.buffers == "average" else []
        # what a ring all-reduce sends per step, for bytes_sent: the gradients in every
        # step, the averaged buffers in every step that is not skipped
        self._ring_grads = _ring_bytes(params, n)
        self._ring_buffers = _ring_bytes(averaged, n)
        self._sent = 0
        self._hook(optimizer)

    @property
    def bytes_sent(self) -> int:
        r"""What a ring all-reduce sends from each rank for the steps taken so far.

        Computed, not counted (DDP's collectives are torch's): per optimizer step,
        $2(n-1)/n$ times the bytes of the gradients (and, with ``buffers="average"``,
        of the floating buffers), the traffic of a bandwidth-optimal all-reduce. A
        skipped mixed-precision step counts its gradients, which were all-reduced too.
        Gradients accumulated under `no_sync` are all-reduced once, with the step. A
        communication hook that compresses (`register_comm_hook`) is not accounted
        for: the count stays that of the gradients' own dtype.
        """
        return self._sent

    def register_comm_hook(self, state: object, hook: Callable[..., Any]) -> None:
        """Replace DDP's gradient all-reduce by ``hook`` (DDP's ``register_comm_hook``).

        For example bf16 or fp16 compression, or PowerSGD, from
        ``torch.distributed.algorithms.ddp_comm_hooks``. As with DDP, call it once,
        on every rank, before the first forward pass.

        Args:
            state: Passed to ``hook`` with every bucket (``None`` for the default
                hooks, a ``PowerSGDState`` for PowerSGD).
            hook: ``hook(state, bucket) -> torch.futures.Future`` of the bucket's
                reduced gradients.

        Raises:
            RuntimeError: From DDP, if a hook is already registered.

        Example:
            ```python
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            model = make_data_parallel("ar", net, optimizer)
            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
            ```
        """
        self._ddp.register_comm_hook(state, hook)

    def _fixed_topology_reason(self) -> str:
        return (
            "AR-SGD all-reduces over every rank and has no gossip topology to set; "
            f"set_topology applies to the gossip algorithms ({', '.join(GOSSIP_ALGORITHMS)})"
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module through DDP, which all-reduces gradients in backward."""
        return self._ddp(*args, **kwargs)

    def _skipped_update(self, optimizer: Optimizer) -> None:
        """Every rank skipped together (the gradients were all-reduced): nothing to do."""
        self._sent += self._ring_grads

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._sent += self._ring_grads + self._ring_buffers
        if self._buffer_sync.mode == "average":
            self._buffer_sync.average_in_place()  # one all-reduce of the buffers a step

    def finish_gossip(self) -> None:
        """Nothing is ever in flight between steps with all-reduce."""

    def close(self) -> None:
        """Remove the optimizer hook (if any); DDP holds nothing else to release here."""
        self._unhook()

    @contextmanager
    def average_for_eval(self) -> Iterator[None]:
        """All ranks hold the same parameters; hold the floating buffers' exact mean too."""
        with self._buffer_sync.plain_average(gossiped_too=True):
            yield

    def _gossip_state(self) -> dict[str, Any]:
        return {"ps_weight": 1.0, "gossip": []}

    def _load_gossip_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore: all-reduce keeps no gossip state."""
