"""The torch outer step (one policy for SlowMo, local SGD and DiLoCo) against the numpy
oracle ``gossip_topology.outer_step``, step by step, and its state across a restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip_nn._outer import OuterStep
from gossip_nn.slowmo import SlowMoOptions, slowmo_step
from gossip_topology import OuterOptimizer, outer_step

SETTINGS = {
    "local sgd": OuterOptimizer.local_sgd(),
    "diloco": OuterOptimizer.diloco(),
    "slowmo": OuterOptimizer.slowmo(beta=0.6, lr=1.3),
    "heavy ball": OuterOptimizer(lr=0.5, momentum=0.8, nesterov=False),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_outer_steps_match_the_numpy_oracle(name: str) -> None:
    opt, gamma, every = SETTINGS[name], 0.05, 3
    rng = np.random.default_rng(2)
    sizes = (5, 3)  # two flat buffers
    params = [torch.from_numpy(rng.normal(size=s)) for s in sizes]
    policy = OuterStep(opt, every, params)
    outer = [p.numpy().copy() for p in params]
    momentum = [np.zeros(s) for s in sizes]
    steps = 0
    for t in range(1, 10):
        for p in params:  # an inner step moves the model
            p.add_(torch.from_numpy(rng.normal(scale=0.1, size=p.shape)))
        due = policy.advance()
        assert due == (t % every == 0)
        if not due:
            continue
        averages = [p.numpy().copy() for p in params]
        policy.apply(params, gamma)
        steps += 1
        for i, average in enumerate(averages):
            outer[i], momentum[i] = outer_step(opt, outer[i], momentum[i], average, gamma)
            np.testing.assert_allclose(params[i].numpy(), outer[i], rtol=0, atol=1e-12)
            np.testing.assert_allclose(
                policy.momentum[i].numpy(), momentum[i], rtol=1e-12, atol=1e-12
            )
    assert steps == 3


def test_slowmo_is_the_policy_configured() -> None:
    params = [torch.zeros(4, dtype=torch.float64)]
    step = slowmo_step(SlowMoOptions(beta=0.3, lr=0.9, every=7), params)
    assert step.optimizer == OuterOptimizer.slowmo(beta=0.3, lr=0.9)
    assert step.every == 7
    with pytest.raises(ValueError, match=r"SlowMo needs a positive base learning rate; got 0\.0"):
        step.apply(params, 0.0)


def test_the_state_restores_exactly() -> None:
    rng = np.random.default_rng(3)
    params = [torch.from_numpy(rng.normal(size=6))]
    first = OuterStep(OuterOptimizer.diloco(), 2, params)
    for _ in range(4):
        params[0].add_(0.1)
        if first.advance():
            first.apply(params)
    second = OuterStep(OuterOptimizer.diloco(), 2, [torch.zeros(6, dtype=torch.float64)])
    second.load_state_dict(first.state_dict())
    assert second.step == 4
    for a, b in zip(first.outer + first.momentum, second.outer + second.momentum, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="the outer step state is for a model of another shape"):
        second.load_state_dict(OuterStep(OuterOptimizer(), 2, [torch.zeros(5)]).state_dict())
