"""Construction-time validation and API behaviour of the wrappers."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pytest
import torch

from gossip_comm.testing import run_distributed
from gossip_nn import GossipDataParallel, GossipOptions, make_data_parallel
from nn_oracles import loss, model, problem


def _catch(fn: Any) -> str:
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _bad(rank: int, n: int) -> dict[str, str]:
    _, _, theta0 = problem(n)

    def fresh(delta: float = 0.0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        net = model(theta0 + delta)
        return net, torch.optim.SGD(net.parameters(), lr=0.1)

    net, _ = fresh()
    other = torch.optim.SGD(model(theta0).parameters(), lr=0.1)
    return {
        "differs": _catch(lambda: make_data_parallel("sgp", *fresh(float(rank)))),
        "optimizer": _catch(lambda: make_data_parallel("sgp", net, other)),
        "algorithm": _catch(lambda: make_data_parallel("adam", *fresh())),
        "option": _catch(lambda: make_data_parallel("sgp", *fresh(), colour="red")),
        "dpsgd_star": _catch(lambda: make_data_parallel("dpsgd", *fresh(), topology="star")),
        "size": _catch(lambda: make_data_parallel("sgp", *fresh(), topology=make_ring(n + 1))),
        "hierarchical": _catch(lambda: make_data_parallel("sgp", *fresh(), nprocs_per_node=2)),
        "synch_freq": _catch(lambda: make_data_parallel("sgp", *fresh(), synch_freq=1)),
        "adpsgd_ring": _catch(lambda: make_data_parallel("adpsgd", *fresh(), topology="ring")),
    }


def make_ring(n: int) -> Any:
    from gossip_topology import make_topology

    return make_topology("ring", n)


def test_bad_construction_is_named() -> None:
    for res in run_distributed(_bad, 3):
        assert "module: 'weight' differs across ranks" in res["differs"]
        assert "optimizer must hold exactly the module's trainable parameters" in res["optimizer"]
        assert (
            "algorithm must be one of ar, sgp, osgp, dpsgd, adpsgd, localsgd, diloco; got 'adam'"
            in res["algorithm"]
        )
        assert "needs a bipartite topology" in res["adpsgd_ring"]
        assert res["option"].startswith("TypeError")
        assert "doubly-stochastic" in res["dpsgd_star"]
        assert "topology has world_size=4 but 3 participants gossip" in res["size"]
        assert "nprocs_per_node=2 must divide the process group's size 3" in res["hierarchical"]
        assert "synch_freq=1 only applies to algorithm='osgp'" in res["synch_freq"]


def test_uninitialised_process_group() -> None:
    _, _, theta0 = problem(2)
    net = model(theta0)
    with pytest.raises(RuntimeError, match="not initialised"):
        GossipDataParallel(net, torch.optim.SGD(net.parameters(), lr=0.1))


def _eval(rank: int, n: int) -> Any:
    X, y, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    dp = make_data_parallel("osgp", net, opt, topology="star", synch_freq=1)
    for _ in range(3):
        loss(dp, X[rank], y[rank]).backward()
        opt.step()
        opt.zero_grad()
    in_flight = dp.in_flight
    dp.eval()
    after_eval = (dp.in_flight, dp.ps_weight)
    with dp.average_for_eval():
        avg = net.weight.detach().clone().numpy()
    dp.train()
    return in_flight, after_eval, avg, net.weight.detach().clone().numpy()


def test_eval_finishes_in_flight_gossip_and_average_for_eval_is_exact() -> None:
    n = 4
    res = run_distributed(_eval, n)
    for in_flight, (left, _), _, _ in res:
        assert in_flight == 2 and left == 0
    assert sum(r[1][1] for r in res) == pytest.approx(n, rel=1e-12)  # all mass is home
    # with nothing in flight, the exact average is sum_i x_i / sum_i w_i
    xs = np.stack([r[3] * r[1][1] for r in res])
    expected = xs.sum(axis=0) / sum(r[1][1] for r in res)
    for r in res:
        np.testing.assert_allclose(r[2], expected, rtol=1e-12, atol=1e-12)


def test_options_are_frozen() -> None:
    opts = GossipOptions()
    with pytest.raises(AttributeError):
        setattr(opts, "synch_freq", 1)  # noqa: B010  (assignment must fail at run time)


# Every option a wrapper ignores, set away from its default, must say so by name.
IGNORED = {
    "ar": [
        "topology",
        "peers_per_itr",
        "mixing",
        "wire_dtype",
        "nprocs_per_node",
        "timeout",
        "chunk_bytes",
        "dpsgd_order",
        "global_average_every",
        "allreduce_warmup_steps",
        "slowmo",
        "synch_freq",
    ],
    "sgp": ["dpsgd_order"],
    "osgp": ["dpsgd_order"],
    "adpsgd": ["mixing", "wire_dtype", "dpsgd_order"],
}


def _sample(name: str) -> Any:
    from gossip_nn import SlowMoOptions
    from gossip_topology import UniformMixing

    return {
        "topology": "ring",
        "peers_per_itr": 2,
        "mixing": UniformMixing(),
        "wire_dtype": torch.bfloat16,
        "nprocs_per_node": 2,
        "timeout": 60.0,
        "chunk_bytes": 0,
        "dpsgd_order": "update-then-mix",
        "global_average_every": 5,
        "allreduce_warmup_steps": 5,
        "slowmo": SlowMoOptions(),
        "synch_freq": 1,
    }[name]


def _warnings(rank: int, n: int) -> dict[str, list[str]]:
    import warnings

    _, _, theta0 = problem(n)
    out = {}
    cases = [(a, name) for a, names in IGNORED.items() for name in names]
    cases += [("sgp", None), ("adpsgd", None), ("ar", None)]  # defaults: silent
    for algorithm, name in cases:
        net = model(theta0)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        options = {name: _sample(name)} if name else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_data_parallel(algorithm, net, opt, **options).close()
        out[f"{algorithm}/{name}"] = [
            str(w.message) for w in caught if issubclass(w.category, UserWarning)
        ]
    return out


def test_ignored_options_warn_by_name() -> None:
    res = run_distributed(_warnings, 2, timeout=180)
    for got in res:
        for algorithm, names in IGNORED.items():
            for name in names:
                messages = got[f"{algorithm}/{name}"]
                assert len(messages) == 1, (algorithm, name, messages)
                assert (
                    messages[0].startswith(f"{name}=")
                    and f"algorithm {algorithm!r}" in (messages[0])
                ), messages
        for algorithm in ("sgp", "adpsgd", "ar"):
            assert got[f"{algorithm}/None"] == [], got[f"{algorithm}/None"]


def _nan_step(rank: int, n: int, algorithm: str) -> Any:
    from gossip_comm import NonFiniteError

    _, _, theta0 = problem(n)
    net = model(theta0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    topology = "dynamic-bipartite-exponential" if algorithm == "adpsgd" else "ring"
    dp = make_data_parallel(algorithm, net, opt, topology=topology, check_finite=True, timeout=5)

    def step(bad: bool) -> None:
        dp(torch.ones(1, theta0.size, dtype=torch.float64)).sum().backward()
        if bad:
            for p in net.parameters():
                p.grad.fill_(float("nan"))  # type: ignore[union-attr]
        opt.step()
        opt.zero_grad()

    try:
        for t in range(3):
            step(rank == 0 and t == 1)  # rank 0's update goes bad at step 1
            if algorithm == "adpsgd" and t == 1:  # rank 0's NaN is in its shared copy now
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=20))
        if algorithm == "adpsgd" and not dp.is_passive:
            # an active never waits for its exchanges: step on until one it requested
            # after rank 0 went bad has come home
            seen = dp.exchanges
            while dp.exchanges < seen + 2:
                step(False)
        dp.close()
    except NonFiniteError as exc:
        finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
        return {"rank": exc.rank, "peer": exc.peer, "step": exc.step, "msg": str(exc),
                "finite": finite}  # fmt: skip
    except Exception as exc:  # a peer of the failing rank may time out instead
        return {"other": type(exc).__name__}
    return None


@pytest.mark.parametrize("algorithm", ["sgp", "adpsgd"])
def test_check_finite_names_the_sender_of_a_nan(algorithm: str) -> None:
    results = run_distributed(_nan_step, 2, (algorithm,), timeout=90)
    caught = [r for r in results if r is not None and "rank" in r]
    assert caught, results
    for res in caught:  # only rank 0 sent NaN, so only rank 1 can name a sender
        assert (res["rank"], res["peer"]) == (1, 0), res
        assert "from rank 0" in res["msg"], res
        assert res["finite"], res  # stopped before the NaN reached the receiver's model
