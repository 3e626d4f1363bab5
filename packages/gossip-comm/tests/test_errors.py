"""Bad input raises early with an error naming the problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm import FlatBuffer, GossipConfig, NonFiniteError, PushPull, PushSum, gossip_average
from gossip_comm.testing import RankFailedError, run_distributed
from gossip_topology import Star, make_topology


def test_uninitialised_process_group() -> None:
    with pytest.raises(RuntimeError, match="not initialised"):
        PushSum(make_topology("ring", 2), torch.zeros(3))


def _catch(fn: Any) -> str | None:
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _bad_input_worker(rank: int, n: int) -> dict[str, str | None]:
    ring = make_topology("ring", n)
    x = torch.zeros(4)
    out = {
        "world_size": _catch(lambda: PushSum(make_topology("ring", n + 1), x)),
        "numel": _catch(lambda: PushSum(ring, torch.zeros(4 + rank))),
        "dtype": _catch(lambda: PushSum(ring, x if rank == 0 else x.double())),
        "not_float": _catch(lambda: PushSum(ring, torch.zeros(4, dtype=torch.int64))),
        "wire": _catch(lambda: PushSum(ring, x, config=GossipConfig(wire_dtype=torch.int8))),
        "comm_device": _catch(lambda: PushSum(ring, x, config=GossipConfig(comm_device="cuda"))),
        "timeout": _catch(lambda: PushSum(ring, x, config=GossipConfig(timeout=0))),
        "push_pull_star": _catch(lambda: PushPull(Star(n), x)),
        "steps": _catch(lambda: gossip_average(x, ring, -1)),
    }
    ps = PushSum(ring, x)
    out["device"] = _catch(lambda: ps.mix(torch.zeros(4, device="meta"), 1.0))
    out["shape"] = _catch(lambda: ps.mix(torch.zeros(5), 1.0))
    out["contiguous"] = _catch(lambda: ps.mix(torch.zeros(4, 2)[:, 0], 1.0))
    out["state"] = _catch(lambda: ps.load_state_dict({"step": -1}))
    out["state_type"] = _catch(lambda: ps.load_state_dict({"step": 1.5}))  # type: ignore[dict-item]
    return out


def test_bad_input_is_named() -> None:
    results = run_distributed(_bad_input_worker, 3)
    for r, res in enumerate(results):
        assert "topology has world_size=4 but the process group has 3 ranks" in res["world_size"]
        assert "ranks disagree on the buffer numel: {0: 4, 1: 5, 2: 6}" in res["numel"], r
        assert "ranks disagree on the dtype" in res["dtype"]
        assert res["not_float"].startswith("TypeError: like must be a floating-point")
        assert "wire_dtype must be None, torch.bfloat16 or torch.float16" in res["wire"]
        assert "gloo backend gossips on CPU tensors" in res["comm_device"]
        assert "timeout must be a positive" in res["timeout"]
        assert "doubly-stochastic" in res["push_pull_star"]
        assert "steps must be >= 0; got -1" in res["steps"]
        assert "tensor is on meta but this PushSum gossips on cpu" in res["device"]
        assert "tensor must have shape (4,)" in res["shape"]
        assert "contiguous" in res["contiguous"]
        assert "ValueError: state['step'] must be an int >= 0; got -1" in res["state"]
        assert "ValueError: state['step'] must be an int >= 0; got 1.5" in res["state_type"]


def _raise_worker(rank: int, n: int) -> None:
    if rank == 1:
        raise KeyError("boom from rank 1")


def test_harness_reports_the_failing_rank() -> None:
    with pytest.raises(RankFailedError, match="rank 1 raised KeyError") as info:
        run_distributed(_raise_worker, 2)
    assert info.value.rank == 1


def test_flat_buffer_groups_by_dtype_and_round_trips() -> None:
    a = torch.arange(6.0).reshape(2, 3)
    b = torch.arange(4, dtype=torch.float64)
    c = torch.ones(2)
    flat = FlatBuffer([a, b, c])
    assert [(buf.dtype, buf.numel()) for buf in flat.buffers] == [
        (torch.float32, 8),
        (torch.float64, 4),
    ]
    np.testing.assert_array_equal(flat.buffers[0].numpy(), [0, 1, 2, 3, 4, 5, 1, 1])
    first = flat.buffers[0]
    flat.buffers[0].mul_(2)
    flat.buffers[1].add_(1)
    outs = [torch.empty_like(a), torch.empty_like(b), torch.empty_like(c)]
    flat.unpack(outs)
    torch.testing.assert_close(outs[0], 2 * a)
    torch.testing.assert_close(outs[1], b + 1)
    flat.pack([a, b, c])
    assert flat.buffers[0] is first  # reused, not reallocated
    torch.testing.assert_close(flat.buffers[0][:6], a.reshape(-1))
    with pytest.raises(ValueError, match="must not be empty"):
        FlatBuffer([])


def test_gossip_config_is_keyword_only_and_checked_at_construction() -> None:
    with pytest.raises(TypeError):
        GossipConfig(None, None)  # type: ignore[misc]  # positional fields would be a trap
    with pytest.raises(TypeError, match=r"mixing must be a gossip_topology\.Mixing"):
        GossipConfig(mixing="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        GossipConfig(timeout=float("inf"))
    with pytest.raises(ValueError, match=r"wire_dtype must be None, torch\.bfloat16"):
        GossipConfig(wire_dtype=torch.float64)
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        GossipConfig(check_finite=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fault_tolerant must be a bool"):
        GossipConfig(fault_tolerant="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fault_tolerant gossip does not support compression"):
        GossipConfig(fault_tolerant=True, compression="int8")
    config = GossipConfig(wire_dtype=torch.bfloat16, timeout=5)
    with pytest.raises(AttributeError):
        config.timeout = 1  # type: ignore[misc]


def test_check_finite_is_exact_whatever_the_sum_does() -> None:
    from gossip_comm._channel import check_finite

    def raises(t: torch.Tensor) -> bool:
        try:
            check_finite(t, rank=0, peer=1, step=2)
        except NonFiniteError:
            return True
        return False

    big32 = torch.full((4,), 3e38)  # finite, but its sum overflows float32
    big16 = torch.full((4,), 60000.0, dtype=torch.float16)  # likewise in float16
    assert not raises(big32) and not raises(big16)
    assert not raises(torch.randn(1000)) and not raises(torch.arange(5))  # ints pass
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(1000)
        t[617] = bad
        assert raises(t), bad
    both = torch.zeros(10)
    both[1], both[2] = float("inf"), float("-inf")  # the sum is NaN: still caught
    assert raises(both)
    big32[3] = float("nan")  # a NaN among values whose sum overflows
    assert raises(big32)
