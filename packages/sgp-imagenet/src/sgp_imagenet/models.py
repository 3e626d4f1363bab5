r"""Model construction for ``sgp-imagenet``: torchvision classifiers and a small test CNN.

ResNets get the initialisation of Goyal et al., "Accurate, Large Minibatch SGD: Training
ImageNet in 1 Hour" (2017, arXiv:1706.02677): each residual block's last BatchNorm starts
with $\gamma = 0$, so every block starts as the identity, and the classifier's
weights are drawn from $\mathcal{N}(0, 0.01^2)$.
"""

from __future__ import annotations

import difflib
from typing import Any

import torchvision  # type: ignore[import-untyped]
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # type: ignore[import-untyped]

__all__ = ["SMALL_CNN", "build_model", "param_groups"]

SMALL_CNN = "small-cnn"
"""The ``--arch`` name of the small BatchNorm CNN meant for the digits data and tests."""


def build_model(arch: str, num_classes: int) -> nn.Module:
    r"""Build an untrained classifier.

    Weights are drawn from torch's global generator, so calling ``torch.manual_seed`` with
    the same seed first gives the same model on every rank.

    Args:
        arch: A torchvision classification model name (``"resnet50"``, ``"resnet18"``,
            ``"vit_b_16"``, ...) or ``"small-cnn"``.
        num_classes: Outputs of the classifier.

    Returns:
        The model, on CPU, in training mode. A ``torchvision.models.ResNet`` has its
        residual blocks' last BatchNorm weights at zero and its ``fc`` weights drawn from
        $\mathcal{N}(0, 0.01^2)$ with zero bias.

    Raises:
        ValueError: If ``arch`` is unknown (the message suggests close names) or
            ``num_classes < 1``.

    Examples:
        >>> import torch
        >>> model = build_model("small-cnn", 10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if arch == SMALL_CNN:
        return _small_cnn(num_classes)
    known = _torchvision_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, [*known, SMALL_CNN], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. resnet50 or {SMALL_CNN}"
        raise ValueError(
            f"--arch {arch!r} is not a torchvision classification model or {SMALL_CNN}; {hint}"
        )
    model: nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if isinstance(model, ResNet):
        _goyal_init(model)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and an undecayed group for ``torch.optim``.

    Parameters with at most one dimension (biases, BatchNorm and LayerNorm weights) are not
    decayed; the others (convolution and linear weights) get ``weight_decay``. Each
    trainable parameter appears exactly once, even if shared; frozen parameters are left
    out, and so is a group that would be empty.

    Args:
        model: The model to optimise.
        weight_decay: Decay of the multi-dimensional weights.

    Returns:
        Up to two groups, ``{"params": [...], "weight_decay": ...}``, the decayed one first.

    Raises:
        ValueError: If ``weight_decay < 0``.

    Examples:
        >>> groups = param_groups(build_model("small-cnn", 10), 1e-4)
        >>> [g["weight_decay"] for g in groups]
        [0.0001, 0.0]
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():  # shared parameters are yielded once
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _torchvision_models() -> list[str]:
    names: list[str] = torchvision.models.list_models(module=torchvision.models)
    return names


def _goyal_init(model: nn.Module) -> None:
    """Zero each residual block's last BatchNorm weight; fc from N(0, 0.01^2), zero bias."""
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    fc = model.fc
    if isinstance(fc, nn.Linear):
        nn.init.normal_(fc.weight, mean=0.0, std=0.01)
        if fc.bias is not None:
            nn.init.zeros_(fc.bias)


def _small_cnn(num_classes: int) -> nn.Module:
    """Three conv-BN-ReLU stages (16, 32, 64 channels), global average pool, linear.

    Works on 3-channel images of any size; about 24k parameters plus the classifier.
    """

    def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]

    return nn.Sequential(
        *stage(3, 16, 1),
        *stage(16, 32, 2),
        *stage(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
