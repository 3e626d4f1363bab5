"""What every wrapper answers the same way: synchronous, set_topology, bytes_sent, DDP."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gossip_comm.testing import run_distributed
from gossip_nn import (
    ALGORITHMS,
    OUTER_ALGORITHMS,
    SET_TOPOLOGY_ALGORITHMS,
    GossipOptions,
    LocalSGDDataParallel,
    make_data_parallel,
)
from gossip_topology import make_topology
from nn_oracles import D, loss, model, problem


def _answers(rank: int, n: int) -> dict[str, Any]:
    X, y, theta0 = problem(n)
    out: dict[str, Any] = {}
    for algorithm in (*ALGORITHMS, *OUTER_ALGORITHMS):
        net = model(theta0)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        options = {"average_every": 1} if algorithm in OUTER_ALGORITHMS else {}
        dp = make_data_parallel(algorithm, net, opt, **options)
        assert dp.algorithm == algorithm
        assert isinstance(dp, LocalSGDDataParallel) == (algorithm in OUTER_ALGORITHMS)
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
        try:
            dp.set_topology(peers_per_itr=1)
            error = ""
        except RuntimeError as exc:
            error = str(exc)
        out[algorithm] = (dp.synchronous, error, dp.bytes_sent)
        dp.close()
    return out


def test_every_wrapper_answers_synchronous_set_topology_and_bytes_sent() -> None:
    n = 2
    answers = run_distributed(_answers, n)
    for rank, got in enumerate(answers):
        assert set(got) == {*ALGORITHMS, *OUTER_ALGORITHMS}
        for algorithm, (synchronous, error, sent) in got.items():
            assert synchronous == (algorithm != "adpsgd"), algorithm
            assert (error == "") == (algorithm in SET_TOPOLOGY_ALGORITHMS), (algorithm, error)
            if algorithm == "ar":
                assert "AR-SGD all-reduces over every rank" in error
            elif algorithm == "adpsgd":
                assert "AD-PSGD's pairs are fixed" in error
            elif algorithm in OUTER_ALGORITHMS:
                assert f"algorithm {algorithm!r} cannot change its topology" in error
            # one step of the float64 linear model: D values of 8 bytes
            if algorithm in ("ar", *OUTER_ALGORITHMS):  # a ring all-reduce's 2 (n - 1) / n
                assert sent == 2 * (n - 1) * D * 8 // n  # of the gradient, or the model
            elif algorithm in ("sgp", "osgp", "dpsgd"):  # one peer, one message a step
                assert sent >= D * 8, (algorithm, sent)
            else:  # one request (a 16-byte header and the model) or at most one reply
                assert sent in (0, D * 8, 16 + D * 8), (rank, sent)


def _peers_only(rank: int, n: int) -> tuple[int, list[list[int]]]:
    theta0 = problem(n)[2]
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    dp = make_data_parallel("sgp", net, opt, topology="ring")
    dp.set_topology(peers_per_itr=2)  # the graph stays a ring
    topology = dp.topology  # type: ignore[attr-defined]
    dp.close()
    return topology.peers_per_itr, [topology.out_peers(r, 0) for r in range(n)]


def test_set_topology_with_peers_only_keeps_the_graph() -> None:
    n = 4
    expected = make_topology("ring", n, peers_per_itr=2)
    for k, peers in run_distributed(_peers_only, n):
        assert k == 2
        assert peers == [expected.out_peers(r, 0) for r in range(n)]


def _built_graph(rank: int, n: int) -> str:
    theta0 = problem(n)[2]
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    dp = make_data_parallel("sgp", net, opt, topology=make_topology("ring", n))
    try:
        dp.set_topology(peers_per_itr=2)  # a built Topology cannot change its peers
    except ValueError as exc:
        return str(exc)
    finally:
        dp.close()
    return ""


def test_peers_only_on_a_built_topology_is_refused_not_ignored() -> None:
    for message in run_distributed(_built_graph, 2):
        assert "disagrees with the current topology's peers_per_itr=1" in message
        assert "pass a registry name or id" in message


class _BN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.fc(x))
        return out


def _ddp_held(rank: int, n: int, algorithm: str) -> tuple[list[str], bool, bool, str]:
    torch.manual_seed(0)
    net = _BN()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    options = {"nprocs_per_node": 2} if algorithm == "sgp" else {}
    dp = make_data_parallel(algorithm, net, opt, **options)
    children = dict(dp.named_children())
    assert children["_ddp"] is not None and children["_ddp"].module is net
    dp.eval()
    trained_flag_off = not children["_ddp"].training
    dp.train()
    state = dp.state_dict()
    torch.manual_seed(1)
    other = _BN()
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1)
    dp2 = make_data_parallel(algorithm, other, opt2, **options)
    result = dp2.load_state_dict(state)  # strict: no key missing, none unexpected
    same = all(torch.equal(a, b) for a, b in zip(net.parameters(), other.parameters(), strict=True))
    # nested in another module, the wrapper still loads strictly
    outer, outer2 = nn.ModuleDict({"model": dp}), nn.ModuleDict({"model": dp2})
    nested = str(outer2.load_state_dict(outer.state_dict()))
    visits: list[nn.Module] = []
    dp.apply(visits.append)  # each layer once, though DDP wraps the model again
    once = len(visits) == len({id(m) for m in visits}) and net.fc in visits
    dp.close()
    dp2.close()
    return sorted(state), trained_flag_off and once, same, str(result) + nested


@pytest.mark.parametrize("algorithm", ["ar", "sgp"])
def test_ddp_is_a_registered_submodule_outside_the_checkpoint(algorithm: str) -> None:
    n = 4 if algorithm == "sgp" else 2  # sgp: two nodes of two processes, DDP in a node
    for keys, eval_reached_ddp, restored, result in run_distributed(_ddp_held, n, (algorithm,)):
        assert eval_reached_ddp
        assert restored, result
        assert result.count("All keys matched") == 2, result
        assert all(k.startswith("module.") or k == "_extra_state" for k in keys), keys
        assert "module.bn.running_mean" in keys and "module.fc.weight" in keys


def _settled(rank: int, n: int, slow_passive: bool) -> tuple[np.ndarray, np.ndarray]:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    dp = make_data_parallel("adpsgd", net, opt)
    if slow_passive and dp.is_passive:  # a passive descheduled as it takes its state:
        adopt = dp._role.sync  # its actives must not send meanwhile

        def late(*args: Any, **kwargs: Any) -> None:
            time.sleep(0.2)
            adopt(*args, **kwargs)

        dp._role.sync = late
    with torch.no_grad():
        net.weight.add_(float(rank))  # different models: averaging moves them
    start = net.weight.detach()[0].clone().numpy()
    rng = np.random.default_rng(rank)
    for _ in range(6):
        loss(dp, X[rank], y[rank]).backward()
        time.sleep(float(rng.uniform(0, 0.01)))  # ranks drift apart, exchanges in flight
        opt.step()
        opt.zero_grad()
    saved = dp.state_dict()["module.weight"][0].clone().numpy()  # no close() first
    for _ in range(2):  # training goes on after the checkpoint
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
    dp.close()
    return start, saved


@pytest.mark.parametrize("slow_passive", [False, True])
def test_adpsgd_checkpoint_settles_every_exchange_on_both_ends(slow_passive: bool) -> None:
    # lr 0: only exchanges move the models, and each keeps the pair's sum; a checkpoint
    # taken while exchanges are in flight must hold each on both ends or on neither
    n = 4
    res = run_distributed(_settled, n, (slow_passive,))
    starts = np.stack([s for s, _ in res])
    saved = np.stack([m for _, m in res])
    np.testing.assert_allclose(saved.sum(axis=0), starts.sum(axis=0), rtol=0, atol=1e-12)
    assert not np.allclose(saved, starts)  # exchanges did happen before the checkpoint


def test_legacy_phone_book_is_a_gossip_option() -> None:
    n = 8
    options = GossipOptions(topology=0, legacy_phone_book=True)
    built = options.build_topology(n)
    expected = make_topology(0, n, legacy_phone_book=True)
    assert [built.out_peers(0, s) for s in range(6)] == [expected.out_peers(0, s) for s in range(6)]
    assert options.ignored_by("ar") == ["topology", "legacy_phone_book"]
    assert options.ignored_by("sgp") == []
    with pytest.raises(TypeError, match="legacy_phone_book must be a bool"):
        GossipOptions(legacy_phone_book=1)  # type: ignore[arg-type]


def test_the_algorithm_lists_agree_with_the_wrappers_own() -> None:
    """The public tuples are written out (so the reference shows their values); they must
    stay what the wrappers implement."""
    from gossip_nn._steps import GOSSIP_ALGORITHMS

    assert ("ar", *GOSSIP_ALGORITHMS, "adpsgd") == ALGORITHMS
    assert SET_TOPOLOGY_ALGORITHMS == GOSSIP_ALGORITHMS
