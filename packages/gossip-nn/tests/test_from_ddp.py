"""Each claim of the "Moving from DDP" guide, executed (its scripts: test_from_ddp_page.py).

Two ranks on gloo. With two ranks, one peer per step and uniform mixing, an SGP step
replaces both models by their average, so after each step both ranks hold
``mean_r(x - update_r)``: the oracles below are single-process computations of that
(for SGD the same as one step on the concatenated batch of both ranks).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from gossip_comm.testing import run_distributed
from gossip_nn import AllReduceDataParallel, make_data_parallel

WORLD, K, STEPS, LR = 2, 3, 3, 0.1
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def _batch(rank: int, step: int, micro: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)
    x = torch.randn(4, 6, generator=gen, dtype=dtype)
    return x, x.sum(1, keepdim=True) + rank  # the ranks' data disagree on purpose


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _gathered(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's copy of the flattened ``tensors``."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    out = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(out, flat)
    return out


def _params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# ----------------------------------------------------------------- accumulation
def _accumulation(rank: int, world: int) -> dict[str, Any]:
    """K micro-batches under ``no_sync``, then one step, for STEPS steps."""
    out: dict[str, Any] = {}
    for algorithm in ("ar", "sgp", "osgp", "dpsgd"):
        net = _net()
        ref = copy.deepcopy(net)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        model = make_data_parallel(algorithm, net, opt)
        assert model.module is net  # the bare model, as DDP's .module
        sent, in_backward = [], []
        for step in range(STEPS):
            before = model.bytes_sent
            for micro in range(K - 1):
                with model.no_sync():
                    x, y = _batch(rank, step, micro, torch.float64)
                    (_loss(model(x), y) / K).backward()
            if step == 0:
                out[f"{algorithm} inside"] = _gathered([p.grad for p in net.parameters()])
            x, y = _batch(rank, step, K - 1, torch.float64)
            (_loss(model(x), y) / K).backward()
            if step == 0:
                out[f"{algorithm} outside"] = _gathered([p.grad for p in net.parameters()])
            in_backward.append(model.bytes_sent - before)
            opt.step()
            opt.zero_grad()
            sent.append(model.bytes_sent)
        model.close()
        out[algorithm] = {"params": _params(net), "sent": sent, "in_backward": in_backward}
        if algorithm in ("ar", "sgp"):
            out[f"{algorithm} oracle"] = _sgd_on_every_rank_batch(ref, world)
    out["node inside"], out["node outside"] = _one_model_per_node(rank)
    return out


def _one_model_per_node(rank: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """SGP with both ranks on one node (``nprocs_per_node=2``): DDP inside the node."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model = make_data_parallel("sgp", net, opt, nprocs_per_node=2)
    with model.no_sync():
        x, y = _batch(rank, 0, 0, torch.float64)
        _loss(model(x), y).backward()
    inside = _gathered([p.grad for p in net.parameters()])
    x, y = _batch(rank, 0, 1, torch.float64)
    _loss(model(x), y).backward()
    outside = _gathered([p.grad for p in net.parameters()])
    opt.step()
    model.close()
    return inside, outside


def _sgd_on_every_rank_batch(net: nn.Module, world: int) -> torch.Tensor:
    """Single process: STEPS plain SGD steps on the concatenation of every micro-batch
    of every rank (mean loss)."""
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(STEPS):
        pairs = [_batch(r, step, m, torch.float64) for r in range(world) for m in range(K)]
        x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        _loss(net(x), y).backward()
        opt.step()
        opt.zero_grad()
    return _params(net)


@pytest.fixture(scope="module")
def accumulation() -> list[dict[str, Any]]:
    return run_distributed(_accumulation, WORLD, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ar", "sgp"])
def test_accumulated_micro_batches_equal_one_step_on_the_whole_batch(
    accumulation: list[dict[str, Any]], algorithm: str
) -> None:
    for res in accumulation:
        torch.testing.assert_close(res[algorithm]["params"], res[f"{algorithm} oracle"], **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ar", "sgp", "osgp", "dpsgd"])
def test_communication_follows_the_optimizer_steps_not_the_backward_passes(
    accumulation: list[dict[str, Any]], algorithm: str
) -> None:
    for res in accumulation:
        sent = res[algorithm]["sent"]
        assert res[algorithm]["in_backward"] == [0] * STEPS  # nothing sent in backward
        assert sent[0] > 0
        assert sent == [sent[0] * (t + 1) for t in range(STEPS)]  # the same every step
    numel = sum(p.numel() for p in _net().parameters())
    # AR-SGD's count is closed-form: a ring all-reduce of the float64 gradients, once
    # per step, 2 (n - 1) / n = 1 times their bytes for two ranks
    assert accumulation[0]["ar"]["sent"][0] == numel * 8


@pytest.mark.slow
def test_no_sync_skips_the_all_reduce_and_the_next_backward_makes_it_up(
    accumulation: list[dict[str, Any]],
) -> None:
    inside, outside = accumulation[0]["ar inside"], accumulation[0]["ar outside"]
    assert not torch.allclose(inside[0], inside[1])  # each rank's own gradients
    torch.testing.assert_close(outside[0], outside[1], rtol=0, atol=0)
    # one model per node: the in-node all-reduce is skipped, then made up, as for "ar"
    inside, outside = accumulation[0]["node inside"], accumulation[0]["node outside"]
    assert not torch.allclose(inside[0], inside[1])
    torch.testing.assert_close(outside[0], outside[1], rtol=0, atol=0)
    # the gossip algorithms never all-reduce gradients: each rank keeps its own
    for algorithm in ("sgp", "osgp", "dpsgd"):
        grads = accumulation[0][f"{algorithm} outside"]
        assert not torch.allclose(grads[0], grads[1])


# ---------------------------------------------- AdamW, a schedule, clipping, AMP
CLIP = 0.05  # small enough that every step is clipped


def _lambda(step: int) -> float:
    return 1.0 / (1 + step)


def _optimizers(rank: int, world: int, algorithm: str, amp: bool) -> dict[str, torch.Tensor]:
    """AdamW with a LambdaLR schedule and clipping (a GradScaler with ``amp``), beside
    its oracle: single-process AdamW on the whole batch for AR-SGD; for SGP each rank's
    own AdamW step on its own clipped gradient, then the two ranks' average."""
    net = _net(torch.float32)
    ref = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lambda)
    model = make_data_parallel(algorithm, net, opt)
    # no autocast: the scaler's powers of two are exact, so the oracle needs none
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=amp)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.1)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, _lambda)
    for step in range(STEPS):
        x, y = _batch(rank, step, 0, torch.float32)
        scaler.scale(_loss(model(x), y)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        model.scaler_step(scaler)
        scaler.update()
        sched.step()
        opt.zero_grad()
        _reference_step(ref, ref_opt, rank, world, step, algorithm)
        ref_sched.step()
    model.close()
    return {"params": _params(net), "oracle": _params(ref)}


def _reference_step(
    ref: nn.Module, opt: torch.optim.Optimizer, rank: int, world: int, step: int, algorithm: str
) -> None:
    if algorithm == "ar":  # the whole batch, in this process
        pairs = [_batch(r, step, 0, torch.float32) for r in range(world)]
        x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    else:
        x, y = _batch(rank, step, 0, torch.float32)
    _loss(ref(x), y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
    opt.step()
    opt.zero_grad()
    if algorithm == "sgp":  # both ranks average their updated models
        mean = torch.stack(_gathered(list(ref.parameters()))).mean(0)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(mean, ref.parameters())


def _all_optimizer_cases(rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    return [_optimizers(rank, world, alg, amp) for alg, amp in OPTIMIZER_CASES]


OPTIMIZER_CASES = [("ar", False), ("sgp", False), ("ar", True), ("sgp", True)]


@pytest.fixture(scope="module")
def optimizers() -> list[list[dict[str, torch.Tensor]]]:
    return run_distributed(_all_optimizer_cases, WORLD, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(OPTIMIZER_CASES)), ids=str)
def test_adamw_a_schedule_clipping_and_a_grad_scaler_match_their_oracle(
    optimizers: list[list[dict[str, torch.Tensor]]], case: int
) -> None:
    start = _params(_net(torch.float32))
    for rank_results in optimizers:
        res = rank_results[case]
        assert not torch.allclose(res["params"], start)  # it trained
        torch.testing.assert_close(res["params"], res["oracle"], **TOL)


# --------------------------------------------------------------- torch.compile
def _compiled(rank: int, world: int) -> dict[str, Any]:
    """The same steps with and without ``net.compile(backend="aot_eager")`` before
    wrapping; and the keys of a wrapper compiled with ``torch.compile``."""
    out: dict[str, Any] = {}
    for algorithm in ("ar", "sgp"):
        for compile_it in (False, True):
            net = _net(torch.float32)
            opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
            if compile_it:
                net.compile(backend="aot_eager")
            model = make_data_parallel(algorithm, net, opt)
            for step in range(4):
                x, y = _batch(rank, step, 0, torch.float32)
                _loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
            with torch.no_grad(), model.average_for_eval():
                evaluated = model(_batch(rank, 9, 0, torch.float32)[0])
            out[algorithm, compile_it] = (_params(net), evaluated, list(model.state_dict()))
            model.close()
    net = _net(torch.float32)
    model = make_data_parallel("sgp", net, torch.optim.SGD(net.parameters(), lr=LR))
    out["outer keys"] = list(torch.compile(model, backend="aot_eager").state_dict())
    model.close()
    return out


@pytest.mark.slow
def test_a_model_compiled_before_wrapping_trains_as_the_plain_one() -> None:
    for res in run_distributed(_compiled, WORLD, timeout=240):
        for algorithm in ("ar", "sgp"):
            plain, compiled = res[algorithm, False], res[algorithm, True]
            torch.testing.assert_close(compiled[0], plain[0], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(compiled[1], plain[1], rtol=1e-6, atol=1e-7)
            assert compiled[2] == plain[2]  # the same checkpoint keys
            assert "module.0.weight" in plain[2]
        assert "_orig_mod.module.0.weight" in res["outer keys"]


# ------------------------------------------------------------ which rank saves
def _saving(rank: int, world: int, folder: str) -> dict[str, Any]:
    """D-PSGD, whose two ranks hold different models after each step: rank 0 saves the
    averaged module inside ``average_for_eval``; a state dict taken there but saved
    after the block holds this rank's own parameters again."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model = make_data_parallel("dpsgd", net, opt)
    for step in range(3):
        x, y = _batch(rank, step, 0, torch.float64)
        _loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    everyone = _gathered(list(net.parameters()))
    with model.average_for_eval():
        if rank == 0:
            torch.save(net.state_dict(), Path(folder) / "averaged.pt")
        late = net.state_dict()  # views of the parameters: saved too late below
    if rank == 0:
        torch.save(late, Path(folder) / "late.pt")
    model.close()
    return {"everyone": everyone, "own": _params(net)}


@pytest.mark.slow
def test_the_averaged_model_is_saved_inside_average_for_eval(tmp_path: Path) -> None:
    results = run_distributed(_saving, WORLD, (str(tmp_path),), timeout=120)
    everyone = results[0]["everyone"]
    assert not torch.allclose(everyone[0], everyone[1])  # every rank its own model
    fresh = _net()
    fresh.load_state_dict(torch.load(tmp_path / "averaged.pt"))
    torch.testing.assert_close(_params(fresh), torch.stack(everyone).mean(0), **TOL)
    fresh.load_state_dict(torch.load(tmp_path / "late.pt"))
    torch.testing.assert_close(_params(fresh), results[0]["own"], rtol=0, atol=0)


# -------------------------------------------------------------- DDP's options
class _Branchy(nn.Module):
    """A model with a branch its forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(6, 1).double()
        self.unused = nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def _ddp_options(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, net, ddp_options in (
        ("unused", _Branchy(), {"find_unused_parameters": True}),
        ("static", _net(), {"static_graph": True, "gradient_as_bucket_view": True}),
        ("bucket", _net(), {"bucket_cap_mb": 0.001}),
    ):
        ref = copy.deepcopy(net)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        model = make_data_parallel("ar", net, opt, ddp_options=ddp_options)
        ddp = model._ddp
        out[f"{name} passed"] = {
            k: getattr(ddp, k, None) for k in ddp_options if k != "bucket_cap_mb"
        }
        out[f"{name} bucket bytes"] = ddp.bucket_bytes_cap
        for step in range(STEPS):
            x, y = _batch(rank, step, 0, torch.float64)
            _loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        model.close()
        out[name] = (_params(net), _whole_batch_sgd(ref, world))
    out["no flag"] = _unused_without_the_flag(rank)
    out["gossip unused"] = _unused_with_gossip(rank)
    out["hook"] = _bf16_hook(rank)
    out["powersgd"] = _powersgd(rank, world)
    out["different"] = _different_ddp_options(rank)
    return out


def _whole_batch_sgd(net: nn.Module, world: int) -> torch.Tensor:
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    for step in range(STEPS):
        pairs = [_batch(r, step, 0, torch.float64) for r in range(world)]
        _loss(net(torch.cat([p[0] for p in pairs])), torch.cat([p[1] for p in pairs])).backward()
        opt.step()
        opt.zero_grad()
    return _params(net)


def _unused_without_the_flag(rank: int) -> tuple[int, str]:
    """DDP's own error without ``find_unused_parameters``: the step, and the message."""
    net = _Branchy()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model = make_data_parallel("ar", net, opt)
    try:
        for step in range(2):
            x, y = _batch(rank, step, 0, torch.float64)
            try:
                _loss(model(x), y).backward()
            except RuntimeError as exc:
                return step, str(exc)
            opt.step()
            opt.zero_grad()
    finally:
        model.close()
    return -1, ""


def _unused_with_gossip(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SGP and a branch the forward pass never uses: no option, and the branch stays."""
    net = _Branchy()
    start = _params(net.unused)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model = make_data_parallel("sgp", net, opt)
    for step in range(STEPS):
        x, y = _batch(rank, step, 0, torch.float64)
        _loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    model.close()
    return start, _params(net.unused)


def _bf16_hook(rank: int) -> dict[str, torch.Tensor]:
    """The gradients with ``bf16_compress_hook``, and each rank's own (no DDP)."""
    net = _net(torch.float32)
    ref = copy.deepcopy(net)
    model = make_data_parallel("ar", net, torch.optim.SGD(net.parameters(), lr=LR))
    model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    x, y = _batch(rank, 0, 0, torch.float32)
    _loss(model(x), y).backward()
    _loss(ref(x), y).backward()
    model.close()
    own = torch.cat([p.grad.reshape(-1) for p in ref.parameters()])
    return {"reduced": torch.cat([p.grad.reshape(-1) for p in net.parameters()]), "own": own}


def _powersgd(rank: int, world: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """PowerSGD (rank 1, from the second step): every rank's parameters, and the oracle
    without compression."""
    net = _net()
    ref = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    model = make_data_parallel("ar", net, opt)
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=1, start_powerSGD_iter=2
    )
    model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    for step in range(STEPS):
        x, y = _batch(rank, step, 0, torch.float64)
        _loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    model.close()
    return _gathered(list(net.parameters())), _whole_batch_sgd(ref, world)


def _different_ddp_options(rank: int) -> str:
    """Rank 0 asks for a static graph, rank 1 for nothing: both must refuse."""
    net = _net()
    try:
        make_data_parallel(
            "ar",
            net,
            torch.optim.SGD(net.parameters(), lr=LR),
            ddp_options={"static_graph": True} if rank == 0 else None,
        )
    except ValueError as exc:
        return str(exc)
    return ""


@pytest.fixture(scope="module")
def ddp_options() -> list[dict[str, Any]]:
    return run_distributed(_ddp_options, WORLD, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unused", "static", "bucket"])
def test_ddp_options_reach_ddp_and_training_matches_the_oracle(
    ddp_options: list[dict[str, Any]], name: str
) -> None:
    for res in ddp_options:
        params, oracle = res[name]
        torch.testing.assert_close(params, oracle, **TOL)
        assert all(res[f"{name} passed"].values())
    expected = int(0.001 * 1024 * 1024)
    assert ddp_options[0]["bucket bucket bytes"] == expected
    assert ddp_options[0]["static bucket bytes"] != expected


@pytest.mark.slow
def test_an_unused_branch_needs_find_unused_parameters(
    ddp_options: list[dict[str, Any]],
) -> None:
    for res in ddp_options:
        step, message = res["no flag"]
        assert step == 1 and "find_unused_parameters" in message, (step, message)


@pytest.mark.slow
def test_gossip_needs_no_option_for_an_unused_branch(ddp_options: list[dict[str, Any]]) -> None:
    for res in ddp_options:
        start, end = res["gossip unused"]
        torch.testing.assert_close(end, start, rtol=0, atol=0)


@pytest.mark.slow
def test_a_bf16_comm_hook_reduces_bf16_rounded_gradients(
    ddp_options: list[dict[str, Any]],
) -> None:
    own = [res["hook"]["own"] for res in ddp_options]
    # the hook: each rank's gradient in bf16, divided by 2 in bf16, summed in bf16
    expected = (own[0].bfloat16() / WORLD + own[1].bfloat16() / WORLD).float()
    for res in ddp_options:
        torch.testing.assert_close(res["hook"]["reduced"], expected, rtol=0, atol=0)
        assert not torch.allclose(res["hook"]["reduced"], (own[0] + own[1]) / 2, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_a_powersgd_hook_is_applied(ddp_options: list[dict[str, Any]]) -> None:
    everyone, oracle = ddp_options[0]["powersgd"]
    torch.testing.assert_close(everyone[0], everyone[1], rtol=0, atol=0)  # still all-reduced
    assert not torch.allclose(everyone[0], oracle, rtol=0, atol=1e-6)  # but compressed


@pytest.mark.slow
def test_ranks_with_different_ddp_options_are_refused(ddp_options: list[dict[str, Any]]) -> None:
    for message in (res["different"] for res in ddp_options):
        assert "ddp_options" in message and "static_graph" in message, message


def test_ddp_options_are_for_ar_only() -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    with pytest.raises(ValueError, match="ddp_options applies only to algorithm 'ar'"):
        make_data_parallel("sgp", net, opt, ddp_options={"static_graph": True})
    assert AllReduceDataParallel.DDP_OPTIONS == (
        "bucket_cap_mb",
        "find_unused_parameters",
        "gradient_as_bucket_view",
        "static_graph",
    )
