"""Tests for sgp_imagenet.precise_bn against a float64 oracle of BatchNorm's batch statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from gossip_comm.testing import run_distributed
from sgp_imagenet.precise_bn import recompute_bn_stats

EPS = 1e-5  # BatchNorm's default
RTOL, ATOL = 1e-5, 1e-6  # float32 model against the float64 oracle
BN_NAMES = ("bn1", "bn2", "bn3")


class _Counter(nn.Module):
    """Counts its calls in training mode: a non-BN buffer that must stay untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
        return x


class _Net(nn.Module):
    """Conv-BN-ReLU-dropout, conv-BN-ReLU, pool, linear-BN1d; three momenta."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = _Counter()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(5, momentum=0.3)
        self.fc = nn.Linear(5, 6)
        self.bn3 = nn.BatchNorm1d(6, momentum=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(torch.relu(self.bn1(self.conv1(self.counter(x)))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.fc(x.mean(dim=(2, 3))))


def _net(seed: int = 0) -> _Net:
    """A `_Net` with non-trivial BN affine parameters and stale, wrong running statistics."""
    torch.manual_seed(seed)
    model = _Net()
    with torch.no_grad():
        for name in BN_NAMES:
            bn = getattr(model, name)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.fill_(5.0)
            bn.running_var.fill_(7.0)
            bn.num_batches_tracked.fill_(123)
    return model


def _batches(seed: int, count: int, *, shift: float = 0.0, scale: float = 1.0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 6, 6, generator=gen) * scale + shift for _ in range(count)]


def _oracle(model: _Net, batches: Sequence[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per BN layer: mean over batches of the batch means and of the unbiased variances.

    A float64 re-implementation of the forward pass in training mode (batch statistics,
    no dropout), reading the activations that feed each BN layer directly.
    """
    p = {k: v.double() for k, v in model.state_dict().items()}
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in BN_NAMES}

    def bn(name: str, h: Tensor) -> Tensor:
        dims = (0,) if h.ndim == 2 else (0, 2, 3)
        shape = (1, -1) + (1,) * (h.ndim - 2)
        mean = h.mean(dims)
        seen[name].append((mean, h.var(dims, correction=1)))
        normed = (h - mean.view(shape)) / torch.sqrt(h.var(dims, correction=0).view(shape) + EPS)
        return normed * p[f"{name}.weight"].view(shape) + p[f"{name}.bias"].view(shape)

    for x in batches:
        h = nn.functional.conv2d(x.double(), p["conv1.weight"], p["conv1.bias"], padding=1)
        h = torch.relu(bn("bn1", h))
        h = nn.functional.conv2d(h, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1)
        h = torch.relu(bn("bn2", h))
        bn("bn3", nn.functional.linear(h.mean(dim=(2, 3)), p["fc.weight"], p["fc.bias"]))
    return {
        name: (torch.stack([m for m, _ in s]).mean(0), torch.stack([v for _, v in s]).mean(0))
        for name, s in seen.items()
    }


def _assert_matches_oracle(
    state: dict[str, Tensor], oracle: dict[str, tuple[Tensor, Tensor]], batches: int
) -> None:
    for name, (mean, var) in oracle.items():
        torch.testing.assert_close(
            state[f"{name}.running_mean"].double(), mean, rtol=RTOL, atol=ATOL
        )
        torch.testing.assert_close(state[f"{name}.running_var"].double(), var, rtol=RTOL, atol=ATOL)
        assert int(state[f"{name}.num_batches_tracked"]) == batches


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_identical(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- one process


def test_running_stats_are_the_mean_of_per_batch_statistics() -> None:
    model = _net()
    model.train()  # dropout would change the statistics if it were left on
    batches = _batches(1, 5)
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]
    ran = recompute_bn_stats(model, labelled, num_batches=3)
    assert ran == 3
    _assert_matches_oracle(model.state_dict(), _oracle(model, batches[:3]), batches=3)
    # the stale statistics (mean 5, var 7) are gone, not averaged in
    assert float(model.bn1.running_mean.abs().max()) < 2.0


def test_all_batches_are_used_without_num_batches() -> None:
    model = _net()
    batches = _batches(2, 4)
    assert recompute_bn_stats(model, iter(batches)) == 4
    _assert_matches_oracle(model.state_dict(), _oracle(model, batches), batches=4)


def test_parameters_other_buffers_and_momenta_are_untouched() -> None:
    model = _net()
    model.train()
    params = _params(model)
    recompute_bn_stats(model, _batches(3, 3))
    _assert_identical(_params(model), params)
    assert int(model.counter.calls) == 0  # the non-BN module ran in eval mode
    assert (model.bn1.momentum, model.bn2.momentum, model.bn3.momentum) == (0.1, 0.3, None)


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_training_flags_are_restored(mode: str) -> None:
    model = _net()
    model.train(mode != "eval")
    if mode == "mixed":
        model.bn2.eval()
        model.drop.eval()
    before = [(name, m.training) for name, m in model.named_modules()]
    recompute_bn_stats(model, _batches(4, 2))
    assert [(name, m.training) for name, m in model.named_modules()] == before


def test_a_model_without_batchnorm_is_unchanged_and_its_batches_unread() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.BatchNorm2d(4, track_running_stats=False)
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = iter(_batches(5, 3))
    assert recompute_bn_stats(model, batches, num_batches=2) == 0
    _assert_identical(model.state_dict(), state)
    assert len(list(batches)) == 3


def test_a_layer_that_sees_no_batch_keeps_its_statistics() -> None:
    model = _net()
    model.unused = nn.BatchNorm1d(3)
    model.unused.running_mean.fill_(2.0)
    with pytest.warns(UserWarning, match="'unused' saw no batch"):
        recompute_bn_stats(model, _batches(6, 2))
    torch.testing.assert_close(model.unused.running_mean, torch.full((3,), 2.0), rtol=0, atol=0)
    assert int(model.unused.num_batches_tracked) == 0
    assert int(model.bn1.num_batches_tracked) == 2


def _failing(batches: list[Tensor], after: int) -> Iterator[Tensor]:
    yield from batches[:after]
    raise RuntimeError("loader failed")


@pytest.mark.parametrize(
    ("batches", "error"),
    [
        (lambda b: _failing(b, 2), RuntimeError),
        (lambda b: [], ValueError),
        (lambda b: [b[0], "not a tensor"], TypeError),
    ],
    ids=["loader-fails", "no-batch", "bad-item"],
)
def test_a_failure_leaves_the_model_as_it_was(batches: Any, error: type[Exception]) -> None:
    model = _net()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error):
        recompute_bn_stats(model, batches(_batches(7, 3)))
    _assert_identical(model.state_dict(), state)
    assert all(m.training for m in model.modules())
    assert (model.bn1.momentum, model.bn2.momentum, model.bn3.momentum) == (0.1, 0.3, None)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "model"}, TypeError, "model must be a torch.nn.Module"),
        ({"batches": torch.zeros(2, 3, 6, 6)}, TypeError, "batches must be an iterable"),
        ({"batches": 3}, TypeError, "batches must be an iterable"),
        ({"num_batches": 0}, ValueError, "num_batches must be >= 1; got 0"),
        ({"num_batches": True}, TypeError, "num_batches must be an int"),
        ({"num_batches": 2.0}, TypeError, "num_batches must be an int"),
        ({"distributed": 1}, TypeError, "distributed must be a bool"),
        ({"distributed": True}, ValueError, "distributed=True needs an initialised"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = _net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    call: dict[str, Any] = {"model": model, "batches": _batches(8, 2), **kwargs}
    with pytest.raises(error, match=match):
        recompute_bn_stats(call.pop("model"), call.pop("batches"), **call)
    _assert_identical(model.state_dict(), state)


def test_a_process_group_without_distributed_warns() -> None:
    group: Any = object()  # never used: the statistics stay local
    with pytest.warns(UserWarning, match="process_group is ignored unless distributed=True"):
        recompute_bn_stats(_net(), _batches(9, 1), process_group=group)


# --------------------------------------------------------------------------- two ranks

_A = _batches(10, 3)  # rank 0's batches
_B = _batches(11, 3, shift=2.0, scale=1.5)  # rank 1's: other means, so Var[mean] would show
SPLITS = {
    "equal": ([*_A], [*_B]),
    "unequal": ([*_A], _B[:1]),
    "rank 1 empty": (_A[:2], []),
}


def _distributed_worker(rank: int, world_size: int) -> list[tuple[int, dict[str, Tensor]]]:
    assert world_size == 2
    results = []
    for split in SPLITS.values():
        model = _net()
        ran = recompute_bn_stats(model, split[rank], distributed=True)
        results.append((ran, {k: v.clone() for k, v in model.state_dict().items()}))
    return results


def test_two_ranks_average_to_the_single_process_result_over_the_union() -> None:
    results = run_distributed(_distributed_worker, 2)
    for case, (name, split) in enumerate(SPLITS.items()):
        union = [*split[0], *split[1]]
        single = _net()
        recompute_bn_stats(single, union)
        oracle = _oracle(single, union)
        for rank in range(2):
            ran, state = results[rank][case]
            assert ran == len(split[rank]), name
            _assert_matches_oracle(state, oracle, batches=len(union))
            for key, value in single.state_dict().items():
                torch.testing.assert_close(state[key], value, rtol=RTOL, atol=ATOL, msg=key)
            params = {k: v for k, v in state.items() if k in dict(single.named_parameters())}
            _assert_identical(params, _params(_net()))


def test_the_union_oracle_differs_from_either_rank_alone() -> None:
    # guards the distributed test: neither rank's own statistics are the union's, and the
    # between-rank spread of the means (which the average leaves out) is far above the
    # tolerance, so averaging E[var] + Var[mean] instead would fail it
    union, alone, other = (_oracle(_net(), b) for b in ([*_A, *_B], _A, _B))
    for name in BN_NAMES:
        spread = ((alone[name][0] - other[name][0]) / 2) ** 2
        assert float(spread.max()) > 10 * (ATOL + RTOL * float(union[name][1].max())), name
        for own in (alone, other):
            assert float((union[name][0] - own[name][0]).abs().max()) > 100 * ATOL, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_batches_reach_a_model_on_cuda() -> None:
    model = _net().cuda()
    batches = _batches(12, 3)
    assert recompute_bn_stats(model, batches) == 3
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    # cuDNN's reductions are not float64's: a looser tolerance than on CPU
    oracle = _oracle(_net(), batches)
    for name, (mean, var) in oracle.items():
        torch.testing.assert_close(
            state[f"{name}.running_mean"].double(), mean, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(state[f"{name}.running_var"].double(), var, rtol=1e-4, atol=1e-5)
