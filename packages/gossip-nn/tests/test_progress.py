"""GlobalProgress: atomic global counting over the c10d store, resets, restore, subgroups.

Spawning a group costs seconds, so one 4-rank run (the ``scenarios`` fixture) plays every
multi-rank scenario in turn, each with its own GlobalProgress objects, and each test checks
the results of one scenario. Scenarios return what they saw rather than assert, so a bug
fails the tests that look for it, not the whole run.
"""

from __future__ import annotations

import functools
import io
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.distributed_c10d import Store

from gossip_comm.testing import run_distributed
from gossip_nn.progress import GlobalProgress

WORLD_SIZE = 4


def _file_store(folder: str, name: str, world_size: int) -> Store:
    """A store shared by the ranks that is not the process group's own."""
    return dist.FileStore(os.path.join(folder, name), world_size)  # type: ignore[attr-defined]


def _interleaved_adds(rank: int, world_size: int, folder: str) -> Any:
    progress = GlobalProgress()
    start = progress.value
    dist.barrier()  # every rank has read the fresh counter before any rank adds
    returned = []
    for _ in range(rank + 1):  # rank r adds r + 1 times, all ranks at once
        returned.append(progress.add())
        time.sleep(0.001 * (world_size - rank))  # vary the interleaving across ranks
    dist.barrier()
    return start, returned, progress.value


def test_concurrent_adds_count_every_step_once(scenarios: dict[str, list[Any]]) -> None:
    res = scenarios["interleaved_adds"]
    total = sum(r + 1 for r in range(WORLD_SIZE))  # 1 + 2 + 3 + 4 = 10
    assert [start for start, _, _ in res] == [0] * WORLD_SIZE
    assert [value for _, _, value in res] == [total] * WORLD_SIZE
    assert [len(values) for _, values, _ in res] == [r + 1 for r in range(WORLD_SIZE)]
    returned = [v for _, values, _ in res for v in values]
    assert sorted(returned) == list(range(1, total + 1))  # no total handed out twice
    for _, values, _ in res:
        assert values == sorted(values)  # each rank sees the total grow


def _two_in_sequence(rank: int, world_size: int, folder: str) -> Any:
    first = GlobalProgress()
    for _ in range(3 * rank):  # no barrier: rank 0 reaches the next constructor first
        first.add()
    second = GlobalProgress()
    at_start = second.value
    dist.barrier()
    returned = second.add(2)
    dist.barrier()
    return at_start, returned, second.value


def test_each_new_counter_starts_from_zero(scenarios: dict[str, list[Any]]) -> None:
    res = scenarios["two_in_sequence"]
    assert [at_start for at_start, _, _ in res] == [0] * WORLD_SIZE
    assert sorted(returned for _, returned, _ in res) == [2, 4, 6, 8]
    assert [value for _, _, value in res] == [2 * WORLD_SIZE] * WORLD_SIZE


def _round_trip(rank: int, world_size: int, folder: str) -> Any:
    progress = GlobalProgress()
    progress.add(5 + rank)
    dist.barrier()
    saved = progress.state_dict()
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # as it would go into a checkpoint
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)

    fresh = GlobalProgress()  # a resumed run: the counter starts from 0 ...
    after_reset = fresh.value
    fresh.load_state_dict(restored)  # ... until the checkpoint is loaded
    after_load = fresh.value
    dist.barrier()
    # Only the group's rank 0 writes: the others' (here different) totals are ignored.
    fresh.load_state_dict({"global_step": 100 + rank})
    after_second_load = fresh.value
    dist.barrier()
    fresh.add()
    dist.barrier()
    return saved, after_reset, after_load, after_second_load, fresh.value


def test_state_dict_round_trip_restores_the_total_on_every_rank(
    scenarios: dict[str, list[Any]],
) -> None:
    total = sum(5 + r for r in range(WORLD_SIZE))  # 26
    for saved, after_reset, after_load, after_second_load, final in scenarios["round_trip"]:
        assert saved == {"global_step": total}
        assert after_reset == 0
        assert after_load == total
        assert after_second_load == 100
        assert final == 100 + WORLD_SIZE


def _outcome(call: Callable[[], object]) -> tuple[str, str]:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "no error", ""


_BAD_STATES: list[Any] = [
    {},
    [("global_step", 1)],
    {"global_step": 1, "extra": 2},
    {"step": 1},
    {"global_step": -1},
    {"global_step": 1.5},
    {"global_step": "7"},
    {"global_step": True},
]


def _bad_arguments(rank: int, world_size: int, folder: str) -> Any:
    progress = GlobalProgress()
    if rank == 0:
        progress.add(3)
    steps = [
        _outcome(lambda: progress.add(-1)),
        _outcome(lambda: progress.add(1.5)),  # type: ignore[arg-type]
        _outcome(lambda: progress.add(True)),
    ]
    states = [_outcome(functools.partial(progress.load_state_dict, s)) for s in _BAD_STATES]
    keys = [
        _outcome(lambda: GlobalProgress(key="")),
        _outcome(lambda: GlobalProgress(key=7)),  # type: ignore[arg-type]
    ]
    dist.barrier()
    return steps, states, keys, progress.value


def test_bad_arguments_raise_without_touching_the_counter(
    scenarios: dict[str, list[Any]],
) -> None:
    for steps, states, keys, value in scenarios["bad_arguments"]:
        assert steps == [
            ("ValueError", "steps must be >= 0; got -1"),
            ("TypeError", "steps must be an int; got float 1.5"),
            ("TypeError", "steps must be an int; got bool True"),
        ]
        for state, (kind, message) in zip(_BAD_STATES, states, strict=True):
            assert kind == "ValueError", state
            assert message.startswith("state"), (state, message)
        assert keys == [
            ("ValueError", "key must be a non-empty string"),
            ("TypeError", "key must be a str; got int"),
        ]
        assert value == 3  # the rejected calls changed nothing


def _own_store(rank: int, world_size: int, folder: str) -> Any:
    store = _file_store(folder, "own", world_size)
    progress = GlobalProgress(store=store, key="mine")
    for _ in range(rank + 1):
        progress.add()
    dist.barrier()
    return int(store.add("mine", 0)), progress.value


def test_an_explicit_store_holds_the_counter(scenarios: dict[str, list[Any]]) -> None:
    assert scenarios["own_store"] == [(10, 10)] * WORLD_SIZE


def _subgroups(rank: int, world_size: int, folder: str) -> Any:
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both
    mine = groups[rank // 2]
    assert isinstance(mine, ProcessGroup)
    other = groups[1 - rank // 2]  # GroupMember.NON_GROUP_MEMBER on this rank
    not_member = _outcome(lambda: GlobalProgress(process_group=other))  # type: ignore[arg-type]
    world = GlobalProgress()
    own = GlobalProgress(process_group=mine)
    # One store for both groups: only the key keeps their counters apart.
    store = _file_store(folder, "subgroups", world_size)
    shared = GlobalProgress(process_group=mine, store=store, key="shared")
    for _ in range(rank + 1):
        world.add()
        own.add()
        shared.add(10)
    dist.barrier()
    return world.value, own.value, shared.value, own.key, shared.key, not_member


def test_subgroups_count_independently(scenarios: dict[str, list[Any]]) -> None:
    expected = {0: 1 + 2, 1: 3 + 4}  # group [0, 1] and group [2, 3]
    for rank, result in enumerate(scenarios["subgroups"]):
        world, own, shared, own_key, shared_key, not_member = result
        assert world == 10
        assert own == expected[rank // 2]
        assert shared == 10 * expected[rank // 2]
        ranks = "0,1" if rank < 2 else "2,3"
        assert own_key == f"gossip_nn/global_step/ranks={ranks}"
        assert shared_key == f"shared/ranks={ranks}"
        kind, message = not_member
        assert kind == "ValueError"
        assert message.startswith(f"process_group: rank {rank} is not a member of it")


_SCENARIOS: dict[str, Callable[[int, int, str], Any]] = {
    "interleaved_adds": _interleaved_adds,
    "two_in_sequence": _two_in_sequence,
    "round_trip": _round_trip,
    "bad_arguments": _bad_arguments,
    "own_store": _own_store,
    "subgroups": _subgroups,
}


def _all_scenarios(rank: int, world_size: int, folder: str) -> dict[str, Any]:
    return {name: run(rank, world_size, folder) for name, run in _SCENARIOS.items()}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Each scenario's results, in rank order, from one run of all of them on 4 ranks."""
    folder = str(tmp_path_factory.mktemp("progress"))
    by_rank = run_distributed(_all_scenarios, WORLD_SIZE, (folder,), timeout=60)
    return {name: [results[name] for results in by_rank] for name in _SCENARIOS}


def test_needs_an_initialised_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        GlobalProgress()
    with pytest.raises(RuntimeError, match="init_process_group"):
        GlobalProgress(store=dist.HashStore())  # type: ignore[attr-defined]
