"""Shared pieces of the gossip-nn tests: a linear least-squares problem and its oracles."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from gossip_topology import Quadratic, Star, Topology, make_topology, mixing_matrix

D = 4  # parameters of the linear model
M = 16  # samples per rank


def topology(name: str, n: int) -> Topology:
    return Star(n) if name == "star" else make_topology(name, n)


def problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-rank data X (n, M, D), y (n, M) and a shared initial theta (D,)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, M, D))
    y = rng.normal(size=(n, M)) + np.arange(n)[:, None]  # ranks disagree on purpose
    return X, y, rng.normal(size=D)


def quadratic(X: np.ndarray, y: np.ndarray) -> Quadratic:
    """f_i(t) = 0.5 mean((X_i t - y_i)^2) written as 0.5 (t - b_i)^T A_i (t - b_i) + const."""
    A = np.einsum("nmi,nmj->nij", X, X) / X.shape[1]
    c = np.einsum("nmi,nm->ni", X, y) / X.shape[1]
    return Quadratic(A, np.linalg.solve(A, c[..., None])[..., 0])


def model(theta0: np.ndarray) -> nn.Module:
    net = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(theta0)[None, :])
    return net


def loss(net: nn.Module, X: np.ndarray, y: np.ndarray) -> torch.Tensor:
    pred = net(torch.from_numpy(X))[:, 0]
    return 0.5 * ((pred - torch.from_numpy(y)) ** 2).mean()


def osgp_oracle(
    topo: Topology, grad: Quadratic, theta0: np.ndarray, steps: int, lr: float, tau: int
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapped SGP: the message of step t carries x before step t's update, and is added
    at step t + 1 + tau (before that step's send). Returns z and w after every step."""
    n = topo.world_size
    x, w = np.tile(theta0, (n, 1)), np.ones(n)
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    zs, ws = [], []
    for t in range(steps):
        g = grad.gradient(x / w[:, None])  # computed before anything folds in
        while len(pending) > tau:
            dx, dw = pending.pop(0)
            x, w = x + dx, w + dw
        W = mixing_matrix(topo, t)
        off = W - np.diag(np.diag(W))
        pending.append((off @ x, off @ w))
        x, w = np.diag(W)[:, None] * x, np.diag(W) * w
        x = x - lr * g
        zs.append(x / w[:, None])
        ws.append(w.copy())
    return np.array(zs), np.array(ws)


def gossip_oracle(
    algorithm: str,
    topology_at: Any,
    grad: Quadratic,
    theta0: np.ndarray,
    steps: int,
    lr: float,
    *,
    exact: Any = None,
    tau: int = 0,
    order: str = "mix-then-update",
    slowmo: tuple[float, float, int] | None = None,
    flush_at: int | None = None,
    replay: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SGP, OSGP or D-PSGD with plain SGD, step by step in numpy; returns z and w after
    every step.

    ``topology_at(t)`` gives iteration t's graph, whose schedule position is the number of
    gossip rounds so far (exact steps are not rounds). On an iteration with
    ``exact(t)`` the mixing matrix is the exact average: OSGP first folds every message
    in flight. ``slowmo = (beta, alpha, every)`` adds SlowMo's outer step after every
    ``every`` iterations. ``flush_at``: OSGP folds every message in flight before
    iteration ``flush_at`` (``set_topology`` does). ``replay[t]`` (n, d), if given, is
    used as iteration t's gradients instead of ``grad``'s.
    """
    exact = exact or (lambda t: False)
    n = topology_at(0).world_size
    x, w = np.tile(theta0, (n, 1)), np.ones(n)
    rounds = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    outer, momentum = theta0.copy(), np.zeros_like(theta0)
    zs, ws = [], []

    def average(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.tile(x.sum(axis=0) / w.sum(), (n, 1)), np.ones(n)

    for t in range(steps):
        if t == flush_at:
            for dx, dw in pending:
                x, w = x + dx, w + dw
            pending = []
        g = grad.gradient(x / w[:, None]) if replay is None else replay[t]
        if algorithm == "osgp":
            if exact(t):
                for dx, dw in pending:
                    x, w = x + dx, w + dw
                pending = []
                x, w = average(x - lr * g, w)
            else:
                while len(pending) > tau:
                    dx, dw = pending.pop(0)
                    x, w = x + dx, w + dw
                W = mixing_matrix(topology_at(t), rounds)
                rounds += 1
                off = W - np.diag(np.diag(W))
                pending.append((off @ x, off @ w))
                x, w = np.diag(W)[:, None] * x - lr * g, np.diag(W) * w
        else:
            if exact(t):
                M = np.full((n, n), 1.0 / n)
            else:
                M = mixing_matrix(topology_at(t), rounds)
                rounds += 1

            def mix(v: np.ndarray, M: np.ndarray = M) -> np.ndarray:
                return M @ v

            if algorithm == "dpsgd" and order == "mix-then-update":
                x = mix(x) - lr * g
            elif algorithm == "dpsgd":
                x = mix(x - lr * g)
            elif exact(t):
                x, w = average(x - lr * g, w)
            else:
                x, w = mix(x - lr * g), mix(w[:, None])[:, 0]
        if slowmo is not None and (t + 1) % slowmo[2] == 0:
            beta, alpha, _ = slowmo
            for dx, dw in pending:
                x, w = x + dx, w + dw
            pending = []
            xbar = x.sum(axis=0) / w.sum()
            momentum = beta * momentum + (outer - xbar) / lr
            outer = outer - alpha * lr * momentum
            x, w = np.tile(outer, (n, 1)), np.ones(n)
        zs.append(x / w[:, None])
        ws.append(w.copy())
    return np.array(zs), np.array(ws)
