"""GlobalProgress: an iteration counter shared by every rank of a process group.

In AD-PSGD (Lian et al., *Asynchronous Decentralized Parallel Stochastic Gradient
Descent*, ICML 2018, [arXiv:1710.06952](https://arxiv.org/abs/1710.06952)) no rank waits
for the others, so ranks run at different rates and a rank's own step count says little
about how far training has gone. The learning-rate schedule and the stopping rule should
follow the *global* number of updates instead: the sum of the steps taken by all ranks.

The 2019 code kept that number in a shared file that every rank locked, read and rewrote.
``GlobalProgress`` replaces it with one integer key in the process group's c10d store,
incremented with the store's atomic ``add``, so no shared file system is needed and two
concurrent increments can never be lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import Store

from gossip_topology._checks import check_int

__all__ = ["GlobalProgress"]

_STATE_KEY = "global_step"


def _group_store(group: ProcessGroup) -> Store:
    # ``ProcessGroup.get_group_store()`` has no leading underscore and is declared in
    # torch's own stubs (torch/_C/_distributed_c10d.pyi), but it is not in the documented
    # API. It is the least private way to reach the store torch 2.14 keeps behind a group:
    # for WORLD it returns the very object ``distributed_c10d._get_default_store()``
    # returns; for a ``new_group`` it returns a ``PrefixStore`` named after that group, on
    # top of the default store. If a later torch drops it, this is the one line to change.
    return group.get_group_store()


class GlobalProgress:
    """A global step counter kept in the c10d store, shared by all ranks of a group.

    Each rank calls ``add()`` after its own optimizer step; the value returned, and
    ``value``, is the number of steps taken by all ranks of the group together. The
    increment is one atomic ``store.add``, so every call to ``add()`` on any rank returns
    a different total even when ranks step at the same moment.

    Construction is a collective: **every rank of the group must construct it**, in the
    same order relative to the group's other collectives. It waits for all ranks, has the
    group's rank 0 set the counter to 0, and waits again, so each new ``GlobalProgress``
    starts from 0 even when an earlier one in the same run used the same key.

    Args:
        process_group: The group whose ranks share the counter; ``None`` means WORLD. With
            another group, the key is suffixed with the group's global ranks, so two groups
            never share a counter.
        store: The store that holds the counter. ``None`` means the store behind
            ``process_group`` (for WORLD, the one ``init_process_group`` created).
        key: The store key of the counter.

    Raises:
        RuntimeError: If ``torch.distributed`` is not available or not initialised.
        ValueError: If ``key`` is empty or this rank is not a member of ``process_group``.
        TypeError: If ``key`` is not a string.

    Example:
        ```python
        progress = GlobalProgress()  # on every rank
        for batch in loader:
            train_step(batch)
            if progress.add() >= total_steps:  # steps taken by all ranks together
                break
        ```
    """

    def __init__(
        self,
        *,
        process_group: ProcessGroup | None = None,
        store: Store | None = None,
        key: str = "gossip_nn/global_step",
    ) -> None:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str; got {type(key).__name__}")
        if not key:
            raise ValueError("key must be a non-empty string")
        if store is not None and not isinstance(store, Store):
            raise TypeError(f"store must be a torch.distributed.Store or None; got {store!r:.80}")
        group_given: object = process_group  # (a non-member's sentinel is named below)
        if group_given not in (None, dist.GroupMember.NON_GROUP_MEMBER) and not isinstance(
            group_given, ProcessGroup
        ):
            raise TypeError(
                "process_group must be a torch.distributed.ProcessGroup or None; got "
                f"{type(process_group).__name__}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "GlobalProgress needs an initialised process group: call "
                "torch.distributed.init_process_group(...) on every rank first"
            )
        world = dist.group.WORLD
        assert world is not None  # set by init_process_group
        group: object = world if process_group is None else process_group
        # new_group() hands its non-members GroupMember.NON_GROUP_MEMBER, not a group.
        if not isinstance(group, ProcessGroup) or dist.get_rank(group) < 0:
            raise ValueError(
                f"process_group: rank {dist.get_rank()} is not a member of it (new_group "
                f"gives non-members GroupMember.NON_GROUP_MEMBER); got {group!r}"
            )
        self._group = group
        self._rank = dist.get_rank(group)
        if group is not world:
            ranks = ",".join(str(r) for r in dist.get_process_group_ranks(group))
            key = f"{key}/ranks={ranks}"
        self._key = key
        self._store: Store = _group_store(group) if store is None else store
        self._reset(0)

    @property
    def key(self) -> str:
        """The store key of the counter (suffixed with the ranks of a non-WORLD group)."""
        return self._key

    @property
    def value(self) -> int:
        """The number of steps added so far by all ranks of the group."""
        return int(self._store.add(self._key, 0))

    def add(self, steps: int = 1) -> int:
        """Add ``steps`` to the global counter, atomically.

        Args:
            steps: Number of steps this rank has taken since its last call; 0 reads the
                counter.

        Returns:
            The global total just after this addition. Over all ranks and calls with
            ``steps=1``, the totals returned are exactly ``1, 2, ..., N``.

        Raises:
            TypeError: If ``steps`` is not an int.
            ValueError: If ``steps`` is negative.
        """
        steps = check_int("steps", steps, minimum=0)
        return int(self._store.add(self._key, steps))

    def state_dict(self) -> dict[str, Any]:
        """The counter's current total, to save in a checkpoint.

        Ranks read it at different moments, so their state dicts may differ; on restore
        only the one given to the group's rank 0 is used.

        Returns:
            ``{"global_step": total}``.
        """
        return {_STATE_KEY: self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set the global counter to a saved total; a collective over the group.

        Every rank of the group must call it. Each rank checks ``state``; then, once all
        ranks have stopped adding, the group's rank 0 writes its saved total, and no rank
        returns before that write is done.

        Args:
            state: A dict from ``state_dict()``.

        Raises:
            ValueError: If ``state`` is not a mapping with exactly the key
                ``"global_step"`` holding an int >= 0. Checked before any communication;
                a rank whose ``state`` is rejected leaves its peers waiting in the
                collective, so give every rank the same checkpoint.
        """
        if not isinstance(state, Mapping) or set(state) != {_STATE_KEY}:
            got = (
                f"keys {sorted(map(str, state))}"
                if isinstance(state, Mapping)
                else f"a {type(state).__name__}"
            )
            raise ValueError(f"state must be a mapping with the one key {_STATE_KEY!r}; got {got}")
        total = state[_STATE_KEY]
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"state[{_STATE_KEY!r}] must be an int >= 0; got {total!r}")
        self._reset(total)

    def _reset(self, total: int) -> None:
        # The first barrier orders the write after every rank's earlier adds on this key
        # (from a previous GlobalProgress or before a restore); the second orders it before
        # every rank's next add or read.
        dist.barrier(group=self._group)
        if self._rank == 0:
            self._store.set(self._key, str(total))
        dist.barrier(group=self._group)

    def __repr__(self) -> str:
        return f"GlobalProgress(key={self._key!r}, value={self.value})"
