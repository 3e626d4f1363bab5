"""Every public constructor and function of gossip-nn, each argument tried wrong (issue
21): a wrong type, an out-of-range number or an unknown name raises ``TypeError`` or
``ValueError`` naming the argument, before any process group is needed (none exists in
this test: a check that came after it would raise ``RuntimeError`` instead). A coverage
test fails when an argument of ``__all__`` has no bad case and no reason."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist

import gossip_nn


def _net() -> dict[str, Any]:
    net = torch.nn.Linear(2, 1)
    return {"module": net, "optimizer": torch.optim.SGD(net.parameters(), lr=0.1)}


#: Good arguments for each callable (a factory), and bad values per argument.
GOOD: dict[str, Callable[[], dict[str, Any]]] = {
    "AllReduceDataParallel": _net,
    "BilateralGossipDataParallel": _net,
    "GossipDataParallel": lambda: {**_net(), "algorithm": "sgp"},
    "ExactAveragingSchedule": dict,
    "FaultTolerance": lambda: {"store": dist.HashStore(), "world_size": 2},
    "GlobalProgress": dict,
    "GossipOptions": dict,
    "LocalSGDDataParallel": lambda: {**_net(), "algorithm": "localsgd"},
    "SlowMoOptions": dict,
    "check_same_setup": lambda: {"group": None, "setup": {"a": "1"}},
    "gossip_options": lambda: {"algorithm": "sgp"},
    "make_data_parallel": lambda: {"algorithm": "sgp", **_net()},
}
_WRAPPER_BAD: dict[str, list[Any]] = {
    "module": [object(), "resnet50"],
    "optimizer": ["sgd", None],
    "options": [{"topology": "ring"}, "sgp"],
}
BAD: dict[str, dict[str, list[Any]]] = {
    "AllReduceDataParallel": {
        **_WRAPPER_BAD,
        "ddp_options": [
            "find_unused_parameters",
            {"device_ids": [0]},
            {"broadcast_buffers": False},
            {3: True},
            {"static_graph": "yes"},
            {"bucket_cap_mb": 0},
            {"bucket_cap_mb": float("inf")},
            {"bucket_cap_mb": "25"},
        ],
    },
    "BilateralGossipDataParallel": _WRAPPER_BAD,
    "GossipDataParallel": {**_WRAPPER_BAD, "algorithm": ["ar", "adpsgd", "adam", 3]},
    "LocalSGDDataParallel": {**_WRAPPER_BAD, "algorithm": ["sgp", "adam", 3]},
    "ExactAveragingSchedule": {"every": [-1, 1.5], "warmup_steps": [-1, "2"]},
    "FaultTolerance": {
        "store": [object()],
        "world_size": [0, "4"],
        "min_members": [0, 1.5],
        "settle_timeout": [0, -1.0, "x"],
        "backend": ["mpi"],
        "prefix": [3],
        "extra_state": [{"epoch": 1}],
    },
    "GlobalProgress": {"process_group": ["world"], "store": ["x"], "key": [3, ""]},
    "GossipOptions": {
        "topology": ["nosuch", 9, 1.5, True],
        "peers_per_itr": [0, "2"],
        "legacy_phone_book": ["yes"],
        "mixing": ["uniform"],
        "synch_freq": [-1, 0.5],
        "wire_dtype": [torch.int8, "bf16"],
        "nprocs_per_node": [0, "2"],
        "process_group": ["world"],
        "timeout": [0, float("nan"), "5"],
        "chunk_bytes": [-1, 1.5],
        "check_finite": [1],
        "buffers": ["all"],
        "dpsgd_order": ["mix"],
        "global_average_every": [-1],
        "allreduce_warmup_steps": [-1],
        "slowmo": [{"beta": 0.5}],
        "compression": ["top5", 3],
        "consensus_step": [0.5],
        "fault_tolerance": ["yes"],
        "average_every": [0, 1.5],
        "average_by": ["gossip", 3],
        "outer": [0.7, "diloco"],
    },
    "SlowMoOptions": {"beta": [1.0, -0.1, "x"], "lr": [0, "x"], "every": [0, 1.5]},
    "check_same_setup": {"group": ["world"], "setup": [{"a": 1}, "a=1"], "module": ["m"]},
    "gossip_options": {"algorithm": ["adam", None]},
    "make_data_parallel": {
        "algorithm": ["adam", 3],
        "module": [object()],
        "optimizer": ["sgd"],
        "ddp_options": [{"static_graph": True}],  # "sgp": the option is for "ar" only
    },
}
#: Arguments whose message names them by another word.
EXPECT: dict[tuple[str, str], str] = {
    ("GossipOptions", "topology"): "topology",
    ("FaultTolerance", "settle_timeout"): "settle_timeout",
}
#: ``**options``: an unknown option's name is what the message must name.
UNKNOWN_OPTION = {"colour": "red"}

EXEMPT: dict[str, str] = {
    "DataParallelModule": "abstract: the wrappers are its subclasses",
    "GenerationChange": "a record the wrapper builds when the job changes generation",
}


def _callables() -> dict[str, Any]:
    found = {}
    for name in gossip_nn.__all__:
        obj = getattr(gossip_nn, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            found[name] = obj
    return found


def _cases() -> list[tuple[str, str, Any]]:
    return [(n, p, v) for n, params in BAD.items() for p, values in params.items() for v in values]


def _call(name: str, arguments: dict[str, Any]) -> str:
    """The message of the error ``name(**arguments)`` raises (it must raise)."""
    assert not dist.is_initialized()
    with pytest.raises((TypeError, ValueError)) as caught:
        getattr(gossip_nn, name)(**arguments)
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize(("name", "param", "bad"), _cases(), ids=lambda v: repr(v)[:24])
def test_a_bad_argument_is_named_before_any_process_group(name: str, param: str, bad: Any) -> None:
    message = _call(name, {**GOOD[name](), param: bad})
    assert EXPECT.get((name, param), param) in message, message


@pytest.mark.parametrize("name", ["make_data_parallel", "gossip_options"])
def test_an_unknown_option_is_named(name: str) -> None:
    assert "colour" in _call(name, {**GOOD[name](), **UNKNOWN_OPTION})


def test_every_argument_has_a_bad_case_or_a_reason() -> None:
    missing = []
    for name, obj in _callables().items():
        if name in EXEMPT:
            continue
        for param in inspect.signature(obj).parameters.values():
            if param.kind is param.VAR_KEYWORD:  # (test_an_unknown_option_is_named)
                assert name in ("make_data_parallel", "gossip_options"), name
                continue
            if not BAD.get(name, {}).get(param.name):
                missing.append(f"{name}({param.name})")
    assert not missing, f"arguments with no bad case and no reason in EXEMPT: {missing}"
    assert set(EXEMPT) <= set(_callables()), "EXEMPT names what gossip_nn does not export"
