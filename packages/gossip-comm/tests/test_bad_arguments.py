"""Every public constructor and function of gossip-comm, each argument tried wrong
(issue 21): a wrong type, an out-of-range number or an unknown name raises ``TypeError``
or ``ValueError`` naming the argument, before any process group is needed (none exists
in this test: a check that came after it would raise ``RuntimeError`` instead). A
coverage test fails when an argument of ``__all__`` has no bad case and no reason."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist

import gossip_comm
from gossip_topology import make_topology

RING = make_topology("ring", 2)
PAIRS = make_topology("dynamic-bipartite-exponential", 2)
X = torch.zeros(4)


def _gossiper(topology: Any) -> Callable[[], dict[str, Any]]:
    return lambda: {"topology": topology, "like": X, "config": None}


#: For each callable: good arguments (a factory), then bad values per argument. The
#: message must name the argument (``expect`` overrides the name where given).
GOOD: dict[str, Callable[[], dict[str, Any]]] = {
    "PushSum": lambda: {**_gossiper(RING)(), "always_send_weight": False},
    "PushPull": _gossiper(RING),
    "BilateralPushPull": _gossiper(PAIRS),
    "AsyncBilateral": _gossiper(PAIRS),
    "Cast": lambda: {"dtype": "bf16"},
    "FlatBuffer": lambda: {"tensors": [X]},
    "GossipConfig": dict,
    "GossipHandle": lambda: {"finish": lambda: 1},
    "Int8": dict,
    "LowRank": lambda: {"rank": 2},
    "Membership": lambda: {"store": dist.HashStore()},
    "TopK": lambda: {"fraction": 0.1},
    "comm_device_for": lambda: {"group": None, "requested": None},
    "common_references": lambda: {"tensors": [X]},
    "gossip_average": lambda: {"tensor": X, "topology": RING, "steps": 1},
    "make_compressor": lambda: {"spec": "int8"},
    "resolve_group": lambda: {"process_group": None},
}
_GOSSIPER_BAD: dict[str, list[Any]] = {
    "topology": ["ring", None],
    "like": [[0.0, 1.0], torch.zeros(4, dtype=torch.int64)],
    "config": [{"timeout": 5.0}, "int8"],
}
BAD: dict[str, dict[str, list[Any]]] = {
    "PushSum": {
        **_GOSSIPER_BAD,
        "always_send_weight": [1, "yes"],
        "layout": [[torch.Size([4])]],
        "reference": [X],
    },
    "PushPull": {**_GOSSIPER_BAD, "layout": [[torch.Size([4])]], "reference": [X]},
    "BilateralPushPull": _GOSSIPER_BAD,
    "AsyncBilateral": {**_GOSSIPER_BAD, "layout": [[torch.Size([4])]], "reference": [X]},
    "Cast": {"dtype": [torch.int8, "fp8", 3]},
    "FlatBuffer": {"tensors": [[], "x", [1.0]]},
    "GossipConfig": {
        "mixing": ["uniform"],
        "process_group": ["world"],
        "comm_device": [3, "nodevice:9"],
        "wire_dtype": [torch.int8, "bf16"],
        "timeout": [0, float("nan"), -1.0],
        "check_finite": [1],
        "chunk_bytes": [-1, 1.5],
        "compression": ["top5", 3],
        "consensus_step": [0.5],
        "fault_tolerant": ["yes"],
    },
    "GossipHandle": {"future": ["x"], "poll": [3], "finish": [3]},
    "Int8": {"block": [0, "8"], "stochastic": [1], "seed": [-1, "x"]},
    "LowRank": {"rank": [0, "2", True]},
    "Membership": {
        "store": [object(), "127.0.0.1:29500"],
        "min_members": [0, 1.5],
        "settle_timeout": [0, "x", float("inf")],
        "prefix": [3],
        "poll_interval": [0, -1.0],
    },
    "TopK": {"fraction": [0, 2, "x"]},
    "comm_device_for": {"group": ["world"], "requested": [3, "nodevice:9"]},
    "common_references": {"tensors": ["x", [1.0]], "process_group": ["world"]},
    "gossip_average": {
        "tensor": ["x"],
        "topology": ["ring"],
        "steps": [-1, 1.5],
        "config": ["x"],
    },
    "make_compressor": {"spec": [3, "top5", "topk:2"]},
    "resolve_group": {"process_group": ["world", 0]},
}
#: Arguments whose message names them by another word.
EXPECT: dict[tuple[str, str], str] = {
    ("GossipConfig", "consensus_step"): "consensus_step",
    ("make_compressor", "spec"): "compression",
    ("Cast", "dtype"): "Cast",
    ("FlatBuffer", "tensors"): "tensors",
    ("GossipConfig", "compression"): "compression",
}

EXEMPT: dict[str, str] = {
    "Compressor": "abstract: a subclass defines its own arguments",
    "GossipError": "an exception the library raises, not a user's input",
    "GossipPeerError": "an exception the library raises, not a user's input",
    "GossipTimeoutError": "an exception the library raises, not a user's input",
    "MembershipError": "an exception the library raises, not a user's input",
    "NonFiniteError": "an exception the library raises, not a user's input",
    "PeerLostError": "an exception the library raises, not a user's input",
    "StoreLostError": "an exception the library raises, not a user's input",
    "Gossiper": "a Protocol: it describes the gossipers, and is never called",
    "MessageSpec": "what a compressor is told about a message: the library builds it",
    "OverlapRound": "a round in flight, which PushSum.send returns",
    "Settled": "what a gossiper's settle returns",
}


def _callables() -> dict[str, Any]:
    found = {}
    for name in gossip_comm.__all__:
        obj = getattr(gossip_comm, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            found[name] = obj
    return found


def _cases() -> list[tuple[str, str, Any]]:
    return [(n, p, v) for n, params in BAD.items() for p, values in params.items() for v in values]


@pytest.mark.parametrize(("name", "param", "bad"), _cases(), ids=lambda v: repr(v)[:24])
def test_a_bad_argument_is_named_before_any_process_group(name: str, param: str, bad: Any) -> None:
    assert not dist.is_initialized()
    arguments = {**GOOD[name](), param: bad}
    with pytest.raises((TypeError, ValueError)) as caught:
        getattr(gossip_comm, name)(**arguments)
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    assert EXPECT.get((name, param), param) in message, message


def test_every_argument_has_a_bad_case_or_a_reason() -> None:
    missing = []
    for name, obj in _callables().items():
        if name in EXEMPT:
            continue
        for param in inspect.signature(obj).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if not BAD.get(name, {}).get(param.name):
                missing.append(f"{name}({param.name})")
    assert not missing, f"arguments with no bad case and no reason in EXEMPT: {missing}"
    assert set(EXEMPT) <= set(_callables()), "EXEMPT names what gossip_comm does not export"
