"""Tests for sgp_imagenet.models: torchvision and small-cnn construction, Goyal init, groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck  # type: ignore[import-untyped]

from sgp_imagenet.models import SMALL_CNN, build_model, param_groups


def test_resnet18_goyal_init() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 100)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    for block in blocks:
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel()
    fc = model.fc
    assert isinstance(fc, nn.Linear) and fc.out_features == 100
    assert abs(float(fc.weight.detach().std()) - 0.01) < 0.001
    assert abs(float(fc.weight.detach().mean())) < 0.001
    assert torch.count_nonzero(fc.bias) == 0


def test_resnet50_zeroes_bn3_and_is_deterministic() -> None:
    torch.manual_seed(1)
    model = build_model("resnet50", 10)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in blocks)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 10
    # Same seed, same weights: checked on a small ResNet to keep the test fast.
    torch.manual_seed(7)
    a = build_model("resnet18", 10).state_dict()
    torch.manual_seed(7)
    b = build_model("resnet18", 10).state_dict()
    for name, tensor in a.items():
        torch.testing.assert_close(tensor, b[name], rtol=0, atol=0, msg=name)


def test_non_resnet_torchvision_model_builds() -> None:
    model = build_model("squeezenet1_1", 5)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("size", [8, 32, 57])
def test_small_cnn_forward_any_size(size: int) -> None:
    model = build_model(SMALL_CNN, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < 50_000
    assert model(torch.randn(4, 3, size, size)).shape == (4, 10)


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="--arch 'resnet5' is not a torchvision") as info:
        build_model("resnet5", 10)
    assert "did you mean resnet50" in str(info.value)
    with pytest.raises(ValueError, match="did you mean small-cnn"):
        build_model("small_cnn", 10)
    with pytest.raises(ValueError, match="num_classes must be >= 1; got 0"):
        build_model(SMALL_CNN, 0)


def test_param_groups_partition_resnet18() -> None:
    model = build_model("resnet18", 10)
    groups = param_groups(model, 5e-5)
    assert [g["weight_decay"] for g in groups] == [5e-5, 0.0]
    decay, no_decay = (g["params"] for g in groups)
    assert all(p.ndim > 1 for p in decay) and all(p.ndim <= 1 for p in no_decay)
    ids = [id(p) for p in decay + no_decay]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    # 20 convolutions + fc weight; 20 BatchNorms x (weight, bias) + fc bias.
    assert (len(decay), len(no_decay)) == (21, 41)
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # torch accepts them as they are


def test_param_groups_skip_frozen_shared_and_empty() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.LayerNorm(3))
    model[3].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 2]  # linear weight; its bias, LN bias
    only_bias = nn.Sequential(nn.BatchNorm1d(4))
    assert param_groups(only_bias, 0.1) == [
        {"params": list(only_bias.parameters()), "weight_decay": 0.0}
    ]
    assert param_groups(nn.ReLU(), 0.1) == []
    with pytest.raises(ValueError, match="weight_decay must be >= 0; got -1"):
        param_groups(only_bias, -1.0)
